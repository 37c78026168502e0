//! Reading PEFT LoRA / LoRA-Dash adapters tolerantly, with every problem named.

use super::naming::{parse_key, TensorKind};
use super::{Adapter, AdapterConfig, DashNaming, DashState, ModuleAdapter};
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use crate::weights::tensor::{decode_f32, decode_i64, decode_matrix, st_error};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File names of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Resolves an adapter argument (a directory, or its `adapter_model.safetensors`) to its directory.
pub fn adapter_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        crate::fsutil::parent_dir(path)
    } else {
        path.to_path_buf()
    }
}

/// Whether a path looks like an adapter directory (has `adapter_config.json` or adapter weights).
pub fn is_adapter(path: &Path) -> bool {
    let d = adapter_dir(path);
    d.join(CONFIG_FILE).exists()
        || d.join(WEIGHTS_FILE).exists()
        || d.join("adapter_model.bin").exists()
}

/// Loads an adapter directory: `adapter_config.json` + `adapter_model.safetensors`.
///
/// Errors: missing files, pickle-only adapters, malformed safetensors, unsupported dtypes, NaN/Inf,
/// A/B without a partner, A/B shapes that disagree with each other or with the config's rank, and an
/// adapter without LoRA tensors. Warnings (kept in [`Adapter::warnings`]): DoRA, base-modifying
/// init schemes, unsupported LoRA kinds, zero-size tensors, unrecognised keys.
pub fn load_adapter(path: &Path) -> Result<Adapter> {
    let dir = adapter_dir(path);
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.exists() {
        for pickle in ["adapter_model.bin", "adapter_model.pt", "adapter_model.pth"] {
            if dir.join(pickle).exists() {
                return Err(Error::PickleRefused {
                    path: dir.join(pickle),
                });
            }
        }
        return Err(Error::io(
            &weights,
            std::io::Error::new(std::io::ErrorKind::NotFound, "adapter weights not found"),
        ));
    }
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.exists() {
        return Err(Error::Config {
            path: cfg_path,
            reason: "adapter_config.json not found (needed for r, lora_alpha and the scaling)"
                .into(),
        });
    }
    let config = AdapterConfig::load(&cfg_path)?;
    let bytes = crate::fsutil::read(&weights)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_error(&weights, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| st_error(&weights, e))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();

    let mut warnings = Vec::new();
    let mut unmatched = Vec::new();
    let mut groups: BTreeMap<String, HashMap<TensorKind, String>> = BTreeMap::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in &names {
        match parse_key(name, "default") {
            Some((_, TensorKind::Unsupported)) => warnings.push(format!(
                "`{name}`: this LoRA kind (embedding / bias / conv) is not analysed"
            )),
            Some((module, kind)) => {
                groups.entry(module).or_default().insert(kind, name.clone());
            }
            None => unmatched.push(name.clone()),
        }
    }
    if !unmatched.is_empty() {
        warnings.push(format!(
            "{} tensor(s) with unrecognised names were ignored",
            unmatched.len()
        ));
    }
    if let Some(scheme) = config.init_lora_weights.modifies_base() {
        warnings.push(format!(
            "init_lora_weights = `{scheme}` modifies the base weights at initialisation: ΔW is analysed against the base model given, which may not be the W this adapter was trained against"
        ));
    }

    let ctx = |m: &str| format!("{}: module {m}", dir.display());
    let mut modules = Vec::new();
    for (module, kinds) in &groups {
        let (Some(ka), Some(kb)) = (kinds.get(&TensorKind::LoraA), kinds.get(&TensorKind::LoraB))
        else {
            let has = |k| kinds.contains_key(&k);
            if has(TensorKind::LoraA) || has(TensorKind::LoraB) {
                let missing = if has(TensorKind::LoraA) {
                    "lora_B.weight"
                } else {
                    "lora_A.weight"
                };
                return Err(Error::MissingTensor {
                    context: ctx(module),
                    tensor: missing.into(),
                });
            }
            warnings.push(format!(
                "module {module}: extra tensors without lora_A/lora_B were ignored"
            ));
            continue;
        };
        let va = st.tensor(ka).map_err(|e| st_error(&weights, e))?;
        let vb = st.tensor(kb).map_err(|e| st_error(&weights, e))?;
        if va.shape().contains(&0) || vb.shape().contains(&0) {
            warnings.push(format!(
                "module {module}: zero-size tensor (A {:?}, B {:?}); module skipped",
                va.shape(),
                vb.shape()
            ));
            continue;
        }
        let a = decode_matrix(&weights, ka, &va)?;
        let b = decode_matrix(&weights, kb, &vb)?;
        if a.rows != b.cols {
            return Err(Error::shape(
                ctx(module),
                format!(
                    "lora_A is {}x{} (r x in) but lora_B is {}x{} (out x r): ranks differ",
                    a.rows, a.cols, b.rows, b.cols
                ),
            ));
        }
        let r = a.rows;
        let cfg_r = config.rank_for(module);
        if r != cfg_r {
            return Err(Error::shape(
                ctx(module),
                format!("adapter_config.json gives rank {cfg_r} for this module, but its tensors have rank {r}"),
            ));
        }
        let alpha = config.alpha_for(module);
        let scaling = config.scaling(r, alpha);
        let dora_magnitude = match kinds.get(&TensorKind::DoraMagnitude) {
            Some(k) => {
                let v = st.tensor(k).map_err(|e| st_error(&weights, e))?;
                warnings.push(format!(
                    "module {module}: DoRA magnitude vector present; tsd analyses the LoRA direction update scaling·B·A only, not DoRA's re-normalised weight"
                ));
                Some(decode_f32(&weights, k, &v)?)
            }
            None if config.use_dora => {
                warnings.push(format!(
                    "module {module}: use_dora is set but no magnitude vector is stored"
                ));
                None
            }
            None => None,
        };
        let dash = read_dash(&st, &weights, module, kinds, b.rows, a.cols)?;
        modules.push(ModuleAdapter {
            module: module.clone(),
            r,
            alpha,
            scaling,
            a,
            b,
            dora_magnitude,
            dash,
        });
    }
    if modules.is_empty() {
        return Err(Error::EmptyAdapter {
            path: weights,
            found: names.len(),
        });
    }
    Ok(Adapter {
        path: dir,
        config,
        modules,
        warnings,
        unmatched,
        metadata,
    })
}

