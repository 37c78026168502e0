//! Every model variant tsd supports against transformers 5.24 (`scripts/make_family_fixtures.py`):
//! logits to 1e-4 on the fused CPU path and on the composed KV-cache path, parameter counts equal
//! to transformers' `num_parameters()`; and every unsupported variant refused with exit code 2 by
//! the real binary, the field and its value named.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{copy_dir, fixture, tsd};
use std::path::{Path, PathBuf};
use tsd::model::{KvCache, Llama};
use tsd::nn::ForwardCtx;
use tsd::weights::open_path;

const VARIANTS: [&str; 9] = [
    "llama-rope-theta-legacy",
    "llama-linear-legacy",
    "llama3-rope-scaling-legacy",
    "llama3-rope-parameters",
    "llama-head-dim",
    "llama-attention-bias",
    "llama-mlp-bias",
    "qwen2",
    "mistral",
];

fn family(name: &str) -> PathBuf {
    fixture("families").join(name)
}

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(family(name).join("logits.json")).expect("logits.json");
    serde_json::from_str(&text).unwrap()
}

fn load(dir: &Path) -> Llama {
    let src = open_path(dir).unwrap();
    Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap()
}

/// Largest |a − b| over `[B, T, V]` logits.
fn worst(got: &[Vec<Vec<f32>>], want: &serde_json::Value) -> f64 {
    let want: Vec<Vec<Vec<f64>>> = serde_json::from_value(want.clone()).unwrap();
    assert_eq!(got.len(), want.len());
    let mut w = 0f64;
    for (g, e) in got.iter().flatten().zip(want.iter().flatten()) {
        assert_eq!(g.len(), e.len());
        for (a, b) in g.iter().zip(e) {
            w = w.max((*a as f64 - b).abs());
        }
    }
    w
}

#[test]
fn every_variant_matches_transformers_logits_fused_and_composed() {
    for name in VARIANTS {
        let exp = reference(name);
        let model = load(&family(name));
        let ids: Vec<Vec<u32>> = serde_json::from_value(exp["input_ids"].clone()).unwrap();
        let ids = Tensor::new(ids, &Device::Cpu).unwrap();
        let fused = model
            .forward(&ids, &ForwardCtx::eval())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let d = worst(&fused, &exp["logits"]);
        assert!(d < 1e-4, "{name}: fused path max |Δlogit| = {d}");
        // The composed path (candle RoPE and attention ops, KV cache), in two chunks so that the
        // second starts at position 25 and reads its rotary rows from there.
        let mut cache = KvCache::new(&model);
        let t = ids.dim(1).unwrap();
        let a = model
            .forward_cached(&ids.narrow(1, 0, 25).unwrap(), 0, &mut cache)
            .unwrap();
        let b = model
            .forward_cached(&ids.narrow(1, 25, t - 25).unwrap(), 25, &mut cache)
            .unwrap();
        let composed = Tensor::cat(&[a, b], 1).unwrap().to_vec3::<f32>().unwrap();
        let dc = worst(&composed, &exp["logits"]);
        assert!(dc < 1e-4, "{name}: composed path max |Δlogit| = {dc}");
        eprintln!("{name}: max |Δlogit| fused {d:.2e}, composed {dc:.2e}");
    }
}

/// The fixtures can tell each feature apart: removing it (RoPE scaling → default, biases → 0)
/// moves transformers' own logits by far more than the tolerance, so a tsd that ignored it fails.
#[test]
fn each_fixture_is_sensitive_to_its_feature() {
    for name in VARIANTS {
        let exp = reference(name);
        if let Some(d) = exp["ablation"]["max_abs_diff"].as_f64() {
            assert!(d > 0.1, "{name}: ablation moves logits by only {d}");
        }
    }
}

