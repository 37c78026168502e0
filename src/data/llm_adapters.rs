//! The LLM-Adapters dataset as its repository's `dataset/` folder holds it: a JSON list of
//! `{instruction, input, output, answer}` per file, one folder per task (`<task>/train.json`,
//! `<task>/test.json`).

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// One LLM-Adapters example. `input` is empty for all commonsense tasks; `answer` is the label
/// the evaluation compares against (`answer2`, `true`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub instruction: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub input: String,
    pub output: String,
    #[serde(default, deserialize_with = "answer_as_string")]
    pub answer: Option<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Answers are strings in the commonsense sets but numbers in the math ones: keep their text.
fn answer_as_string<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// Reads a JSON list of examples (`[{instruction, input, output, answer}, …]`); unknown fields
/// are ignored. Errors name the file and, for a bad element, its index.
pub fn load_examples(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let serde_json::Value::Array(items) = value else {
        let found = match value {
            serde_json::Value::Object(_) => "an object",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(Error::Config {
            path: path.to_path_buf(),
            reason: format!(
                "expected a JSON list of examples ({{instruction, input, output, answer}}), found {found}"
            ),
        });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                reason: format!("example #{i}: {e}"),
            })
        })
        .collect()
}

/// A task's test set in a data directory of the LLM-Adapters layout: `<dir>/<task>/test.json`.
pub fn test_file(dir: &Path, task: &str) -> PathBuf {
    dir.join(task).join("test.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn real_arc_easy_example_loads() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/llm-adapters/ARC-Easy/train-head.json");
        let examples = load_examples(&path).unwrap();
        assert_eq!(examples.len(), 3);
        assert_eq!(examples[0].answer.as_deref(), Some("answer2"));
        assert_eq!(examples[0].output, "the correct answer is answer2");
        assert!(examples.iter().all(|e| e.input.is_empty()));
    }

    #[test]
    fn load_examples_reports_bad_files_and_tolerates_extra_fields() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_examples(&dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let err = load_examples(&write(dir.path(), "bad.json", "[{\"instruction\": ")).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
        let err =
            load_examples(&write(dir.path(), "obj.json", r#"{"instruction": "x"}"#)).unwrap_err();
        assert!(
            err.to_string().contains("expected a JSON list") && err.to_string().contains("object"),
            "{err}"
        );
        let err = load_examples(&write(
            dir.path(),
            "field.json",
            r#"[{"instruction": "a", "output": "b"}, {"output": "b"}]"#,
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("example #1") && err.to_string().contains("instruction"),
            "{err}"
        );
        let ok = load_examples(&write(
            dir.path(),
            "ok.json",
            r#"[{"instruction": "a", "output": "b", "extra": [1]},
                {"instruction": "c", "input": null, "output": "d", "answer": 18.5},
                {"instruction": "e", "input": "f", "output": "g", "answer": "true"}]"#,
        ))
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!((ok[0].input.as_str(), ok[0].answer.as_deref()), ("", None));
        assert_eq!(
            (ok[1].input.as_str(), ok[1].answer.as_deref()),
            ("", Some("18.5"))
        );
        assert_eq!(
            (ok[2].input.as_str(), ok[2].answer.as_deref()),
            ("f", Some("true"))
        );
        assert!(load_examples(&write(dir.path(), "empty.json", "[]"))
            .unwrap()
            .is_empty());
    }
}
