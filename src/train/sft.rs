//! Training sequences from data records, token for token as TRL 1.16's `SFTTrainer` prepares them
//! (`_prepare_dataset`; `tests/fixtures/sft/` holds its outputs for the same rows), except the
//! LLM-Adapters (Alpaca) schema, which keeps LLM-Adapters' own `finetune.py` rules
//! ([`super::data::tokenize_example`]):
//! - `text`: the EOS token's text is appended unless the text already ends with it; the text is
//!   encoded with the tokenizer's special tokens (a BOS where its post-processor adds one);
//! - prompt/completion: the same EOS rule on the completion; prompt and prompt + completion are
//!   encoded alike; the completion starts where the two token sequences first differ (TRL's
//!   `common_prefix_length`, so a token merging across the boundary belongs to the completion);
//! - conversational data: the chat template rendered and encoded without special tokens
//!   (transformers' `apply_chat_template(tokenize=True)`: a template writing `bos_token` gets one
//!   BOS); for a conversational prompt/completion the prompt is rendered with the generation
//!   prompt and the completion starts at the common prefix as above;
//! - labels: the ids, `IGNORE_INDEX` outside the masks `--loss-on` selects; then the sequence is
//!   cut to its first `max_length` tokens and an example left with no label is dropped.

use super::data::{tokenize_example, Tokenized, IGNORE_INDEX};

use crate::data::{Record, Schema};
use crate::error::{Error, Result};
use crate::model::chat_template::{apply_chat_template, ChatTemplate, RenderOptions};
use crate::model::tokenizer::{encode, Tokenizer};
use crate::run::config::LossOn;
use serde_json::Value;

/// What tokenizing one record needs: the tokenizer, its EOS (id and text), the chat template
/// (conversational data only), the length cut and which tokens carry loss.
pub struct SftTokenizer<'a> {
    pub tok: &'a Tokenizer,
    pub eos_id: u32,
    /// The EOS token's text, appended to plain text and completions (TRL's `eos_token`).
    pub eos_token: String,
    pub template: Option<&'a ChatTemplate>,
    pub max_length: usize,
    pub loss_on: LossOn,
}

/// One record tokenized: the sequence before the length cut is `untruncated` tokens long;
/// `dropped` when no label survives the cut (TRL drops the example; tsd trains on it never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub tokenized: Tokenized,
    pub untruncated: usize,
    pub dropped: bool,
}

/// Refuses a `--loss-on` the schema has no span for (TRL raises the same cases).
pub fn check_loss_on(schema: Schema, loss_on: LossOn) -> Result<()> {
    let ok = match loss_on {
        LossOn::All => true,
        LossOn::Completion => schema != Schema::Text && schema != Schema::Messages,
        LossOn::Assistant => matches!(schema, Schema::Messages | Schema::ChatPromptCompletion),
    };
    if ok {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "--loss-on {} does not apply to {} data ({})",
        loss_on.as_str(),
        schema.label(),
        match loss_on {
            LossOn::Completion => "it has no prompt: use `all`, or `assistant` for conversations",
            _ => "only conversations have assistant turns: use `all` or `completion`",
        }
    )))
}

/// The loss default for a schema: TRL's (`completion_only_loss` on for prompt/completion data,
/// the whole sequence otherwise); LLM-Adapters data follows `--train-on-inputs`.
pub fn default_loss_on(schema: Schema, train_on_inputs: bool) -> LossOn {
    match schema {
        Schema::PromptCompletion | Schema::ChatPromptCompletion => LossOn::Completion,
        Schema::Alpaca if !train_on_inputs => LossOn::Completion,
        _ => LossOn::All,
    }
}