#[test]
fn base_parameter_counts_equal_transformers_num_parameters() {
    let home = tempfile::tempdir().unwrap();
    for name in VARIANTS {
        let out = tsd(home.path())
            .args([
                "params",
                "--model",
                family(name).to_str().unwrap(),
                "--json",
            ])
            .args(["--rank", "4"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = rows[0]["counts"]["base_params"]
            .as_u64()
            .or_else(|| rows[0]["base_params"].as_u64())
            .unwrap_or_else(|| panic!("{name}: no base_params in {rows}"));
        assert_eq!(got, reference(name)["num_parameters"], "{name}");
    }
}

#[test]
fn mistral_refuses_sequences_beyond_its_sliding_window() {
    let model = load(&family("mistral"));
    let w = model
        .config
        .sliding_window
        .expect("the fixture has a window");
    let ids = Tensor::new(vec![vec![1u32; w + 1]], &Device::Cpu).unwrap();
    let e = model.forward(&ids, &ForwardCtx::eval()).unwrap_err();
    assert!(e.is_user_input());
    assert!(e.to_string().contains("sliding_window of 40"), "{e}");
    // Generation that grows past the window is refused at the token that would cross it.
    let mut cache = KvCache::new(&model);
    let first = Tensor::new(vec![vec![1u32; w]], &Device::Cpu).unwrap();
    model.forward_cached(&first, 0, &mut cache).unwrap();
    let next = Tensor::new(vec![vec![2u32]], &Device::Cpu).unwrap();
    let e = model.forward_cached(&next, w, &mut cache).unwrap_err();
    assert!(e.to_string().contains("sliding_window"), "{e}");
}

/// A copy of `base` whose config.json is edited by `edit`, in `dir`.
fn edited(base: &Path, dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let m = dir.join("model");
    copy_dir(base, &m);
    let p = m.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, serde_json::to_string(&cfg).unwrap()).unwrap();
    m
}

/// Runs `tsd eval` (which builds the model) on `model`; returns (exit code, stderr).
fn eval(home: &Path, model: &Path) -> (Option<i32>, String) {
    let data = home.join("data").join("boolq");
    std::fs::create_dir_all(&data).unwrap();
    let ex = serde_json::json!([{"instruction": "Is the sky blue on a clear day and green at night, as the question that is long enough to pass a tiny window asks?", "input": "", "output": "", "answer": "true"}]);
    std::fs::write(data.join("test.json"), ex.to_string()).unwrap();
    let out = tsd(home)
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--tasks",
            "boolq",
        ])
        .args(["--protocol", "loglik", "-q", "--data"])
        .arg(home.join("data"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(code: Option<i32>, stderr: &str, needle: &str, case: &str) {
    assert_eq!(code, Some(2), "{case}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{case}: `{needle}` not in {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{case}: one line: {stderr}"
    );
}

#[test]
fn unsupported_configs_are_refused_with_exit_2_naming_the_field() {
    use serde_json::json;
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "gemma",
            json!({"model_type": "gemma"}),
            "`model_type` = \"gemma\"",
        ),
        (
            "phi3",
            json!({"model_type": "phi3"}),
            "`model_type` = \"phi3\"",
        ),
        (
            "unknown",
            json!({"model_type": "falcon_h9"}),
            "`model_type` = \"falcon_h9\"",
        ),
        (
            "mixtral",
            json!({"model_type": "mixtral"}),
            "`model_type` = \"mixtral\"",
        ),
        (
            "experts",
            json!({"num_local_experts": 8, "num_experts_per_tok": 2}),
            "`num_local_experts` = 8",
        ),
        (
            "gelu",
            json!({"hidden_act": "gelu"}),
            "`hidden_act` = \"gelu\"",
        ),
        (
            "yarn",
            json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}),
            "`rope_scaling.rope_type` = \"yarn\"",
        ),
        (
            "dynamic",
            json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}),
            "`rope_parameters.rope_type` = \"dynamic\"",
        ),
        (
            "longrope",
            json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}),
            "`rope_scaling.rope_type` = \"longrope\"",
        ),
        (
            "softcap",
            json!({"attn_logit_softcapping": 50.0}),
            "`attn_logit_softcapping` = 50.0",
        ),
        (
            "partial",
            json!({"partial_rotary_factor": 0.5}),
            "`partial_rotary_factor` = 0.5",
        ),
        (
            "no model_type",
            json!({"model_type": null}),
            "`model_type` missing",
        ),
        (
            "quantized",
            json!({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}}),
            "`quantization_config`",
        ),
        (
            "attention dropout",
            json!({"attention_dropout": 0.1}),
            "`attention_dropout` = 0.1",
        ),
        (
            "layer types",
            json!({"layer_types": ["sliding_attention", "full_attention"]}),
            "`layer_types`",
        ),
        (
            "classifier",
            json!({"architectures": ["LlamaForSequenceClassification"]}),
            "`architectures`",
        ),
        (
            "rope disagreement",
            json!({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
            "disagree",
        ),
    ];
    for (case, edit, needle) in cases {
        let home = tempfile::tempdir().unwrap();
        let m = edited(&family("llama-head-dim"), home.path(), |c| {
            if edit.get("rope_scaling").is_some() && edit.get("rope_parameters").is_none() {
                // The legacy form on its own, as pre-transformers-5 configs have it.
                c.as_object_mut().unwrap().remove("rope_parameters");
            }
            for (k, v) in edit.as_object().unwrap() {
                c[k] = v.clone();
            }
        });
        let (code, err) = eval(home.path(), &m);
        assert_refused(code, &err, needle, case);
    }
    // Qwen2's sliding-window layers.
    let home = tempfile::tempdir().unwrap();
    let m = edited(&family("qwen2"), home.path(), |c| {
        c["use_sliding_window"] = true.into();
        c["sliding_window"] = 16.into();
    });
    let (code, err) = eval(home.path(), &m);
    assert_refused(code, &err, "`use_sliding_window` = true", "qwen2 window");
}

