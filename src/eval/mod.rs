//! Commonsense evaluation (README, Definitions: commonsense protocol): the scorers of both
//! protocols — the log-likelihood scorer (pick the label whose continuation the model finds most
//! probable) and beam-search generation — and the one task loop, [`evaluate`] (see [`plan`]). Numbers from `loglik` must be labelled as such:
//! it cannot see the invalid-label failures that the `generate` protocol measures.

pub mod evaluator;
pub mod generate;
pub mod merge;
pub mod plan;
pub mod prepared;
pub mod prompts;
pub mod shortcut;

pub use evaluator::{
    BeamSettings, EvalProgress, EvalSettings, Evaluation, Evaluator, LoglikPath, LowerLayers,
    ProtocolRun, TaskSet,
};
pub use plan::{evaluate, AdapterChoice, EvalPlan, EvalRecord};

use crate::adapter::Adapter;
#[cfg(test)]
use crate::data::task;
use crate::data::Task;
use crate::data::{extract_answer, response_text, Example, Protocol};
use crate::error::{Error, Result};
use crate::model::tokenizer::encode_plain;
use crate::model::Llama;
use crate::nn::ForwardCtx;
use candle_core::{DType, Tensor};
pub use prompts::PromptTokenizer;
use serde::{Deserialize, Serialize};

/// One label's score under the loglik protocol, as lm-eval logs a loglikelihood request's
/// response (`[loglik, is_greedy]`) plus the token count that length normalisation needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LabelScore {
    pub label: String,
    /// `Σ log p(token | everything before it)` over the continuation's tokens (natural log).
    pub loglik: f64,
    /// Continuation tokens scored (`the correct answer is <label>`, no special tokens).
    pub tokens: usize,
    /// Whether every continuation token is the model's most probable next token.
    pub greedy: bool,
}

/// One scored example.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prediction {
    pub index: usize,
    pub answer: String,
    pub prediction: Option<String>,
    pub correct: bool,
    /// Every label's score, in the task's label order (loglik protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelScore>,
    /// The generated response (generate protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Accuracy on one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub protocol: Protocol,
    pub examples: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub unparseable: usize,
    /// Examples whose prompt was cut from the left to fit the model's positions.
    pub truncated: usize,
    pub predictions: Vec<Prediction>,
}

/// Applies a PEFT adapter (LoRA or LoRA-Dash) to the model and merges it into the weights.
pub fn apply_adapter(model: &mut Llama, adapter: &Adapter) -> Result<()> {
    for m in &adapter.modules {
        if m.dora_magnitude.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{}: DoRA adapters cannot be applied exactly by tsd",
                m.module
            )));
        }
        let lin = model
            .linears_mut()
            .find(|l| l.module == m.module)
            .ok_or_else(|| Error::MissingTensor {
                context: "model (applying the adapter)".into(),
                tensor: m.module.clone(),
            })?;
        lin.add_lora(m.r, m.alpha, adapter.config.use_rslora, 0)?;
        lin.load_module_adapter(m)?;
        if let Some(l) = lin.lora.as_mut() {
            l.scaling = m.scaling;
        }
        lin.merge()?;
    }
    Ok(())
}

pub use prepared::{eval_loglik, eval_loglik_general};

