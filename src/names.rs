//! The vocabulary every layer shares: the linears of a LLaMA-family layer ([`LinearKind`]), their
//! module paths (`model.layers.{layer}.{self_attn|mlp}.{kind}`, built and parsed only here), and
//! the training [`Method`] with its two spellings (the CLI and JSON name, the paper's label).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The linear modules of a LLaMA layer, in HF order (the names of [`LinearKind::ALL`]).
pub const LINEARS: [&str; 7] = [
    LinearKind::Q.as_str(),
    LinearKind::K.as_str(),
    LinearKind::V.as_str(),
    LinearKind::O.as_str(),
    LinearKind::Gate.as_str(),
    LinearKind::Up.as_str(),
    LinearKind::Down.as_str(),
];

/// Which of a LLaMA layer's seven linears: a typed name, so that no code reaches a linear by its
/// position in the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    /// Every kind, in HF order (the order of a layer's state dict).
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// The Hugging Face module name (`q_proj`, …, `down_proj`).
    pub const fn as_str(self) -> &'static str {
        match self {
            LinearKind::Q => "q_proj",
            LinearKind::K => "k_proj",
            LinearKind::V => "v_proj",
            LinearKind::O => "o_proj",
            LinearKind::Gate => "gate_proj",
            LinearKind::Up => "up_proj",
            LinearKind::Down => "down_proj",
        }
    }

    /// `self_attn` or `mlp`: where the linear sits in a layer.
    pub const fn group(self) -> &'static str {
        match self {
            LinearKind::Q | LinearKind::K | LinearKind::V | LinearKind::O => "self_attn",
            LinearKind::Gate | LinearKind::Up | LinearKind::Down => "mlp",
        }
    }

    /// The HF module path in layer `layer`, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn path(self, layer: usize) -> String {
        format!("{}.{}.{}", layer_prefix(layer), self.group(), self.as_str())
    }

    /// Position in [`LinearKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for LinearKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LinearKind {
    type Err = Error;

    /// Parses an HF short name (`q_proj`, …); anything else is bad input naming the value.
    fn from_str(s: &str) -> Result<Self> {
        LinearKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "`{s}` is not a LLaMA linear module (one of {})",
                    LINEARS.join(", ")
                ))
            })
    }
}

/// A linear of a LLaMA-family layer by its parts: `model.layers.{layer}.{group}.{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearName {
    pub layer: usize,
    pub kind: LinearKind,
}

impl LinearName {
    /// Parses an HF module path; `None` for anything that is not exactly a LLaMA layer's linear
    /// (another architecture's module, `lm_head`, a wrong group such as `mlp.q_proj`).
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (group, short) = rest.split_once('.')?;
        let kind: LinearKind = short.parse().ok()?;
        (kind.group() == group).then_some(LinearName {
            layer: layer.parse().ok()?,
            kind,
        })
    }

    /// The HF module path.
    pub fn path(&self) -> String {
        self.kind.path(self.layer)
    }
}

/// The module type a report shows: the linear's kind for a LLaMA layer's linear, else the last
/// segment of the path (modules of other architectures, e.g. GPT-2's `c_attn`).
pub fn module_type(path: &str) -> String {
    match LinearName::parse(path) {
        Some(n) => n.kind.as_str().to_string(),
        None => path.rsplit('.').next().unwrap_or(path).to_string(),
    }
}

/// `model.layers.{layer}`: the prefix of a LLaMA-family layer's tensors.
pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// The layer number in a module path (`model.layers.12.mlp.up_proj` → 12).
pub fn layer_of(module: &str) -> Option<usize> {
    let mut parts = module.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "h" || p == "layer" || p == "blocks" {
            return parts.next().and_then(|n| n.parse().ok());
        }
    }
    None
}

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Plain LoRA.
    Lora,
    /// LoRA for `dash_t` steps, then LoRA + Dash (README, Definitions: LoRA-Dash).
    #[default]
    LoraDash,
    /// Full fine-tuning of the target modules (a reference ΔW* for TSD capture).
    Full,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(Method::Lora),
            "lora-dash" | "dash" => Ok(Method::LoraDash),
            "full" => Ok(Method::Full),
            o => Err(Error::InvalidArgument(format!(
                "method `{o}`: expected lora, lora-dash or full"
            ))),
        }
    }
}

impl Method {
    /// The CLI and JSON name: `lora`, `lora-dash`, `full`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::LoraDash => "lora-dash",
            Method::Full => "full",
        }
    }

    /// The paper's name: `LoRA`, `LoRA-Dash`, `full`.
    pub const fn label(self) -> &'static str {
        match self {
            Method::Lora => "LoRA",
            Method::LoraDash => "LoRA-Dash",
            Method::Full => "full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        let n = LinearName::parse("model.layers.12.mlp.up_proj").unwrap();
        assert_eq!((n.layer, n.kind), (12, LinearKind::Up));
        assert_eq!(n.path(), "model.layers.12.mlp.up_proj");
        for bad in [
            "model.layers.1.mlp.q_proj",
            "model.layers.x.self_attn.q_proj",
            "model.layers..self_attn.q_proj",
            "transformer.h.3.attn.c_attn",
            "lm_head",
            "model.layers.1.self_attn.q_proj.extra",
        ] {
            assert_eq!(LinearName::parse(bad), None, "{bad}");
        }
        assert_eq!(module_type("model.layers.0.self_attn.v_proj"), "v_proj");
        assert_eq!(module_type("transformer.h.3.attn.c_attn"), "c_attn");
    }

    #[test]
    fn layer_numbers_are_parsed() {
        assert_eq!(layer_of("model.layers.12.mlp.up_proj"), Some(12));
        assert_eq!(layer_of("transformer.h.3.attn.c_attn"), Some(3));
        assert_eq!(layer_of("lm_head"), None);
    }

    #[test]
    fn methods_have_one_name_and_one_label() {
        for m in [Method::Lora, Method::LoraDash, Method::Full] {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), m);
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::from(m.as_str())
            );
        }
        assert_eq!(Method::LoraDash.label(), "LoRA-Dash");
    }
}
