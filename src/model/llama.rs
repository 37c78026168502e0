//! A LLaMA-family decoder in candle (RMSNorm, rotary embeddings in Hugging Face's half-split layout,
//! grouped-query attention, SwiGLU MLP, tied or untied LM head), written here so that every linear
//! layer is an [`AdaptedLinear`] that LoRA, LoRA-Dash or full fine-tuning can wrap. Weights are found
//! by their Hugging Face names through a [`WeightSource`], whichever file they came from.
//!
//! One model covers transformers' Llama, Mistral and Qwen2 (see [`LlamaConfig`]): they differ in
//! the rotary frequencies (the tables), which linears carry a bias, and Mistral's sliding window.
//! A base-layer bias is added after the adapted linear (`y = W x + b + ΔW x`, as PEFT wraps an
//! `nn.Linear` with its bias); merging an adapter changes `W` only.
//!
//! Every op used has a backward pass (candle's fused `rms_norm`/`softmax_last_dim` have none, so parameters before them would get no gradient).

use super::LlamaConfig;
use crate::error::{Error, Result};
use crate::names::LinearKind;
use crate::nn::attention::{rope_composed as rope, rope_tables, split_heads};
use crate::nn::{AdaptedLinear, ForwardCtx, FrozenLinear};
use crate::weights::WeightSource;
use candle_core::{DType, Device, Module, Tensor, D};
use std::sync::atomic::{AtomicBool, Ordering};

/// One decoder layer.
pub struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    /// One per kind, in [`LinearKind::ALL`] order.
    linears: Vec<AdaptedLinear>,
    /// The base layers' biases `[out]`, in [`LinearKind::ALL`] order (frozen, never merged).
    biases: Vec<Option<Tensor>>,
}

impl Block {
    /// The linear of this kind.
    pub fn linear(&self, kind: LinearKind) -> &AdaptedLinear {
        &self.linears[kind.index()]
    }

    /// The linear of this kind, mutably (to attach an adapter).
    pub fn linear_mut(&mut self, kind: LinearKind) -> &mut AdaptedLinear {
        &mut self.linears[kind.index()]
    }

    /// Every linear with its kind, in HF order.
    pub fn linears(&self) -> impl Iterator<Item = (LinearKind, &AdaptedLinear)> {
        LinearKind::ALL.into_iter().zip(self.linears.iter())
    }

