//! Building the model `tsd eval --adapter` evaluates: the base with every part of the adapter
//! applied, or a refusal naming what cannot be.
//!
//! Whole tensors (`modules_to_save` copies, trained biases, saved embedding layers), embedding
//! LoRA (`W + scaling·(B·A)ᵀ`) and LoRA biases (`bias + scaling·b`) are applied by serving the
//! base's weights through [`AdapterOverlay`], so the model loads them as if they were the base's;
//! linear LoRA / LoRA-Dash factors are then merged by [`super::apply_adapter`]. A replaced tensor
//! the model never reads (e.g. a bias on a linear tsd's model has no bias for) is refused.

use super::apply_adapter;
use crate::adapter::naming::{key, TensorKind};
use crate::adapter::{Adapter, AdapterExtras, BaseTensorRole};
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use crate::model::Llama;
use crate::weights::WeightSource;
use candle_core::{DType, Device};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// A base model's weights with some tensors replaced by an adapter's (HF names, PyTorch layout).
pub struct AdapterOverlay<'a> {
    base: &'a dyn WeightSource,
    replaced: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// The adapter keys each replaced tensor came from.
    sources: BTreeMap<String, Vec<String>>,
    read: Mutex<BTreeSet<String>>,
}

/// The tensors an adapter replaces (name → shape and values) and the adapter keys behind each.
#[derive(Default)]
struct Replacements {
    replaced: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    sources: BTreeMap<String, Vec<String>>,
}

impl Replacements {
    /// The adapter's whole tensors (`modules_to_save`, trained biases, saved weights), their
    /// shapes checked; a copy of one of tied embeddings is refused.
    fn whole_tensors(&mut self, base: &dyn WeightSource, ex: &AdapterExtras) -> Result<()> {
        let tied = base
            .config_json()
            .and_then(|c| c.get("tie_word_embeddings").and_then(|v| v.as_bool()))
            .unwrap_or(false);
        for t in &ex.base_tensors {
            if let Some(shape) = base.shape(&t.name) {
                if shape != t.shape {
                    return Err(Error::shape(
                        &t.key,
                        format!(
                            "the adapter's copy is {:?}, the base's {} is {shape:?}",
                            t.shape, t.name
                        ),
                    ));
                }
            }
            let embedding = t.name == "lm_head.weight" || t.name.ends_with("embed_tokens.weight");
            if tied && embedding && t.role != BaseTensorRole::Saved {
                return Err(Error::InvalidArgument(format!(
                    "`{}`: the base ties lm_head to embed_tokens (tie_word_embeddings), and tsd does not untie them to apply a modules_to_save copy of one",
                    t.key
                )));
            }
            self.replaced
                .insert(t.name.clone(), (t.shape.clone(), t.data.clone()));
            self.sources
                .entry(t.name.clone())
                .or_default()
                .push(t.key.clone());
        }
        Ok(())
    }

    /// Embedding LoRA merged into the (possibly replaced) embedding.
    fn embeddings(&mut self, base: &dyn WeightSource, ex: &AdapterExtras) -> Result<()> {
        for e in &ex.embeddings {
            let name = format!("{}.weight", e.module);
            let (shape, mut w) = match self.replaced.remove(&name) {
                Some(x) => x,
                None => base.tensor(&name)?,
            };
            let (vocab, hidden) = e.shape();
            if shape != [vocab, hidden] {
                return Err(Error::shape(
                    &e.module,
                    format!(
                        "embedding LoRA is for [{vocab}, {hidden}], the base's {name} is {shape:?}"
                    ),
                ));
            }
            for (x, d) in w.iter_mut().zip(e.delta().data) {
                *x += d;
            }
            self.sources.entry(name.clone()).or_default().extend([
                key(&e.module, TensorKind::EmbeddingA),
                key(&e.module, TensorKind::EmbeddingB),
            ]);
            self.replaced.insert(name, (shape, w));
        }
        Ok(())
    }

