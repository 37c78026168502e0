//! The shapes of training rows, detected per file from its first row as TRL 1.16's `SFTTrainer`
//! tells them apart (`trl/data_utils.py`: `is_conversational`, `is_conversational_from_value`,
//! `maybe_convert_to_chatml`), plus LLM-Adapters / Alpaca rows:
//!
//! | first row has | schema |
//! |---|---|
//! | `prompt` (and `completion`), `prompt` a list of `{role, …}` | [`Schema::ChatPromptCompletion`] |
//! | `prompt` (and `completion`) | [`Schema::PromptCompletion`] |
//! | `conversations: [{from, value}, …]` (ShareGPT) | [`Schema::Messages`], converted to `{role, content}` |
//! | `messages: [{role, …}, …]` | [`Schema::Messages`] |
//! | `text` | [`Schema::Text`] |
//! | `instruction` (and `output`) | [`Schema::Alpaca`] |
//!
//! in that order, as SFTTrainer's `tokenize_fn` tests `"prompt" in example` before the
//! conversational and text cases. When the first row is ShareGPT, every row's message lists
//! (`conversations`, `messages`, `prompt`, `completion`) get `from` → `role`, `value` →
//! `content`, as SFTTrainer then maps `maybe_convert_to_chatml` over the dataset.
//!
//! Every later row must have the first row's schema: the fields it needs, with their types.
//! Unknown columns are ignored; `null` counts as absent (Arrow fills absent keys with it). A
//! message is an object with a string `role`; its `content` is a string, a list of parts (kept as
//! it is) or absent/`null` (a tool-call turn). `tools` given as a JSON string is parsed, as TRL
//! does with `json.loads`.

use crate::data::files::type_name;
use crate::data::Example;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// A training file's row shape.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    Alpaca,
    Text,
    PromptCompletion,
    ChatPromptCompletion,
    Messages,
}

impl Schema {
    /// The snake_case name (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Schema::Alpaca => "alpaca",
            Schema::Text => "text",
            Schema::PromptCompletion => "prompt_completion",
            Schema::ChatPromptCompletion => "chat_prompt_completion",
            Schema::Messages => "messages",
        }
    }

    /// The schema as people name it (`tsd data preview`, `tsd train`, the run report).
    pub fn label(self) -> &'static str {
        match self {
            Schema::Alpaca => "LLM-Adapters (instruction/input/output)",
            Schema::Text => "text",
            Schema::PromptCompletion => "prompt/completion",
            Schema::ChatPromptCompletion => "conversational prompt/completion",
            Schema::Messages => "messages",
        }
    }

    /// The fields a row of this schema needs, for messages.
    pub fn fields(self) -> &'static str {
        match self {
            Schema::Alpaca => "{instruction, input, output}",
            Schema::Text => "{text}",
            Schema::PromptCompletion => "{prompt, completion} (strings)",
            Schema::ChatPromptCompletion => "{prompt, completion} (lists of messages)",
            Schema::Messages => "{messages} (or ShareGPT {conversations})",
        }
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One training row, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `instruction`, `input`, `output` (`answer` optional).
    Alpaca(Example),
    /// `{"text": …}`.
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    ChatPromptCompletion {
        prompt: Vec<Value>,
        completion: Vec<Value>,
        tools: Option<Value>,
    },
    /// Also ShareGPT `conversations` (`[{from, value}]`), converted as TRL's
    /// `maybe_convert_to_chatml` does.
    Messages {
        messages: Vec<Value>,
        tools: Option<Value>,
    },
}

impl Record {
    pub fn schema(&self) -> Schema {
        match self {
            Record::Alpaca(_) => Schema::Alpaca,
            Record::Text(_) => Schema::Text,
            Record::PromptCompletion { .. } => Schema::PromptCompletion,
            Record::ChatPromptCompletion { .. } => Schema::ChatPromptCompletion,
            Record::Messages { .. } => Schema::Messages,
        }
    }
}

/// A present, non-null field.
fn field<'a>(row: &'a Value, key: &str) -> Option<&'a Value> {
    row.get(key).filter(|v| !v.is_null())
}

/// TRL's `is_conversational_from_value`: a list whose first item is an object with `from` and
/// `value`.
fn is_from_value_list(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array)
        .and_then(|l| l.first())
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("from") && m.contains_key("value"))
}

/// The schema a row's keys say, or `None` when they match none.
pub fn detect(row: &Value) -> Option<Schema> {
    let has = |k: &str| field(row, k).is_some();
    if has("prompt") {
        // TRL takes any row with `prompt` as prompt-completion, conversational when the prompt
        // is a list of `{role, …}`; any list prompt is read as chat here, so that a malformed
        // message is refused by name rather than as a string.
        if field(row, "prompt").is_some_and(Value::is_array) {
            Some(Schema::ChatPromptCompletion)
        } else {
            Some(Schema::PromptCompletion)
        }
    } else if is_from_value_list(field(row, "conversations")) || has("messages") {
        Some(Schema::Messages)
    } else if has("text") {
        Some(Schema::Text)
    } else if has("instruction") {
        Some(Schema::Alpaca)
    } else {
        None
    }
}

