//! The page environment: minijinja templates (`templates/`, compiled into the binary), every
//! page's header ([`Provenance`]) and the chart-error bridge. User strings are escaped by the
//! templates (auto-escape on `.html`).

use crate::error::{Error, Result};
use minijinja::Environment;

/// The template set, embedded so an installed binary needs no template directory.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("inspect.html", include_str!("../../templates/inspect.html")),
    ("run.html", include_str!("../../templates/run.html")),
    (
        "reproduce.html",
        include_str!("../../templates/reproduce.html"),
    ),
];

/// The minijinja environment with every template loaded (HTML auto-escaping on).
pub fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    for (name, src) in TEMPLATES {
        env.add_template(name, src)
            .map_err(|e| Error::Internal(format!("template {name}: {e}")))?;
    }
    Ok(env)
}

/// What every page's header names: the command that wrote it, when, and which tsd.
#[derive(serde::Serialize)]
pub struct Provenance {
    /// The tsd command line (none when a page is rendered by a library call, e.g. in tests).
    pub command: Option<String>,
    /// UTC date and time of the rendering.
    pub date: String,
    pub version: &'static str,
    /// The git commit tsd was built from (`-dirty`: with uncommitted changes).
    pub commit: &'static str,
}

impl Provenance {
    /// This process's: its command line when it is the `tsd` binary.
    pub fn current() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let is_tsd = args.first().is_some_and(|a| {
            std::path::Path::new(a)
                .file_name()
                .is_some_and(|n| n == "tsd")
        });
        let command = is_tsd.then(|| {
            std::iter::once("tsd".to_string())
                .chain(args[1..].iter().map(|a| shell_word(a)))
                .collect::<Vec<_>>()
                .join(" ")
        });
        Self {
            command,
            date: utc_now(),
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("TSD_COMMIT"),
        }
    }
}

/// `a` quoted for a POSIX shell where it needs it.
fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn utc_now() -> String {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64)
}

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds (civil-from-days, proleptic Gregorian).
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Renders `template` with a serialisable context; `prov` (the header's [`Provenance`]) is added.
pub fn render<S: serde::Serialize>(template: &str, ctx: S) -> Result<String> {
    let env = environment()?;
    let t = env
        .get_template(template)
        .map_err(|e| Error::Internal(format!("template {template}: {e}")))?;
    let ctx = minijinja::context! {
        prov => minijinja::Value::from_serialize(Provenance::current()),
        ..minijinja::Value::from_serialize(&ctx)
    };
    t.render(ctx)
        .map_err(|e| Error::Internal(format!("rendering {template}: {e:#}")))
}

/// A chart's error as the crate's.
pub(crate) fn chart(r: std::result::Result<String, String>) -> Result<String> {
    r.map_err(Error::Internal)
}

/// An optional number with `digits` decimals, `-` when absent.
pub(crate) fn opt_fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(super::utc(1_798_761_599), "2026-12-31 23:59 UTC");
    }

    #[test]
    fn shell_words() {
        assert_eq!(super::shell_word("--base"), "--base");
        assert_eq!(super::shell_word("a b"), "'a b'");
        assert_eq!(super::shell_word("it's"), "'it'\\''s'");
    }
}
