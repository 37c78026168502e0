//! Tensor names in adapter files.
//!
//! PEFT: `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `.lora_B.weight` (`[out, r]`);
//! older or multi-adapter files may insert the adapter name (`.lora_A.default.weight`) or omit the
//! `base_model.model.` prefix: both are accepted. DoRA adds `.lora_magnitude_vector` (`[out]`).
//!
//! LoRA-Dash, tsd's names (all under the same prefix), as `tsd_dash.safetensors` holds them beside
//! the folded PEFT file (and as checkpoints before that layout held them inside
//! `adapter_model.safetensors`, which PEFT loaded without them):
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
//!
//! Beyond A/B, PEFT stores: `lora_B.bias` `[out]` (`lora_bias=True`, added as `scaling·b` to the
//! module's output), `lora_embedding_A` `[r, vocab]` / `lora_embedding_B` `[hidden, r]` (LoRA on
//! an embedding, `ΔW = scaling·(B·A)ᵀ`), and whole base-model tensors under their own names:
//! `modules_to_save` copies (`<module>.weight`; older PEFT: `<module>.modules_to_save.weight`),
//! trained biases (`bias="all"|"lora_only"`: `<module>.bias` or `<module>.base_layer.bias`), and
//! embedding layers saved beside an embedding LoRA (`<module>.base_layer.weight`).

/// File names of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// tsd's file beside a LoRA-Dash adapter's PEFT files: the Dash parametrisation (README, Adapter
/// formats); `adapter_model.safetensors` beside it is its fold.
pub const DASH_FILE: &str = "tsd_dash.safetensors";
/// Metadata key of `tsd_dash.safetensors` holding the unfolded adapter's config (PEFT JSON).
pub const DASH_CONFIG_KEY: &str = "tsd_adapter_config";
/// Metadata key of `tsd_dash.safetensors` holding the sha256 of the `adapter_model.safetensors`
/// written beside it (the fold of the same adapter).
pub const DASH_PEFT_SHA256_KEY: &str = "tsd_peft_weights_sha256";

/// What a tensor in an adapter file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorKind {
    LoraA,
    LoraB,
    DoraMagnitude,
    /// `lora_B.bias` `[out]`.
    LoraBias,
    /// `lora_embedding_A` `[r, vocab]`.
    EmbeddingA,
    /// `lora_embedding_B` `[hidden, r]`.
    EmbeddingB,
    /// Recognised PEFT LoRA tensors tsd neither analyses nor applies (e.g. trainable tokens).
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
        (".lora_embedding_A", TensorKind::EmbeddingA),
        (".lora_embedding_B", TensorKind::EmbeddingB),
        (".lora_B.bias", TensorKind::LoraBias),
        (".trainable_tokens_delta", TensorKind::Unsupported),
    ];
    SUFFIXES.iter().find_map(|(suffix, kind)| {
        k.strip_suffix(suffix)
            .filter(|m| !m.is_empty())
            .map(|m| (m.to_string(), *kind))
    })
}

/// A key that names a whole base-model tensor (a `modules_to_save` copy, a trained bias, a saved
/// embedding layer): its Hugging Face tensor name (`lm_head.weight`,
/// `model.layers.0.self_attn.q_proj.bias`) and whether PEFT stored it as a tuner layer's
/// `base_layer`. `None` for LoRA tensors and anything not ending in `.weight` / `.bias`.
pub fn parse_base_tensor(key: &str, adapter_name: &str) -> Option<(String, bool)> {
    let k = key.strip_prefix(PREFIX).unwrap_or(key);
    let k = k.replace(&format!(".modules_to_save.{adapter_name}."), ".");
    let k = k.replace(".modules_to_save.", ".");
    if k.split('.').any(|seg| seg.starts_with("lora_")) {
        return None;
    }
    let base_layer = k.contains(".base_layer.");
    let k = k.replace(".base_layer.", ".");
    let module = k
        .strip_suffix(".weight")
        .or_else(|| k.strip_suffix(".bias"))?;
    (!module.is_empty()).then_some((k.clone(), base_layer))
}

/// The PEFT key tsd writes for a module tensor.
pub fn key(module: &str, kind: TensorKind) -> String {
    let suffix = match kind {
        TensorKind::LoraA => "lora_A.weight",
        TensorKind::LoraB => "lora_B.weight",
        TensorKind::DoraMagnitude => "lora_magnitude_vector",
        TensorKind::LoraBias => "lora_B.bias",
        TensorKind::EmbeddingA => "lora_embedding_A",
        TensorKind::EmbeddingB => "lora_embedding_B",
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
        assert_eq!(
            parse_key(&format!("{PREFIX}{m}.lora_B.bias"), "default"),
            Some((m.to_string(), TensorKind::LoraBias))
        );
        assert_eq!(
            parse_key(
                "base_model.model.model.embed_tokens.lora_embedding_A",
                "default"
            ),
            Some(("model.embed_tokens".to_string(), TensorKind::EmbeddingA))
        );
    }

    #[test]
    fn base_tensor_keys_as_peft_writes_them() {
        let p = |k| parse_base_tensor(k, "task");
        assert_eq!(
            p("base_model.model.lm_head.weight"),
            Some(("lm_head.weight".into(), false))
        );
        assert_eq!(
            p("base_model.model.lm_head.modules_to_save.task.weight"),
            Some(("lm_head.weight".into(), false))
        );
        assert_eq!(
            p("base_model.model.model.norm.modules_to_save.weight"),
            Some(("model.norm.weight".into(), false))
        );
        assert_eq!(
            p("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"),
            Some(("model.layers.0.self_attn.q_proj.bias".into(), true))
        );
        assert_eq!(
            p("base_model.model.model.embed_tokens.base_layer.weight"),
            Some(("model.embed_tokens.weight".into(), true))
        );
        assert_eq!(
            p("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"),
            None
        );
        assert_eq!(
            p("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            None
        );
        assert_eq!(
            p("base_model.model.model.embed_tokens.lora_embedding_A"),
            None
        );
        assert_eq!(p("tsd_whatever"), None);
    }
}
