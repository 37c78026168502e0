//! A Hugging Face `config.json` of a LLaMA-family decoder (`model_type` llama, mistral or qwen2),
//! read field by field as transformers 5.24 reads it, and the shapes it implies.
//!
//! Every field that changes what transformers computes is either honoured (rotary base and scaling
//! in both the legacy `rope_theta` + `rope_scaling` form and transformers 5's `rope_parameters`,
//! explicit `head_dim`, biases, Mistral's sliding window) or refused with the field and its value
//! named. Fields transformers does not read for these families (`_name_or_path`, token ids, dtype…)
//! are ignored, as transformers ignores them.

use crate::error::{Error, Result};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::path::Path;

/// The configs shipped with tsd (`data/configs/`), selectable by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("llama-7b", include_str!("../../data/configs/llama-7b.json")),
    (
        "llama2-7b",
        include_str!("../../data/configs/llama2-7b.json"),
    ),
    (
        "llama3-8b",
        include_str!("../../data/configs/llama3-8b.json"),
    ),
];

/// Which transformers implementation the config describes (`model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM` (Llama 1/2/3/3.1/3.2, SmolLM…): optional biases, any supported RoPE.
    Llama,
    /// `MistralForCausalLM`: no biases, a sliding attention window.
    Mistral,
    /// `Qwen2ForCausalLM`: biases on q, k, v (not o), no MLP biases.
    Qwen2,
}

impl Family {
    /// The `model_type` string.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }

    /// The transformers class of the causal-LM head model.
    pub fn causal_lm(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn from_model_type(t: &str) -> Option<Self> {
        match t {
            "llama" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            _ => None,
        }
    }
}

/// How the rotary inverse frequencies are derived (`rope_type`, transformers'
/// `ROPE_INIT_FUNCTIONS`); all three leave cos/sin unscaled (attention factor 1).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `θ^(−2i/d)`.
    Default,
    /// Position interpolation: the default frequencies divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's band-wise scaling: wavelengths above `original / low_freq_factor` divided by
    /// `factor`, below `original / high_freq_factor` kept, smoothly interpolated between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The fields of a LLaMA-family config that change the computation, resolved with the family's
/// transformers defaults. Serialises back to a `config.json` that [`LlamaConfig::from_json`] reads.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// Biases on q_proj, k_proj, v_proj (llama `attention_bias`; always for qwen2).
    pub qkv_bias: bool,
    /// A bias on o_proj (llama `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate_proj, up_proj, down_proj (llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Mistral's attention window: token `i` sees keys `(i − w, i]`. tsd refuses sequences longer
    /// than `w` (where the window would start to cut) instead of masking.
    pub sliding_window: Option<usize>,
}

/// Keys that signal an architecture tsd does not implement, whatever `model_type` says.
const REFUSED_KEYS: &[(&str, &str)] = &[
    (
        "num_local_experts",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "num_experts",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "num_experts_per_tok",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "n_routed_experts",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "n_shared_experts",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "moe_intermediate_size",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "shared_expert_intermediate_size",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "router_aux_loss_coef",
        "mixture-of-experts layers are not implemented",
    ),
    (
        "attn_logit_softcapping",
        "attention logit soft-capping is not implemented",
    ),
    (
        "final_logit_softcapping",
        "final logit soft-capping is not implemented",
    ),
    (
        "quantization_config",
        "quantized checkpoints are not read (dequantize to float first)",
    ),
];

/// Reads one config object, naming `origin` and the field in every refusal.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a Path,
}

impl Reader<'_> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.origin.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The value of `key` unless absent or `null`.
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.err(format!("`{key}` = {v}: expected a non-negative integer"))),
        }
    }

    fn required(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| self.err(format!("`{key}` missing: tsd needs it to build the model")))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` = {v}: expected a number"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` = {v}: expected true or false"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` = {v}: expected a string"))),
        }
    }
}

