//! Commonsense evaluation (README, Definitions: commonsense protocol): task label sets and answer extraction as LLM-Adapters'
//! `commonsense_evaluate.py` does them, and the log-likelihood scorer (pick the label whose
//! continuation the model finds most probable). Numbers from `loglik` must be labelled as such:
//! it cannot see the invalid-label failures that the `generate` protocol measures.

pub mod generate;
pub mod prepared;

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::model::tokenizer::{encode, Tokenizer};
use crate::model::Llama;
use crate::nn::ForwardCtx;
use crate::train::data::{eval_prompt, Example};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// A commonsense task: its directory name and its label set, in the order `extract_answer` tries.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Task {
    pub name: &'static str,
    pub labels: &'static [&'static str],
}

const ANSWERS: &[&str] = &["answer1", "answer2", "answer3", "answer4", "answer5"];

/// The eight LLM-Adapters commonsense tasks.
pub const TASKS: &[Task] = &[
    Task {
        name: "boolq",
        labels: &["true", "false"],
    },
    Task {
        name: "piqa",
        labels: &["solution1", "solution2"],
    },
    Task {
        name: "social_i_qa",
        labels: ANSWERS,
    },
    Task {
        name: "hellaswag",
        labels: &["ending1", "ending2", "ending3", "ending4"],
    },
    Task {
        name: "winogrande",
        labels: &["option1", "option2"],
    },
    Task {
        name: "ARC-Easy",
        labels: ANSWERS,
    },
    Task {
        name: "ARC-Challenge",
        labels: ANSWERS,
    },
    Task {
        name: "openbookqa",
        labels: ANSWERS,
    },
];

/// A task by name (case-insensitive; `arc-e`/`arc-c`/`obqa`/`siqa` accepted).
pub fn task(name: &str) -> Option<Task> {
    let n = name.to_ascii_lowercase();
    let canonical = match n.as_str() {
        "arc-e" | "arc_easy" | "arc-easy" => "ARC-Easy",
        "arc-c" | "arc_challenge" | "arc-challenge" => "ARC-Challenge",
        "obqa" => "openbookqa",
        "siqa" | "social_iqa" => "social_i_qa",
        _ => name,
    };
    TASKS
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(canonical))
        .copied()
}

/// The prediction in a generated response: the FIRST occurrence of any label of the task (what
/// `re.findall(r'a|b|…', text)[0]` returns), or None (counted wrong and unparseable).
pub fn extract_answer(task: &Task, text: &str) -> Option<&'static str> {
    let mut best: Option<(usize, &'static str)> = None;
    for &l in task.labels {
        if let Some(p) = text.find(l) {
            // Earliest start wins; at equal starts the regex alternation prefers the earlier label.
            if best.is_none_or(|(bp, _)| p < bp) {
                best = Some((p, l));
            }
        }
    }
    best.map(|b| b.1)
}

/// The text after `### Response:` (LLM-Adapters: `output.split("### Response:")[1].strip()`).
pub fn response_text(decoded: &str) -> &str {
    decoded
        .split("### Response:")
        .nth(1)
        .unwrap_or(decoded)
        .trim()
}

/// One scored example.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub index: usize,
    pub answer: String,
    pub prediction: Option<String>,
    pub correct: bool,
    /// Per-label log-probabilities of the continuation (loglik protocol).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<f64>,
    /// The generated response (generate protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Accuracy on one task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub protocol: &'static str,
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

pub use prepared::eval_loglik;

