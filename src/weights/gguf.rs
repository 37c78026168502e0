//! Base weights from a llama.cpp GGUF file (the default model, SmolLM2-135M-Instruct Q4_1).
//!
//! Names are mapped from llama.cpp's (`blk.N.attn_q.weight`) to Hugging Face's
//! (`model.layers.N.self_attn.q_proj.weight`), matrices are dequantized to f32, and the rows of Q and
//! K are un-permuted from llama.cpp's interleaved-rope layout back to HF layout
//! (`w_hf = w.reshape(heads, hd/2, 2, in).transpose(1, 2).reshape(heads·hd, in)`), so that an adapter
//! means the same thing whichever file the base came from.

use super::WeightSource;
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use candle_core::quantized::gguf_file;
use candle_core::Device;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A GGUF checkpoint of a LLaMA-family model.
pub struct GgufModel {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<File>,
    /// HF name → GGUF name.
    names: BTreeMap<String, String>,
    n_head: usize,
    n_kv_head: usize,
    config: serde_json::Value,
}

/// The HF name of a llama.cpp tensor name, if it is one tsd knows.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("{}.{module}", crate::names::layer_prefix(layer)))
}

/// Every tensor's element count must not overflow and its bytes must lie inside the file: candle
/// trusts the dims (an overflowing product made dequantization panic; found by fuzzing).
fn check_tensor_infos(c: &gguf_file::Content, file_len: u64) -> std::result::Result<(), String> {
    for (name, t) in &c.tensor_infos {
        let elems = t
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor `{name}`: its dims {:?} overflow", t.shape.dims()))?;
        let block = t.ggml_dtype.block_size() as u64;
        let bytes = (elems / block).checked_mul(t.ggml_dtype.type_size() as u64);
        let end = bytes
            .and_then(|b| b.checked_add(t.offset))
            .and_then(|b| b.checked_add(c.tensor_data_offset));
        if end.is_none_or(|e| e > file_len) {
            return Err(format!(
                "tensor `{name}` ({:?}, {:?}) at offset {} does not fit in the file ({file_len} bytes)",
                t.shape.dims(),
                t.ggml_dtype,
                t.offset
            ));
        }
    }
    Ok(())
}

thread_local! {
    static SILENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a third-party parser, turning its panic into an error message. The panic hook is wrapped
/// once so that such a panic prints nothing on this thread (other threads keep the old hook).
fn without_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SILENT.with(|s| s.get()) {
                prev(info)
            }
        }));
    });
    let was = SILENT.with(|s| s.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    SILENT.with(|s| s.set(was));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Undoes llama.cpp's Q/K row permutation: row `h·hd + 2b + a` (GGUF) → row `h·hd + a·hd/2 + b` (HF).
pub fn unpermute_rows(w: &Matrix, heads: usize) -> Result<Matrix> {
    if heads == 0
        || heads > w.rows
        || !w.rows.is_multiple_of(heads)
        || !(w.rows / heads).is_multiple_of(2)
    {
        return Err(Error::shape(
            "GGUF Q/K un-permutation",
            format!(
                "{} rows do not split into {heads} heads of even size",
                w.rows
            ),
        ));
    }
    let hd = w.rows / heads;
    let half = hd / 2;
    let mut data = vec![0f32; w.data.len()];
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..half {
                let src = h * hd + 2 * b + a;
                let dst = h * hd + a * half + b;
                data[dst * w.cols..(dst + 1) * w.cols]
                    .copy_from_slice(&w.data[src * w.cols..(src + 1) * w.cols]);
            }
        }
    }
    Matrix::new(w.rows, w.cols, data)
}

fn meta_u32(c: &gguf_file::Content, path: &Path, key: &str) -> Result<usize> {
    c.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| Error::Gguf {
            path: path.to_path_buf(),
            reason: format!("metadata `{key}` missing or not an integer"),
        })
}