impl LlamaConfig {
    /// Parses and validates a config, naming `origin` in errors: an unsupported `model_type` or a
    /// field whose value tsd does not implement is an [`Error::Config`] (exit code 2).
    pub fn from_json(value: Value, origin: &Path) -> Result<Self> {
        let Some(obj) = value.as_object() else {
            return Err(Error::Config {
                path: origin.to_path_buf(),
                reason: "not a model config: expected a JSON object".into(),
            });
        };
        let r = Reader { obj, origin };
        let family = read_family(&r)?;
        refuse_unimplemented(&r, family)?;
        let Heads {
            hidden_size,
            num_attention_heads,
            head_dim: hd,
            kv,
            max_position_embeddings,
        } = read_heads(&r, family)?;
        let (qkv_bias, o_bias, mlp_bias) = read_biases(&r, family)?;
        let sliding_window = read_sliding_window(&r, family)?;
        let (rope_theta, rope_scaling) = read_rope(&r, max_position_embeddings)?;
        let cfg = LlamaConfig {
            family,
            hidden_size,
            intermediate_size: r.required("intermediate_size")?,
            num_hidden_layers: r.required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: Some(kv),
            head_dim: Some(hd),
            vocab_size: r.required("vocab_size")?,
            tie_word_embeddings: r.bool("tie_word_embeddings")?.unwrap_or(false),
            rms_norm_eps: r.f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
        };
        Ok(cfg)
    }

    /// A built-in config by name (`llama-7b`, `llama2-7b`, `llama3-8b`).
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, text)| {
            let v: Value = serde_json::from_str(text).expect("shipped configs are valid JSON");
            LlamaConfig::from_json(v, Path::new(n)).expect("shipped configs are valid")
        })
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// `(out, in)` of a per-layer linear module by its short name (`q_proj`, …, `down_proj`).
    pub fn linear_shape(&self, module: &str) -> Option<(usize, usize)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        Some(match module {
            "q_proj" => (q, h),
            "k_proj" | "v_proj" => (kv, h),
            "o_proj" => (h, q),
            "gate_proj" | "up_proj" => (i, h),
            "down_proj" => (h, i),
            _ => return None,
        })
    }

    /// Whether the base linear `module` (short name) carries a bias `[out]`.
    pub fn has_bias(&self, module: &str) -> bool {
        match module {
            "q_proj" | "k_proj" | "v_proj" => self.qkv_bias,
            "o_proj" => self.o_bias,
            "gate_proj" | "up_proj" | "down_proj" => self.mlp_bias,
            _ => false,
        }
    }

    /// Total parameters of the model: embeddings, every layer's 7 linears (with their biases) and 2
    /// RMSNorms, the final norm, and the LM head unless tied — transformers' `num_parameters()`.
    pub fn total_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let per_layer: u64 = crate::names::LINEARS
            .iter()
            .map(|m| {
                let (o, i) = self.linear_shape(m).expect("known module");
                let bias = if self.has_bias(m) { o } else { 0 };
                (o * i + bias) as u64
            })
            .sum::<u64>()
            + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers as u64 * per_layer + h + head
    }

    /// Rotary inverse frequencies `[head_dim / 2]`, computed in f32 in the order transformers'
    /// rope init functions compute them (so band edges of `llama3` fall on the same side).
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let base = self.rope_theta as f32;
        let default = (0..d / 2).map(move |i| 1.0 / base.powf((2 * i) as f32 / d as f32));
        match self.rope_scaling {
            RopeScaling::Default => default.collect(),
            RopeScaling::Linear { factor } => default.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (factor as f32, low_freq_factor, high_freq_factor);
                let old = original_max_position_embeddings as f64;
                let low_wavelen = (old / low) as f32;
                let high_wavelen = (old / high) as f32;
                default
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            return scaled;
                        }
                        let smooth = (old as f32 / wavelen - low as f32) / (high - low) as f32;
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    })
                    .collect()
            }
        }
    }

    /// The config as transformers 5 writes it (`rope_parameters`), for `config.json` files tsd writes.
    pub fn to_json(&self) -> Value {
        let mut rope = serde_json::json!({ "rope_theta": self.rope_theta });
        match self.rope_scaling {
            RopeScaling::Default => rope["rope_type"] = "default".into(),
            RopeScaling::Linear { factor } => {
                rope["rope_type"] = "linear".into();
                rope["factor"] = factor.into();
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                rope["rope_type"] = "llama3".into();
                rope["factor"] = factor.into();
                rope["low_freq_factor"] = low_freq_factor.into();
                rope["high_freq_factor"] = high_freq_factor.into();
                rope["original_max_position_embeddings"] = original_max_position_embeddings.into();
            }
        }
        let mut v = serde_json::json!({
            "architectures": [self.family.causal_lm()],
            "model_type": self.family.name(),
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_dim(),
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": rope,
        });
        match self.family {
            Family::Llama => {
                v["attention_bias"] = self.qkv_bias.into();
                v["mlp_bias"] = self.mlp_bias.into();
            }
            Family::Mistral => v["sliding_window"] = self.sliding_window.into(),
            Family::Qwen2 => v["use_sliding_window"] = false.into(),
        }
        v
    }
}

