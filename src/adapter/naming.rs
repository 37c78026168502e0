//! Tensor names in adapter files.
//!
//! PEFT: `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `.lora_B.weight` (`[out, r]`);
//! older or multi-adapter files may insert the adapter name (`.lora_A.default.weight`) or omit the
//! `base_model.model.` prefix: both are accepted. DoRA adds `.lora_magnitude_vector` (`[out]`).
//!
//! LoRA-Dash, tsd's names (all under the same prefix, PEFT-style `lora_` so PEFT treats them as
//! adapter tensors):
//!
//! | key suffix | shape | meaning |
//! |---|---|---|
//! | `lora_dash_u` | `[out, s]` | Ū = U[:, I], frozen |
//! | `lora_dash_vt` | `[s, in]` | V̄ᵀ = V[:, I]ᵀ, frozen |
//! | `lora_dash_delta_sigma` | `[s]` | Δσ, trainable |
//! | `lora_dash_index` | `[s]` I64 | I, indices into W's descending σ |
//! | `lora_dash_sigma` | `[s]` | σ_I of W at the switch |
//! | `lora_dash_delta_hat` | `[s]` | δ̂_I at the switch |
//!
//! LoRA-Dash, the official code's names: `lora_index.weight` `[1, s]` (Δσ, despite its name),
//! `lora_w_u` `[out, s]` (Ū), `lora_w_vt` `[s, in]` (V̄ᵀ); it stores no indices.

/// What a tensor in an adapter file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorKind {
    LoraA,
    LoraB,
    DoraMagnitude,
    /// `lora_embedding_A/B`, `lora_bias`, conv LoRA…: recognised but not analysed.
    Unsupported,
    DashU,
    DashVt,
    DashDeltaSigma,
    DashIndex,
    DashSigma,
    DashDeltaHat,
    OfficialDashSigma,
    OfficialDashU,
    OfficialDashVt,
}

/// The PEFT key prefix.
pub const PREFIX: &str = "base_model.model.";

/// Splits a key into (HF module path, kind). `None` for keys tsd does not recognise.
pub fn parse_key(key: &str, adapter_name: &str) -> Option<(String, TensorKind)> {
    let k = key.strip_prefix(PREFIX).unwrap_or(key);
    let named = format!(".{adapter_name}");
    let k = k.replace(&format!("{named}."), ".");
    let k = k.strip_suffix(named.as_str()).unwrap_or(&k).to_string();
    const SUFFIXES: &[(&str, TensorKind)] = &[
        (".lora_A.weight", TensorKind::LoraA),
        (".lora_B.weight", TensorKind::LoraB),
        (".lora_magnitude_vector.weight", TensorKind::DoraMagnitude),
        (".lora_magnitude_vector", TensorKind::DoraMagnitude),
        (".lora_dash_u", TensorKind::DashU),
        (".lora_dash_vt", TensorKind::DashVt),
        (".lora_dash_delta_sigma", TensorKind::DashDeltaSigma),
        (".lora_dash_index", TensorKind::DashIndex),
        (".lora_dash_sigma", TensorKind::DashSigma),
        (".lora_dash_delta_hat", TensorKind::DashDeltaHat),
        (".lora_index.weight", TensorKind::OfficialDashSigma),
        (".lora_w_u", TensorKind::OfficialDashU),
        (".lora_w_vt", TensorKind::OfficialDashVt),
        (".lora_embedding_A", TensorKind::Unsupported),
        (".lora_embedding_B", TensorKind::Unsupported),
        (".lora_B.bias", TensorKind::Unsupported),
    ];
    SUFFIXES.iter().find_map(|(suffix, kind)| {
        k.strip_suffix(suffix)
            .filter(|m| !m.is_empty())
            .map(|m| (m.to_string(), *kind))
    })
}

/// The PEFT key tsd writes for a module tensor.
pub fn key(module: &str, kind: TensorKind) -> String {
    let suffix = match kind {
        TensorKind::LoraA => "lora_A.weight",
        TensorKind::LoraB => "lora_B.weight",
        TensorKind::DoraMagnitude => "lora_magnitude_vector",
        TensorKind::DashU => "lora_dash_u",
        TensorKind::DashVt => "lora_dash_vt",
        TensorKind::DashDeltaSigma => "lora_dash_delta_sigma",
        TensorKind::DashIndex => "lora_dash_index",
        TensorKind::DashSigma => "lora_dash_sigma",
        TensorKind::DashDeltaHat => "lora_dash_delta_hat",
        TensorKind::OfficialDashSigma => "lora_index.weight",
        TensorKind::OfficialDashU => "lora_w_u",
        TensorKind::OfficialDashVt => "lora_w_vt",
        TensorKind::Unsupported => "unsupported",
    };
    format!("{PREFIX}{module}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_and_without_prefix_and_adapter_name() {
        let m = "model.layers.0.self_attn.q_proj";
        for k in [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        ] {
            assert_eq!(
                parse_key(k, "default"),
                Some((m.to_string(), TensorKind::LoraA)),
                "{k}"
            );
        }
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight", "default"),
            Some((m.to_string(), TensorKind::DoraMagnitude))
        );
        assert_eq!(
            parse_key(&key(m, TensorKind::DashU), "default"),
            Some((m.to_string(), TensorKind::DashU))
        );
        assert_eq!(
            parse_key(
                "base_model.model.model.layers.0.self_attn.q_proj.lora_index.weight",
                "default"
            ),
            Some((m.to_string(), TensorKind::OfficialDashSigma))
        );
        assert_eq!(
            parse_key("model.layers.0.self_attn.q_proj.weight", "default"),
            None
        );
        assert_eq!(parse_key(".lora_A.weight", "default"), None);
    }
}