    /// Every linear with its kind, mutably, in HF order.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = (LinearKind, &mut AdaptedLinear)> {
        LinearKind::ALL.into_iter().zip(self.linears.iter_mut())
    }

    /// The linear of this kind with its base bias: `[.., in]` → `[.., out]`.
    fn project(
        &self,
        kind: LinearKind,
        x: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let y = self.linear(kind).forward(x, ctx)?;
        match &self.biases[kind.index()] {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Keys and values of one layer: buffers `[B, kv_heads, capacity, head_dim]` whose first `len`
/// positions are filled. Appending writes into the spare capacity in place (`slice_set`), so a
/// decode step copies only its new token instead of the whole cache (`Tensor::cat`).
#[derive(Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Whether this cache alone holds the buffers' storage: a clone shares it, so the clone's first
    /// append or beam reorder (and the original's) copies into fresh buffers instead of writing
    /// in place. Atomic so that `clone(&self)` can take it from the original too.
    owned: AtomicBool,
}

impl Clone for LayerCache {
    fn clone(&self) -> Self {
        self.owned.store(false, Ordering::Relaxed);
        LayerCache {
            k: self.k.clone(),
            v: self.v.clone(),
            len: self.len,
            owned: AtomicBool::new(false),
        }
    }
}

/// Spare positions allocated beyond what an append needs (a beam search's 32 new tokens fit).
const CACHE_SLACK: usize = 32;

impl LayerCache {
    /// Appends `k, v: [B, kv_heads, T, d]` and returns the filled views `[B, kv_heads, len, d]`
    /// (strided into the buffers; matmul reads them as they are).
    fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, g, t, d) = k.dims4()?;
        let need = self.len + t;
        let fits = *self.owned.get_mut()
            && match &self.k {
                Some(buf) => buf.dim(0)? == b && buf.dim(2)? >= need,
                None => false,
            };
        if !fits {
            let cap = need + CACHE_SLACK;
            let fresh = |old: &Option<Tensor>| -> candle_core::Result<Tensor> {
                let buf = Tensor::zeros((b, g, cap, d), k.dtype(), k.device())?;
                if let Some(o) = old.as_ref().filter(|_| self.len > 0) {
                    buf.slice_set(&o.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let (nk, nv) = (fresh(&self.k)?, fresh(&self.v)?);
            self.k = Some(nk);
            self.v = Some(nv);
            *self.owned.get_mut() = true;
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => candle_core::bail!("kv cache: buffers missing after allocation"),
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

/// A KV cache for generation, one entry per layer.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Llama) -> Self {
        KvCache {
            layers: vec![LayerCache::default(); model.layers.len()],
        }
    }

    /// Drops every layer's spare capacity (a cache kept for reuse, e.g. a grid's shared prefill).
    pub fn compact(&mut self) -> Result<()> {
        for l in &mut self.layers {
            for t in [&mut l.k, &mut l.v] {
                if let Some(x) = t.as_ref() {
                    *t = Some(x.narrow(2, 0, l.len)?.contiguous()?);
                }
            }
        }
        Ok(())
    }

    /// Bytes held by the keys and values (spare capacity included).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|x| x.elem_count() * x.dtype().size_in_bytes())
            .sum()
    }

    /// Keeps batch rows `idx` (in that order), e.g. to follow the surviving beams. A cache that
    /// alone holds its buffers rewrites only the rows whose source changed, and only their filled
    /// positions, in place (a beam search's step used to copy every row's whole capacity); a
    /// shared one gets fresh buffers. Nothing is copied when `idx` keeps every row in place.
    pub fn select(&mut self, idx: &[u32]) -> Result<()> {
        for l in &mut self.layers {
            let Some(rows) = l.k.as_ref().map(|k| k.dim(0)).transpose()? else {
                continue;
            };
            if idx.len() == rows && idx.iter().enumerate().all(|(i, &j)| i as u32 == j) {
                continue;
            }
            let in_place = *l.owned.get_mut() && idx.len() <= rows;
            for t in [&mut l.k, &mut l.v] {
                if let Some(x) = t.as_ref() {
                    *t = Some(if in_place {
                        select_in_place(x, idx, l.len)?
                    } else {
                        let i = Tensor::from_vec(idx.to_vec(), idx.len(), x.device())?;
                        x.index_select(&i, 0)?
                    });
                }
            }
            *l.owned.get_mut() = true;
        }
        Ok(())
    }
}

/// `buf: [B, G, cap, d]` (contiguous, this cache's alone) with row `i` set to old row `idx[i]` for
/// `i < idx.len() ≤ B`, then narrowed to `idx.len()` rows: the changed rows' first `len` positions
/// are copied out first, so overlapping moves read the old rows.
fn select_in_place(buf: &Tensor, idx: &[u32], len: usize) -> Result<Tensor> {
    let changed: Vec<(usize, u32)> = idx
        .iter()
        .enumerate()
        .filter(|&(i, &j)| i as u32 != j)
        .map(|(i, &j)| (i, j))
        .collect();
    let rows = changed
        .iter()
        .map(|&(_, j)| own_copy(&buf.narrow(0, j as usize, 1)?.narrow(2, 0, len)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    for (&(i, _), row) in changed.iter().zip(&rows) {
        buf.narrow(0, i, 1)?.slice_set(row, 2, 0)?;
    }
    Ok(buf.narrow(0, 0, idx.len())?)
}

/// A contiguous copy of `view` in storage of its own, bit for bit (`contiguous()` returns a
/// contiguous view itself, sharing its storage).
fn own_copy(view: &Tensor) -> candle_core::Result<Tensor> {
    if !view.is_contiguous() {
        return view.contiguous();
    }
    let t = view.zeros_like()?;
    t.slice_set(view, 0, 0)?;
    Ok(t)
}

/// The additive mask `[T, Tk]` or `[B, 1, T, Tk]` for query heads viewed as `[B, G, rep·T, d]`
/// (see `Llama::attention`): row `r·T + i` is row `i`. `T = 1` broadcasts as it is.
fn tile_mask(mask: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    let (t, tk) = (mask.dim(D::Minus2)?, mask.dim(D::Minus1)?);
    if t == 1 || rep == 1 {
        return Ok(mask.clone());
    }
    match mask.rank() {
        2 => mask
            .unsqueeze(0)?
            .broadcast_as((rep, t, tk))?
            .reshape((rep * t, tk)),
        _ => {
            let b = mask.dim(0)?;
            mask.unsqueeze(2)?
                .broadcast_as((b, 1, rep, t, tk))?
                .reshape((b, 1, rep * t, tk))
        }
    }
}

/// The whole model.
pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    pub layers: Vec<Block>,
    norm: Tensor,
    lm_head: FrozenLinear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    dtype: DType,
}

fn load_tensor(
    src: &dyn WeightSource,
    name: &str,
    shape: &[usize],
    dev: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let (got, data) = src.tensor(name)?;
    if got != shape {
        return Err(Error::shape(
            name,
            format!("expected {shape:?} from config.json, found {got:?}"),
        ));
    }
    Ok(Tensor::from_vec(data, got, dev)?.to_dtype(dtype)?)
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dim (differentiable; fused on the CPU).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    crate::nn::fused::rms_norm(x, w, eps)
}

/// Refuses tensors the model would not use (transformers would drop them with a warning): a bias
/// the config does not declare, a layer beyond `num_hidden_layers`, a module of another
/// architecture. Derived RoPE buffers (`rotary_emb.inv_freq`) are recomputed, so they are skipped.
fn check_unused(src: &dyn WeightSource, config: &LlamaConfig) -> Result<()> {
    let mut known: std::collections::HashSet<String> = [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for l in 0..config.num_hidden_layers {
        let p = crate::names::layer_prefix(l);
        known.insert(format!("{p}.input_layernorm.weight"));
        known.insert(format!("{p}.post_attention_layernorm.weight"));
        for kind in LinearKind::ALL {
            let module = kind.path(l);
            known.insert(format!("{module}.weight"));
            if config.has_bias(kind.as_str()) {
                known.insert(format!("{module}.bias"));
            }
        }
    }
    let unused: Vec<String> = src
        .names()
        .into_iter()
        .filter(|n| !known.contains(n) && !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    let Some(first) = unused.first() else {
        return Ok(());
    };
    let why = if first.ends_with(".bias") {
        let flag = if first.contains(".mlp.") {
            "mlp_bias"
        } else {
            "attention_bias"
        };
        format!(
            "the checkpoint has a bias that config.json does not declare ({} {flag})",
            config.family.name()
        )
    } else {
        format!(
            "a tensor a {} model with {} layers does not have",
            config.family.causal_lm(),
            config.num_hidden_layers
        )
    };
    Err(Error::Config {
        path: src.describe().into(),
        reason: format!(
            "`{first}`{}: {why}; tsd refuses rather than ignore it",
            if unused.len() > 1 {
                format!(" and {} more", unused.len() - 1)
            } else {
                String::new()
            }
        ),
    })
}

impl Llama {
    /// Loads every weight by its HF name; checks each shape against `config` and refuses tensors
    /// the config does not account for.
    pub fn load(
        src: &dyn WeightSource,
        config: LlamaConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        check_unused(src, &config)?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed = load_tensor(src, "model.embed_tokens.weight", &[v, h], device, dtype)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = crate::names::layer_prefix(l);
            let mut linears = Vec::with_capacity(7);
            let mut biases = Vec::with_capacity(7);
            for kind in LinearKind::ALL {
                let name = kind.as_str();
                let (o, i) = config.linear_shape(name).expect("known module");
                let module = kind.path(l);
                let w = load_tensor(src, &format!("{module}.weight"), &[o, i], device, dtype)?;
                biases.push(if config.has_bias(name) {
                    Some(load_tensor(
                        src,
                        &format!("{module}.bias"),
                        &[o],
                        device,
                        dtype,
                    )?)
                } else {
                    None
                });
                linears.push(AdaptedLinear::frozen(module, w));
            }
            layers.push(Block {
                input_norm: load_tensor(
                    src,
                    &format!("{p}.input_layernorm.weight"),
                    &[h],
                    device,
                    dtype,
                )?,
                post_norm: load_tensor(
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    device,
                    dtype,
                )?,
                linears,
                biases,
            });
        }
        let norm = load_tensor(src, "model.norm.weight", &[h], device, dtype)?;
        // Tied: transformers uses the embedding (an `lm_head.weight` copy, if saved, is the same).
        let lm_head = if config.tie_word_embeddings {
            FrozenLinear::new(embed.clone())
        } else if src.has("lm_head.weight") {
            FrozenLinear::new(load_tensor(src, "lm_head.weight", &[v, h], device, dtype)?)
        } else {
            return Err(Error::MissingTensor {
                context: format!(
                    "{} (config.json: tie_word_embeddings false)",
                    src.describe()
                ),
                tensor: "lm_head.weight".into(),
            });
        };
        let max_pos = config.max_position_embeddings.clamp(1, 8192);
        let (cos, sin) = rope_tables(&config.inv_freq(), max_pos, device, dtype)?;
        Ok(Llama {
            config,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
            dtype,
        })
    }

    /// Loads the config from the source's `config.json` and then the model.
    pub fn from_source(src: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = src.config_json().ok_or_else(|| Error::ModelNotFound {
            spec: src.describe(),
            reason: "no config.json".into(),
        })?;
        let config = LlamaConfig::from_json(cfg, std::path::Path::new(&src.describe()))?;
        Self::load(src, config, device, dtype)
    }

    /// Longest sequence the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// All adapted linears, layer by layer in [`LinearKind::ALL`] order.
    pub fn linears(&self) -> impl Iterator<Item = &AdaptedLinear> {
        self.layers.iter().flat_map(|b| b.linears.iter())
    }

    /// Mutable access to all linears.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut AdaptedLinear> {
        self.layers.iter_mut().flat_map(|b| b.linears.iter_mut())
    }

    /// Opt-in: every frozen linear and the LM head take bf16 products on CPU f32 inputs
    /// ([`crate::nn::bf16`], AVX512-BF16; sums in f32). Returns false, changing nothing, where the
    /// CPU lacks AVX512-BF16 or the model is not CPU f32. Off unless called.
    pub fn use_bf16_products(&mut self) -> Result<bool> {
        if !(crate::nn::bf16::available() && self.device.is_cpu() && self.dtype == DType::F32) {
            return Ok(false);
        }
        for lin in self.linears_mut() {
            lin.use_bf16_products()?;
        }
        Ok(self.lm_head.with_bf16_products()?)
    }

    /// Opt-in for inference: every frozen linear and the LM head run their f32 forward on weights
    /// packed once ([`crate::nn::packed`]; the same bits as candle's matmul, faster where `gemm`
    /// would repack a weight on every call, as on each decode step). The copies add the frozen
    /// weights' bytes, so they are made only where they fit in a quarter of the kernel's
    /// `MemAvailable` (or it cannot be read); training packs only its head
    /// ([`Self::use_packed_head`]). Returns false, changing nothing, where `gemm` does not run
    /// its AVX-512F kernels, the model is not CPU f32 or the copies would not fit. Merge adapters
    /// before, not after.
    pub fn use_packed_products(&mut self) -> Result<bool> {
        let bytes: usize =
            self.linears().map(|l| l.packed_bytes()).sum::<usize>() + self.lm_head.packed_bytes();
        if !self.can_pack(bytes) {
            return Ok(false);
        }
        for lin in self.linears_mut() {
            lin.use_packed_products()?;
        }
        Ok(self.lm_head.with_packed_products()?)
    }

    /// Whether packed copies of `bytes` can be made: `gemm` on its AVX-512F kernels, a CPU f32
    /// model, and the copies within a quarter of `MemAvailable`.
    fn can_pack(&self, bytes: usize) -> bool {
        let cpu_f32 = self.device.is_cpu() && self.dtype == DType::F32;
        crate::nn::packed::available() && cpu_f32 && crate::budget::fits_in_available(bytes, 4)
    }

    /// Opt-in for training: the LM head's f32 forward on its weight packed once
    /// ([`crate::nn::packed`], the same bits as candle's matmul). The fused head loss multiplies
    /// by the whole `[V, H]` head for every 128-row block, and `gemm` repacks it each time; the
    /// frozen linears stay unpacked (every copy counts against the step's peak memory). Adds `V·H` f32 (113 MB for the default model) where they fit
    /// in a quarter of `MemAvailable`. Returns false, changing nothing, where the packed kernel
    /// does not apply (no AVX-512F `gemm`, not CPU f32, or no room).
    pub fn use_packed_head(&mut self) -> Result<bool> {
        if !self.can_pack(self.lm_head.packed_bytes()) {
            return Ok(false);
        }
        Ok(self.lm_head.with_packed_products()?)
    }

    /// Undoes [`Self::use_bf16_products`]: f32 products again.
    pub fn drop_bf16_products(&mut self) {
        for lin in self.linears_mut() {
            lin.drop_bf16_products();
        }
        self.lm_head.without_bf16_products();
    }

    /// Token embeddings `[B, T, H]` of `ids: [B, T]` (u32).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.config.hidden_size,
        ))?)
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        ctx: &ForwardCtx,
        rope_at: (&Tensor, &Tensor),
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            self.config.num_attention_heads,
            self.config.kv_heads(),
            self.config.head_dim(),
        );
        let q = block.project(LinearKind::Q, x, ctx)?;
        let k = block.project(LinearKind::K, x, ctx)?;
        let v = block.project(LinearKind::V, x, ctx)?;
        let (cos, sin) = rope_at;
        let Some(c) = cache else {
            // The whole sequence at once (training, scoring): one fused op on the CPU.
            let y = crate::nn::attention::causal_attention(&q, &k, &v, cos, sin, nh, nkv)?;
            return block.project(LinearKind::O, &y, ctx);
        };
        // Grouped-query attention without repeating K/V: query heads `g·rep .. (g+1)·rep` read
        // key/value head `g`, so `[B, H, T, d]` is viewed as `[B, G, rep·T, d]` (no copy) and
        // multiplied by the cache's `[B, G, Tk, d]` as stored; `mask` is already tiled to `rep·T` rows.
        let rep = nh / nkv;
        let q = rope(&split_heads(&q, nh)?, cos, sin)?.reshape((b, nkv, rep * t, hd))?;
        let k = rope(&split_heads(&k, nkv)?, cos, sin)?;
        let v = split_heads(&v, nkv)?;
        let (k, v) = c.append(&k, &v)?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        // Inference only (this fused softmax has no backward pass), in f32 as the training path.
        let att = att.broadcast_add(mask)?.to_dtype(DType::F32)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(q.dtype())?;
        let y = att
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        block.project(LinearKind::O, &y, ctx)
    }

    fn mlp(&self, block: &Block, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let g = block.project(LinearKind::Gate, x, ctx)?;
        let u = block.project(LinearKind::Up, x, ctx)?;
        block.project(LinearKind::Down, &crate::nn::fused::swiglu(&g, &u)?, ctx)
    }

    /// Runs layers `from..` on hidden states `h: [B, T, H]` and returns logits `[B, T, V]`.
    /// `from = 0` with `h = embed(ids)` is the full model; a larger `from` reuses cached lower layers.
    pub fn forward_from(&self, h: &Tensor, from: usize, ctx: &ForwardCtx) -> Result<Tensor> {
        self.logits(&self.final_hidden(h, from, ctx)?)
    }

    /// Normalised final hidden states `[B, T, H]` after layers `from..`.
    pub fn final_hidden(&self, h: &Tensor, from: usize, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.hidden_range(h, from, self.layers.len(), ctx)?;
        Ok(rms_norm(&h, &self.norm, self.config.rms_norm_eps)?)
    }

    /// The LM head on any `[.., H]` (e.g. only the positions that carry a label).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(h)?)
    }

    /// Mean cross-entropy of the LM head on `h: [N, H]` against `targets` (N token ids), without
    /// holding the whole `[N, V]` logits on the CPU ([`crate::nn::loss::head_cross_entropy`]).
    pub fn head_loss(&self, h: &Tensor, targets: &[u32]) -> Result<Tensor> {
        Ok(crate::nn::loss::head_cross_entropy(
            h,
            &self.lm_head,
            targets,
        )?)
    }

    /// Hidden states after layers `from..to` (`h: [B, T, H]` → `[B, T, H]`).
    pub fn hidden_range(
        &self,
        h: &Tensor,
        from: usize,
        to: usize,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        self.hidden_at(h, from, to, ctx, 0, None)
    }

    /// Layers `from..to` on `h: [B, T, H]` whose first token sits at position `pos`, attending to
    /// and extending `cache` (inference). With `from > 0` the cache's lower layers stay empty: the
    /// caller supplies hidden states computed earlier (e.g. shared across a grid of adapters).
    pub fn hidden_cached(
        &self,
        h: &Tensor,
        from: usize,
        to: usize,
        pos: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.hidden_at(h, from, to, &ForwardCtx::eval(), pos, Some(cache))
    }

    /// The final RMSNorm on `[.., H]`.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        Ok(rms_norm(h, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layers `from..to` on `h` whose first token sits at position `pos`, appending keys and
    /// values to `cache` when given (the mask lets token `pos + i` see every cached and earlier token).
    fn hidden_at(
        &self,
        h: &Tensor,
        from: usize,
        to: usize,
        ctx: &ForwardCtx,
        pos: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let t = h.dim(1)?;
        self.check_length(pos + t)?;
        let mask = self.mask(t, pos)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        self.layers_on(h, from, to, ctx, &mask, (&cos, &sin), cache)
    }

    /// Refuses a sequence of `len` positions the rotary tables or the attention do not cover.
    fn check_length(&self, len: usize) -> Result<()> {
        if len > self.max_positions() {
            return Err(Error::InvalidArgument(format!(
                "sequence of {len} tokens exceeds the model's {} positions",
                self.max_positions()
            )));
        }
        if let Some(w) = self.config.sliding_window.filter(|&w| len > w) {
            return Err(Error::InvalidArgument(format!(
                "sequence of {len} tokens exceeds the model's sliding_window of {w}: tsd does not implement the windowed attention that would start there"
            )));
        }
        Ok(())
    }

    /// Layers `from..to` with a given additive attention mask (broadcast to `[B, heads, T, Tk]`)
    /// and rotary tables (`[T, d]`, or `[B, 1, T, d]` per row).
    #[allow(clippy::too_many_arguments)]
    fn layers_on(
        &self,
        h: &Tensor,
        from: usize,
        to: usize,
        ctx: &ForwardCtx,
        mask: &Tensor,
        rope_at: (&Tensor, &Tensor),
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let tiled;
        let mask = if cache.is_some() {
            tiled = tile_mask(
                mask,
                self.config.num_attention_heads / self.config.kv_heads(),
            )?;
            &tiled
        } else {
            mask
        };
        let mut h = h.clone();
        for (li, block) in self.layers[from..to].iter().enumerate() {
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[from + li]);
            let a = self.attention(
                block,
                &rms_norm(&h, &block.input_norm, eps)?,
                mask,
                ctx,
                rope_at,
                lc,
            )?;
            h = (h + a)?;
            let m = self.mlp(block, &rms_norm(&h, &block.post_norm, eps)?, ctx)?;
            h = (h + m)?;
        }
        Ok(h)
    }

    /// `[T, pos + T]`: 0 where token `pos + i` may attend position `j` (`j ≤ pos + i`), −∞ elsewhere.
    fn mask(&self, t: usize, pos: usize) -> Result<Tensor> {
        let tk = pos + t;
        let m: Vec<f32> = (0..t * tk)
            .map(|x| {
                if x % tk > pos + x / tk {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(m, (t, tk), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Logits `[B, T, V]` of new tokens `ids: [B, T]` starting at position `pos`, reusing and
    /// extending `cache` (inference: generation with a KV cache).
    pub fn forward_cached(&self, ids: &Tensor, pos: usize, cache: &mut KvCache) -> Result<Tensor> {
        let ctx = ForwardCtx::eval();
        let h = self.hidden_at(
            &self.embed(ids)?,
            0,
            self.layers.len(),
            &ctx,
            pos,
            Some(cache),
        )?;
        self.logits(&rms_norm(&h, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Last-column logits `[B, V]` of new tokens `ids: [B, T]` for rows that were left-padded:
    /// row `r`'s first `pads[r]` columns (of every call, cached ones included) are padding. The new
    /// tokens take columns `col..col + T` of the cache; row `r`'s token in column `c` sits at
    /// position `c − pads[r]`, so RoPE starts at 0 on its first real token, and padded keys get −∞:
    /// each row computes what it would alone (up to float summation order).
    pub fn forward_padded_last(
        &self,
        ids: &Tensor,
        col: usize,
        pads: &[usize],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let h = self.hidden_padded(&self.embed(ids)?, 0, self.layers.len(), col, pads, cache)?;
        self.logits_last(&h)
    }

    /// Logits `[B, V]` of the last column of hidden states `h: [B, T, H]` leaving the top layer.
    pub fn logits_last(&self, h: &Tensor) -> Result<Tensor> {
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.logits(&rms_norm(&last, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Layers `from..to` of [`Self::forward_padded_last`] on hidden states `h: [B, T, H]` of
    /// left-padded rows (same `col`, `pads`), extending `cache`'s layers `from..to`: with
    /// `to < num_layers` the lower layers of a prefill shared by several adapters, with `from > 0`
    /// the rest of it. Returns the hidden states `[B, T, H]` after layer `to`.
    pub fn hidden_padded(
        &self,
        h: &Tensor,
        from: usize,
        to: usize,
        col: usize,
        pads: &[usize],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        if pads.len() != b || pads.iter().any(|&p| p > col + t) || t == 0 {
            return Err(Error::InvalidArgument(format!(
                "forward_padded_last: {} pad counts for {b} rows of {} columns",
                pads.len(),
                col + t
            )));
        }
        if from > to || to > self.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "layers {from}..{to} of a model with {}",
                self.layers.len()
            )));
        }
        self.check_length(col + t - pads.iter().min().copied().unwrap_or(0))?;
        let tk = col + t;
        let mut m = vec![0f32; b * t * tk];
        let mut at = Vec::with_capacity(b * t);
        for (r, &pad) in pads.iter().enumerate() {
            for i in 0..t {
                let q = col + i;
                at.push(q.saturating_sub(pad) as u32);
                for j in 0..tk {
                    // A padding query sees only itself, so its (unused) state stays finite.
                    let visible = if q < pad { j == q } else { j >= pad && j <= q };
                    if !visible {
                        m[(r * t + i) * tk + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, tk), &self.device)?.to_dtype(self.dtype)?;
        let at = Tensor::from_vec(at, b * t, &self.device)?;
        let d = self.cos.dim(1)?;
        let cos = self.cos.index_select(&at, 0)?.reshape((b, 1, t, d))?;
        let sin = self.sin.index_select(&at, 0)?.reshape((b, 1, t, d))?;
        self.layers_on(
            h,
            from,
            to,
            &ForwardCtx::eval(),
            &mask,
            (&cos, &sin),
            Some(cache),
        )
    }

    /// Logits `[B, T, V]` for `ids: [B, T]`.
    pub fn forward(&self, ids: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_from(&self.embed(ids)?, 0, ctx)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A one-layer cache of `b` rows with `len` positions appended in two steps.
    fn filled(b: usize, len: usize) -> (KvCache, Tensor, Tensor) {
        let dev = Device::Cpu;
        let k = Tensor::randn(0f32, 1.0, (b, 2, len, 3), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, 2, len, 3), &dev).unwrap();
        let mut c = KvCache {
            layers: vec![LayerCache::default()],
        };
        let h = len / 2;
        let l = &mut c.layers[0];
        l.append(&k.narrow(2, 0, h).unwrap(), &v.narrow(2, 0, h).unwrap())
            .unwrap();
        l.append(
            &k.narrow(2, h, len - h).unwrap(),
            &v.narrow(2, h, len - h).unwrap(),
        )
        .unwrap();
        (c, k, v)
    }

    /// The filled `[B, G, len, d]` keys and values of the cache's layer.
    fn filled_kv(c: &KvCache) -> (Vec<f32>, Vec<f32>) {
        let l = &c.layers[0];
        let get = |t: &Option<Tensor>| values(&t.as_ref().unwrap().narrow(2, 0, l.len).unwrap());
        (get(&l.k), get(&l.v))
    }

    /// Regression for the in-place beam reorder: rows move (overlapping: 0 ← 2, 1 ← 0, 2 ← 0),
    /// the batch shrinks, and the result is `index_select`'s; appending afterwards still works.
    #[test]
    fn select_in_place_is_index_select_and_appends_after() {
        let (mut c, k, v) = filled(4, 5);
        assert!(c.layers[0].owned.load(Ordering::Relaxed));
        let idx = [2u32, 0, 0];
        c.select(&idx).unwrap();
        let i = Tensor::new(&idx, &Device::Cpu).unwrap();
        let (gk, gv) = filled_kv(&c);
        assert_eq!(gk, values(&k.index_select(&i, 0).unwrap()));
        assert_eq!(gv, values(&v.index_select(&i, 0).unwrap()));
        // one more position on the 3 surviving rows
        let (k1, v1) = (
            Tensor::ones((3, 2, 1, 3), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((3, 2, 1, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let (ka, _) = c.layers[0].append(&k1, &v1).unwrap();
        let want = Tensor::cat(&[k.index_select(&i, 0).unwrap(), k1], 2).unwrap();
        assert_eq!(values(&ka), values(&want));
    }

    /// `own_copy` of a contiguous view does not share its storage: rewriting the source after
    /// leaves the copy as it was.
    #[test]
    fn own_copy_of_a_contiguous_view_is_its_own() {
        let x = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let c = own_copy(&x.narrow(0, 1, 1).unwrap()).unwrap();
        x.slice_set(
            &Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
            0,
            0,
        )
        .unwrap();
        assert_eq!(values(&c), [3.0, 4.0, 5.0]);
    }

    /// A clone shares the buffers: reordering either one must leave the other's rows alone.
    #[test]
    fn select_never_writes_into_a_clone_s_rows() {
        let (mut c, k, _) = filled(3, 4);
        let kept = c.clone();
        c.select(&[1, 1, 0]).unwrap();
        assert_eq!(filled_kv(&kept).0, values(&k));
        let mut other = kept.clone();
        other.select(&[2, 0, 1]).unwrap();
        assert_eq!(filled_kv(&kept).0, values(&k));
        let i = Tensor::new(&[1u32, 1, 0], &Device::Cpu).unwrap();
        assert_eq!(filled_kv(&c).0, values(&k.index_select(&i, 0).unwrap()));
    }
}