impl Serialize for LlamaConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// `model_type`, which must name a family tsd implements.
fn read_family(r: &Reader) -> Result<Family> {
    let family = match r.str("model_type")? {
        None => return Err(r.err(
            "`model_type` missing: tsd needs it to know the model family (llama, mistral, qwen2)",
        )),
        Some(t) => Family::from_model_type(t).ok_or_else(|| {
            r.err(format!(
                "`model_type` = \"{t}\" is not supported (tsd implements llama, mistral, qwen2)"
            ))
        })?,
    };
    Ok(family)
}

/// Refuses the fields whose values tsd does not implement (in the order they are checked).
fn refuse_unimplemented(r: &Reader, family: Family) -> Result<()> {
    for (key, why) in REFUSED_KEYS {
        if let Some(v) = r.get(key) {
            return Err(r.err(format!("`{key}` = {v}: {why}")));
        }
    }
    if let Some(archs) = r.get("architectures") {
        let names: Vec<&str> = archs
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let want = family.causal_lm();
        if !names.iter().any(|n| n.eq_ignore_ascii_case(want)) {
            return Err(r.err(format!(
                "`architectures` = {archs}: tsd implements {want} for model_type {}",
                family.name()
            )));
        }
    }
    match r.str("hidden_act")? {
        None | Some("silu") | Some("swish") => {}
        Some(a) => {
            return Err(r.err(format!(
                "`hidden_act` = \"{a}\" is not supported (tsd implements silu)"
            )))
        }
    }
    if let Some(p) = r.f64("attention_dropout")? {
        if p != 0.0 {
            return Err(r.err(format!(
                "`attention_dropout` = {p} is not implemented (tsd trains without attention dropout)"
            )));
        }
    }
    if let Some(p) = r.f64("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(r.err(format!(
                "`partial_rotary_factor` = {p} is not implemented (tsd rotates the whole head)"
            )));
        }
    }
    if let Some(types) = r.get("layer_types") {
        let all_full = types
            .as_array()
            .is_some_and(|a| a.iter().all(|t| t == "full_attention"));
        if family == Family::Mistral || !all_full {
            return Err(r.err(format!(
                "`layer_types` = {types}: per-layer attention types are not implemented"
            )));
        }
    }
    Ok(())
}

/// The attention geometry: sizes, heads, the head dimension, key/value heads and positions.
struct Heads {
    hidden_size: usize,
    num_attention_heads: usize,
    head_dim: usize,
    kv: usize,
    max_position_embeddings: usize,
}

/// [`Heads`], checked (heads split the hidden size, even head dimension, kv heads divide heads),
/// with transformers' class defaults where a key is absent.
fn read_heads(r: &Reader, family: Family) -> Result<Heads> {
    let hidden_size = r.required("hidden_size")?;
    let num_attention_heads = r.required("num_attention_heads")?;
    let head_dim = r.usize("head_dim")?;
    if num_attention_heads == 0 || head_dim.is_none() && hidden_size % num_attention_heads != 0 {
        return Err(r.err(format!(
            "hidden_size {hidden_size} must split into num_attention_heads {num_attention_heads} heads"
        )));
    }
    let hd = head_dim.unwrap_or(hidden_size / num_attention_heads);
    if hd == 0 || hd % 2 != 0 {
        return Err(r.err(format!(
            "head dimension {hd} must be even and positive for rotary embeddings"
        )));
    }
    // transformers' class defaults when the key is absent.
    let kv_default = match family {
        Family::Llama => num_attention_heads,
        Family::Mistral => 8,
        Family::Qwen2 => 32,
    };
    let kv = r.usize("num_key_value_heads")?.unwrap_or(kv_default);
    if kv == 0 || num_attention_heads % kv != 0 {
        return Err(r.err(format!(
            "num_key_value_heads {kv} must divide num_attention_heads {num_attention_heads}"
        )));
    }
    let max_position_embeddings = r.usize("max_position_embeddings")?.unwrap_or(match family {
        Family::Llama => 2048,
        Family::Mistral => 4096 * 32,
        Family::Qwen2 => 32768,
    });
    Ok(Heads {
        hidden_size,
        num_attention_heads,
        head_dim: hd,
        kv,
        max_position_embeddings,
    })
}

