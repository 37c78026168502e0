//! The one entry point training reads its data through: resolved local files in, typed records
//! and a manifest (what was read: each file's size, sha256 and row count) out.

use crate::data::files::read_rows;
use crate::data::schema::{detect_file, records, Record, Schema};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One file a dataset was read from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// Rows taken from it (after `max_examples`).
    pub rows: usize,
}

/// What a dataset was made of: the `--data` values, the schema, the files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataManifest {
    pub spec: Vec<String>,
    pub schema: Schema,
    pub files: Vec<DataFile>,
}

/// Training records, in file then row order.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub records: Vec<Record>,
    pub manifest: DataManifest,
}

/// The file a local `--data` entry names: the path itself, or for a directory `<dir>/train.json`
/// (the LLM-Adapters layout, one folder per task); a missing one refused.
pub fn local_data_file(entry: &Path) -> Result<PathBuf> {
    let f = if entry.is_dir() {
        entry.join("train.json")
    } else {
        entry.to_path_buf()
    };
    if f.is_file() {
        Ok(f)
    } else {
        Err(Error::io(
            &f,
            std::io::Error::new(std::io::ErrorKind::NotFound, "training data not found"),
        ))
    }
}

/// Reads `files` (already-resolved local files; a directory means `<dir>/train.json`), each cut
/// at `max_examples` rows. Every file must hold one schema, and all files the same one; the
/// first bad row is refused naming the file, the row (0-based) and the field.
pub fn load_dataset(
    spec: &[String],
    files: &[PathBuf],
    max_examples: Option<usize>,
) -> Result<Dataset> {
    if files.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no training data files (--data {})",
            spec.join(" ")
        )));
    }
    let mut all = Vec::new();
    let mut manifest_files = Vec::new();
    let mut schema: Option<(Schema, PathBuf)> = None;
    for entry in files {
        let path = local_data_file(entry)?;
        let mut rows = read_rows(&path)?;
        let s = detect_file(&path, &rows)?;
        match &schema {
            Some((first, first_path)) if *first != s => {
                return Err(Error::InvalidArgument(format!(
                    "training files of different schemas: {} is {first} {} but {} is {s} {}",
                    first_path.display(),
                    first.fields(),
                    path.display(),
                    s.fields()
                )))
            }
            Some(_) => {}
            None => schema = Some((s, path.clone())),
        }
        if let Some(n) = max_examples {
            rows.truncate(n);
        }
        let recs = records(&path, s, rows)?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        manifest_files.push(DataFile {
            path: path.display().to_string(),
            bytes: meta.len(),
            sha256: crate::fsutil::sha256_file(&path)?,
            rows: recs.len(),
        });
        all.extend(recs);
    }
    let schema = schema.map(|(s, _)| s).expect("at least one file");
    Ok(Dataset {
        records: all,
        manifest: DataManifest {
            spec: spec.to_vec(),
            schema,
            files: manifest_files,
        },
    })
}
