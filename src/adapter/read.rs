//! Reading PEFT LoRA / LoRA-Dash adapters tolerantly, with every problem named.

use super::naming::{parse_base_tensor, parse_key, TensorKind, PREFIX};
use super::{
    Adapter, AdapterConfig, AdapterExtras, BaseTensor, BaseTensorRole, DashNaming, DashState,
    EmbeddingLora, ModuleAdapter,
};
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use crate::weights::tensor::{decode_f32, decode_i64, decode_matrix, st_error};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use super::naming::{CONFIG_FILE, DASH_FILE, WEIGHTS_FILE};

/// Resolves an adapter argument (a directory, or its `adapter_model.safetensors`) to its directory.
pub fn adapter_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        crate::fsutil::parent_dir(path)
    } else {
        path.to_path_buf()
    }
}

/// PEFT's name for the adapter saved at a directory's root.
pub const DEFAULT_NAME: &str = "default";

fn has_adapter_files(d: &Path) -> bool {
    d.join(CONFIG_FILE).exists()
        || d.join(WEIGHTS_FILE).exists()
        || d.join("adapter_model.bin").exists()
}

/// The adapters a directory holds, as PEFT's `save_pretrained` lays them out: `default` at the
/// root, any other adapter in a subfolder named after it. Subfolders that are Trainer checkpoints
/// (`checkpoint-N`, or holding `trainer_state.json`) are not adapters of this directory.
/// Sorted, `default` first.
pub fn adapter_names(dir: &Path) -> Vec<String> {
    let mut named: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir() && has_adapter_files(&e.path()))
        .filter(|e| !e.path().join("trainer_state.json").exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| {
            !n.strip_prefix("checkpoint-")
                .is_some_and(|k| k.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    named.sort();
    if has_adapter_files(dir) {
        named.insert(0, DEFAULT_NAME.to_string());
    }
    named
}

/// Whether a path looks like an adapter directory (adapter files at its root or in a named
/// adapter's subfolder).
pub fn is_adapter(path: &Path) -> bool {
    !adapter_names(&adapter_dir(path)).is_empty()
}

/// The directory and name of the adapter to read: `name` if given (`default` is the root), else
/// the only adapter the directory holds; several without a name is an error listing them.
fn pick(path: &Path, name: Option<&str>) -> Result<(PathBuf, String)> {
    let dir = adapter_dir(path);
    if path.is_file() {
        return match name {
            None | Some(DEFAULT_NAME) => Ok((dir, DEFAULT_NAME.into())),
            Some(n) => Err(Error::InvalidArgument(format!(
                "--adapter-name {n}: {} is a weights file; pass the directory that holds the adapter's subfolder",
                path.display()
            ))),
        };
    }
    let names = adapter_names(&dir);
    let list = || {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    match name {
        Some(n) if names.iter().any(|x| x == n) => Ok(if n == DEFAULT_NAME {
            (dir, n.into())
        } else {
            (dir.join(n), n.into())
        }),
        Some(n) => Err(Error::InvalidArgument(format!(
            "{}: no adapter named `{n}` (adapters here: {})",
            dir.display(),
            list()
        ))),
        None if names.len() > 1 => Err(Error::InvalidArgument(format!(
            "{}: holds {} adapters ({}); choose one with --adapter-name",
            dir.display(),
            names.len(),
            list()
        ))),
        None => match names.first().map(String::as_str) {
            Some(DEFAULT_NAME) | None => Ok((dir, DEFAULT_NAME.into())),
            Some(n) => Ok((dir.join(n), n.to_string())),
        },
    }
}

/// Loads the only adapter of a directory (see [`read_adapter`]).
pub fn load_adapter(path: &Path) -> Result<Adapter> {
    read_adapter(path, None)
}

/// Loads an adapter: `path` is an adapter directory (or its `adapter_model.safetensors`); `name`
/// picks one of the directory's adapters (`default` = the root, else PEFT's subfolder), `None` the
/// only one there is (several → an error listing them).
///
/// Errors: missing files, pickle-only adapters, malformed safetensors, unsupported dtypes, NaN/Inf,
/// A/B without a partner, A/B shapes that disagree with each other or with the config's rank,
/// LoRA tensors for a module the config does not target, and an adapter without LoRA tensors.
/// Warnings (kept in [`Adapter::warnings`], each naming its tensors): DoRA, base-modifying init
/// schemes, tensors tsd recognises but does not analyse, zero-size tensors, unrecognised keys.
pub fn read_adapter(path: &Path, name: Option<&str>) -> Result<Adapter> {
    let (dir, adapter_name) = pick(path, name)?;
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
    let dash_path = dir.join(DASH_FILE);
    if dash_path.exists() {
        return read_dash_file(dir, &adapter_name, &dash_path, &weights);
    }
    let config = AdapterConfig::load(&cfg_path)?;
    let bytes = crate::fsutil::read(&weights)?;
    parse_adapter(dir, &adapter_name, &weights, &cfg_path, config, &bytes)
}

/// A LoRA-Dash adapter as tsd writes it: the Dash parametrisation from `tsd_dash.safetensors`
/// (tensors under the same keys as an adapter file, the unfolded config in its metadata), after
/// checking that `adapter_model.safetensors` beside it is the file written with it (its sha256).
fn read_dash_file(
    dir: PathBuf,
    adapter_name: &str,
    dash_path: &Path,
    weights: &Path,
) -> Result<Adapter> {
    use super::naming::{DASH_CONFIG_KEY, DASH_PEFT_SHA256_KEY};
    let bytes = crate::fsutil::read(dash_path)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| st_error(dash_path, e))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let bad = |reason: String| Error::Config {
        path: dash_path.to_path_buf(),
        reason,
    };
    let (Some(cfg_text), Some(want)) = (meta.get(DASH_CONFIG_KEY), meta.get(DASH_PEFT_SHA256_KEY))
    else {
        return Err(bad(format!(
            "metadata lacks `{DASH_CONFIG_KEY}` or `{DASH_PEFT_SHA256_KEY}` (not written by tsd)"
        )));
    };
    let got = crate::fsutil::sha256_file(weights)?;
    if &got != want {
        return Err(bad(format!(
            "{} beside it is not the file written with it (sha256 {got}, recorded {want}): it was replaced or changed, so the two no longer describe one adapter. Remove {DASH_FILE} to read the PEFT adapter alone",
            weights.display()
        )));
    }
    let config: AdapterConfig =
        serde_json::from_str(cfg_text).map_err(|e| bad(format!("`{DASH_CONFIG_KEY}`: {e}")))?;
    config.validate(dash_path)?;
    let mut ad = parse_adapter(dir, adapter_name, dash_path, dash_path, config, &bytes)?;
    ad.metadata.remove(DASH_CONFIG_KEY);
    ad.metadata.remove(DASH_PEFT_SHA256_KEY);
    Ok(ad)
}

/// An adapter from its config and the bytes of its tensor file (`weights`, named in errors).
fn parse_adapter(
    dir: PathBuf,
    adapter_name: &str,
    weights: &Path,
    cfg_path: &Path,
    config: AdapterConfig,
    bytes: &[u8],
) -> Result<Adapter> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| st_error(weights, e))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| st_error(weights, e))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let keys = Keys::classify(&names, adapter_name);
    let mut warnings = keys.warnings(&config);
    let reader = Reader {
        st: &st,
        weights,
        config: &config,
        dir: &dir,
        cfg_path,
    };
    let mut modules = Vec::new();
    let mut extras = AdapterExtras {
        name: Some(adapter_name.to_string()),
        ..Default::default()
    };
    for (module, kinds) in &keys.groups {
        if let Some(m) = reader.module(module, kinds, &mut warnings, &mut extras)? {
            modules.push(m);
        }
    }
    for (key, hf, base_layer) in &keys.base {
        let t = reader.base_tensor(key, hf, *base_layer, adapter_name)?;
        extras.base_tensors.push(t);
    }
    if modules.is_empty() && extras.embeddings.is_empty() {
        return Err(Error::EmptyAdapter {
            path: weights.to_path_buf(),
            found: names.len(),
        });
    }
    Ok(Adapter {
        path: dir,
        config,
        modules,
        warnings: group_module_warnings(warnings),
        unmatched: keys.unmatched,
        metadata,
        extras,
    })
}

