//! Forward passes of a run: micro-batches, the masked cross-entropy (logits only where a label
//! exists), validation loss and the cache of the frozen lower layers' outputs.

use super::data::{self, Tokenized};
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::nn::ForwardCtx;
use candle_core::Tensor;
use std::time::Instant;

/// What a lower-layer cache depends on: the first adapted layer and every example's token ids.
pub type LowerCacheKey = (usize, Vec<Vec<u32>>);

impl Trainer {
    /// Identity of the cached lower-layer states: the first adapted layer and every training and
    /// validation example's token ids (runs that share it can share the cache).
    pub fn lower_cache_key(&self) -> LowerCacheKey {
        (
            self.from_layer,
            self.cached_examples()
                .map(|t| t.input_ids.clone())
                .collect(),
        )
    }

    /// The examples the lower-layer cache holds: training, then validation.
    fn cached_examples(&self) -> impl Iterator<Item = &Tokenized> {
        self.train.iter().chain(self.val.iter())
    }

    /// The cached lower-layer states, once computed (shared storage: cloning is cheap).
    pub fn lower_cache(&self) -> Option<Vec<Tensor>> {
        self.lower_cache.clone()
    }

    /// Reuses lower-layer states computed by another run with the same [`lower_cache_key`](Self::lower_cache_key).
    pub fn set_lower_cache(&mut self, cache: Vec<Tensor>) -> Result<()> {
        if cache.len() != self.train.len() + self.val.len()
            || cache
                .iter()
                .zip(self.cached_examples())
                .any(|(c, t)| c.dim(0).ok() != Some(t.input_ids.len()))
        {
            return Err(Error::InvalidArgument(
                "lower-layer cache does not match this run's examples".into(),
            ));
        }
        self.lower_cache = Some(cache);
        Ok(())
    }

    /// Computes the lower-layer cache if this run adapts only the top layers and has none yet.
    pub fn ensure_lower_cache(&mut self) -> Result<()> {
        if self.lower_cache.is_none() && self.from_layer > 0 && self.config.cache_lower_layers {
            let t0 = Instant::now();
            let examples: Vec<Tokenized> = self.cached_examples().cloned().collect();
            self.lower_cache = Some(cache_lower(
                &self.model,
                &examples,
                self.from_layer,
                self.pad_id,
            )?);
            self.record.lower_cache_seconds = t0.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// `(ids [B, T] u32, labels [B, T] i64)` for a micro-batch.
    pub(super) fn batch_tensors(&self, idx: &[usize]) -> Result<(Tensor, Vec<i64>, usize, usize)> {
        let items: Vec<&Tokenized> = idx.iter().map(|&i| &self.train[i]).collect();
        self.pad(&items)
    }

    fn pad(&self, items: &[&Tokenized]) -> Result<(Tensor, Vec<i64>, usize, usize)> {
        let (ids, labels, _mask, t) = data::pad_batch(items, self.pad_id);
        let b = items.len();
        let ids = Tensor::from_vec(ids, (b, t), self.model.device())?;
        Ok((ids, labels, b, t))
    }

    /// Mean token cross-entropy of a padded batch (positions with label −100 ignored), computing
    /// logits only where a label exists. Returns `(loss tensor, counted tokens)`.
    pub(super) fn loss(
        &self,
        ids: &Tensor,
        labels: &[i64],
        b: usize,
        t: usize,
        ctx: &ForwardCtx,
        cached: Option<&[usize]>,
    ) -> Result<(Tensor, usize)> {
        let eval = ForwardCtx::eval();
        let h = match (cached, &self.lower_cache) {
            (Some(idx), Some(cache)) => {
                // Cached lower layers, right-padded with zeros (pads only feed masked positions).
                let hd = self.model.config.hidden_size;
                let rows = idx
                    .iter()
                    .map(|&i| {
                        let c = &cache[i];
                        let n = c.dim(0)?;
                        if n == t {
                            Ok(c.clone())
                        } else {
                            Tensor::cat(
                                &[c, &Tensor::zeros((t - n, hd), c.dtype(), c.device())?],
                                0,
                            )
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)?.to_device(self.model.device())?
            }
            _ => {
                let h = self.model.embed(ids)?;
                // Frozen lower layers: no trainable variable, so no graph is recorded here.
                if self.from_layer > 0 {
                    self.model.hidden_range(&h, 0, self.from_layer, &eval)?
                } else {
                    h
                }
            }
        };
        let h = self.model.final_hidden(&h, self.from_layer, ctx)?;
        let hd = h.dim(2)?;
        // Position p predicts label p+1.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for bi in 0..b {
            for p in 0..t - 1 {
                let l = labels[bi * t + p + 1];
                if l >= 0 {
                    rows.push((bi * t + p) as u32);
                    targets.push(l as u32);
                }
            }
        }
        if rows.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch has no labelled token (cutoff too short?)".into(),
            ));
        }
        let n = rows.len();
        let dev = self.model.device();
        let sel = h
            .reshape((b * t, hd))?
            .index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
        Ok((self.model.head_loss(&sel, &targets)?, n))
    }

    /// Validation loss over the held-out examples.
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let ctx = ForwardCtx::eval();
        let (mut total, mut count) = (0.0, 0usize);
        let first = self.train.len();
        let idx: Vec<usize> = (first..first + self.val.len()).collect();
        for chunk in idx.chunks(self.config.micro_batch_size) {
            let items: Vec<&Tokenized> = chunk.iter().map(|&i| &self.val[i - first]).collect();
            let (ids, labels, b, t) = self.pad(&items)?;
            let (l, n) = self.loss(&ids, &labels, b, t, &ctx, Some(chunk))?;
            total += l.to_scalar::<f32>()? as f64 * n as f64;
            count += n;
        }
        Ok(Some(total / count.max(1) as f64))
    }
}

/// Hidden states entering layer `from` for every example (`[T_i, H]` each, on the host),
/// computed in length-sorted, right-padded chunks and cut back to each example's length.
fn cache_lower(
    model: &Llama,
    examples: &[Tokenized],
    from: usize,
    pad_id: u32,
) -> Result<Vec<Tensor>> {
    let ctx = ForwardCtx::eval();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].input_ids.len());
    let mut out: Vec<Option<Tensor>> = vec![None; examples.len()];
    for chunk in order.chunks(8) {
        let items: Vec<&Tokenized> = chunk.iter().map(|&i| &examples[i]).collect();
        let (ids, _labels, _mask, t) = data::pad_batch(&items, pad_id);
        let ids = Tensor::from_vec(ids, (items.len(), t), model.device())?;
        let h = model.hidden_range(&model.embed(&ids)?, 0, from, &ctx)?;
        for (j, &i) in chunk.iter().enumerate() {
            let n = examples[i].input_ids.len();
            // Kept on the host: a GPU holds only the batch in flight.
            let row = h.get(j)?.narrow(0, 0, n)?.contiguous()?;
            out[i] = Some(row.to_device(&candle_core::Device::Cpu)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|x| x.expect("every example cached"))
        .collect())
}