/// The schema of a file's rows, from its first row.
pub fn detect_file(path: &Path, rows: &[Value]) -> Result<Schema> {
    let Some(first) = rows.first() else {
        return Err(Error::Config {
            path: path.to_path_buf(),
            reason: "the file holds no rows".into(),
        });
    };
    detect(first).ok_or_else(|| {
        let keys: Vec<&String> = first
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        Error::Config {
            path: path.to_path_buf(),
            reason: format!(
                "row 0 (0-based) has columns {keys:?}, which match no training-data schema; \
                 expected one of {}",
                [
                    Schema::Messages,
                    Schema::ChatPromptCompletion,
                    Schema::PromptCompletion,
                    Schema::Text,
                    Schema::Alpaca
                ]
                .map(|s| format!("{s} {}", s.fields()))
                .join(", ")
            ),
        }
    })
}

/// Every row of a file as a record of `schema`; the first bad row refused, by its 0-based index
/// and field (or, when it has another schema's shape, as a mix of schemas).
pub fn records(path: &Path, schema: Schema, rows: Vec<Value>) -> Result<Vec<Record>> {
    // SFTTrainer converts every row to ChatML when the first one is ShareGPT.
    let sharegpt = rows
        .first()
        .is_some_and(|r| is_from_value_list(field(r, "conversations")));
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            record(schema, &row, sharegpt).map_err(|(fld, why)| {
                let reason = match detect(&row) {
                    Some(other) if other != schema => format!(
                        "row {i} (0-based) is a {other} row {} but row 0 is {schema} {}: a file \
                         must hold one schema",
                        other.fields(),
                        schema.fields()
                    ),
                    _ => format!("row {i} (0-based), field `{fld}`: {why} (schema {schema})"),
                };
                Error::Config {
                    path: path.to_path_buf(),
                    reason,
                }
            })
        })
        .collect()
}

type FieldErr = (String, String);

fn string(row: &Value, key: &str) -> Result<String, FieldErr> {
    match field(row, key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err((key.into(), "missing".into())),
        Some(v) => Err((
            key.into(),
            format!("expected a string, found {}", type_name(v)),
        )),
    }
}

/// A non-empty list of messages: objects with a string `role`, `content` a string, a list or
/// absent; with `sharegpt`, `from` and `value` renamed first (`maybe_convert_to_chatml`).
fn messages(row: &Value, key: &str, sharegpt: bool) -> Result<Vec<Value>, FieldErr> {
    let list = match field(row, key) {
        Some(Value::Array(l)) => l.clone(),
        None => return Err((key.into(), "missing".into())),
        Some(v) => {
            return Err((
                key.into(),
                format!("expected a list of messages, found {}", type_name(v)),
            ))
        }
    };
    if list.is_empty() {
        return Err((key.into(), "an empty list of messages".into()));
    }
    list.into_iter()
        .enumerate()
        .map(|(j, mut m)| {
            let at = |what: &str| format!("{key}[{j}].{what}");
            let Value::Object(o) = &mut m else {
                return Err((
                    format!("{key}[{j}]"),
                    format!("expected a message object, found {}", type_name(&m)),
                ));
            };
            if sharegpt {
                // maybe_convert_to_chatml: `from` → `role`, `value` → `content`.
                if let Some(v) = o.remove("from") {
                    o.insert("role".into(), v);
                }
                if let Some(v) = o.remove("value") {
                    o.insert("content".into(), v);
                }
            }
            match o.get("role") {
                Some(Value::String(_)) => {}
                None => return Err((at("role"), "missing".into())),
                Some(v) => {
                    return Err((
                        at("role"),
                        format!("expected a string, found {}", type_name(v)),
                    ))
                }
            }
            match o.get("content") {
                None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
                Some(v) => {
                    return Err((
                        at("content"),
                        format!(
                            "expected a string or a list of parts, found {}",
                            type_name(v)
                        ),
                    ))
                }
            }
            Ok(m)
        })
        .collect()
}

/// `tools`: absent/null → `None`; a JSON string parsed; anything else kept.
fn tools(row: &Value) -> Result<Option<Value>, FieldErr> {
    match field(row, "tools") {
        None => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s).map(Some).map_err(|e| {
            (
                "tools".into(),
                format!("a string that is not valid JSON: {e}"),
            )
        }),
        Some(v) => Ok(Some(v.clone())),
    }
}

