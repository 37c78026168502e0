//! A base a PEFT user can load (issue 20, point 2): `tsd fetch --hf-dir DIR` writes the default
//! model as a transformers directory holding exactly the weights tsd computes with, and
//! `tsd export --base-name DIR` makes an adapter declare it. `tests/fixtures/hf-base/transformers-check.json`
//! is what `scripts/hf_base_check.py` recorded with the real transformers and PEFT (README of that
//! directory): the base's logits, its tokenizer's ids, and the logits of a LoRA-Dash checkpoint of
//! the cpu reproduction exported onto it, loaded by `AutoPeftModelForCausalLM`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, tsd_with_default_model};
use serde_json::Value;
use std::path::Path;
use tsd::adapter::load_adapter;
use tsd::eval::merge::adapted_model;
use tsd::model::Llama;
use tsd::nn::ForwardCtx;
use tsd::weights::{open_path, GgufModel, WeightSource};

/// The Dash checkpoint `scripts/hf_base_check.py` loaded (exported with `--base-name`).
const DASH_CHECKPOINT: &str =
    "reproductions/commonsense/cpu/runs/dash-r1-s3/checkpoints/step-000200";

fn record() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("hf-base/transformers-check.json")).unwrap(),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Logits `[t, vocab]` of one sequence.
fn logits(model: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let t = Tensor::new(vec![ids.to_vec()], &Device::Cpu).unwrap();
    model
        .forward(&t, &ForwardCtx::eval())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap()
        .remove(0)
}

/// Largest |Δ| between tsd's logits at the probe ids (every position) and the recorded ones, and
/// whether the top 10 of the last position are the same tokens.
fn compare(got: &[Vec<f32>], probe: &[u32], rec: &Value) -> f64 {
    let want: Vec<Vec<f64>> = serde_json::from_value(rec["probe_logits"].clone()).unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(&want) {
        for (&p, &x) in probe.iter().zip(w) {
            worst = worst.max((g[p as usize] as f64 - x).abs());
        }
    }
    let last = got.last().unwrap();
    for (&id, x) in ids(&rec["top10_ids"])
        .iter()
        .zip(rec["top10_logits"].as_array().unwrap())
    {
        worst = worst.max((last[id as usize] as f64 - x.as_f64().unwrap()).abs());
    }
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    assert_eq!(
        order[0] as u32,
        ids(&rec["top10_ids"])[0],
        "greedy next token"
    );
    worst
}

/// transformers' `AutoModelForCausalLM.from_pretrained(DIR)` computes tsd's logits, its tokenizer
/// tsd's ids; PEFT's `AutoPeftModelForCausalLM` on the exported Dash checkpoint computes tsd's
/// merged Dash model.
#[test]
fn transformers_and_peft_on_the_fetched_base_compute_what_tsd_does() {
    let rec = record();
    let gguf = GgufModel::open(&tsd::provision::default_model(false).unwrap()).unwrap();
    let probe = ids(&rec["probe_ids"]);
    let text_ids = ids(&rec["tokenizer"]["ids"]);
    let tok = tsd::model::tokenizer::tokenizer_from_gguf(gguf.content(), gguf.path()).unwrap();
    let enc = |s: &Value| tsd::model::tokenizer::encode(&tok, s.as_str().unwrap()).unwrap();
    assert_eq!(enc(&rec["tokenizer"]["text"]), text_ids);
    assert_eq!(
        enc(&rec["tokenizer"]["chat_text"]),
        ids(&rec["tokenizer"]["chat_ids"])
    );

    let base = Llama::from_source(&gguf, &Device::Cpu, DType::F32).unwrap();
    let w = compare(&logits(&base, &text_ids), &probe, &rec["base"]);
    eprintln!("base: tsd vs transformers, max |Δlogit| = {w:.3e}");
    assert!(w < 2e-4, "base: tsd vs transformers {w}");

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let adapter = load_adapter(&root.join(DASH_CHECKPOINT)).unwrap();
    assert!(adapter.has_dash());
    let merged = adapted_model(&gguf, &adapter, &Device::Cpu, DType::F32).unwrap();
    let got = logits(&merged, &text_ids);
    let w = compare(&got, &probe, &rec["adapter"]);
    eprintln!(
        "LoRA-Dash checkpoint: tsd vs AutoPeftModelForCausalLM merged, max |Δlogit| = {w:.3e}"
    );
    assert!(w < 2e-4, "Dash adapter: tsd vs PEFT {w}");
    // The Dash term matters on this input: without it tsd is far from PEFT's logits.
    let mut lora_only = adapter.clone();
    lora_only.modules.iter_mut().for_each(|m| m.dash = None);
    let plain = adapted_model(&gguf, &lora_only, &Device::Cpu, DType::F32).unwrap();
    let off = compare(&logits(&plain, &text_ids), &probe, &rec["adapter"]);
    eprintln!("the same without its Dash term: max |Δlogit| = {off:.3e}");
    assert!(
        off > 10.0 * w,
        "the Dash term barely matters ({off} vs {w})"
    );
}

/// Regression (issue 20, point 2): there was no `tsd fetch --hf-dir`. The directory it writes
/// holds every tensor exactly as tsd computes with it from the GGUF, a config tsd reads as the same
/// model, and names no machine path.
#[test]
fn fetch_hf_dir_writes_the_weights_tsd_computes_with() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("smollm2-hf");
    let out = tsd_with_default_model(d.path())
        .args(["fetch", "--hf-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let gguf = GgufModel::open(&tsd::provision::default_model(false).unwrap()).unwrap();
    let hf = open_path(&dir).unwrap();
    assert_eq!(hf.names(), gguf.names());
    for name in gguf.names() {
        assert!(
            hf.tensor(&name).unwrap() == gguf.tensor(&name).unwrap(),
            "{name} differs"
        );
    }
    let text_ids = ids(&record()["tokenizer"]["ids"]);
    let a = logits(
        &Llama::from_source(&gguf, &Device::Cpu, DType::F32).unwrap(),
        &text_ids,
    );
    let b = logits(
        &Llama::from_source(hf.as_ref(), &Device::Cpu, DType::F32).unwrap(),
        &text_ids,
    );
    assert!(
        a == b,
        "tsd computes differently from the written directory"
    );
    let home = d.path().to_str().unwrap();
    for f in [
        "config.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(!text.contains(home), "{f} names a machine path");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert!(cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
}
