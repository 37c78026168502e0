//! Loglik scoring for a grid of adapters that touch only the top layers: the frozen lower layers'
//! hidden states of every prompt and label continuation are computed once ([`prepare_loglik`]) and
//! each adapter then pays for layers `from..` only ([`eval_loglik_prepared`]). The prompt runs
//! once per example and the continuations attend to its keys and values, so an example costs
//! `T_prompt + Σ T_label` tokens instead of `n_labels · (T_prompt + T_label)`; when the labels differ
//! only in their last token (see [`super::shortcut`]), `T_prompt + T_label − 1`. Exact up to float
//! summation order: tests check the scores against [`super::eval_loglik_full_sequences`] and
//! [`eval_loglik_general`].
//!
//! The same for `generate` ([`prepare_generate`], [`eval_generate_prepared`]): each beam-search
//! batch's left-padded prompts run layers `0..from` once (their keys and values kept in a KV cache,
//! the hidden states entering `from` kept); each adapter runs the prefill's layers `from..` and then
//! the usual decode loop. Token for token what [`super::generate::beam_search_batch`] gives (a test
//! checks): the batches are the same and every layer computes the same ops on the same data.

use super::generate::{decode_batch, left_pad, GenConfig};
use super::PromptTokenizer;
use super::{
    generate_batches, generate_prompts, generate_result, loglik_inputs, loglik_prediction,
    loglik_result, target_logprobs, Prediction, TaskResult,
};
use crate::data::Example;
use crate::data::Task;
use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};
use candle_core::Tensor;

/// One example with its lower-layer states.
pub struct PreparedExample {
    index: usize,
    example: Example,
    /// Hidden states entering layer `from` for the prompt, `[1, T_prompt, H]`.
    prompt: Tensor,
    /// The same for each label continuation after the prompt but its last token, right-padded,
    /// `[n_labels, T_max - 1, H]`; with the shortcut (labels differing only in the last token) the
    /// one shared prefix, `[1, T - 1, H]`. None when that is empty (single-token labels).
    options: Option<Tensor>,
    /// Whether `options` holds the shared prefix only.
    shared: bool,
    conts: Vec<Vec<u32>>,
}

/// A task's examples ready for [`eval_loglik_prepared`].
pub struct PreparedTask {
    pub task: Task,
    /// The first layer that is recomputed per adapter.
    pub from: usize,
    pub truncated: usize,
    items: Vec<PreparedExample>,
}