/// Checkpoint tensors the config does not account for are refused, not dropped.
#[test]
fn undeclared_bias_tensors_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let m = edited(&family("llama-attention-bias"), home.path(), |c| {
        c["attention_bias"] = false.into();
    });
    let (code, err) = eval(home.path(), &m);
    assert_refused(code, &err, "self_attn.", "undeclared bias");
    assert!(
        err.contains(".bias`") && err.contains("attention_bias"),
        "{err}"
    );
}

/// Through the binary: a Mistral whose window is shorter than the evaluation prompt is refused
/// (the tiny LLaMA with its tokenizer, relabelled as Mistral with a 16-token window).
#[test]
fn mistral_eval_beyond_the_window_is_refused_with_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let m = edited(&fixture("tiny-llama"), home.path(), |c| {
        c["model_type"] = "mistral".into();
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        c["sliding_window"] = 16.into();
        let o = c.as_object_mut().unwrap();
        o.remove("attention_bias");
        o.remove("mlp_bias");
    });
    let (code, err) = eval(home.path(), &m);
    assert_refused(code, &err, "sliding_window of 16", "mistral window");
}

/// An untied config without `lm_head.weight` is refused, not given the embedding as its head.
#[test]
fn a_missing_untied_lm_head_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let m = edited(&family("llama-head-dim"), home.path(), |_| {});
    let file = m.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    assert!(tensors.remove("lm_head.weight").is_some());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let (code, err) = eval(home.path(), &m);
    assert_refused(code, &err, "`lm_head.weight`", "missing lm_head");
    assert!(err.contains("tie_word_embeddings false"), "{err}");
}

/// `tsd train` refuses a cutoff longer than a Mistral window before the first step.
#[test]
fn mistral_train_cutoff_beyond_the_window_is_refused_with_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let m = edited(&fixture("tiny-llama"), home.path(), |c| {
        c["model_type"] = "mistral".into();
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        c["sliding_window"] = 16.into();
    });
    let data = home.path().join("train.json");
    let ex = serde_json::json!([{"instruction": "Say yes.", "input": "", "output": "yes", "answer": "yes"}]);
    std::fs::write(&data, ex.to_string()).unwrap();
    let out = tsd(home.path())
        .args(["train", "--model", m.to_str().unwrap(), "--data"])
        .arg(&data)
        .arg("--out")
        .arg(home.path().join("run"))
        .args(["--cutoff-len", "32", "--max-steps", "1", "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_refused(
        out.status.code(),
        &err,
        "sliding_window of 16",
        "train cutoff",
    );
}