    /// LoRA biases added to the (possibly replaced) bias; a base layer without a bias is refused.
    fn lora_biases(&mut self, base: &dyn WeightSource, adapter: &Adapter) -> Result<()> {
        let ex = &adapter.extras;
        let biasless: Vec<String> = ex
            .lora_biases
            .keys()
            .filter(|m| {
                let name = format!("{m}.bias");
                !self.replaced.contains_key(&name) && !base.has(&name)
            })
            .map(|m| key(m, TensorKind::LoraBias))
            .collect();
        if !biasless.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: {} cannot be applied: the base layer has no bias (as PEFT says, a LoRA bias cannot be merged into a linear without one)",
                adapter.path.display(),
                biasless.join(", ")
            )));
        }
        for (module, b) in &ex.lora_biases {
            let m = adapter
                .modules
                .iter()
                .find(|m| &m.module == module)
                .ok_or_else(|| Error::MissingTensor {
                    context: format!("{} (lora_B.bias)", adapter.path.display()),
                    tensor: format!("{module}.lora_B.weight"),
                })?;
            let name = format!("{module}.bias");
            let (shape, mut bias) = match self.replaced.remove(&name) {
                Some(x) => x,
                None if base.has(&name) => base.tensor(&name)?,
                None => unreachable!("biasless bases were refused above"),
            };
            if bias.len() != b.len() {
                return Err(Error::shape(
                    &name,
                    format!(
                        "lora_B.bias has {} values, the base's bias {shape:?}",
                        b.len()
                    ),
                ));
            }
            for (x, y) in bias.iter_mut().zip(b) {
                *x = (*x as f64 + m.scaling * *y as f64) as f32;
            }
            self.sources
                .entry(name.clone())
                .or_default()
                .push(key(module, TensorKind::LoraBias));
            self.replaced.insert(name, (shape, bias));
        }
        Ok(())
    }
}

impl<'a> AdapterOverlay<'a> {
    /// The replacements `adapter` makes to `base`: its whole tensors, then embedding LoRA merged
    /// into the (possibly replaced) embedding, then LoRA biases added to the (possibly replaced or
    /// absent, i.e. zero) bias. Shapes are checked against the base's.
    pub fn new(base: &'a dyn WeightSource, adapter: &Adapter) -> Result<Self> {
        let mut r = Replacements::default();
        r.whole_tensors(base, &adapter.extras)?;
        r.embeddings(base, &adapter.extras)?;
        r.lora_biases(base, adapter)?;
        Ok(AdapterOverlay {
            base,
            replaced: r.replaced,
            sources: r.sources,
            read: Mutex::new(BTreeSet::new()),
        })
    }

    /// The adapter keys behind replaced tensors nothing has read yet.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.lock().map(|r| r.clone()).unwrap_or_default();
        self.replaced
            .keys()
            .filter(|k| !read.contains(*k))
            .flat_map(|k| {
                self.sources
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| vec![k.clone()])
            })
            .collect()
    }

    fn mark(&self, name: &str) {
        if let Ok(mut r) = self.read.lock() {
            r.insert(name.to_string());
        }
    }
}

impl WeightSource for AdapterOverlay<'_> {
    fn describe(&self) -> String {
        self.base.describe()
    }
    fn has(&self, name: &str) -> bool {
        self.replaced.contains_key(name) || self.base.has(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.replaced.get(name) {
            Some((s, _)) => Some(s.clone()),
            None => self.base.shape(name),
        }
    }
    fn matrix(&self, name: &str) -> Result<Matrix> {
        match self.replaced.get(name) {
            Some((s, d)) if s.len() == 2 => {
                self.mark(name);
                Matrix::new(s[0], s[1], d.clone())
            }
            Some((s, _)) => Err(Error::shape(
                name,
                format!("expected a matrix, found {s:?}"),
            )),
            None => self.base.matrix(name),
        }
    }
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.replaced.get(name) {
            Some(t) => {
                self.mark(name);
                Ok(t.clone())
            }
            None => self.base.tensor(name),
        }
    }
    fn names(&self) -> Vec<String> {
        let mut n: BTreeSet<String> = self.base.names().into_iter().collect();
        n.extend(self.replaced.keys().cloned());
        n.into_iter().collect()
    }
    fn total_params(&self) -> u64 {
        self.base.total_params()
    }
    fn config_json(&self) -> Option<serde_json::Value> {
        self.base.config_json()
    }
}