/// One row as a record of `schema`, or the field at fault and why.
fn record(schema: Schema, row: &Value, sharegpt: bool) -> Result<Record, FieldErr> {
    if !row.is_object() {
        return Err((
            "(row)".into(),
            format!("expected an object, found {}", type_name(row)),
        ));
    }
    Ok(match schema {
        Schema::Text => Record::Text(string(row, "text")?),
        Schema::PromptCompletion => Record::PromptCompletion {
            prompt: string(row, "prompt")?,
            completion: string(row, "completion")?,
        },
        Schema::ChatPromptCompletion => Record::ChatPromptCompletion {
            prompt: messages(row, "prompt", sharegpt)?,
            completion: messages(row, "completion", sharegpt)?,
            tools: tools(row)?,
        },
        Schema::Messages => {
            // maybe_convert_to_chatml renames `conversations` to `messages`.
            let key = if sharegpt && field(row, "messages").is_none() {
                "conversations"
            } else {
                "messages"
            };
            Record::Messages {
                messages: messages(row, key, sharegpt)?,
                tools: tools(row)?,
            }
        }
        Schema::Alpaca => {
            let input = match field(row, "input") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => {
                    return Err((
                        "input".into(),
                        format!("expected a string, found {}", type_name(v)),
                    ))
                }
            };
            let answer = match field(row, "answer") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(v) => Some(v.to_string()),
            };
            Record::Alpaca(Example {
                instruction: string(row, "instruction")?,
                input,
                output: string(row, "output")?,
                answer,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_are_detected_from_keys() {
        let cases = [
            (json!({"text": "a", "id": 1}), Some(Schema::Text)),
            (
                json!({"prompt": "a", "completion": "b"}),
                Some(Schema::PromptCompletion),
            ),
            (
                json!({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]}),
                Some(Schema::ChatPromptCompletion),
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}]}),
                Some(Schema::Messages),
            ),
            (
                json!({"conversations": [{"from": "human", "value": "a"}]}),
                Some(Schema::Messages),
            ),
            (
                json!({"instruction": "a", "input": "", "output": "b"}),
                Some(Schema::Alpaca),
            ),
            (json!({"question": "a"}), None),
        ];
        for (row, want) in cases {
            assert_eq!(detect(&row), want, "{row}");
        }
    }

    #[test]
    fn sharegpt_is_converted_and_tools_strings_parsed() {
        let rows = vec![json!({
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
            "tools": "[{\"type\": \"function\"}]"
        })];
        let r = records(Path::new("f.json"), Schema::Messages, rows).unwrap();
        assert_eq!(
            r[0],
            Record::Messages {
                messages: vec![
                    json!({"role": "human", "content": "hi"}),
                    json!({"role": "gpt", "content": "yo"})
                ],
                tools: Some(json!([{"type": "function"}])),
            }
        );
    }

    #[test]
    fn prompt_wins_as_in_trl_and_empty_lists_are_refused() {
        let p = Path::new("f.jsonl");
        let row = json!({"prompt": "a", "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(detect(&row), Some(Schema::PromptCompletion));
        let e = records(p, Schema::PromptCompletion, vec![json!({"prompt": "a"})])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 0 (0-based), field `completion`: missing"),
            "{e}"
        );
        let e = records(p, Schema::Messages, vec![json!({"messages": []})])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`messages`: an empty list"), "{e}");
        // `from`/`value` are renamed only when the first row is ShareGPT, as SFTTrainer does.
        let rows = vec![
            json!({"conversations": [{"from": "human", "value": "a"}]}),
            json!({"messages": [{"from": "gpt", "value": "b"}]}),
        ];
        let r = records(p, Schema::Messages, rows).unwrap();
        assert_eq!(
            r[1],
            Record::Messages {
                messages: vec![json!({"role": "gpt", "content": "b"})],
                tools: None
            }
        );
        let e = records(
            p,
            Schema::Messages,
            vec![json!({"messages": [{"from": "gpt", "value": "b"}]})],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("messages[0].role"), "{e}");
    }

    #[test]
    fn bad_rows_name_row_and_field() {
        let p = Path::new("f.jsonl");
        let rows = vec![json!({"text": "a"}), json!({"text": 3})];
        let e = records(p, Schema::Text, rows).unwrap_err().to_string();
        assert!(
            e.contains("f.jsonl") && e.contains("row 1 (0-based)") && e.contains("`text`"),
            "{e}"
        );
        let rows = vec![json!({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]})];
        let e = records(p, Schema::Messages, rows).unwrap_err().to_string();
        assert!(
            e.contains("row 0 (0-based)") && e.contains("messages[1].role"),
            "{e}"
        );
        let rows = vec![
            json!({"text": "a"}),
            json!({"prompt": "p", "completion": "c"}),
        ];
        let e = records(p, Schema::Text, rows).unwrap_err().to_string();
        assert!(
            e.contains("row 1 (0-based) is a prompt_completion row"),
            "{e}"
        );
    }
}
