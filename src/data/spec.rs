//! `--data` values: a local file or directory, or a Hugging Face dataset from the local cache,
//! `hf:ORG/NAME[@revision][/config][:split]`.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// The split read when an `hf:` spec names none.
pub const DEFAULT_SPLIT: &str = "train";

/// One parsed `--data` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// A file, or a directory meaning `<dir>/train.json`.
    Local(PathBuf),
    /// A dataset repo in the Hugging Face cache.
    Hub {
        /// `ORG/NAME`.
        repo: String,
        /// A branch, tag or 40-hex commit; `None` = `main`.
        revision: Option<String>,
        /// `None`: the default config (`default: true`, or the only one).
        config: Option<String>,
        /// `None`: [`DEFAULT_SPLIT`].
        split: Option<String>,
    },
}

fn bad(spec: &str, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "--data `{spec}`: {why} (expected hf:ORG/NAME[@revision][/config][:split])"
    ))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl DataSpec {
    /// Parses one `--data` value: `hf:` prefixed values as Hub specs, anything else as a path.
    ///
    /// In `hf:ORG/NAME@rev/config:split` the revision runs to the next `/` (a branch with `/` in
    /// its name is named by its commit instead); the split follows the last `:`.
    pub fn parse(spec: &str) -> Result<Self> {
        let Some(rest) = spec.strip_prefix("hf:") else {
            return Ok(DataSpec::Local(PathBuf::from(spec)));
        };
        let (rest, split) = match rest.rsplit_once(':') {
            Some((r, s)) => (r, Some(s)),
            None => (rest, None),
        };
        let mut parts = rest.splitn(3, '/');
        let org = parts.next().unwrap_or_default();
        let name_rev = parts.next().ok_or_else(|| bad(spec, "no dataset name"))?;
        let config = parts.next();
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (name_rev, None),
        };
        if !is_name(org) || !is_name(name) {
            return Err(bad(spec, "not a repo id ORG/NAME"));
        }
        if revision.is_some_and(|r| !is_name(r)) {
            return Err(bad(spec, "empty or malformed revision"));
        }
        if config.is_some_and(|c| !is_name(c)) {
            return Err(bad(spec, "empty or malformed config name"));
        }
        if split.is_some_and(|s| !is_name(s)) {
            return Err(bad(spec, "empty or malformed split name"));
        }
        Ok(DataSpec::Hub {
            repo: format!("{org}/{name}"),
            revision: revision.map(str::to_string),
            config: config.map(str::to_string),
            split: split.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            DataSpec::parse("data/x.jsonl").unwrap(),
            DataSpec::Local("data/x.jsonl".into())
        );
        assert_eq!(
            DataSpec::parse("hf:o/n").unwrap(),
            DataSpec::Hub {
                repo: "o/n".into(),
                revision: None,
                config: None,
                split: None
            }
        );
        assert_eq!(
            DataSpec::parse("hf:o/n@v1.0/chat:test").unwrap(),
            DataSpec::Hub {
                repo: "o/n".into(),
                revision: Some("v1.0".into()),
                config: Some("chat".into()),
                split: Some("test".into())
            }
        );
        assert_eq!(
            DataSpec::parse("hf:o/n:validation").unwrap(),
            DataSpec::Hub {
                repo: "o/n".into(),
                revision: None,
                config: None,
                split: Some("validation".into())
            }
        );
        for bad in [
            "hf:o",
            "hf:o/",
            "hf:/n",
            "hf:o/n@",
            "hf:o/n/",
            "hf:o/n:",
            "hf:o/n/a/b",
            "hf:../n",
        ] {
            assert!(DataSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