/// The file and its checked header (tensor directory within the file; architecture `llama`).
fn read_header(path: &Path) -> Result<(File, gguf_file::Content)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let gguf_err = |reason: String| Error::Gguf {
        path: path.to_path_buf(),
        reason,
    };
    // candle divides by `general.alignment` unchecked (a 0 panics; found by fuzzing).
    let content = without_panic(|| gguf_file::Content::read(&mut file))
        .map_err(|p| gguf_err(format!("the header could not be read ({p})")))?
        .map_err(|e| gguf_err(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    check_tensor_infos(&content, file_len).map_err(gguf_err)?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    if arch != "llama" {
        return Err(Error::Gguf {
            path: path.to_path_buf(),
            reason: format!("architecture `{arch}` is not supported (only `llama`)"),
        });
    }
    Ok((file, content))
}

/// A llama GGUF's sizes from its metadata.
struct Dims {
    n_head: usize,
    n_kv_head: usize,
    hidden: usize,
    layers: usize,
    ffn: usize,
    ctx: usize,
}

impl Dims {
    fn read(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let n_head = meta_u32(content, path, "llama.attention.head_count")?;
        Ok(Dims {
            n_head,
            n_kv_head: meta_u32(content, path, "llama.attention.head_count_kv").unwrap_or(n_head),
            hidden: meta_u32(content, path, "llama.embedding_length")?,
            layers: meta_u32(content, path, "llama.block_count")?,
            ffn: meta_u32(content, path, "llama.feed_forward_length")?,
            ctx: meta_u32(content, path, "llama.context_length").unwrap_or(2048),
        })
    }
}

/// Hugging Face name → GGUF name of every tensor; a tensor tsd cannot map (a bias, llama3's
/// `rope_freqs.weight` frequency factors, an expert) changes the computation: refused rather
/// than dropped.
fn plain_tensor_names(
    content: &gguf_file::Content,
    path: &Path,
) -> Result<BTreeMap<String, String>> {
    if let Some(g) = content.tensor_infos.keys().find(|g| hf_name(g).is_none()) {
        return Err(Error::Gguf {
            path: path.to_path_buf(),
            reason: format!("tensor `{g}` is not supported (tsd reads llama's plain weights)"),
        });
    }
    Ok(content
        .tensor_infos
        .keys()
        .filter_map(|g| hf_name(g).map(|h| (h, g.clone())))
        .collect())
}

/// The Hugging Face `config.json` equivalent of the metadata; refuses a head dimension or rope
/// scaling tsd does not implement.
fn hf_config(content: &gguf_file::Content, path: &Path, d: &Dims) -> Result<serde_json::Value> {
    let f32_meta = |k: &str, def: f32| {
        content
            .metadata
            .get(k)
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(def)
    };
    let vocab = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok().map(|t| t.len()))
        .or_else(|| {
            content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
        })
        .unwrap_or(0);
    let key_len = meta_u32(content, path, "llama.attention.key_length").ok();
    let head_dim = key_len.unwrap_or(d.hidden / d.n_head.max(1));
    for key in ["llama.attention.value_length", "llama.rope.dimension_count"] {
        if let Some(n) = meta_u32(content, path, key).ok().filter(|&n| n != head_dim) {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                reason: format!("metadata `{key}` = {n} differs from the head dimension {head_dim}, which tsd does not implement"),
            });
        }
    }
    let scaling = content
        .metadata
        .get("llama.rope.scaling.type")
        .and_then(|v| v.to_string().ok().cloned());
    let rope_scaling = match scaling.as_deref() {
        None | Some("none") => serde_json::Value::Null,
        Some("linear") => serde_json::json!({
            "rope_type": "linear",
            "factor": f32_meta("llama.rope.scaling.factor", f32::NAN),
        }),
        Some(other) => {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                reason: format!("metadata `llama.rope.scaling.type` = \"{other}\" is not implemented (tsd implements none, linear)"),
            })
        }
    };
    Ok(serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d.hidden,
        "intermediate_size": d.ffn,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.n_head,
        "num_key_value_heads": d.n_kv_head,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": d.ctx,
        "rms_norm_eps": f32_meta("llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": f32_meta("llama.rope.freq_base", 10000.0),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
    }))
}

impl GgufModel {
    /// Reads the GGUF header (metadata and tensor directory); tensor data is read on demand.
    pub fn open(path: &Path) -> Result<Self> {
        let (file, content) = read_header(path)?;
        let dims = Dims::read(&content, path)?;
        let names = plain_tensor_names(&content, path)?;
        let config = hf_config(&content, path, &dims)?;
        Ok(GgufModel {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            names,
            n_head: dims.n_head,
            n_kv_head: dims.n_kv_head,
            config,
        })
    }

    /// HF layout of a dequantized llama.cpp matrix: Q and K rows are un-permuted.
    fn matrix_from(&self, name: &str, m: Matrix) -> Result<Matrix> {
        if name.ends_with("self_attn.q_proj.weight") {
            unpermute_rows(&m, self.n_head)
        } else if name.ends_with("self_attn.k_proj.weight") {
            unpermute_rows(&m, self.n_kv_head)
        } else {
            Ok(m)
        }
    }

    /// Path of the GGUF file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw GGUF metadata (tokenizer, hyper-parameters).
    pub fn content(&self) -> &gguf_file::Content {
        &self.content
    }
}