impl SftTokenizer<'_> {
    /// Tokenizes one record (see the module documentation for the rules).
    pub fn tokenize(&self, record: &Record) -> Result<SftExample> {
        let (ids, mask) = match record {
            Record::Alpaca(ex) => {
                let on_inputs = self.loss_on == LossOn::All;
                let t = tokenize_example(self.tok, self.eos_id, ex, self.max_length, on_inputs)?;
                // finetune.py keeps an example whose labels the cut masked entirely; its length
                // before the cut is the prompt's tokens (EOS is only added below the cut).
                let full = encode(self.tok, &crate::data::train_prompt(ex))?.len();
                return Ok(SftExample {
                    untruncated: full.max(t.input_ids.len()),
                    tokenized: t,
                    dropped: false,
                });
            }
            Record::Text(text) => (encode(self.tok, &self.with_eos(text))?, None),
            Record::PromptCompletion { prompt, completion } => {
                let full = format!("{prompt}{}", self.with_eos(completion));
                self.prompt_completion(encode(self.tok, prompt)?, encode(self.tok, &full)?)
            }
            Record::ChatPromptCompletion {
                prompt,
                completion,
                tools,
            } => self.chat_prompt_completion(prompt, completion, tools.as_ref())?,
            Record::Messages { messages, tools } => {
                let want = self.loss_on == LossOn::Assistant;
                let c = self.apply(messages, tools.as_ref(), false, want)?;
                (c.0, c.1)
            }
        };
        Ok(self.finish(ids, mask))
    }

    /// `text` with the EOS text appended unless it already ends with it (TRL's `add_eos`).
    fn with_eos(&self, text: &str) -> String {
        if text.ends_with(&self.eos_token) {
            text.to_string()
        } else {
            format!("{text}{}", self.eos_token)
        }
    }

    /// Ids of prompt + completion and, under `--loss-on completion`, the completion mask: 1 from
    /// the first token where the prompt's ids and the full ids differ.
    fn prompt_completion(&self, prompt: Vec<u32>, full: Vec<u32>) -> (Vec<u32>, Option<Vec<u8>>) {
        let start = common_prefix(&prompt, &full);
        let mask = (self.loss_on != LossOn::All)
            .then(|| (0..full.len()).map(|i| u8::from(i >= start)).collect());
        (full, mask)
    }

    fn chat_prompt_completion(
        &self,
        prompt: &[Value],
        completion: &[Value],
        tools: Option<&Value>,
    ) -> Result<(Vec<u32>, Option<Vec<u8>>)> {
        let (prompt_ids, _) = self.apply(prompt, tools, true, false)?;
        let all: Vec<Value> = prompt.iter().chain(completion).cloned().collect();
        let want = self.loss_on == LossOn::Assistant;
        let (ids, assistant) = self.apply(&all, tools, false, want)?;
        let (ids, completion_mask) = self.prompt_completion(prompt_ids, ids);
        // TRL applies every mask that is on: `completion_only_loss` (default on for this schema)
        // and, with `assistant_only_loss`, the assistant mask.
        let mask = match (completion_mask, assistant) {
            (Some(c), Some(a)) => Some(c.iter().zip(&a).map(|(x, y)| x & y).collect()),
            (c, a) => c.or(a),
        };
        Ok((ids, mask))
    }

    /// `apply_chat_template` of `messages`, with the assistant mask when asked for.
    fn apply(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        add_generation_prompt: bool,
        assistant_mask: bool,
    ) -> Result<(Vec<u32>, Option<Vec<u8>>)> {
        let template = self.template.ok_or_else(|| {
            Error::InvalidArgument(
                "conversational data needs a chat template, and the model has none (no \
                 chat_template in tokenizer_config.json, no chat_template.jinja, no GGUF \
                 tokenizer.chat_template)"
                    .into(),
            )
        })?;
        let opts = RenderOptions {
            add_generation_prompt,
            tools,
        };
        let c = apply_chat_template(self.tok, template, messages, &opts, assistant_mask)?;
        if assistant_mask && !c.assistant_mask.as_ref().is_some_and(|m| m.contains(&1)) {
            return Err(Error::InvalidArgument(
                "--loss-on assistant: a conversation has no assistant tokens".into(),
            ));
        }
        Ok((c.ids, c.assistant_mask))
    }

    /// Labels from the mask, then TRL's cut to the first `max_length` tokens.
    fn finish(&self, ids: Vec<u32>, mask: Option<Vec<u8>>) -> SftExample {
        let untruncated = ids.len();
        let labels: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| match &mask {
                Some(m) if m[i] == 0 => IGNORE_INDEX,
                _ => i64::from(id),
            })
            .take(self.max_length)
            .collect();
        let mut input_ids = ids;
        input_ids.truncate(self.max_length);
        let dropped = labels.iter().all(|&l| l == IGNORE_INDEX);
        SftExample {
            tokenized: Tokenized { input_ids, labels },
            untruncated,
            dropped,
        }
    }
}

/// Leading tokens two sequences share (TRL's `common_prefix_length`).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }

    #[test]
    fn loss_on_is_checked_against_the_schema() {
        assert!(check_loss_on(Schema::Text, LossOn::All).is_ok());
        assert!(check_loss_on(Schema::Text, LossOn::Completion).is_err());
        assert!(check_loss_on(Schema::Messages, LossOn::Assistant).is_ok());
        assert!(check_loss_on(Schema::Messages, LossOn::Completion).is_err());
        assert!(check_loss_on(Schema::PromptCompletion, LossOn::Assistant).is_err());
        assert!(check_loss_on(Schema::ChatPromptCompletion, LossOn::Assistant).is_ok());
        assert!(check_loss_on(Schema::Alpaca, LossOn::Completion).is_ok());
        assert_eq!(
            default_loss_on(Schema::PromptCompletion, true),
            LossOn::Completion
        );
        assert_eq!(default_loss_on(Schema::Messages, false), LossOn::All);
        assert_eq!(default_loss_on(Schema::Alpaca, false), LossOn::Completion);
    }
}
