//! The loglik shortcut: when every label continuation shares all its tokens but the last (the
//! default tokenizer's ` answer1` … ` answer5`), one causal forward pass over `prompt + shared
//! prefix` gives every label's score exactly: the prefix tokens' log-probabilities are common to
//! all labels, and the last position's distribution gives each label's last token. Examples are
//! right-padded into batches (causal attention: a real token never sees the padding after it).

use super::PromptTokenizer;
use super::{loglik_inputs, loglik_prediction, loglik_result, target_logprobs, TaskResult};
use crate::data::Example;
use crate::data::Task;
use crate::error::Result;
use crate::model::Llama;
use crate::nn::ForwardCtx;
use candle_core::Tensor;

/// Examples per forward pass in [`eval_loglik_shared_prefix`]: prompts of similar length are
/// grouped, each padded to the longest of its group. Not tuned by measurement.
pub const LOGLIK_BATCH: usize = 8;

/// Whether the continuations `[n_labels][T_i]` have one length and differ only in the last token.
pub fn shares_all_but_last(conts: &[Vec<u32>]) -> bool {
    let Some(first) = conts.first() else {
        return false;
    };
    !first.is_empty()
        && conts
            .iter()
            .all(|c| c.len() == first.len() && c[..c.len() - 1] == first[..first.len() - 1])
}

/// The loglik protocol through the shortcut, `batch` examples per forward pass. The caller has
/// checked [`shares_all_but_last`] on the task's continuations (they do not depend on the example).
pub(crate) fn eval_loglik_shared_prefix(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    batch: usize,
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let dev = model.device();
    let ctx = ForwardCtx::eval();
    let mut inputs = Vec::with_capacity(examples.len());
    let mut truncated = 0;
    for ex in examples {
        let (prompt, conts, cut) = loglik_inputs(model.max_positions(), tok, task, ex)?;
        truncated += cut as usize;
        inputs.push((prompt, conts));
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| inputs[i].0.len());
    let mut preds = vec![None; examples.len()];
    for chunk in order.chunks(batch.max(1)) {
        // Row e: prompt_e + the shared prefix (all of a continuation but its last token).
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| {
                let (p, c) = &inputs[i];
                let prefix = &c[0][..c[0].len() - 1];
                p.iter().chain(prefix).copied().collect()
            })
            .collect();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let b = seqs.len();
        let mut ids = vec![0u32; b * t];
        for (e, s) in seqs.iter().enumerate() {
            ids[e * t..e * t + s.len()].copy_from_slice(s);
        }
        let h = model.final_hidden(&model.embed(&Tensor::from_vec(ids, (b, t), dev)?)?, 0, &ctx)?;
        let hd = h.dim(2)?;
        // Continuation token j of every label is predicted at position len_e − L + j.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (e, &i) in chunk.iter().enumerate() {
            let conts = &inputs[i].1;
            let l = conts[0].len();
            let start = e * t + seqs[e].len() - l;
            for c in conts {
                for (j, &tok_id) in c.iter().enumerate() {
                    rows.push((start + j) as u32);
                    targets.push(tok_id);
                }
            }
        }
        let m = rows.len();
        let sel = h
            .reshape((b * t, hd))?
            .index_select(&Tensor::from_vec(rows, m, dev)?, 0)?;
        let picked = target_logprobs(model, &sel, targets)?;
        let per = picked.len() / b;
        for (e, &i) in chunk.iter().enumerate() {
            preds[i] = Some(loglik_prediction(
                task,
                i,
                &examples[i],
                &inputs[i].1,
                &picked[e * per..(e + 1) * per],
            ));
            progress();
        }
    }
    Ok(loglik_result(
        task,
        preds.into_iter().flatten().collect(),
        truncated,
    ))
}