/// The base model from `src` with everything in `adapter` applied (see the module docs). Refuses
/// tensors it cannot apply, naming them: unrecognised keys, and replaced tensors the model does
/// not read (a bias on a linear without one, in PEFT's words "Impossible to merge LoRA with
/// `lora_bias=True` because the base layer has no bias").
pub fn adapted_model(
    src: &dyn WeightSource,
    adapter: &Adapter,
    device: &Device,
    dtype: DType,
) -> Result<Llama> {
    if !adapter.unmatched.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: tsd cannot apply tensor(s) it does not recognise: {}",
            adapter.path.display(),
            adapter.unmatched.join(", ")
        )));
    }
    let overlay = AdapterOverlay::new(src, adapter)?;
    let mut model = Llama::from_source(&overlay, device, dtype)?;
    let unread = overlay.unread();
    if !unread.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: tsd's model of this base has no place for {} (a bias on a linear without one, or a tensor it does not use), so the adapter cannot be applied exactly",
            adapter.path.display(),
            unread.join(", ")
        )));
    }
    apply_adapter(&mut model, adapter)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{fold_dash, AdapterConfig, BaseTensor, ModuleAdapter};
    use crate::weights::memory::InMemoryModel;

    fn adapter(extras: crate::adapter::AdapterExtras) -> Adapter {
        let m = "model.layers.0.self_attn.q_proj";
        Adapter {
            path: "mem".into(),
            config: AdapterConfig::default(),
            modules: vec![ModuleAdapter {
                module: m.into(),
                r: 1,
                alpha: 3.0,
                scaling: 3.0,
                a: Matrix::new(1, 2, vec![0.5, -1.0]).unwrap(),
                b: Matrix::new(2, 1, vec![2.0, 1.0]).unwrap(),
                dora_magnitude: None,
                dash: None,
            }],
            warnings: vec![],
            unmatched: vec![],
            metadata: Default::default(),
            extras,
        }
    }

    fn base(tied: bool) -> InMemoryModel {
        let mut b = InMemoryModel::default();
        b.tensors.insert(
            "model.layers.0.self_attn.q_proj.weight".into(),
            Matrix::new(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap(),
        );
        b.tensors.insert(
            "model.embed_tokens.weight".into(),
            Matrix::new(3, 2, vec![0.0; 6]).unwrap(),
        );
        b.config = Some(serde_json::json!({ "tie_word_embeddings": tied }));
        b
    }

    /// A LoRA bias is added as `scaling·b` to the base's bias, and `--fold-dash` (scaling folded
    /// into B, scaling 1) keeps that sum; a base linear without a bias is refused by the adapter
    /// key, as PEFT refuses to merge it.
    #[test]
    fn lora_bias_is_scaled_and_survives_folding() {
        let mut ex = crate::adapter::AdapterExtras::default();
        ex.lora_biases
            .insert("model.layers.0.self_attn.q_proj".into(), vec![0.5, -0.25]);
        let ad = adapter(ex);
        let name = "model.layers.0.self_attn.q_proj.bias";
        let mut b = base(false);
        b.vectors.insert(name.into(), vec![0.25, 0.0]);
        let got = AdapterOverlay::new(&b, &ad).unwrap().tensor(name).unwrap();
        assert_eq!(got, (vec![2], vec![1.75, -0.75]));
        let folded = fold_dash(&ad);
        let again = AdapterOverlay::new(&b, &folded)
            .unwrap()
            .tensor(name)
            .unwrap();
        assert_eq!(again, got);
        let err = AdapterOverlay::new(&base(false), &ad).err().unwrap();
        assert!(err.is_user_input());
        assert!(
            err.to_string()
                .contains("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"),
            "{err}"
        );
    }

    #[test]
    fn modules_to_save_copy_of_a_tied_embedding_is_refused() {
        let mut ex = crate::adapter::AdapterExtras::default();
        ex.base_tensors.push(BaseTensor {
            name: "model.embed_tokens.weight".into(),
            key: "base_model.model.model.embed_tokens.weight".into(),
            shape: vec![3, 2],
            data: vec![1.0; 6],
            role: BaseTensorRole::ModulesToSave,
        });
        let ad = adapter(ex);
        let err = AdapterOverlay::new(&base(true), &ad).err().unwrap();
        assert!(err.to_string().contains("tie_word_embeddings"), "{err}");
        assert!(err.is_user_input());
        let untied = base(false);
        let o = AdapterOverlay::new(&untied, &ad).unwrap();
        assert_eq!(
            o.tensor("model.embed_tokens.weight").unwrap().1,
            vec![1.0; 6]
        );
    }
}
