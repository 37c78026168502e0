//! Writing PEFT adapters strictly and atomically, and folding LoRA-Dash into plain LoRA.

use super::naming::{key, TensorKind};
use super::naming::{CONFIG_FILE, DASH_CONFIG_KEY, DASH_FILE, DASH_PEFT_SHA256_KEY, WEIGHTS_FILE};
use super::{Adapter, AdapterConfig, ModuleAdapter};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::linalg::Matrix;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The most common value in a list (ties: the first seen).
fn mode<T: PartialEq + Copy>(xs: &[T]) -> Option<T> {
    let mut best: Option<(T, usize)> = None;
    for &x in xs {
        let c = xs.iter().filter(|&&y| y == x).count();
        if best.is_none_or(|(_, bc)| c > bc) {
            best = Some((x, c));
        }
    }
    best.map(|b| b.0)
}

/// PEFT pattern key for one module: its path without the leading `model.`, dots escaped, so that
/// both PEFT's old (`.*\.{p}$`) and new (`(.*\.)?({p})$`) matching select exactly this module.
fn module_pattern(module: &str) -> String {
    module
        .strip_prefix("model.")
        .unwrap_or(module)
        .replace('.', r"\.")
}

/// The config to write for these modules: global r/alpha from the most common values,
/// `rank_pattern`/`alpha_pattern` for the rest, `target_modules` from the module names.
/// `target_modules` is kept as read (with `layers_to_transform`, `exclude_modules`,
/// `modules_to_save`, `bias`, `lora_bias`): the modules are the same, and a reader checked that the
/// config selects each of them. Only an adapter without one gets targets that select exactly its
/// modules ([`super::plan::targets_selecting`]).
fn config_for(adapter: &Adapter) -> AdapterConfig {
    let mut cfg = adapter.config.clone();
    let emb = &adapter.extras.embeddings;
    let per_module: Vec<(&str, usize, f64)> = adapter
        .modules
        .iter()
        .map(|m| (m.module.as_str(), m.r, m.alpha))
        .chain(emb.iter().map(|e| (e.module.as_str(), e.r, e.alpha)))
        .collect();
    let ranks: Vec<usize> = per_module.iter().map(|m| m.1).collect();
    let alphas: Vec<f64> = per_module.iter().map(|m| m.2).collect();
    cfg.r = mode(&ranks).unwrap_or(cfg.r);
    cfg.lora_alpha = mode(&alphas).unwrap_or(cfg.lora_alpha);
    cfg.rank_pattern = BTreeMap::new();
    cfg.alpha_pattern = BTreeMap::new();
    for &(module, r, alpha) in &per_module {
        if r != cfg.r {
            cfg.rank_pattern.insert(module_pattern(module), r);
        }
        if alpha != cfg.lora_alpha {
            cfg.alpha_pattern.insert(module_pattern(module), alpha);
        }
    }
    if cfg.target_modules.is_none() {
        let (targets, layers) = super::plan::targets_selecting(per_module.iter().map(|m| m.0));
        cfg.target_modules = Some(targets);
        cfg.layers_to_transform = layers;
    }
    cfg.lora_bias = !adapter.extras.lora_biases.is_empty();
    cfg.peft_type = Some("LORA".into());
    cfg
}

/// Metadata key of a folded `adapter_model.safetensors` naming the file that holds its Dash form.
pub const FOLDED_FROM_KEY: &str = "tsd_folded_dash";