/// The loglik protocol computed the plain way, as a reference for [`eval_loglik`]: for each label
/// `L`, the summed log-probability of the continuation `the correct answer is L` after the
/// evaluation prompt, every label's full sequence (prompt included) run as one batch; the argmax
/// is the prediction. Costs `n_labels ×` the prompt; tests check the cached path against it.
pub fn eval_loglik_full_sequences(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let mut preds = Vec::new();
    let mut truncated = 0;
    let ctx = ForwardCtx::eval();
    for (index, ex) in examples.iter().enumerate() {
        let (prompt, conts, cut) = loglik_inputs(model.max_positions(), tok, task, ex)?;
        truncated += cut as usize;
        let t = prompt.len() + conts.iter().map(Vec::len).max().unwrap_or(0);
        let n = conts.len();
        let mut ids = vec![0u32; n * t];
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, c) in conts.iter().enumerate() {
            let seq: Vec<u32> = prompt.iter().chain(c.iter()).copied().collect();
            ids[i * t..i * t + seq.len()].copy_from_slice(&seq);
            for (j, &tok_id) in c.iter().enumerate() {
                rows.push((i * t + prompt.len() + j - 1) as u32);
                targets.push(tok_id);
            }
        }
        let dev = model.device();
        let ids = Tensor::from_vec(ids, (n, t), dev)?;
        let h = model.final_hidden(&model.embed(&ids)?, 0, &ctx)?;
        let hd = h.dim(2)?;
        let m = rows.len();
        let sel = h
            .reshape((n * t, hd))?
            .index_select(&Tensor::from_vec(rows, m, dev)?, 0)?;
        let picked = target_logprobs(model, &sel, targets)?;
        preds.push(loglik_prediction(task, index, ex, &conts, &picked));
        progress();
    }
    Ok(loglik_result(task, preds, truncated))
}

/// `log p(targets[i] | row i)` from normalised final hidden states `[m, H]` (LM head, log-softmax
/// in f32, gather), and whether `targets[i]` is the row's argmax: `m` pairs.
pub(crate) fn target_logprobs(
    model: &Llama,
    rows: &Tensor,
    targets: Vec<u32>,
) -> Result<Vec<(f32, bool)>> {
    let m = targets.len();
    let logp = candle_nn::ops::log_softmax(&model.logits(rows)?.to_dtype(DType::F32)?, 1)?;
    let best: Vec<u32> = logp.argmax(1)?.to_vec1()?;
    let picked: Vec<f32> = logp
        .gather(
            &Tensor::from_vec(targets.clone(), (m, 1), model.device())?,
            1,
        )?
        .flatten_all()?
        .to_vec1()?;
    Ok(picked
        .into_iter()
        .zip(targets.iter().zip(&best).map(|(t, b)| t == b))
        .collect())
}

/// The prompt tokens (cut from the left to fit `max_positions`, flagged) and each label's
/// continuation tokens.
///
/// The prompt is encoded as the `generate` protocol and LLM-Adapters encode it, with the
/// tokenizer's special tokens (a LLaMA tokenizer's BOS first); a continuation is encoded without
/// them, so no BOS lands in the middle of a scored sequence. lm-eval's HF models encode the
/// continuation the same way; they also leave special tokens off the context unless asked
/// (`add_bos_token`), which tsd does not follow, so that both protocols see one prompt. Prompt
/// and continuation are encoded apart (lm-eval encodes them joined and splits the ids), so a
/// merge across the boundary is never formed: the prompt ends in spaces, the continuation in
/// `the correct answer is <label>`.
pub(crate) fn loglik_inputs(
    max_positions: usize,
    tok: &PromptTokenizer,
    task: &Task,
    ex: &Example,
) -> Result<(Vec<u32>, Vec<Vec<u32>>, bool)> {
    let mut prompt = tok.prompt_ids(ex)?;
    let conts: Vec<Vec<u32>> = task
        .labels
        .iter()
        .map(|l| encode_plain(tok, &format!("the correct answer is {l}")))
        .collect::<Result<_>>()?;
    let longest = conts.iter().map(Vec::len).max().unwrap_or(0);
    let room = max_positions.saturating_sub(longest).max(1);
    let cut = prompt.len() > room;
    if cut {
        // Keep the end: the question and "### Response:" matter, the preamble least.
        prompt.drain(..prompt.len() - room);
    }
    Ok((prompt, conts, cut))
}

