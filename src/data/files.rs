//! Training-data files read into rows, one `serde_json::Value` object per row, as
//! `datasets.load_dataset("json" | "parquet", data_files=…)` reads them (`datasets` 5.2,
//! `packaged_modules/json/json.py`):
//!
//! - **JSON / JSON Lines** are told apart by content, not by extension: after an optional UTF-8
//!   BOM, a file whose first non-blank byte is `[` is one JSON list (of objects, each a row; of anything
//!   else, each item becomes `{"text": item}` as `datasets` does for a list of strings); any other
//!   file is JSON Lines, one object per line, blank lines skipped. A file holding one top-level
//!   object is read by `datasets` only with `field=`: [`read_rows_field`] takes that field's list.
//! - **Parquet** (`.parquet`, or a file starting with `PAR1`) through the `parquet` crate's row
//!   API: nested columns (a `messages` list of `{role, content}` structs, a nested `tools`) become
//!   nested JSON; `null` where a struct lacks a field, as Arrow gives it.
//!
//! JSON rows get every top-level key of their file, `null` where a row lacks it (Arrow's one schema
//! per file); nested objects stay as written, as `datasets` 5.2 keeps structs whose key sets
//! differ as JSON. Differences a training file is unlikely to meet: numbers keep their JSON type
//! (Arrow widens a column of ints and floats to floats), and `datasets` decides the nested rule
//! from its first 10 MB chunk only.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// How a data file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON list.
    Json,
    /// One JSON value per line.
    JsonLines,
    Parquet,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn config_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The format of a file: Parquet by extension or magic bytes, else JSON list or JSON Lines from
/// its first non-blank byte.
pub fn format_of(path: &Path) -> Result<FileFormat> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format_of_bytes(path, &bytes))
}

fn format_of_bytes(path: &Path, bytes: &[u8]) -> FileFormat {
    if path.extension().is_some_and(|e| e == "parquet") || bytes.starts_with(b"PAR1") {
        return FileFormat::Parquet;
    }
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    // `datasets` tests the first byte for `[`; a list after leading whitespace fails its JSON
    // Lines reader and is then read whole by pandas, as a list all the same.
    if body.trim_ascii_start().first() == Some(&b'[') {
        FileFormat::Json
    } else {
        FileFormat::JsonLines
    }
}

/// The rows of a JSON, JSON Lines or Parquet file, each a JSON object.
pub fn read_rows(path: &Path) -> Result<Vec<Value>> {
    read_rows_field(path, None)
}

/// [`read_rows`], or with `field` the rows of a JSON file holding one object whose `field` is the
/// list of rows (`datasets`' `field=`).
pub fn read_rows_field(path: &Path, field: Option<&str>) -> Result<Vec<Value>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let format = format_of_bytes(path, &bytes);
    if format == FileFormat::Parquet {
        if field.is_some() {
            return Err(config_err(path, "`field` applies to JSON files only"));
        }
        return parquet_rows(path);
    }
    let body = bytes.strip_prefix(BOM).unwrap_or(&bytes);
    let text = std::str::from_utf8(body).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: format!("not UTF-8: {e}"),
    })?;
    if let Some(field) = field {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let Value::Object(mut o) = v else {
            return Err(config_err(
                path,
                format!("field `{field}`: the file is not one JSON object"),
            ));
        };
        let Some(inner) = o.remove(field) else {
            let keys: Vec<&String> = o.keys().collect();
            return Err(config_err(
                path,
                format!("field `{field}` not found (keys: {keys:?})"),
            ));
        };
        let mut rows = list_rows(path, inner)?;
        fill_columns(&mut rows);
        return Ok(rows);
    }
    let mut rows = match format {
        FileFormat::Json => {
            let v: Value = serde_json::from_str(text).map_err(|e| Error::Json {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            list_rows(path, v)?
        }
        _ => json_lines(path, text)?,
    };
    fill_columns(&mut rows);
    Ok(rows)
}

/// Every row given every top-level key any row has (`null` where absent), as one Arrow table.
fn fill_columns(rows: &mut [Value]) {
    let mut keys = std::collections::BTreeSet::new();
    for r in rows.iter() {
        if let Value::Object(o) = r {
            keys.extend(o.keys().cloned());
        }
    }
    for r in rows.iter_mut() {
        if let Value::Object(o) = r {
            for k in &keys {
                o.entry(k.clone()).or_insert(Value::Null);
            }
        }
    }
}

/// A JSON list's items as rows: objects as they are, a list of anything else as `{"text": item}`
/// (`datasets` decides that from the first item).
fn list_rows(path: &Path, v: Value) -> Result<Vec<Value>> {
    let Value::Array(items) = v else {
        return Err(config_err(
            path,
            format!("expected a JSON list of rows, found {}", type_name(&v)),
        ));
    };
    let objects = items.first().is_none_or(Value::is_object);
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match (objects, item) {
            (true, o @ Value::Object(_)) => Ok(o),
            (true, other) => Err(config_err(
                path,
                format!(
                    "row {i} (0-based): expected a JSON object like row 0, found {}",
                    type_name(&other)
                ),
            )),
            (false, other) => {
                let mut m = Map::new();
                m.insert("text".into(), other);
                Ok(Value::Object(m))
            }
        })
        .collect()
}