/// Writes an adapter into `dir`, each file atomically.
///
/// Without LoRA-Dash: `adapter_model.safetensors` (metadata `{"format":"pt"}` plus the adapter's
/// `tsd_*` keys) and `adapter_config.json`, exactly what PEFT loads; a `tsd_dash.safetensors`
/// left in `dir` by an earlier write is removed.
///
/// With LoRA-Dash (README, Adapter formats): `adapter_model.safetensors` + `adapter_config.json`
/// are the fold ([`fold_dash`]: a plain rank-(r+s) LoRA with the same ΔW, what PEFT sees), and
/// `tsd_dash.safetensors` beside them holds the Dash parametrisation under tsd's names (A, B, Ū,
/// V̄ᵀ, Δσ, indices, σ and δ̂ at the switch), with the unfolded config (r, α, patterns, rsLoRA) and
/// the sha256 of the folded weights in its metadata. tsd reads the Dash file when it is there
/// ([`super::read::read_adapter`]).
pub fn write_adapter(dir: &Path, adapter: &Adapter) -> Result<()> {
    let weights = dir.join(WEIGHTS_FILE);
    let dash_path = dir.join(DASH_FILE);
    if !adapter.has_dash() {
        let bytes = adapter_bytes(&weights, adapter, BTreeMap::new())?;
        fsutil::atomic_write(&weights, &bytes)?;
        write_config(dir, adapter)?;
        if dash_path.exists() {
            std::fs::remove_file(&dash_path).map_err(|e| Error::io(&dash_path, e))?;
        }
        return Ok(());
    }
    let mut folded = fold_dash(adapter);
    folded.metadata = adapter.metadata.clone();
    let peft = adapter_bytes(
        &weights,
        &folded,
        BTreeMap::from([(FOLDED_FROM_KEY.to_string(), DASH_FILE.to_string())]),
    )?;
    let cfg = config_for(adapter).to_peft_json().to_string();
    let dash = adapter_bytes(
        &dash_path,
        adapter,
        BTreeMap::from([
            (DASH_CONFIG_KEY.to_string(), cfg),
            (
                DASH_PEFT_SHA256_KEY.to_string(),
                crate::fsutil::sha256_hex(&peft),
            ),
        ]),
    )?;
    // Dash file first: an interrupted write leaves a PEFT file whose sha256 the Dash file does
    // not name, which the reader refuses, never a silent mix of two adapters.
    fsutil::atomic_write(&dash_path, &dash)?;
    fsutil::atomic_write(&weights, &peft)?;
    write_config(dir, &folded)
}

fn write_config(dir: &Path, adapter: &Adapter) -> Result<()> {
    let cfg = config_for(adapter).to_peft_json();
    fsutil::write_json_unterminated(&dir.join(CONFIG_FILE), &cfg)
}