fn read_dash(
    st: &SafeTensors<'_>,
    path: &Path,
    module: &str,
    kinds: &HashMap<TensorKind, String>,
    out: usize,
    inp: usize,
) -> Result<Option<DashState>> {
    let get_f32 = |k: TensorKind| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        match kinds.get(&k) {
            None => Ok(None),
            Some(name) => {
                let v = st.tensor(name).map_err(|e| st_error(path, e))?;
                Ok(Some((v.shape().to_vec(), decode_f32(path, name, &v)?)))
            }
        }
    };
    let as_matrix = |(shape, data): (Vec<usize>, Vec<f32>), what: &str| -> Result<Matrix> {
        if shape.len() != 2 {
            return Err(Error::shape(
                format!("module {module}"),
                format!("{what} should be 2-D, is {shape:?}"),
            ));
        }
        Matrix::new(shape[0], shape[1], data)
    };
    let (u, vt, ds, naming) = if kinds.contains_key(&TensorKind::DashU) {
        let need = |k, n: &str| {
            get_f32(k)?.ok_or_else(|| Error::MissingTensor {
                context: format!("module {module} (LoRA-Dash)"),
                tensor: n.into(),
            })
        };
        (
            as_matrix(need(TensorKind::DashU, "lora_dash_u")?, "lora_dash_u")?,
            as_matrix(need(TensorKind::DashVt, "lora_dash_vt")?, "lora_dash_vt")?,
            need(TensorKind::DashDeltaSigma, "lora_dash_delta_sigma")?.1,
            DashNaming::Tsd,
        )
    } else if kinds.contains_key(&TensorKind::OfficialDashU) {
        let need = |k, n: &str| {
            get_f32(k)?.ok_or_else(|| Error::MissingTensor {
                context: format!("module {module} (official LoRA-Dash)"),
                tensor: n.into(),
            })
        };
        (
            as_matrix(need(TensorKind::OfficialDashU, "lora_w_u")?, "lora_w_u")?,
            as_matrix(need(TensorKind::OfficialDashVt, "lora_w_vt")?, "lora_w_vt")?,
            need(TensorKind::OfficialDashSigma, "lora_index.weight")?.1,
            DashNaming::Official,
        )
    } else {
        return Ok(None);
    };
    let s = ds.len();
    if u.rows != out || u.cols != s || vt.rows != s || vt.cols != inp {
        return Err(Error::shape(
            format!("module {module} (LoRA-Dash)"),
            format!(
                "Ū is {}x{} and V̄ᵀ is {}x{}, expected {out}x{s} and {s}x{inp} for s = {s} coefficients",
                u.rows, u.cols, vt.rows, vt.cols
            ),
        ));
    }
    let indices = match kinds.get(&TensorKind::DashIndex) {
        Some(name) => {
            let v = st.tensor(name).map_err(|e| st_error(path, e))?;
            let idx = decode_i64(path, name, &v)?;
            if idx.len() != s || idx.iter().any(|&i| i < 0 || i as usize >= out.min(inp)) {
                return Err(Error::shape(
                    format!("module {module} (LoRA-Dash)"),
                    format!(
                        "lora_dash_index {idx:?} must hold {s} indices in 0..{}",
                        out.min(inp)
                    ),
                ));
            }
            Some(idx.into_iter().map(|i| i as usize).collect())
        }
        None => None,
    };
    Ok(Some(DashState {
        u,
        vt,
        delta_sigma: ds,
        indices,
        sigma_at_switch: get_f32(TensorKind::DashSigma)?.map(|x| x.1),
        delta_hat_at_switch: get_f32(TensorKind::DashDeltaHat)?.map(|x| x.1),
        naming,
    }))
}