impl WeightSource for GgufModel {
    fn describe(&self) -> String {
        format!("GGUF model {}", self.path.display())
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let g = self.names.get(name)?;
        self.content
            .tensor_infos
            .get(g)
            .map(|t| t.shape.dims().to_vec())
    }

    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let g = self.names.get(name).ok_or_else(|| Error::MissingTensor {
            context: self.describe(),
            tensor: name.to_string(),
        })?;
        let qt = {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            self.content
                .tensor(&mut *f, g, &Device::Cpu)
                .map_err(|e| Error::Gguf {
                    path: self.path.clone(),
                    reason: format!("{g}: {e}"),
                })?
        };
        let t = qt.dequantize(&Device::Cpu)?;
        let dims = t.dims().to_vec();
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        super::tensor::check_finite(&self.path, g, &data)?;
        if dims.len() == 2 {
            let m = self.matrix_from(name, Matrix::new(dims[0], dims[1], data)?)?;
            return Ok((dims, m.data));
        }
        Ok((dims, data))
    }

    fn matrix(&self, name: &str) -> Result<Matrix> {
        let (dims, data) = self.tensor(name)?;
        if dims.len() != 2 {
            return Err(Error::shape(
                name,
                format!("expected a matrix, found shape {dims:?}"),
            ));
        }
        Matrix::new(dims[0], dims[1], data)
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn total_params(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64)
            .sum()
    }

    fn config_json(&self) -> Option<serde_json::Value> {
        Some(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    use candle_core::Tensor;

    /// A one-layer llama GGUF (hidden 8, 2 heads) with `extra` metadata and tensor names.
    fn tiny_gguf(dir: &Path, extra_meta: &[(&str, Value)], extra_tensors: &[&str]) -> PathBuf {
        let mut meta: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.attention.head_count", Value::U32(2)),
            ("llama.embedding_length", Value::U32(8)),
            ("llama.block_count", Value::U32(1)),
            ("llama.feed_forward_length", Value::U32(16)),
        ];
        meta.extend(extra_meta.iter().cloned());
        let q = |dims: &[usize]| {
            QTensor::quantize(
                &Tensor::ones(dims, candle_core::DType::F32, &Device::Cpu).unwrap(),
                GgmlDType::F32,
            )
            .unwrap()
        };
        let mut tensors = vec![
            ("token_embd.weight", q(&[4, 8])),
            ("output_norm.weight", q(&[8])),
        ];
        for n in extra_tensors {
            tensors.push((n, q(&[8])));
        }
        let path = dir.join("m.gguf");
        let mut f = File::create(&path).unwrap();
        let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut f, &m, &t).unwrap();
        path
    }

    #[test]
    fn unmapped_tensors_and_unknown_rope_scaling_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let ok = GgufModel::open(&tiny_gguf(d.path(), &[], &[])).unwrap();
        assert!(ok.config_json().unwrap()["rope_scaling"].is_null());
        for t in ["rope_freqs.weight", "blk.0.attn_q.bias"] {
            let e = GgufModel::open(&tiny_gguf(d.path(), &[], &[t]))
                .err()
                .unwrap();
            assert!(e.to_string().contains(&format!("tensor `{t}`")), "{e}");
        }
        let yarn = [("llama.rope.scaling.type", Value::String("yarn".into()))];
        let e = GgufModel::open(&tiny_gguf(d.path(), &yarn, &[]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("\"yarn\""), "{e}");
        let partial = [("llama.rope.dimension_count", Value::U32(2))];
        let e = GgufModel::open(&tiny_gguf(d.path(), &partial, &[]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("rope.dimension_count"), "{e}");
        let linear = [
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ];
        let m = GgufModel::open(&tiny_gguf(d.path(), &linear, &[])).unwrap();
        let cfg = m.config_json().unwrap();
        assert_eq!(cfg["rope_scaling"]["rope_type"], "linear");
        let parsed = crate::model::LlamaConfig::from_json(cfg, Path::new("m.gguf")).unwrap();
        assert_eq!(
            parsed.rope_scaling,
            crate::model::config::RopeScaling::Linear { factor: 4.0 }
        );
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: gguf = hf.reshape(heads, 2, hd/2, in).swapaxes(1, 2).reshape(...)
        let (heads, hd, cols) = (3, 4, 2);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; rows * cols];
        for h in 0..heads {
            for a in 0..2 {
                for b in 0..hd / 2 {
                    let src = h * hd + a * (hd / 2) + b;
                    let dst = h * hd + b * 2 + a;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let back = unpermute_rows(&Matrix::new(rows, cols, gguf).unwrap(), heads).unwrap();
        assert_eq!(back.data, hf);
        assert!(unpermute_rows(&Matrix::new(6, 1, vec![0.0; 6]).unwrap(), 4).is_err());
    }
}