/// The safetensors bytes of an adapter's tensors (Dash modules under tsd's names), metadata
/// `{"format":"pt"}`, the adapter's `tsd_*` keys (less the ones [`write_adapter`] computes) and
/// `extra`.
fn adapter_bytes(
    weights: &Path,
    adapter: &Adapter,
    extra: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for m in &adapter.modules {
        check_module(m)?;
        let mut f32_tensor = |kind, shape: Vec<usize>, data: &[f32]| {
            tensors.push((key(&m.module, kind), Dtype::F32, shape, f32_bytes(data)))
        };
        f32_tensor(TensorKind::LoraA, vec![m.a.rows, m.a.cols], &m.a.data);
        f32_tensor(TensorKind::LoraB, vec![m.b.rows, m.b.cols], &m.b.data);
        if let Some(mag) = &m.dora_magnitude {
            f32_tensor(TensorKind::DoraMagnitude, vec![mag.len()], mag);
        }
        if let Some(d) = &m.dash {
            let s = d.s();
            f32_tensor(TensorKind::DashU, vec![d.u.rows, d.u.cols], &d.u.data);
            f32_tensor(TensorKind::DashVt, vec![d.vt.rows, d.vt.cols], &d.vt.data);
            f32_tensor(TensorKind::DashDeltaSigma, vec![s], &d.delta_sigma);
            if let Some(v) = &d.sigma_at_switch {
                f32_tensor(TensorKind::DashSigma, vec![s], v);
            }
            if let Some(v) = &d.delta_hat_at_switch {
                f32_tensor(TensorKind::DashDeltaHat, vec![s], v);
            }
            if let Some(idx) = &d.indices {
                let b: Vec<u8> = idx.iter().flat_map(|&i| (i as i64).to_le_bytes()).collect();
                tensors.push((
                    key(&m.module, TensorKind::DashIndex),
                    Dtype::I64,
                    vec![s],
                    b,
                ));
            }
        }
    }
    let ex = &adapter.extras;
    for (module, bias) in &ex.lora_biases {
        tensors.push((
            key(module, TensorKind::LoraBias),
            Dtype::F32,
            vec![bias.len()],
            f32_bytes(bias),
        ));
    }
    for e in &ex.embeddings {
        for (kind, m) in [
            (TensorKind::EmbeddingA, &e.a),
            (TensorKind::EmbeddingB, &e.b),
        ] {
            tensors.push((
                key(&e.module, kind),
                Dtype::F32,
                vec![m.rows, m.cols],
                f32_bytes(&m.data),
            ));
        }
    }
    for t in &ex.base_tensors {
        tensors.push((
            t.key.clone(),
            Dtype::F32,
            t.shape.clone(),
            f32_bytes(&t.data),
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| crate::weights::tensor::st_error(weights, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata: BTreeMap<String, String> = adapter
        .metadata
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tsd_")
                && ![DASH_CONFIG_KEY, DASH_PEFT_SHA256_KEY, FOLDED_FROM_KEY].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.extend(extra);
    metadata.insert("format".into(), "pt".into());
    crate::weights::serialize::serialize_sorted(views, metadata)
        .map_err(|e| crate::weights::tensor::st_error(weights, e))
}

fn check_module(m: &ModuleAdapter) -> Result<()> {
    if m.a.rows != m.r || m.b.cols != m.r {
        return Err(Error::shape(
            &m.module,
            format!(
                "A is {}x{}, B is {}x{}, r = {}",
                m.a.rows, m.a.cols, m.b.rows, m.b.cols, m.r
            ),
        ));
    }
    Ok(())
}

/// Folds LoRA-Dash into a plain LoRA that reproduces ΔW exactly (README, Definitions: LoRA-Dash):
/// `B' = [c·B | Ū diag(Δσ)]`, `A' = [c'·A ; V̄ᵀ]` with `c·c' = scaling` (balanced, sign on B),
/// rank `r' = r + s`, `lora_alpha' = r'`, no rsLoRA, so PEFT's scaling is 1.
/// Modules without Dash get the same treatment (scaling folded in, `r' = r`); a LoRA bias `b`
/// (added as `scaling·b`) becomes `scaling·b`. Embedding LoRA and whole base tensors are kept.
pub fn fold_dash(adapter: &Adapter) -> Adapter {
    let modules = adapter
        .modules
        .iter()
        .map(|m| {
            let (out, inp) = m.shape();
            let s = m.dash.as_ref().map_or(0, |d| d.s());
            let q = m.r + s;
            let cb = m.scaling.signum() * m.scaling.abs().sqrt();
            let ca = m.scaling.abs().sqrt();
            let mut b = vec![0f32; out * q];
            let mut a = vec![0f32; q * inp];
            for i in 0..out {
                for j in 0..m.r {
                    b[i * q + j] = (cb * m.b.at(i, j) as f64) as f32;
                }
                if let Some(d) = &m.dash {
                    for j in 0..s {
                        b[i * q + m.r + j] = d.u.at(i, j) * d.delta_sigma[j];
                    }
                }
            }
            for j in 0..m.r {
                for c in 0..inp {
                    a[j * inp + c] = (ca * m.a.at(j, c) as f64) as f32;
                }
            }
            if let Some(d) = &m.dash {
                a[m.r * inp..].copy_from_slice(&d.vt.data);
            }
            ModuleAdapter {
                module: m.module.clone(),
                r: q,
                alpha: q as f64,
                scaling: 1.0,
                a: Matrix {
                    rows: q,
                    cols: inp,
                    data: a,
                },
                b: Matrix {
                    rows: out,
                    cols: q,
                    data: b,
                },
                dora_magnitude: m.dora_magnitude.clone(),
                dash: None,
            }
        })
        .collect();
    let mut config = adapter.config.clone();
    config.use_rslora = false;
    let mut extras = adapter.extras.clone();
    for m in &adapter.modules {
        if let Some(b) = extras.lora_biases.get_mut(&m.module) {
            b.iter_mut()
                .for_each(|x| *x = (m.scaling * *x as f64) as f32);
        }
    }
    // Embedding LoRA keeps its own r and α, so its scaling is unchanged unless rsLoRA is dropped.
    for e in &mut extras.embeddings {
        e.alpha = e.scaling * e.r as f64;
    }
    Adapter {
        path: adapter.path.clone(),
        config,
        modules,
        warnings: adapter.warnings.clone(),
        unmatched: Vec::new(),
        metadata: BTreeMap::new(),
        extras,
    }
}
