//! Self-contained HTML reports: minijinja templates (`templates/`, compiled into the binary) and
//! inline plotters SVG charts. Reports render records (inspect reports, run records, track reports);
//! they never recompute. User strings are escaped by the templates (auto-escape on `.html`).

pub mod charts;
pub mod pages;

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

/// Where `tsd report -o FILE` saves the track record it computed: beside FILE, named after it
/// (`DIR/run-a.html` → `DIR/run-a.track.json`), so reports sharing a directory keep their own.
pub fn track_path_for(report: &std::path::Path) -> std::path::PathBuf {
    let stem = report
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    crate::fsutil::parent_dir(report).join(format!("{stem}.track.json"))
}

/// The minijinja environment with every template loaded (HTML auto-escaping on).
pub fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    for (name, src) in TEMPLATES {
        env.add_template(name, src)
            .map_err(|e| Error::Internal(format!("template {name}: {e}")))?;
    }
    Ok(env)
}

/// Renders `template` with a serialisable context.
pub fn render<S: serde::Serialize>(template: &str, ctx: S) -> Result<String> {
    let env = environment()?;
    let t = env
        .get_template(template)
        .map_err(|e| Error::Internal(format!("template {template}: {e}")))?;
    t.render(ctx)
        .map_err(|e| Error::Internal(format!("rendering {template}: {e:#}")))
}