impl PreparedTask {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Runs layers `0..from` of `model` (which must carry no adapter there) over each example's
/// prompt and continuations. `from = 0` stores embeddings only.
pub fn prepare_loglik(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    from: usize,
    progress: &dyn Fn(),
) -> Result<PreparedTask> {
    if from > model.num_layers() {
        return Err(Error::InvalidArgument(format!(
            "prepare_loglik: layer {from} past the model's {}",
            model.num_layers()
        )));
    }
    let mut items = Vec::with_capacity(examples.len());
    let mut truncated = 0;
    for (index, ex) in examples.iter().enumerate() {
        let (it, cut) = prepare_one(model, tok, task, index, ex, from, true)?;
        truncated += cut as usize;
        items.push(it);
        progress();
    }
    Ok(PreparedTask {
        task: *task,
        from,
        truncated,
        items,
    })
}

/// One example's lower-layer states (and whether its prompt was cut to fit).
fn prepare_one(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    index: usize,
    ex: &Example,
    from: usize,
    allow_shortcut: bool,
) -> Result<(PreparedExample, bool)> {
    let dev = model.device();
    let (prompt, conts, cut) = loglik_inputs(model.max_positions(), tok, task, ex)?;
    let tp = prompt.len();
    let shared = allow_shortcut && super::shortcut::shares_all_but_last(&conts);
    // A continuation's last token is only ever a target: its state is not needed.
    let rows: Vec<&[u32]> = if shared {
        vec![&conts[0][..conts[0].len() - 1]]
    } else {
        conts
            .iter()
            .map(|c| &c[..c.len().saturating_sub(1)])
            .collect()
    };
    let n = rows.len();
    let tmax = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = vec![0u32; n * tmax];
    for (i, c) in rows.iter().enumerate() {
        ids[i * tmax..i * tmax + c.len()].copy_from_slice(c);
    }
    let mut cache = KvCache::new(model);
    let p = model.embed(&Tensor::from_vec(prompt, (1, tp), dev)?)?;
    let p = model.hidden_cached(&p, 0, from, 0, &mut cache)?;
    let options = if tmax == 0 {
        None
    } else {
        cache.select(&vec![0u32; n])?;
        let o = model.embed(&Tensor::from_vec(ids, (n, tmax), dev)?)?;
        Some(model.hidden_cached(&o, 0, from, tp, &mut cache)?)
    };
    Ok((
        PreparedExample {
            index,
            example: ex.clone(),
            prompt: p,
            options,
            shared,
            conts,
        },
        cut,
    ))
}

/// The loglik protocol (README, Definitions: commonsense protocol). When the task's label continuations differ only in their
/// last token, through the one-pass shortcut ([`super::shortcut`]), batched; otherwise
/// [`eval_loglik_general`]. Both give the same scores up to float summation order (a test checks).
pub fn eval_loglik(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    if shortcut_applies(tok, task)? {
        return super::shortcut::eval_loglik_shared_prefix(
            model,
            tok,
            task,
            examples,
            super::shortcut::LOGLIK_BATCH,
            progress,
        );
    }
    eval_loglik_general(model, tok, task, examples, progress)
}

/// Whether `task`'s label continuations under `tok` share every token but the last.
pub fn shortcut_applies(tok: &PromptTokenizer, task: &Task) -> Result<bool> {
    let probe = Example {
        instruction: String::new(),
        input: String::new(),
        output: String::new(),
        answer: None,
    };
    let (_, conts, _) = loglik_inputs(usize::MAX, tok, task, &probe)?;
    Ok(super::shortcut::shares_all_but_last(&conts))
}

/// The loglik protocol, one example at a time with nothing kept between examples: the prompt
/// runs once and every label continuation attends to its keys and values through the KV cache.
pub fn eval_loglik_general(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let mut preds = Vec::with_capacity(examples.len());
    let mut truncated = 0;
    for (index, ex) in examples.iter().enumerate() {
        let (it, cut) = prepare_one(model, tok, task, index, ex, 0, false)?;
        truncated += cut as usize;
        preds.push(score_one(model, task, 0, &it)?);
        progress();
    }
    Ok(loglik_result(task, preds, truncated))
}

/// The loglik protocol from prepared lower-layer states: layers `prepared.from..` of `model`
/// (with whatever adapter it now carries), the final norm and the LM head at the label positions.
pub fn eval_loglik_prepared(
    model: &Llama,
    prepared: &PreparedTask,
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let mut preds: Vec<Prediction> = Vec::with_capacity(prepared.items.len());
    for it in &prepared.items {
        preds.push(score_one(model, &prepared.task, prepared.from, it)?);
        progress();
    }
    Ok(loglik_result(&prepared.task, preds, prepared.truncated))
}

/// Layers `from..`, the final norm and the LM head for one prepared example.
fn score_one(model: &Llama, task: &Task, from: usize, it: &PreparedExample) -> Result<Prediction> {
    let top = model.num_layers();
    let tp = it.prompt.dim(1)?;
    let hd = it.prompt.dim(2)?;
    let mut cache = KvCache::new(model);
    let p = model.hidden_cached(&it.prompt, from, top, 0, &mut cache)?;
    // Row 0: the last prompt position (predicts every label's first token); then the
    // continuation positions, label-major (the shared prefix's only, with the shortcut).
    let last = p.narrow(1, tp - 1, 1)?.reshape((1, hd))?;
    let (rows_h, tmax) = match &it.options {
        Some(opts) => {
            let (n, tmax, _) = opts.dims3()?;
            cache.select(&vec![0u32; n])?;
            let o = model.hidden_cached(opts, from, top, tp, &mut cache)?;
            (Tensor::cat(&[&last, &o.reshape((n * tmax, hd))?], 0)?, tmax)
        }
        None => (last, 0),
    };
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, c) in it.conts.iter().enumerate() {
        let row = if it.shared { 0 } else { i };
        for (j, &tok_id) in c.iter().enumerate() {
            rows.push(if j == 0 {
                0
            } else {
                (1 + row * tmax + (j - 1)) as u32
            });
            targets.push(tok_id);
        }
    }
    let m = rows.len();
    let sel = rows_h.index_select(&Tensor::from_vec(rows, m, model.device())?, 0)?;
    let picked = target_logprobs(model, &model.final_norm(&sel)?, targets)?;
    Ok(loglik_prediction(
        task,
        it.index,
        &it.example,
        &it.conts,
        &picked,
    ))
}

