//! Beam-search generation with a KV cache, as the LLM-Adapters protocol runs it through
//! transformers' `generate` (4 beams, at most 32 new tokens, length penalty 1, no sampling).
//! A hypothesis ending in EOS is scored `Σ log p / generated_len^length_penalty` (EOS not counted);
//! an EOS candidate only counts when it ranks within the top `num_beams`, and search stops once
//! `num_beams` hypotheses are finished and no running beam can beat the worst of them.

use crate::error::{Error, Result};
use crate::model::llama::KvCache;
use crate::model::Llama;
use candle_core::{DType, IndexOp, Tensor};

/// Generation settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenConfig {
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub length_penalty: f64,
    pub eos: u32,
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let l = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, 1)?;
    Ok(l.to_vec2::<f32>()?)
}

/// Indices of the `k` largest values, largest first.
fn top(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let k = k.min(v.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx
}

/// Examples per batch in [`beam_search_batch`] when the caller does not choose (`tsd eval
/// --batch-size`, the reproduce evaluator): the best of 4, 8, 16 and 32 on the default model,
/// 2 cores, 48 examples (`tsd bench eval-batch` → `reproductions/bench/eval_batch.json`: 1.72,
/// 1.14, 0.98, 0.88 s/example on an idle machine, identical outputs at every size).
pub const DEFAULT_BATCH: usize = 32;

/// One example's beam search state, advanced one step at a time from its beams' log-probability
/// rows; the rule is transformers' (see the module docs).
struct Search {
    /// Running beams: (tokens, Σ log p). The first step expands one beam only.
    beams: Vec<(Vec<u32>, f64)>,
    finished: Vec<(Vec<u32>, f64)>,
    /// Prompt length: the position of the first generated token.
    prompt_len: usize,
    done: bool,
}

/// What a step hands to the next forward pass: for each new beam, its parent's row and its token.
type Expansion = Vec<(usize, u32)>;

impl Search {
    fn new(prompt_len: usize) -> Self {
        Search {
            beams: vec![(Vec::new(), 0.0)],
            finished: Vec::new(),
            prompt_len,
            done: false,
        }
    }

    /// Advances by one token from `rows[i]` = log p of beam `i`'s next token `[V]`; returns the
    /// (parent beam, token) pairs to feed next, or marks the search done.
    fn step(
        &mut self,
        rows: &[Vec<f32>],
        step: usize,
        cfg: &GenConfig,
        max_positions: usize,
    ) -> Expansion {
        let nb = cfg.num_beams.max(1);
        let norm = |len: usize, s: f64| s / (len.max(1) as f64).powf(cfg.length_penalty);
        let mut cands: Vec<(usize, u32, f64)> = Vec::new();
        for (bi, (_, score)) in self.beams.iter().enumerate() {
            for t in top(&rows[bi], 2 * nb) {
                cands.push((bi, t as u32, score + rows[bi][t] as f64));
            }
        }
        cands.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut next: Vec<(usize, u32, f64)> = Vec::new();
        for (rank, &(bi, t, s)) in cands.iter().enumerate() {
            if t == cfg.eos {
                if rank < nb {
                    let toks = self.beams[bi].0.clone();
                    let len = toks.len();
                    self.finished.push((toks, norm(len, s)));
                }
            } else {
                next.push((bi, t, s));
            }
            if next.len() == nb {
                break;
            }
        }
        self.finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.finished.truncate(nb);
        if self.finished.len() >= nb {
            let best_running = next
                .first()
                .map_or(f64::NEG_INFINITY, |c| norm(step + 1, c.2));
            if self.finished.last().is_some_and(|w| w.1 >= best_running) {
                self.done = true;
                return Vec::new();
            }
        }
        if next.is_empty() {
            self.done = true;
            return Vec::new();
        }
        self.beams = next
            .iter()
            .map(|&(bi, t, s)| {
                let mut toks = self.beams[bi].0.clone();
                toks.push(t);
                (toks, s)
            })
            .collect();
        if step + 1 == cfg.max_new_tokens || self.prompt_len + step + 1 >= max_positions {
            self.done = true;
            return Vec::new();
        }
        next.iter().map(|c| (c.0, c.1)).collect()
    }

    /// The best hypothesis, running beams scored as if they ended here.
    fn best(mut self, cfg: &GenConfig) -> Vec<u32> {
        for (toks, s) in std::mem::take(&mut self.beams) {
            let len = toks.len();
            self.finished
                .push((toks, s / (len.max(1) as f64).powf(cfg.length_penalty)));
        }
        self.finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.finished
            .into_iter()
            .next()
            .map(|f| f.0)
            .unwrap_or_default()
    }
}

/// Generated token ids (prompt excluded, EOS excluded) of the best hypothesis, one prompt alone
/// (the plain KV-cache path; [`beam_search_batch`] is checked against it).
pub fn beam_search(model: &Llama, prompt: &[u32], cfg: &GenConfig) -> Result<Vec<u32>> {
    let dev = model.device().clone();
    let p = prompt.len();
    let mut search = Search::new(p);
    if cfg.max_new_tokens == 0 {
        return Ok(Vec::new());
    }
    let mut cache = KvCache::new(model);
    let logits = model.forward_cached(
        &Tensor::from_vec(prompt.to_vec(), (1, p), &dev)?,
        0,
        &mut cache,
    )?;
    let mut rows = log_softmax_rows(&logits.i((.., p - 1, ..))?)?;
    for step in 0..cfg.max_new_tokens {
        let next = search.step(&rows, step, cfg, model.max_positions());
        if search.done {
            break;
        }
        let src: Vec<u32> = next.iter().map(|c| c.0 as u32).collect();
        cache.select(&src)?;
        let ids: Vec<u32> = next.iter().map(|c| c.1).collect();
        let n = ids.len();
        let logits =
            model.forward_cached(&Tensor::from_vec(ids, (n, 1), &dev)?, p + step, &mut cache)?;
        rows = log_softmax_rows(&logits.i((.., 0, ..))?)?;
    }
    Ok(search.best(cfg))
}

/// [`beam_search`] for several prompts at once: the prompts are left-padded into one batch
/// (`[B, T_max]`, RoPE from 0 at each first real token, padded keys masked), and every step runs
/// the beams of all unfinished examples as one `[Σ beams, 1]` forward pass. Each example follows
/// its own search and leaves the batch when it is done; the results are those of running each
/// prompt alone (a test checks token for token).
pub fn beam_search_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfg: &GenConfig,
) -> Result<Vec<Vec<u32>>> {
    let dev = model.device().clone();
    let b = prompts.len();
    if b == 0 || cfg.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::InvalidArgument(format!(
            "beam search: prompt {i} has no tokens"
        )));
    }
    let (ids, width, pad_of) = left_pad(prompts);
    let mut cache = KvCache::new(model);
    let logits = model.forward_padded_last(
        &Tensor::from_vec(ids, (b, width), &dev)?,
        0,
        &pad_of,
        &mut cache,
    )?;
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    decode_batch(model, cache, &logits, &lens, &pad_of, cfg)
}