/// `(qkv_bias, o_bias, mlp_bias)`: Llama's flags, or the family's built-in biases (a flag that
/// contradicts them is refused).
fn read_biases(r: &Reader, family: Family) -> Result<(bool, bool, bool)> {
    let attention_bias = r.bool("attention_bias")?;
    let mlp_bias = r.bool("mlp_bias")?;
    let biases = match family {
        Family::Llama => {
            let a = attention_bias.unwrap_or(false);
            (a, a, mlp_bias.unwrap_or(false))
        }
        fixed => {
            let q = fixed == Family::Qwen2;
            // transformers hard-codes these for the family and ignores the flags: a flag that
            // says otherwise is a contradiction, not something to guess about.
            for (key, v) in [("attention_bias", attention_bias), ("mlp_bias", mlp_bias)] {
                let built_in = key == "attention_bias" && q;
                if v.is_some_and(|v| v != built_in) {
                    return Err(r.err(format!(
                        "`{key}` = {} contradicts transformers' {} (which {} it)",
                        v.unwrap_or_default(),
                        fixed.causal_lm(),
                        if built_in { "always has" } else { "never has" }
                    )));
                }
            }
            (q, false, false)
        }
    };
    Ok(biases)
}

/// The sliding window: Mistral's (default 4096, `null` off); refused for Llama and Qwen2.
fn read_sliding_window(r: &Reader, family: Family) -> Result<Option<usize>> {
    let use_sliding = r.bool("use_sliding_window")?;
    let window = r.usize("sliding_window")?;
    let sliding_window = match family {
        // MistralConfig's default window is 4096; `null` turns it off.
        Family::Mistral => match r.obj.get("sliding_window") {
            None => Some(4096),
            Some(_) => window,
        },
        Family::Qwen2 => {
            if use_sliding == Some(true) {
                return Err(r.err(
                    "`use_sliding_window` = true: Qwen2's sliding-window layers are not implemented",
                ));
            }
            None
        }
        Family::Llama => {
            if use_sliding == Some(true) {
                return Err(r.err("`use_sliding_window` = true is not implemented for llama"));
            }
            if let Some(w) = window {
                return Err(r.err(format!(
                    "`sliding_window` = {w}: transformers' Llama has no sliding window (use model_type mistral)"
                )));
            }
            None
        }
    };
    if sliding_window == Some(0) {
        return Err(r.err("`sliding_window` = 0 leaves no token to attend to"));
    }
    Ok(sliding_window)
}