/// An adapter file's tensor names, sorted into LoRA groups per module, saved base tensors and
/// names tsd does not read.
struct Keys {
    /// Module → its LoRA tensors by kind.
    groups: BTreeMap<String, HashMap<TensorKind, String>>,
    /// `(key, Hugging Face name, under base_layer)` of saved base tensors.
    base: Vec<(String, String, bool)>,
    /// Names not read (unsupported LoRA kinds included).
    unmatched: Vec<String>,
    /// Names of a LoRA kind tsd neither analyses nor applies.
    unsupported: Vec<String>,
}

impl Keys {
    fn classify(names: &[String], adapter_name: &str) -> Self {
        let mut k = Keys {
            groups: BTreeMap::new(),
            base: Vec::new(),
            unmatched: Vec::new(),
            unsupported: Vec::new(),
        };
        for name in names {
            match parse_key(name, adapter_name) {
                Some((_, TensorKind::Unsupported)) => {
                    k.unsupported.push(name.clone());
                    k.unmatched.push(name.clone());
                }
                Some((module, kind)) => {
                    k.groups
                        .entry(module)
                        .or_default()
                        .insert(kind, name.clone());
                }
                None => match parse_base_tensor(name, adapter_name) {
                    Some((hf, base_layer)) => k.base.push((name.clone(), hf, base_layer)),
                    None => k.unmatched.push(name.clone()),
                },
            }
        }
        k
    }