/// Left-pads `prompts` with token 0 into one row-major `[B, W]` batch; returns the ids, `W` and
/// each row's pad count.
pub(crate) fn left_pad(prompts: &[Vec<u32>]) -> (Vec<u32>, usize, Vec<usize>) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad_of: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let mut ids = Vec::with_capacity(prompts.len() * width);
    for p in prompts {
        ids.extend(std::iter::repeat_n(0u32, width - p.len()));
        ids.extend_from_slice(p);
    }
    (ids, width, pad_of)
}

/// The decode loop of [`beam_search_batch`] after its prefill: `cache` holds the left-padded
/// prompts (`pad_of[e]` padding columns, `W = lens[e] + pad_of[e]` columns each) in every layer,
/// `logits: [B, V]` the prompts' last-column logits. Shared with the prepared path
/// ([`super::prepared::eval_generate_prepared`]), whose prefill runs the lower layers once per grid.
pub(crate) fn decode_batch(
    model: &Llama,
    mut cache: KvCache,
    logits: &Tensor,
    lens: &[usize],
    pad_of: &[usize],
    cfg: &GenConfig,
) -> Result<Vec<Vec<u32>>> {
    let dev = model.device().clone();
    let b = lens.len();
    let width = lens.first().map_or(0, |l| l + pad_of[0]);
    let mut rows = log_softmax_rows(logits)?;
    let mut searches: Vec<Search> = lens.iter().map(|&l| Search::new(l)).collect();
    // The cache's rows: example `e` owns `span[e]` (offset, count), in example order.
    let mut span: Vec<(usize, usize)> = (0..b).map(|e| (e, 1)).collect();
    for step in 0..cfg.max_new_tokens {
        let mut src = Vec::new();
        let mut toks = Vec::new();
        let mut pads = Vec::new();
        let mut next_span = vec![(0, 0); b];
        for (e, s) in searches.iter_mut().enumerate() {
            if s.done {
                continue;
            }
            let (off, n) = span[e];
            let next = s.step(&rows[off..off + n], step, cfg, model.max_positions());
            next_span[e] = (src.len(), next.len());
            for (parent, t) in next {
                src.push((off + parent) as u32);
                toks.push(t);
                pads.push(pad_of[e]);
            }
        }
        if src.is_empty() {
            break;
        }
        cache.select(&src)?;
        let n = toks.len();
        let logits = model.forward_padded_last(
            &Tensor::from_vec(toks, (n, 1), &dev)?,
            width + step,
            &pads,
            &mut cache,
        )?;
        rows = log_softmax_rows(&logits)?;
        span = next_span;
    }
    Ok(searches.into_iter().map(|s| s.best(cfg)).collect())
}