/// One example's loglik prediction from the log-probability (and argmax flag) of every
/// continuation token, concatenated in label order (`picked.len() = Σ conts[i].len()`).
pub(crate) fn loglik_prediction(
    task: &Task,
    index: usize,
    ex: &Example,
    conts: &[Vec<u32>],
    picked: &[(f32, bool)],
) -> Prediction {
    let mut labels: Vec<LabelScore> = Vec::with_capacity(conts.len());
    let mut at = 0;
    for (c, l) in conts.iter().zip(task.labels) {
        let mine = &picked[at..at + c.len()];
        labels.push(LabelScore {
            label: l.to_string(),
            loglik: mine.iter().map(|&(x, _)| x as f64).sum(),
            tokens: c.len(),
            greedy: mine.iter().all(|&(_, g)| g),
        });
        at += c.len();
    }
    let best = (0..labels.len())
        .max_by(|&a, &b| labels[a].loglik.total_cmp(&labels[b].loglik))
        .expect("labels");
    let prediction = task.labels[best].to_string();
    let answer = ex.answer.clone().unwrap_or_default();
    Prediction {
        index,
        correct: prediction == answer,
        answer,
        prediction: Some(prediction),
        labels,
        output: None,
    }
}

pub(crate) fn loglik_result(task: &Task, preds: Vec<Prediction>, truncated: usize) -> TaskResult {
    let correct = preds.iter().filter(|p| p.correct).count();
    TaskResult {
        task: task.name.into(),
        protocol: Protocol::Loglik,
        examples: preds.len(),
        correct,
        accuracy: correct as f64 / preds.len().max(1) as f64,
        unparseable: 0,
        truncated,
        predictions: preds,
    }
}

/// The `generate` protocol (README, Definitions: commonsense protocol): beam search from the evaluation prompt, the text after
/// `### Response:`, the first label it contains; no label = wrong and unparseable. Examples run
/// [`generate::DEFAULT_BATCH`] at a time (see [`eval_generate_batched`]).
pub fn eval_generate(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    cfg: &generate::GenConfig,
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    eval_generate_batched(
        model,
        tok,
        task,
        examples,
        cfg,
        generate::DEFAULT_BATCH,
        progress,
    )
}

/// [`eval_generate`] with `batch` examples per beam search ([`generate::beam_search_batch`]).
/// Examples are grouped by prompt length (less padding); predictions keep the input order and do
/// not depend on `batch`.
pub fn eval_generate_batched(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    cfg: &generate::GenConfig,
    batch: usize,
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    if batch == 0 {
        return Err(Error::InvalidArgument(
            "batch size 0: at least one example per batch".into(),
        ));
    }
    let (prompts, truncated) = generate_prompts(model, tok, examples, cfg)?;
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); examples.len()];
    for chunk in generate_batches(&prompts, batch) {
        let group: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        for (&i, out) in chunk
            .iter()
            .zip(generate::beam_search_batch(model, &group, cfg)?)
        {
            outputs[i] = out;
            progress();
        }
    }
    generate_result(tok, task, examples, &outputs, truncated)
}

/// The evaluation prompts' token ids (the oldest tokens cut where a prompt leaves no room for
/// `cfg.max_new_tokens`) and how many were cut.
pub(crate) fn generate_prompts(
    model: &Llama,
    tok: &PromptTokenizer,
    examples: &[Example],
    cfg: &generate::GenConfig,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let mut truncated = 0;
    let room = model
        .max_positions()
        .saturating_sub(cfg.max_new_tokens)
        .max(1);
    let mut prompts = Vec::with_capacity(examples.len());
    for ex in examples {
        let mut prompt = tok.prompt_ids(ex)?;
        if prompt.len() > room {
            prompt.drain(..prompt.len() - room);
            truncated += 1;
        }
        prompts.push(prompt);
    }
    Ok((prompts, truncated))
}