/// JSON Lines: one object per non-blank line.
fn json_lines(path: &Path, text: &str) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            let hint = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(o)) => format!(
                    " (the file is one JSON object with keys {:?}: `datasets` reads such a file \
                     only with `field=`, naming the key that holds the list of rows)",
                    o.keys().collect::<Vec<_>>()
                ),
                _ => String::new(),
            };
            Error::Json {
                path: path.to_path_buf(),
                reason: format!("line {} (1-based) of JSON Lines: {e}{hint}", n + 1),
            }
        })?;
        if !v.is_object() {
            return Err(config_err(
                path,
                format!(
                    "line {} (1-based) of JSON Lines: expected a JSON object, found {}",
                    n + 1,
                    type_name(&v)
                ),
            ));
        }
        rows.push(v);
    }
    Ok(rows)
}

/// A JSON value's kind, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(feature = "parquet")]
fn parquet_rows(path: &Path) -> Result<Vec<Value>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: parquet::errors::ParquetError| {
        config_err(path, format!("not a readable Parquet file: {e}"))
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let iter = reader.get_row_iter(None).map_err(bad)?;
    let mut rows = Vec::new();
    for row in iter {
        rows.push(parquet_row(&row.map_err(bad)?));
    }
    Ok(rows)
}

#[cfg(not(feature = "parquet"))]
fn parquet_rows(path: &Path) -> Result<Vec<Value>> {
    Err(config_err(
        path,
        "this tsd was built without Parquet support (cargo feature `parquet`)",
    ))
}

#[cfg(feature = "parquet")]
fn parquet_row(row: &parquet::record::Row) -> Value {
    Value::Object(
        row.get_column_iter()
            .map(|(k, f)| (k.clone(), parquet_field(f)))
            .collect(),
    )
}

/// One Parquet value as `datasets` (Arrow → Python) gives it, for the types training data holds.
#[cfg(feature = "parquet")]
fn parquet_field(f: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => (*x).into(),
        Field::Short(x) => (*x).into(),
        Field::Int(x) => (*x).into(),
        Field::Long(x) => (*x).into(),
        Field::UByte(x) => (*x).into(),
        Field::UShort(x) => (*x).into(),
        Field::UInt(x) => (*x).into(),
        Field::ULong(x) => (*x).into(),
        Field::Float16(x) => num(f64::from(*x)),
        Field::Float(x) => num(f64::from(*x)),
        Field::Double(x) => num(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Group(r) => parquet_row(r),
        Field::ListInternal(l) => Value::Array(l.elements().iter().map(parquet_field).collect()),
        Field::MapInternal(m) => {
            // Arrow maps come to Python as lists of (key, value) pairs.
            let entries = m.entries();
            Value::Array(
                entries
                    .iter()
                    .map(|(k, v)| Value::Array(vec![parquet_field(k), parquet_field(v)]))
                    .collect(),
            )
        }
        // Bytes, decimals, dates and times: their display text (not training-data fields).
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn json_and_json_lines_are_told_apart_by_content() {
        let d = tempfile::tempdir().unwrap();
        let list = write(
            d.path(),
            "a.jsonl",
            "[{\"text\": \"a\"}, {\"text\": \"b\"}]",
        );
        assert_eq!(format_of(&list).unwrap(), FileFormat::Json);
        assert_eq!(read_rows(&list).unwrap().len(), 2);
        let lines = write(
            d.path(),
            "b.json",
            "{\"text\": \"a\"}\n\n  \n{\"text\": \"b\"}\n",
        );
        assert_eq!(format_of(&lines).unwrap(), FileFormat::JsonLines);
        assert_eq!(read_rows(&lines).unwrap().len(), 2);
        let bom = write(d.path(), "c.json", "\u{feff}[{\"text\": \"a\"}]");
        assert_eq!(read_rows(&bom).unwrap().len(), 1);
        let strings = write(d.path(), "d.json", "[\"x\", \"y\"]");
        assert_eq!(
            read_rows(&strings).unwrap()[1],
            serde_json::json!({"text": "y"})
        );
    }

    #[cfg(not(feature = "parquet"))]
    #[test]
    fn parquet_without_the_feature_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.parquet", "PAR1");
        let e = read_rows(&p).unwrap_err().to_string();
        assert!(
            e.contains("a.parquet") && e.contains("feature `parquet`"),
            "{e}"
        );
    }

    #[test]
    fn one_object_needs_a_field_and_bad_lines_are_named() {
        let d = tempfile::tempdir().unwrap();
        let obj = write(d.path(), "o.json", "{\n \"data\": [{\"text\": \"a\"}]\n}\n");
        let e = read_rows(&obj).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("field="), "{e}");
        assert_eq!(read_rows_field(&obj, Some("data")).unwrap().len(), 1);
        let e = read_rows_field(&obj, Some("rows")).unwrap_err().to_string();
        assert!(e.contains("`rows` not found"), "{e}");
        let bad = write(d.path(), "b.jsonl", "{\"text\": \"a\"}\n{\"text\": \n");
        let e = read_rows(&bad).unwrap_err().to_string();
        assert!(e.contains("b.jsonl") && e.contains("line 2"), "{e}");
    }
}