#[cfg(test)]
mod tests {
    use super::{beam_search_batch, top, GenConfig};
    use crate::model::Llama;
    use candle_core::{DType, Device, Tensor};

    fn tiny() -> Llama {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        let src = crate::weights::open_path(&dir).unwrap();
        Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap()
    }

    /// Weights packed for inference change no bit: the prefill's logits and every beam search's
    /// tokens are those of candle's matmul (on CPUs where packing is available; elsewhere the
    /// model refuses it and both runs are the same path).
    #[test]
    fn packed_products_change_no_bit_of_logits_or_generations() {
        let plain = tiny();
        let mut packed = tiny();
        let on = packed.use_packed_products().unwrap();
        assert_eq!(on, crate::nn::packed::available());
        let prompts: Vec<Vec<u32>> = (0..5u32)
            .map(|i| (0..9 + 3 * i).map(|j| (i * 31 + j * 17) % 128).collect())
            .collect();
        let ids: Vec<u32> = prompts.iter().flat_map(|p| p[..9].to_vec()).collect();
        let ids = Tensor::from_vec(ids, (5, 9), &Device::Cpu).unwrap();
        let ctx = crate::nn::ForwardCtx::eval();
        let bits = |m: &Llama| -> Vec<u32> {
            let l = m.forward(&ids, &ctx).unwrap();
            let v: Vec<f32> = l.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|f| f.to_bits()).collect()
        };
        assert_eq!(bits(&plain), bits(&packed));
        let cfg = GenConfig {
            num_beams: 4,
            max_new_tokens: 12,
            length_penalty: 1.0,
            eos: 2,
        };
        assert_eq!(
            beam_search_batch(&plain, &prompts, &cfg).unwrap(),
            beam_search_batch(&packed, &prompts, &cfg).unwrap()
        );
    }

    #[test]
    fn top_k_is_sorted() {
        assert_eq!(top(&[0.1, 0.9, 0.5, 0.7], 3), vec![1, 3, 2]);
        assert_eq!(top(&[1.0], 4), vec![0]);
    }
}