/// `rope_theta` and the scaling, from `rope_scaling` (legacy; transformers gives it priority) or
/// `rope_parameters` (transformers 5), with `rope_theta` inside the dict winning over the top level.
fn read_rope(r: &Reader, max_pos: usize) -> Result<(f64, RopeScaling)> {
    let dict_of = |key: &str| -> Result<Option<&Map<String, Value>>> {
        match r.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) if m.is_empty() => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(r.err(format!("`{key}` = {v}: expected an object"))),
        }
    };
    let (scaling, params) = (dict_of("rope_scaling")?, dict_of("rope_parameters")?);
    let (key, dict) = match (scaling, params) {
        (Some(a), Some(b)) if !same_rope(a, b) => {
            return Err(r.err(
                "`rope_scaling` and `rope_parameters` disagree: tsd will not guess which one the checkpoint was trained with",
            ))
        }
        (Some(a), _) => ("rope_scaling", Some(a)),
        (None, Some(b)) => ("rope_parameters", Some(b)),
        (None, None) => ("rope_parameters", None),
    };
    let top_theta = r.f64("rope_theta")?;
    let Some(dict) = dict else {
        return Ok((top_theta.unwrap_or(10_000.0), RopeScaling::Default));
    };
    let sub = Reader {
        obj: dict,
        origin: r.origin,
    };
    if let Some((k, _)) = dict.iter().find(|(_, v)| v.is_object()) {
        return Err(r.err(format!(
            "`{key}.{k}`: per-layer-type rotary settings are not implemented"
        )));
    }
    let field = |f: &str| -> Result<f64> {
        sub.f64(f)?
            .ok_or_else(|| r.err(format!("`{key}.{f}` missing (required by its rope_type)")))
    };
    let theta = sub.f64("rope_theta")?.or(top_theta).unwrap_or(10_000.0);
    if let Some(p) = sub.f64("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(r.err(format!(
                "`{key}.partial_rotary_factor` = {p} is not implemented (tsd rotates the whole head)"
            )));
        }
    }
    let rope_type = match sub.str("rope_type")? {
        Some(t) => t,
        None => sub.str("type")?.unwrap_or("default"),
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: field("factor")?,
        },
        "llama3" => {
            // transformers: a top-level `original_max_position_embeddings` wins, then the dict's,
            // then max_position_embeddings.
            let original = match r.usize("original_max_position_embeddings")? {
                Some(o) => o,
                None => sub.usize("original_max_position_embeddings")?.unwrap_or(max_pos),
            };
            let s = RopeScaling::Llama3 {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_position_embeddings: original,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor: lo,
                high_freq_factor: hi,
                ..
            } = s
            {
                if !(hi > lo && lo > 0.0) || original == 0 {
                    return Err(r.err(format!(
                        "`{key}`: llama3 needs 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0 (got {lo}, {hi}, {original})"
                    )));
                }
            }
            s
        }
        other => {
            return Err(r.err(format!(
                "`{key}.rope_type` = \"{other}\" is not implemented (tsd implements default, linear, llama3)"
            )))
        }
    };
    if let RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. } = scaling {
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(r.err(format!("`{key}.factor` = {factor} must be positive")));
        }
    }
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(r.err(format!("`rope_theta` = {theta} must be positive")));
    }
    Ok((theta, scaling))
}

