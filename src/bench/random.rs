//! A LLaMA-shaped model with seeded random weights, for benchmarks at shapes no checkpoint is
//! kept for.

use crate::error::Result;
use crate::linalg::Matrix;
use rand::SeedableRng;

/// A LLaMA-shaped model with seeded random weights (uniform, std 0.02; norms 1), generated
/// tensor by tensor when the loader asks, in parallel blocks: a 7B shape needs no checkpoint and
/// never more than one tensor on the host.
pub struct RandomLlama {
    pub config: crate::model::LlamaConfig,
    pub seed: u64,
}

impl RandomLlama {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (h, v) = (c.hidden_size, c.vocab_size);
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => return Some(vec![v, h]),
            "model.norm.weight" => return Some(vec![h]),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        if layer.parse::<usize>().ok()? >= c.num_hidden_layers {
            return None;
        }
        if rest == "input_layernorm.weight" || rest == "post_attention_layernorm.weight" {
            return Some(vec![h]);
        }
        let module = crate::names::LinearName::parse(name.strip_suffix(".weight")?)?;
        c.linear_shape(module.kind.as_str())
            .map(|(o, i)| vec![o, i])
    }
}

impl crate::weights::WeightSource for RandomLlama {
    fn describe(&self) -> String {
        format!(
            "random LLaMA ({} layers, {}/{}, seed {})",
            self.config.num_hidden_layers,
            self.config.hidden_size,
            self.config.intermediate_size,
            self.seed
        )
    }
    fn has(&self, name: &str) -> bool {
        self.shape_of(name).is_some()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shape_of(name)
    }
    fn matrix(&self, name: &str) -> Result<Matrix> {
        let (shape, data) = self.tensor(name)?;
        Matrix::new(shape[0], shape.get(1).copied().unwrap_or(1), data)
    }
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        use rand::Rng;
        use rayon::prelude::*;
        let shape = self
            .shape_of(name)
            .ok_or_else(|| crate::Error::MissingTensor {
                context: self.describe(),
                tensor: name.into(),
            })?;
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            return Ok((shape, vec![1.0; n]));
        }
        let seed = name
            .bytes()
            .fold(self.seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let a = 0.02f32 * 3f32.sqrt();
        let mut data = vec![0f32; n];
        data.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, block)| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(
                    seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                for x in block.iter_mut() {
                    *x = rng.random_range(-a..a);
                }
            });
        Ok((shape, data))
    }
    fn names(&self) -> Vec<String> {
        let mut v = vec!["model.embed_tokens.weight".to_string()];
        for l in 0..self.config.num_hidden_layers {
            for (g, m) in [
                ("self_attn", "q_proj"),
                ("self_attn", "k_proj"),
                ("self_attn", "v_proj"),
                ("self_attn", "o_proj"),
                ("mlp", "gate_proj"),
                ("mlp", "up_proj"),
                ("mlp", "down_proj"),
            ] {
                v.push(format!("model.layers.{l}.{g}.{m}.weight"));
            }
            v.push(format!("model.layers.{l}.input_layernorm.weight"));
            v.push(format!("model.layers.{l}.post_attention_layernorm.weight"));
        }
        v.push("model.norm.weight".into());
        v.push("lm_head.weight".into());
        v
    }
    fn total_params(&self) -> u64 {
        self.config.total_params()
    }
    fn config_json(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.config).ok()
    }
}
