//! A LLaMA-family decoder in candle (RMSNorm, rotary embeddings in Hugging Face's half-split layout,
//! grouped-query attention, SwiGLU MLP, tied or untied LM head), written here so that every linear
//! layer is an [`AdaptedLinear`] that LoRA, LoRA-Dash or full fine-tuning can wrap. Weights are found
//! by their Hugging Face names through a [`WeightSource`], whichever file they came from.
//!
//! Every op used has a backward pass (candle's fused `rms_norm`/`softmax_last_dim` have none, so parameters before them would get no gradient).

use super::LlamaConfig;
use crate::error::{Error, Result};
use crate::nn::attention::{repeat_kv, rope_composed as rope, split_heads};
use crate::nn::{AdaptedLinear, ForwardCtx, FrozenLinear};
use crate::weights::WeightSource;
use candle_core::{DType, Device, Module, Tensor};

/// The linear modules of a LLaMA layer, in HF order.
pub const LINEARS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One decoder layer.
pub struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    /// q, k, v, o, gate, up, down (see [`LINEARS`]).
    pub linears: Vec<AdaptedLinear>,
}

/// Keys and values of one layer, `[B, kv_heads, T_past, head_dim]`.
#[derive(Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
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

    /// Keeps batch rows `idx` (in that order), e.g. to follow the surviving beams.
    pub fn select(&mut self, idx: &[u32]) -> Result<()> {
        for l in &mut self.layers {
            for t in [&mut l.k, &mut l.v] {
                if let Some(x) = t.as_ref() {
                    let i = Tensor::from_vec(idx.to_vec(), idx.len(), x.device())?;
                    *t = Some(x.index_select(&i, 0)?);
                }
            }
        }
        Ok(())
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

impl Llama {
    /// Loads every weight by its HF name; checks each shape against `config`.
    pub fn load(
        src: &dyn WeightSource,
        config: LlamaConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed = load_tensor(src, "model.embed_tokens.weight", &[v, h], device, dtype)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut linears = Vec::with_capacity(7);
            for name in LINEARS {
                let (o, i) = config.linear_shape(name).expect("known module");
                let group = if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&name) {
                    "self_attn"
                } else {
                    "mlp"
                };
                let module = format!("{p}.{group}.{name}");
                let w = load_tensor(src, &format!("{module}.weight"), &[o, i], device, dtype)?;
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
            });
        }
        let norm = load_tensor(src, "model.norm.weight", &[h], device, dtype)?;
        let lm_head = if config.tie_word_embeddings || !src.has("lm_head.weight") {
            FrozenLinear::new(embed.clone())
        } else {
            FrozenLinear::new(load_tensor(src, "lm_head.weight", &[v, h], device, dtype)?)
        };
        let hd = config.head_dim();
        let max_pos = config.max_position_embeddings.clamp(1, 8192);
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (config.rope_theta as f32).powf(2.0 * i as f32 / hd as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * hd);
        let mut sin = Vec::with_capacity(max_pos * hd);
        for p in 0..max_pos {
            // emb = cat(freqs, freqs): the two halves of each head share frequencies.
            for f in inv.iter().chain(inv.iter()) {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (max_pos, hd), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_pos, hd), device)?.to_dtype(dtype)?;
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

    /// All adapted linears, layer by layer in [`LINEARS`] order.
    pub fn linears(&self) -> impl Iterator<Item = &AdaptedLinear> {
        self.layers.iter().flat_map(|b| b.linears.iter())
    }

    /// Mutable access to all linears.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut AdaptedLinear> {
        self.layers.iter_mut().flat_map(|b| b.linears.iter_mut())
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
        pos: usize,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            self.config.num_attention_heads,
            self.config.kv_heads(),
            self.config.head_dim(),
        );
        let q = block.linears[0].forward(x, ctx)?;
        let k = block.linears[1].forward(x, ctx)?;
        let v = block.linears[2].forward(x, ctx)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let Some(c) = cache else {
            // The whole sequence at once (training, scoring): one fused op on the CPU.
            let y = crate::nn::attention::causal_attention(&q, &k, &v, &cos, &sin, nh, nkv)?;
            return block.linears[3].forward(&y, ctx);
        };
        let q = rope(&split_heads(&q, nh)?, &cos, &sin)?;
        let k = rope(&split_heads(&k, nkv)?, &cos, &sin)?;
        let v = split_heads(&v, nkv)?;
        let k = match &c.k {
            Some(pk) => Tensor::cat(&[pk, &k], 2)?,
            None => k,
        };
        let v = match &c.v {
            Some(pv) => Tensor::cat(&[pv, &v], 2)?,
            None => v,
        };
        c.k = Some(k.clone());
        c.v = Some(v.clone());
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        let att = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        let att = att.broadcast_add(mask)?;
        let att = crate::nn::fused::softmax_last(&att)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * hd))?;
        block.linears[3].forward(&y, ctx)
    }

    fn mlp(&self, block: &Block, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let g = block.linears[4].forward(x, ctx)?;
        let u = block.linears[5].forward(x, ctx)?;
        block.linears[6].forward(&crate::nn::fused::swiglu(&g, &u)?, ctx)
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
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let t = h.dim(1)?;
        if pos + t > self.max_positions() {
            return Err(Error::InvalidArgument(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                pos + t,
                self.max_positions()
            )));
        }
        let mask = self.mask(t, pos)?;
        let eps = self.config.rms_norm_eps;
        let mut h = h.clone();
        for (li, block) in self.layers[from..to].iter().enumerate() {
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[from + li]);
            let a = self.attention(
                block,
                &rms_norm(&h, &block.input_norm, eps)?,
                &mask,
                ctx,
                pos,
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

    /// Logits `[B, T, V]` for `ids: [B, T]`.
    pub fn forward(&self, ids: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_from(&self.embed(ids)?, 0, ctx)
    }
}