/// The beam-search batches: example indices grouped by prompt length, `batch` at a time.
pub(crate) fn generate_batches(prompts: &[Vec<u32>], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// Scores generated token ids `outputs[i]` of `examples[i]` under the `generate` protocol.
pub(crate) fn generate_result(
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    outputs: &[Vec<u32>],
    truncated: usize,
) -> Result<TaskResult> {
    let mut preds = Vec::with_capacity(examples.len());
    let mut unparseable = 0;
    for (index, (ex, out)) in examples.iter().zip(outputs).enumerate() {
        let text = crate::model::tokenizer::decode(tok, out, true)?;
        let prediction = extract_answer(task, response_text(&text)).map(String::from);
        if prediction.is_none() {
            unparseable += 1;
        }
        let answer = ex.answer.clone().unwrap_or_default();
        preds.push(Prediction {
            index,
            correct: prediction.as_deref() == Some(answer.as_str()),
            answer,
            prediction,
            labels: Vec::new(),
            output: Some(text),
        });
    }
    let correct = preds.iter().filter(|p| p.correct).count();
    Ok(TaskResult {
        task: task.name.into(),
        protocol: Protocol::Generate,
        examples: preds.len(),
        correct,
        accuracy: correct as f64 / preds.len().max(1) as f64,
        unparseable,
        truncated,
        predictions: preds,
    })
}

#[cfg(test)]
mod bos_tests {
    use super::*;
    use crate::model::tokenizer::load_tokenizer;
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn ids(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    /// Regression (issue 10): with a tokenizer.json whose post-processor adds BOS, every label
    /// continuation began with BOS. Ids from Python `tokenizers` (scripts/make_bos_tokenizer.py).
    #[test]
    fn loglik_continuations_carry_no_bos_and_the_prompt_keeps_it() {
        let dir = fixture("tiny-llama-bos");
        let want: serde_json::Value = crate::fsutil::read_json(&dir.join("expected.json")).unwrap();
        let tok = PromptTokenizer::plain(load_tokenizer(&dir.join("tokenizer.json")).unwrap());
        let bos = want["bos_id"].as_u64().unwrap() as u32;
        let ex = Example {
            instruction: want["instruction"].as_str().unwrap().into(),
            input: String::new(),
            output: String::new(),
            answer: Some("true".into()),
        };
        let boolq = task("boolq").unwrap();
        let (prompt, conts, cut) = loglik_inputs(4096, &tok, &boolq, &ex).unwrap();
        assert!(!cut);
        assert_eq!(prompt, ids(&want["prompt_ids"]));
        assert_eq!(prompt[0], bos);
        for (label, c) in boolq.labels.iter().zip(&conts) {
            assert_eq!(c, &ids(&want["continuations"][label]), "{label}");
            assert!(!c.contains(&bos), "{label}: {c:?}");
            // The fixture does exercise the bug: the default encoding starts with BOS.
            assert_eq!(
                ids(&want["continuations_with_special_tokens"][label])[0],
                bos
            );
        }
    }

    /// The scored records count the continuation's tokens only, and the cached scorer gives the
    /// plain scorer's log-likelihoods with the BOS-adding tokenizer too.
    #[test]
    fn loglik_records_every_label_without_bos() {
        let dir = fixture("tiny-llama-bos");
        let tok = PromptTokenizer::plain(load_tokenizer(&dir.join("tokenizer.json")).unwrap());
        let src = crate::weights::open_path(&fixture("tiny-llama")).unwrap();
        let model = Llama::from_source(
            src.as_ref(),
            &candle_core::Device::Cpu,
            candle_core::DType::F32,
        )
        .unwrap();
        let examples: Vec<Example> = (0..2)
            .map(|i| Example {
                instruction: format!("Is {i} even?"),
                input: String::new(),
                output: String::new(),
                answer: Some(["true", "false"][i].into()),
            })
            .collect();
        let boolq = task("boolq").unwrap();
        let cached = eval_loglik(&model, &tok, &boolq, &examples, &|| {}).unwrap();
        let plain = eval_loglik_full_sequences(&model, &tok, &boolq, &examples, &|| {}).unwrap();
        for (c, p) in cached.predictions.iter().zip(&plain.predictions) {
            assert_eq!(c.labels.len(), 2);
            for (a, b) in c.labels.iter().zip(&p.labels) {
                let chars = "the correct answer is ".len() + a.label.len();
                assert_eq!(a.tokens, chars, "{}", a.label);
                assert_eq!(
                    (&a.label, a.tokens, a.greedy),
                    (&b.label, b.tokens, b.greedy)
                );
                assert!((a.loglik - b.loglik).abs() < 1e-3 * (1.0 + a.loglik.abs()));
            }
        }
    }
}