/// The loglik protocol computed the plain way, as a reference for [`eval_loglik`]: for each label
/// `L`, the summed log-probability of the continuation `the correct answer is L` after the
/// evaluation prompt, every label's full sequence (prompt included) run as one batch; the argmax
/// is the prediction. Costs `n_labels ×` the prompt; tests check the cached path against it.
pub fn eval_loglik_full_sequences(
    model: &Llama,
    tok: &Tokenizer,
    task: &Task,
    examples: &[Example],
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let mut preds = Vec::new();
    let mut truncated = 0;
    let ctx = ForwardCtx::eval();
    for (index, ex) in examples.iter().enumerate() {
        let (prompt, conts, cut) = loglik_inputs(model, tok, task, ex)?;
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
/// in f32, gather): `m` values.
pub(crate) fn target_logprobs(model: &Llama, rows: &Tensor, targets: Vec<u32>) -> Result<Vec<f32>> {
    let m = targets.len();
    let logp = candle_nn::ops::log_softmax(&model.logits(rows)?.to_dtype(DType::F32)?, 1)?;
    Ok(logp
        .gather(&Tensor::from_vec(targets, (m, 1), model.device())?, 1)?
        .flatten_all()?
        .to_vec1()?)
}

/// The prompt tokens (cut from the left to fit, flagged) and each label's continuation tokens.
pub(crate) fn loglik_inputs(
    model: &Llama,
    tok: &Tokenizer,
    task: &Task,
    ex: &Example,
) -> Result<(Vec<u32>, Vec<Vec<u32>>, bool)> {
    let mut prompt = encode(tok, &eval_prompt(&ex.instruction, Some(&ex.input)))?;
    let conts: Vec<Vec<u32>> = task
        .labels
        .iter()
        .map(|l| encode(tok, &format!("the correct answer is {l}")))
        .collect::<Result<_>>()?;
    let longest = conts.iter().map(Vec::len).max().unwrap_or(0);
    let room = model.max_positions().saturating_sub(longest).max(1);
    let cut = prompt.len() > room;
    if cut {
        // Keep the end: the question and "### Response:" matter, the preamble least.
        prompt.drain(..prompt.len() - room);
    }
    Ok((prompt, conts, cut))
}

/// One example's loglik prediction from the log-probabilities of every continuation token,
/// concatenated in label order (`picked.len() = Σ conts[i].len()`).
pub(crate) fn loglik_prediction(
    task: &Task,
    index: usize,
    ex: &Example,
    conts: &[Vec<u32>],
    picked: &[f32],
) -> Prediction {
    let mut scores: Vec<f64> = Vec::with_capacity(conts.len());
    let mut at = 0;
    for c in conts {
        scores.push(picked[at..at + c.len()].iter().map(|&x| x as f64).sum());
        at += c.len();
    }
    let best = (0..conts.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .expect("labels");
    let prediction = task.labels[best].to_string();
    let answer = ex.answer.clone().unwrap_or_default();
    Prediction {
        index,
        correct: prediction == answer,
        answer,
        prediction: Some(prediction),
        scores,
        output: None,
    }
}

pub(crate) fn loglik_result(task: &Task, preds: Vec<Prediction>, truncated: usize) -> TaskResult {
    let correct = preds.iter().filter(|p| p.correct).count();
    TaskResult {
        task: task.name.into(),
        protocol: "loglik",
        examples: preds.len(),
        correct,
        accuracy: correct as f64 / preds.len().max(1) as f64,
        unparseable: 0,
        truncated,
        predictions: preds,
    }
}

/// The `generate` protocol (README, Definitions: commonsense protocol): beam search from the evaluation prompt, the text after
/// `### Response:`, the first label it contains; no label = wrong and unparseable.
pub fn eval_generate(
    model: &Llama,
    tok: &Tokenizer,
    task: &Task,
    examples: &[Example],
    cfg: &generate::GenConfig,
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let mut preds = Vec::new();
    let mut truncated = 0;
    let mut unparseable = 0;
    for (index, ex) in examples.iter().enumerate() {
        let mut prompt = encode(tok, &eval_prompt(&ex.instruction, Some(&ex.input)))?;
        let room = model
            .max_positions()
            .saturating_sub(cfg.max_new_tokens)
            .max(1);
        if prompt.len() > room {
            prompt.drain(..prompt.len() - room);
            truncated += 1;
        }
        let out = generate::beam_search(model, &prompt, cfg)?;
        let text = crate::model::tokenizer::decode(tok, &out, true)?;
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
            scores: Vec::new(),
            output: Some(text),
        });
        progress();
    }
    let correct = preds.iter().filter(|p| p.correct).count();
    Ok(TaskResult {
        task: task.name.into(),
        protocol: "generate",
        examples: preds.len(),
        correct,
        accuracy: correct as f64 / preds.len().max(1) as f64,
        unparseable,
        truncated,
        predictions: preds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_label_in_the_text_wins() {
        let t = task("ARC-Easy").unwrap();
        assert_eq!(
            extract_answer(&t, "the correct answer is answer3, not answer1"),
            Some("answer3")
        );
        assert_eq!(extract_answer(&t, "I think answer1"), Some("answer1"));
        assert_eq!(extract_answer(&t, "no idea"), None);
        let b = task("boolq").unwrap();
        assert_eq!(
            extract_answer(&b, "the correct answer is false"),
            Some("false")
        );
        assert_eq!(task("obqa").unwrap().name, "openbookqa");
        assert!(task("mmlu").is_none());
        assert_eq!(
            response_text("prompt ### Response:\n   the correct answer is true  "),
            "the correct answer is true"
        );
    }
}