    /// The whole file's warnings: unsupported and unrecognised names, a base-modifying init.
    fn warnings(&self, config: &AdapterConfig) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.unsupported.is_empty() {
            warnings.push(format!(
                "tensor(s) of a LoRA kind tsd neither analyses nor applies: {}",
                self.unsupported.join(", ")
            ));
        }
        let unknown: Vec<&str> = self
            .unmatched
            .iter()
            .filter(|k| !self.unsupported.contains(k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            warnings.push(format!(
                "tensor(s) with unrecognised names were ignored: {}",
                unknown.join(", ")
            ));
        }
        if let Some(scheme) = config.init_lora_weights.modifies_base() {
            warnings.push(format!(
                "init_lora_weights = `{scheme}` modifies the base weights at initialisation: ΔW is analysed against the base model given, which may not be the W this adapter was trained against"
            ));
        }
        warnings
    }
}

/// What reading one adapter file's modules needs.
struct Reader<'a> {
    st: &'a SafeTensors<'a>,
    weights: &'a Path,
    config: &'a AdapterConfig,
    dir: &'a Path,
    cfg_path: &'a Path,
}

impl Reader<'_> {
    fn ctx(&self, m: &str) -> String {
        format!("{}: module {m}", self.dir.display())
    }

    fn tensor(&self, k: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        self.st.tensor(k).map_err(|e| st_error(self.weights, e))
    }

    /// One module's LoRA: `None` when it is skipped (with a warning) or is an embedding LoRA
    /// (into `extras`); its bias goes into `extras` too.
    fn module(
        &self,
        module: &str,
        kinds: &HashMap<TensorKind, String>,
        warnings: &mut Vec<String>,
        extras: &mut AdapterExtras,
    ) -> Result<Option<ModuleAdapter>> {
        if !self.config.targets(module) {
            return Err(Error::Config {
                path: self.cfg_path.to_path_buf(),
                reason: format!(
                    "the adapter holds LoRA tensors for {module}, which target_modules / layers_to_transform / exclude_modules / modules_to_save do not select (PEFT would not load them)"
                ),
            });
        }
        if kinds.contains_key(&TensorKind::EmbeddingA)
            || kinds.contains_key(&TensorKind::EmbeddingB)
        {
            extras.embeddings.push(read_embedding(
                self.st,
                self.weights,
                self.config,
                module,
                kinds,
            )?);
            return Ok(None);
        }
        let Some((a, b)) = self.lora_pair(module, kinds, warnings)? else {
            return Ok(None);
        };
        let r = a.rows;
        let alpha = self.config.alpha_for(module);
        let scaling = self.config.scaling(r, alpha);
        let dora_magnitude = self.dora(module, kinds, warnings)?;
        let dash = read_dash(self.st, self.weights, module, kinds, b.rows, a.cols)?;
        if let Some(bias) = self.lora_bias(module, kinds, b.rows)? {
            extras.lora_biases.insert(module.to_string(), bias);
        }
        Ok(Some(ModuleAdapter {
            module: module.to_string(),
            r,
            alpha,
            scaling,
            a,
            b,
            dora_magnitude,
            dash,
        }))
    }

    /// lora_A and lora_B, their ranks checked against each other and the config; `None` (with a
    /// warning) for a module without both or with a zero-size tensor.
    fn lora_pair(
        &self,
        module: &str,
        kinds: &HashMap<TensorKind, String>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<(Matrix, Matrix)>> {
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
                    context: self.ctx(module),
                    tensor: missing.into(),
                });
            }
            let mut keys: Vec<&str> = kinds.values().map(String::as_str).collect();
            keys.sort();
            warnings.push(format!(
                "module {module}: tensor(s) without lora_A/lora_B were ignored: {}",
                keys.join(", ")
            ));
            return Ok(None);
        };
        let va = self.tensor(ka)?;
        let vb = self.tensor(kb)?;
        if va.shape().contains(&0) || vb.shape().contains(&0) {
            warnings.push(format!(
                "module {module}: zero-size tensor (`{ka}` {:?}, `{kb}` {:?}); module skipped",
                va.shape(),
                vb.shape()
            ));
            return Ok(None);
        }
        let a = decode_matrix(self.weights, ka, &va)?;
        let b = decode_matrix(self.weights, kb, &vb)?;
        if a.rows != b.cols {
            return Err(Error::shape(
                self.ctx(module),
                format!(
                    "lora_A is {}x{} (r x in) but lora_B is {}x{} (out x r): ranks differ",
                    a.rows, a.cols, b.rows, b.cols
                ),
            ));
        }
        let (r, cfg_r) = (a.rows, self.config.rank_for(module));
        if r != cfg_r {
            return Err(Error::shape(
                self.ctx(module),
                format!("adapter_config.json gives rank {cfg_r} for this module, but its tensors have rank {r}"),
            ));
        }
        Ok(Some((a, b)))
    }

    /// DoRA's magnitude vector, with the warning that tsd analyses the direction update only.
    fn dora(
        &self,
        module: &str,
        kinds: &HashMap<TensorKind, String>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Vec<f32>>> {
        Ok(match kinds.get(&TensorKind::DoraMagnitude) {
            Some(k) => {
                let v = self.tensor(k)?;
                warnings.push(format!(
                    "module {module}: DoRA magnitude vector present; tsd analyses the LoRA direction update scaling·B·A only, not DoRA's re-normalised weight"
                ));
                Some(decode_f32(self.weights, k, &v)?)
            }
            None if self.config.use_dora => {
                warnings.push(format!(
                    "module {module}: use_dora is set but no magnitude vector is stored"
                ));
                None
            }
            None => None,
        })
    }

    /// lora_B's bias (PEFT's `lora_bias`), `rows` long.
    fn lora_bias(
        &self,
        module: &str,
        kinds: &HashMap<TensorKind, String>,
        rows: usize,
    ) -> Result<Option<Vec<f32>>> {
        let Some(k) = kinds.get(&TensorKind::LoraBias) else {
            return Ok(None);
        };
        let v = self.tensor(k)?;
        let bias = decode_f32(self.weights, k, &v)?;
        if bias.len() != rows || v.shape().len() != 1 {
            return Err(Error::shape(
                self.ctx(module),
                format!(
                    "`{k}` is {:?}, expected [{}] (lora_B's rows)",
                    v.shape(),
                    rows
                ),
            ));
        }
        Ok(Some(bias))
    }

    /// A saved base tensor (a trained bias, a `modules_to_save` copy, or another saved weight).
    fn base_tensor(
        &self,
        key: &str,
        hf: &str,
        base_layer: bool,
        adapter_name: &str,
    ) -> Result<BaseTensor> {
        let v = self.tensor(key)?;
        let data = decode_f32(self.weights, key, &v)?;
        let module = hf.rsplit_once('.').map_or(hf, |(m, _)| m);
        let role = if hf.ends_with(".bias") && self.config.bias != "none" {
            BaseTensorRole::TrainedBias
        } else if self.config.saves_module(module) && !base_layer {
            BaseTensorRole::ModulesToSave
        } else {
            BaseTensorRole::Saved
        };
        let stored = key.strip_prefix(PREFIX).unwrap_or(key);
        let stored = stored.replace(&format!(".modules_to_save.{adapter_name}."), ".");
        Ok(BaseTensor {
            key: match role {
                BaseTensorRole::ModulesToSave => format!("{PREFIX}{hf}"),
                _ => format!("{PREFIX}{}", stored.replace(".modules_to_save.", ".")),
            },
            name: hf.to_string(),
            shape: v.shape().to_vec(),
            data,
            role,
        })
    }
}