/// Whether two rope dicts say the same thing (`type` and `rope_type` are aliases).
fn same_rope(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let norm = |m: &Map<String, Value>| {
        let mut m = m.clone();
        if let Some(t) = m.remove("type") {
            m.entry("rope_type").or_insert(t);
        }
        m
    };
    let (a, b) = (norm(a), norm(b));
    a.iter()
        .all(|(k, v)| k == "rope_theta" || b.get(k).is_none_or(|w| w == v))
        && a.get("rope_type") == b.get("rope_type")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<LlamaConfig> {
        LlamaConfig::from_json(v, Path::new("config.json"))
    }

    fn base(extra: Value) -> Value {
        let mut v = serde_json::json!({
            "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 32,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn builtin_parameter_counts_match_the_published_sizes() {
        assert_eq!(
            LlamaConfig::builtin("llama-7b").unwrap().total_params(),
            6_738_415_616
        );
        assert_eq!(
            LlamaConfig::builtin("llama2-7b").unwrap().total_params(),
            6_738_415_616
        );
        let l3 = LlamaConfig::builtin("llama3-8b").unwrap();
        assert_eq!(l3.total_params(), 8_030_261_248);
        assert_eq!(l3.rope_theta, 500_000.0);
        assert!(LlamaConfig::builtin("gpt2").is_none());
    }

    /// Llama 3.1's published frequencies: θ = 500000, d = 128, factor 8, bands 1/4, original 8192.
    /// Below wavelength 2048 unchanged, above 8192 divided by 8, between interpolated.
    #[test]
    fn llama3_inverse_frequencies_follow_the_three_bands() {
        let cfg = parse(base(serde_json::json!({
            "hidden_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4,
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        })))
        .unwrap();
        let plain = LlamaConfig {
            rope_scaling: RopeScaling::Default,
            ..cfg.clone()
        };
        let (got, f) = (cfg.inv_freq(), plain.inv_freq());
        let mut bands = [0usize; 3];
        for (g, f) in got.iter().zip(&f) {
            let wavelen = 2.0 * std::f64::consts::PI / *f as f64;
            if wavelen < 2048.0 {
                assert_eq!(g, f);
                bands[0] += 1;
            } else if wavelen > 8192.0 {
                assert!((g * 8.0 / f - 1.0).abs() < 1e-6);
                bands[2] += 1;
            } else {
                let s = (8192.0 / wavelen - 1.0) / 3.0;
                let want = ((1.0 - s) / 8.0 + s) * *f as f64;
                assert!((*g as f64 / want - 1.0).abs() < 1e-5);
                bands[1] += 1;
            }
        }
        assert!(
            bands.iter().all(|&n| n > 0),
            "every band is exercised: {bands:?}"
        );
    }

    #[test]
    fn rope_scaling_and_rope_parameters_are_the_same_setting() {
        let legacy = parse(base(serde_json::json!({
            "rope_theta": 5000.0, "rope_scaling": {"type": "linear", "factor": 4.0}
        })))
        .unwrap();
        let v5 = parse(base(serde_json::json!({
            "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0}
        })))
        .unwrap();
        assert_eq!(legacy, v5);
        assert_eq!(legacy.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        // tsd's own config.json round-trips.
        assert_eq!(parse(legacy.to_json()).unwrap(), legacy);
        let disagree = parse(base(serde_json::json!({
            "rope_scaling": {"type": "linear", "factor": 4.0},
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}
        })));
        assert!(disagree.unwrap_err().to_string().contains("disagree"));
    }

    #[test]
    fn family_defaults_and_biases_follow_transformers() {
        let q = parse(base(serde_json::json!({"model_type": "qwen2"}))).unwrap();
        assert!(q.qkv_bias && !q.o_bias && !q.mlp_bias && q.sliding_window.is_none());
        let m = parse(base(serde_json::json!({"model_type": "mistral"}))).unwrap();
        assert_eq!(m.sliding_window, Some(4096));
        let m = parse(base(
            serde_json::json!({"model_type": "mistral", "sliding_window": null}),
        ));
        assert_eq!(m.unwrap().sliding_window, None);
        let l = parse(base(
            serde_json::json!({"attention_bias": true, "mlp_bias": true}),
        ))
        .unwrap();
        let plain = parse(base(serde_json::json!({}))).unwrap();
        // q 32 + k 16 + v 16 + o 32 + gate 48 + up 48 + down 32 per layer, 2 layers.
        assert_eq!(l.total_params() - plain.total_params(), 2 * 224);
        assert_eq!(q.total_params() - plain.total_params(), 2 * 64);
    }

    #[test]
    fn unsupported_settings_are_refused_naming_the_field() {
        for (extra, needle) in [
            (
                serde_json::json!({"model_type": "gemma"}),
                "`model_type` = \"gemma\"",
            ),
            (
                serde_json::json!({"hidden_act": "gelu"}),
                "`hidden_act` = \"gelu\"",
            ),
            (
                serde_json::json!({"num_local_experts": 8}),
                "`num_local_experts`",
            ),
            (
                serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
                "`rope_scaling.rope_type` = \"yarn\"",
            ),
            (
                serde_json::json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}),
                "`rope_parameters.rope_type` = \"dynamic\"",
            ),
            (
                serde_json::json!({"rope_scaling": {"rope_type": "linear"}}),
                "`rope_scaling.factor` missing",
            ),
            (
                serde_json::json!({"attn_logit_softcapping": 50.0}),
                "softcapping",
            ),
            (
                serde_json::json!({"model_type": "qwen2", "use_sliding_window": true}),
                "`use_sliding_window` = true",
            ),
            (
                serde_json::json!({"model_type": "mistral", "attention_bias": true}),
                "`attention_bias` = true",
            ),
            (
                serde_json::json!({"architectures": ["LlamaForSequenceClassification"]}),
                "`architectures`",
            ),
            (serde_json::json!({"head_dim": 7}), "must be even"),
            (serde_json::json!({"num_key_value_heads": 3}), "must divide"),
        ] {
            let e = parse(base(extra.clone())).expect_err(&extra.to_string());
            assert!(e.is_user_input());
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
        let mut v = base(serde_json::json!({}));
        v.as_object_mut().unwrap().remove("model_type");
        assert!(parse(v)
            .unwrap_err()
            .to_string()
            .contains("`model_type` missing"));
    }
}
