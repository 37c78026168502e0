//! Beam-search generation with a KV cache, as the LLM-Adapters protocol runs it through
//! transformers' `generate` (4 beams, at most 32 new tokens, length penalty 1, no sampling).
//! A hypothesis ending in EOS is scored `Σ log p / generated_len^length_penalty` (EOS not counted);
//! an EOS candidate only counts when it ranks within the top `num_beams`, and search stops once
//! `num_beams` hypotheses are finished and no running beam can beat the worst of them.

use crate::error::Result;
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

/// Generated token ids (prompt excluded, EOS excluded) of the best hypothesis.
pub fn beam_search(model: &Llama, prompt: &[u32], cfg: &GenConfig) -> Result<Vec<u32>> {
    let nb = cfg.num_beams.max(1);
    let dev = model.device().clone();
    let p = prompt.len();
    let mut cache = KvCache::new(model);
    let logits = model.forward_cached(
        &Tensor::from_vec(prompt.to_vec(), (1, p), &dev)?,
        0,
        &mut cache,
    )?;
    let mut rows = log_softmax_rows(&logits.i((.., p - 1, ..))?)?;
    cache.select(&vec![0u32; nb])?;
    // Running beams: (tokens, Σ log p). The first step expands one beam only.
    let mut beams: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
    let norm = |len: usize, s: f64| s / (len.max(1) as f64).powf(cfg.length_penalty);
    for step in 0..cfg.max_new_tokens {
        let mut cands: Vec<(usize, u32, f64)> = Vec::new();
        for (bi, (_, score)) in beams.iter().enumerate() {
            for t in top(&rows[bi], 2 * nb) {
                cands.push((bi, t as u32, score + rows[bi][t] as f64));
            }
        }
        cands.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut next: Vec<(usize, u32, f64)> = Vec::new();
        for (rank, &(bi, t, s)) in cands.iter().enumerate() {
            if t == cfg.eos {
                if rank < nb {
                    finished.push((beams[bi].0.clone(), norm(beams[bi].0.len(), s)));
                }
            } else {
                next.push((bi, t, s));
            }
            if next.len() == nb {
                break;
            }
        }
        finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        finished.truncate(nb);
        if finished.len() >= nb {
            let best_running = next
                .first()
                .map_or(f64::NEG_INFINITY, |c| norm(step + 1, c.2));
            if finished.last().is_some_and(|w| w.1 >= best_running) {
                break;
            }
        }
        if next.is_empty() {
            break;
        }
        beams = next
            .iter()
            .map(|&(bi, t, s)| {
                let mut toks = beams[bi].0.clone();
                toks.push(t);
                (toks, s)
            })
            .collect();
        if step + 1 == cfg.max_new_tokens || p + step + 1 >= model.max_positions() {
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
    for (toks, s) in beams {
        let len = toks.len();
        finished.push((toks, norm(len, s)));
    }
    finished.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(finished.into_iter().next().map(|f| f.0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::top;

    #[test]
    fn top_k_is_sorted() {
        assert_eq!(top(&[0.1, 0.9, 0.5, 0.7], 3), vec![1, 3, 2]);
        assert_eq!(top(&[1.0], 4), vec![0]);
    }
}