/// An embedding LoRA: `lora_embedding_A` `[r, vocab]`, `lora_embedding_B` `[hidden, r]`.
fn read_embedding(
    st: &SafeTensors<'_>,
    path: &Path,
    config: &AdapterConfig,
    module: &str,
    kinds: &HashMap<TensorKind, String>,
) -> Result<EmbeddingLora> {
    let get = |k: TensorKind, n: &str| -> Result<Matrix> {
        let key = kinds.get(&k).ok_or_else(|| Error::MissingTensor {
            context: format!("module {module} (embedding LoRA)"),
            tensor: n.into(),
        })?;
        let v = st.tensor(key).map_err(|e| st_error(path, e))?;
        decode_matrix(path, key, &v)
    };
    let mut others: Vec<&str> = kinds
        .iter()
        .filter(|(k, _)| !matches!(k, TensorKind::EmbeddingA | TensorKind::EmbeddingB))
        .map(|(_, key)| key.as_str())
        .collect();
    if !others.is_empty() {
        others.sort();
        return Err(Error::Config {
            path: path.to_path_buf(),
            reason: format!(
                "module {module}: tsd reads embedding LoRA as lora_embedding_A/B only, not with {}",
                others.join(", ")
            ),
        });
    }
    let a = get(TensorKind::EmbeddingA, "lora_embedding_A")?;
    let b = get(TensorKind::EmbeddingB, "lora_embedding_B")?;
    let r = a.rows;
    if b.cols != r || r != config.rank_for(module) {
        return Err(Error::shape(
            format!("module {module} (embedding LoRA)"),
            format!(
                "lora_embedding_A is {}x{} (r x vocab), lora_embedding_B is {}x{} (hidden x r), adapter_config.json gives rank {}",
                a.rows, a.cols, b.rows, b.cols, config.rank_for(module)
            ),
        ));
    }
    let alpha = config.alpha_for(module);
    Ok(EmbeddingLora {
        module: module.to_string(),
        r,
        alpha,
        scaling: config.scaling(r, alpha),
        a,
        b,
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

/// Warnings that say the same of several modules (`module M: TEXT`) become one line with the
/// count and the modules, in first-seen order: `TEXT (12 modules: M1, M2, …)`.
pub fn group_module_warnings(warnings: Vec<String>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut modules: std::collections::HashMap<String, Vec<String>> = Default::default();
    for w in warnings {
        let (key, module) = match w
            .strip_prefix("module ")
            .and_then(|rest| rest.split_once(": "))
        {
            Some((m, text)) => (text.to_string(), Some(m.to_string())),
            None => (w.clone(), None),
        };
        let key = if module.is_some() {
            key
        } else {
            format!("\0{w}")
        };
        if !modules.contains_key(&key) {
            order.push(key.clone());
        }
        modules.entry(key).or_default().extend(module);
    }
    order
        .into_iter()
        .map(|key| {
            let ms = &modules[&key];
            match ms.len() {
                0 => key.trim_start_matches('\0').to_string(),
                1 => format!("module {}: {key}", ms[0]),
                n => format!("{key} ({n} modules: {})", ms.join(", ")),
            }
        })
        .collect()
}