/// One beam-search batch with its lower layers run.
struct PreparedBatch {
    /// The examples' indices, in batch row order.
    examples: Vec<usize>,
    lens: Vec<usize>,
    pads: Vec<usize>,
    /// Hidden states entering layer `from`, `[B, W, H]`.
    hidden: Tensor,
    /// Layers `0..from` hold the prompts' keys and values, `[B, kv_heads, W, d]` each.
    cache: KvCache,
}

/// A task's `generate` examples ready for [`eval_generate_prepared`].
pub struct PreparedGenerate {
    pub task: Task,
    /// The first layer that is recomputed per adapter.
    pub from: usize,
    pub truncated: usize,
    examples: Vec<Example>,
    batches: Vec<PreparedBatch>,
}

impl PreparedGenerate {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Bytes the prepared states hold (keys and values of layers `0..from`, hidden states).
    pub fn bytes(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.cache.bytes() + b.hidden.elem_count() * b.hidden.dtype().size_in_bytes())
            .sum()
    }
}

/// Runs layers `0..from` of `model` (which must carry no adapter there) over the left-padded
/// prompts of each beam-search batch of `batch` examples, grouped as [`super::eval_generate_batched`]
/// groups them. `from = 0` stores embeddings only.
pub fn prepare_generate(
    model: &Llama,
    tok: &PromptTokenizer,
    task: &Task,
    examples: &[Example],
    cfg: &GenConfig,
    batch: usize,
    from: usize,
) -> Result<PreparedGenerate> {
    if from > model.num_layers() {
        return Err(Error::InvalidArgument(format!(
            "prepare_generate: layer {from} past the model's {}",
            model.num_layers()
        )));
    }
    if batch == 0 {
        return Err(Error::InvalidArgument(
            "batch size 0: at least one example per batch".into(),
        ));
    }
    let (prompts, truncated) = generate_prompts(model, tok, examples, cfg)?;
    let mut batches = Vec::new();
    for chunk in generate_batches(&prompts, batch) {
        let group: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        if let Some(i) = group.iter().position(Vec::is_empty) {
            return Err(Error::InvalidArgument(format!(
                "beam search: prompt {} has no tokens",
                chunk[i]
            )));
        }
        let (ids, width, pads) = left_pad(&group);
        let ids = Tensor::from_vec(ids, (group.len(), width), model.device())?;
        let mut cache = KvCache::new(model);
        let hidden = model.hidden_padded(&model.embed(&ids)?, 0, from, 0, &pads, &mut cache)?;
        cache.compact()?;
        batches.push(PreparedBatch {
            lens: group.iter().map(Vec::len).collect(),
            examples: chunk,
            pads,
            hidden,
            cache,
        });
    }
    Ok(PreparedGenerate {
        task: *task,
        from,
        truncated,
        examples: examples.to_vec(),
        batches,
    })
}

/// The `generate` protocol from prepared lower-layer states: per batch, the prefill's layers
/// `prepared.from..` of `model` (with whatever adapter it now carries), then the decode loop of
/// [`super::generate::beam_search_batch`] through every layer.
pub fn eval_generate_prepared(
    model: &Llama,
    tok: &PromptTokenizer,
    prepared: &PreparedGenerate,
    cfg: &GenConfig,
    progress: &dyn Fn(),
) -> Result<TaskResult> {
    let mut outputs = vec![Vec::new(); prepared.examples.len()];
    for b in &prepared.batches {
        let found = if cfg.max_new_tokens == 0 {
            vec![Vec::new(); b.examples.len()]
        } else {
            let mut cache = b.cache.clone();
            let h = model.hidden_padded(
                &b.hidden,
                prepared.from,
                model.num_layers(),
                0,
                &b.pads,
                &mut cache,
            )?;
            decode_batch(model, cache, &model.logits_last(&h)?, &b.lens, &b.pads, cfg)?
        };
        for (&i, out) in b.examples.iter().zip(found) {
            outputs[i] = out;
            progress();
        }
    }
    generate_result(
        tok,
        &prepared.task,
        &prepared.examples,
        &outputs,
        prepared.truncated,
    )
}
