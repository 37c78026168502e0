//! A run's data made ready, shared by `tsd train` and `tsd data preview`: `--data` resolved to
//! local files and read into records ([`crate::data::load_dataset`]), the model's tokenizer, EOS
//! and chat template loaded, the loss rule and length cut chosen for the data's schema, and every
//! record tokenized ([`super::sft`]). Preview shows exactly what training trains on.

use super::data::Tokenized;
use super::sft::{check_loss_on, default_loss_on, SftExample, SftTokenizer};
use crate::data::{DataManifest, Schema};
use crate::error::{Error, Result};
use crate::model::chat_template::{ChatTemplate, SpecialTokens};
use crate::model::tokenizer::{load_tokenizer, load_tokenizer_info, Tokenizer, TokenizerInfo};
use crate::run::config::{LossOn, ALPACA_CUTOFF, TRL_MAX_LENGTH};
use crate::run::record::DataRecord;
use std::path::Path;

/// What decides how data is read and tokenized (the data fields of a `TrainConfig`).
#[derive(Debug, Clone, Copy)]
pub struct DataPlan<'a> {
    /// `--data` entries: files, LLM-Adapters task directories, `hf:` datasets.
    pub data: &'a [String],
    pub max_examples: Option<usize>,
    pub cutoff_len: Option<usize>,
    pub loss_on: Option<LossOn>,
    pub train_on_inputs: bool,
    /// A chat template file used instead of the model's (`--template-file`).
    pub template_file: Option<&'a Path>,
}

/// A model's tokenizer with what training data needs from it.
pub struct ModelTokenizer {
    pub tok: Tokenizer,
    pub info: TokenizerInfo,
    pub template: Option<ChatTemplate>,
    /// The EOS token's text: the chat template's `eos_token` (tokenizer_config.json, as TRL's
    /// `tokenizer.eos_token`), else the text of the EOS id.
    pub eos_token: String,
    /// `max_position_embeddings` of the model's config, when it has one.
    pub positions: Option<usize>,
}

impl ModelTokenizer {
    /// Loads the tokenizer, special tokens, chat template and context length of the model at
    /// `path` (a model directory, tokenizer.json or GGUF). `template_file` (`--template-file`)
    /// replaces the model's chat template, seeing the model's special tokens.
    pub fn load(path: &Path, template_file: Option<&Path>) -> Result<Self> {
        let tok = load_tokenizer(path)?;
        let info = load_tokenizer_info(path)?;
        let mut template = ChatTemplate::load(path)?;
        if let Some(file) = template_file {
            template = Some(template_from_file(file, template.as_ref(), &tok, &info)?);
        }
        let eos_token = template
            .as_ref()
            .and_then(|t| t.special().eos_token.clone())
            .or_else(|| tok.id_to_token(info.eos))
            .ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                reason: format!("EOS id {} is not in the vocabulary", info.eos),
            })?;
        let positions = crate::weights::open_path(path)
            .ok()
            .and_then(|src| src.config_json())
            .and_then(|v| v.get("max_position_embeddings").and_then(|p| p.as_u64()))
            .map(|p| p as usize);
        Ok(ModelTokenizer {
            tok,
            info,
            template,
            eos_token,
            positions,
        })
    }
}

/// The chat template in `file`, seeing the model's special tokens: those of its own template, else
/// the text of its BOS and EOS ids.
fn template_from_file(
    file: &Path,
    model: Option<&ChatTemplate>,
    tok: &Tokenizer,
    info: &TokenizerInfo,
) -> Result<ChatTemplate> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let special = model.map_or_else(
        || SpecialTokens {
            bos_token: info.bos.and_then(|id| tok.id_to_token(id)),
            eos_token: tok.id_to_token(info.eos),
            pad_token: info.pad.and_then(|id| tok.id_to_token(id)),
            unk_token: None,
        },
        |t| t.special().clone(),
    );
    ChatTemplate::from_source(&text, special, &file.display().to_string())
}

/// Every record of the data tokenized, in data order, with where each came from.
pub struct Prepared {
    pub examples: Vec<SftExample>,
    /// `(file index into manifest.files, row in that file)` of each example (0-based).
    pub origins: Vec<(usize, usize)>,
    pub data: DataRecord,
}

impl Prepared {
    /// The examples that train, in data order (TRL drops those left with no label).
    pub fn kept(&self) -> Vec<Tokenized> {
        self.examples
            .iter()
            .filter(|e| !e.dropped)
            .map(|e| e.tokenized.clone())
            .collect()
    }
}

/// The length cut for `schema`: `--cutoff-len`, else LLM-Adapters' 256 or TRL's 1024 (at most the
/// model's positions).
pub fn max_length_for(schema: Schema, cutoff: Option<usize>, positions: Option<usize>) -> usize {
    cutoff.unwrap_or(match schema {
        Schema::Alpaca => ALPACA_CUTOFF,
        _ => positions.map_or(TRL_MAX_LENGTH, |p| p.min(TRL_MAX_LENGTH)),
    })
}

/// Reads and tokenizes the data of `plan` for the model whose tokenizer is `mt`.
pub fn prepare(plan: &DataPlan, mt: &ModelTokenizer) -> Result<Prepared> {
    let files = crate::provision::resolve_data(plan.data)?;
    let dataset = crate::data::load_dataset(plan.data, &files, plan.max_examples)?;
    let schema = dataset.manifest.schema;
    let loss_on = plan
        .loss_on
        .unwrap_or_else(|| default_loss_on(schema, plan.train_on_inputs));
    check_loss_on(schema, loss_on)?;
    let max_length = max_length_for(schema, plan.cutoff_len, mt.positions);
    let conversational = matches!(schema, Schema::Messages | Schema::ChatPromptCompletion);
    let sft = SftTokenizer {
        tok: &mt.tok,
        eos_id: mt.info.eos,
        eos_token: mt.eos_token.clone(),
        template: mt.template.as_ref(),
        max_length,
        loss_on,
    };
    let origins = origins(&dataset.manifest);
    let examples = dataset
        .records
        .iter()
        .zip(&origins)
        .map(|(r, &(f, row))| {
            sft.tokenize(r).map_err(|e| {
                let file = &dataset.manifest.files[f].path;
                match e {
                    Error::InvalidArgument(m) => {
                        Error::InvalidArgument(format!("{file} row {row} (0-based): {m}"))
                    }
                    other => Error::Config {
                        path: file.into(),
                        reason: format!("row {row} (0-based): {other}"),
                    },
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let dropped = examples.iter().filter(|e| e.dropped).count();
    let data = DataRecord {
        manifest: dataset.manifest,
        loss_on,
        max_length,
        dropped_examples: dropped,
        chat_template: conversational
            .then(|| {
                mt.template
                    .as_ref()
                    .map(|t| crate::fsutil::portable(t.origin()))
            })
            .flatten(),
    };
    Ok(Prepared {
        examples,
        origins,
        data,
    })
}

/// `(file, row)` of every record, from the manifest's per-file row counts.
fn origins(m: &DataManifest) -> Vec<(usize, usize)> {
    m.files
        .iter()
        .enumerate()
        .flat_map(|(f, file)| (0..file.rows).map(move |r| (f, r)))
        .collect()
}
