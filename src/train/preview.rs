//! `tsd data preview`: the first examples of a data set as the model will see them in `tsd train`
//! — the same reading, tokenization, loss mask and length cut ([`super::prepare`]) — as a record
//! that `render::data` prints and `--json` writes.

use super::data::IGNORE_INDEX;
use super::prepare::{prepare, DataPlan, ModelTokenizer};
use crate::error::Result;
use crate::model::tokenizer::decode;
use crate::run::record::DataRecord;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of [`PreviewRecord`]'s JSON; bumped when a field changes meaning.
pub const PREVIEW_SCHEMA_VERSION: u32 = 1;

/// One example as training sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewExample {
    /// The data file (as the manifest names it) and the row in it, 0-based.
    pub file: String,
    pub row: usize,
    /// Token ids after the cut, and the labels: the id where the token carries loss, -100 where not.
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// 1 where the token carries loss (`labels != -100`).
    pub loss_mask: Vec<u8>,
    /// Each token's text (special tokens included), in order.
    pub tokens: Vec<String>,
    /// Length before the cut; `truncated` when it was longer than `max_length`.
    pub untruncated_tokens: usize,
    pub truncated: bool,
    /// No label left after the cut: TRL drops such an example, and so does `tsd train`.
    pub dropped: bool,
}

/// The preview record: the data's manifest and tokenization settings, and its first examples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewRecord {
    pub schema_version: u32,
    /// The model as given (`--model`).
    pub model: String,
    pub data: DataRecord,
    /// Examples in the data (all of them were tokenized) and how many are shown.
    pub total_examples: usize,
    pub truncated_examples: usize,
    pub examples: Vec<PreviewExample>,
}

/// Reads and tokenizes the data as `tsd train` would for the model at `path` (given as `model`),
/// and keeps its first `limit` examples.
pub fn preview(plan: &DataPlan, model: &str, path: &Path, limit: usize) -> Result<PreviewRecord> {
    let mt = ModelTokenizer::load(path, plan.template_file)?;
    let p = prepare(plan, &mt)?;
    let max_length = p.data.max_length;
    let examples = p
        .examples
        .iter()
        .zip(&p.origins)
        .take(limit)
        .map(|(e, &(f, row))| {
            let t = &e.tokenized;
            let tokens = t
                .input_ids
                .iter()
                .map(|&id| decode(&mt.tok, &[id], false))
                .collect::<Result<Vec<_>>>()?;
            Ok(PreviewExample {
                file: p.data.manifest.files[f].path.clone(),
                row,
                input_ids: t.input_ids.clone(),
                labels: t.labels.clone(),
                loss_mask: t
                    .labels
                    .iter()
                    .map(|&l| u8::from(l != IGNORE_INDEX))
                    .collect(),
                tokens,
                untruncated_tokens: e.untruncated,
                truncated: e.untruncated > max_length,
                dropped: e.dropped,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PreviewRecord {
        schema_version: PREVIEW_SCHEMA_VERSION,
        model: model.to_string(),
        total_examples: p.examples.len(),
        truncated_examples: p
            .examples
            .iter()
            .filter(|e| e.untruncated > max_length)
            .count(),
        data: p.data,
        examples,
    })
}
