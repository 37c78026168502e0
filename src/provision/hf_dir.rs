//! A GGUF model written out as a Hugging Face model directory that transformers loads
//! (`tsd fetch --hf-dir DIR`): `config.json`, `model.safetensors` with every tensor in Hugging Face
//! names and layout, f32, exactly the values tsd computes with (dequantized, Q/K rows un-permuted:
//! [`crate::weights::gguf`]), `generation_config.json`, and the tokenizer tsd rebuilds from the GGUF metadata
//! (`tokenizer.json`, `tokenizer_config.json` with the GGUF's chat template and special tokens).
//! No machine path is written into any of them.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::weights::gguf::GgufModel;
use crate::weights::WeightSource;
use candle_core::quantized::gguf_file::Value;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

fn meta_string(m: &GgufModel, key: &str) -> Option<String> {
    m.content()
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok().cloned())
}

fn meta_u32(m: &GgufModel, key: &str) -> Option<u32> {
    m.content().metadata.get(key).and_then(|v| match v {
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    })
}

/// The `config.json` transformers reads for this GGUF: tsd's model config with the dtype, the
/// special token ids and `rope_parameters` (transformers ≥ 5's form of `rope_theta`).
pub fn hf_config(m: &GgufModel) -> serde_json::Value {
    let mut cfg = m.config_json().expect("a GGUF model has a config");
    let o = cfg.as_object_mut().expect("config is an object");
    o.insert("dtype".into(), "float32".into());
    o.insert("hidden_act".into(), "silu".into());
    o.insert("attention_bias".into(), false.into());
    o.insert("mlp_bias".into(), false.into());
    for (key, meta) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        o.insert(key.into(), meta_u32(m, meta).into());
    }
    if o.get("rope_scaling").is_some_and(|v| v.is_null()) {
        let theta = o.get("rope_theta").cloned().unwrap_or(10000.0.into());
        o.remove("rope_scaling");
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": theta}),
        );
    }
    cfg
}

/// `tokenizer_config.json`: the fast tokenizer class, the special tokens by name, and the GGUF's
/// chat template when it has one.
fn tokenizer_config(m: &GgufModel, tok: &tokenizers::Tokenizer) -> serde_json::Value {
    let name = |key: &str| meta_u32(m, key).and_then(|id| tok.id_to_token(id));
    let mut cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": m.config_json().and_then(|c| c["max_position_embeddings"].as_u64()),
        "clean_up_tokenization_spaces": false,
        "add_prefix_space": false,
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
    });
    if let Some(t) = meta_string(m, "tokenizer.chat_template") {
        cfg["chat_template"] = t.into();
    }
    cfg
}

/// Writes `dir` (created if missing; files replaced atomically, one by one).
pub fn write_hf_dir(m: &GgufModel, dir: &Path) -> Result<()> {
    let weights = dir.join("model.safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in m.names() {
        let (shape, data) = m.tensor(&name)?;
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    let views = tensors
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| crate::weights::tensor::st_error(&weights, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = crate::weights::serialize::serialize_sorted(views, meta)
        .map_err(|e| crate::weights::tensor::st_error(&weights, e))?;
    drop(tensors);
    let tok = crate::model::tokenizer::tokenizer_from_gguf(m.content(), m.path())?;
    let tok_json = tok.to_string(true).map_err(|e| Error::Json {
        path: dir.join("tokenizer.json"),
        reason: e.to_string(),
    })?;
    let cfg = hf_config(m);
    let generation = serde_json::json!({
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"],
        "pad_token_id": cfg["pad_token_id"],
    });
    fsutil::atomic_write(&weights, &bytes)?;
    fsutil::atomic_write(&dir.join("tokenizer.json"), tok_json.as_bytes())?;
    fsutil::write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config(m, &tok),
    )?;
    fsutil::write_json(&dir.join("generation_config.json"), &generation)?;
    // config.json last: a directory with it is complete.
    fsutil::write_json(&dir.join("config.json"), &cfg)
}
