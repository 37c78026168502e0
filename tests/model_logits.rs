//! tsd's candle LLaMA against Hugging Face transformers (`scripts/make_logit_fixtures.py`): the same
//! logits for a tiny random GQA model, and for the default GGUF model loaded by each side's own
//! GGUF reader (tsd: dequantize + un-permute Q/K; transformers: its own converter).

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use tsd::model::Llama;
use tsd::nn::ForwardCtx;
use tsd::weights::{open_path, GgufModel};

fn read(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

#[test]
fn tiny_llama_logits_match_transformers() {
    let exp = read("tiny-llama-logits.json");
    let src = open_path(&fixture("tiny-llama")).unwrap();
    let model = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(exp["input_ids"].clone()).unwrap();
    let ids = Tensor::new(ids, &Device::Cpu).unwrap();
    let logits = model
        .forward(&ids, &ForwardCtx::eval())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let want: Vec<Vec<Vec<f64>>> = serde_json::from_value(exp["logits"].clone()).unwrap();
    let mut worst = 0f64;
    for (a, b) in logits
        .iter()
        .flatten()
        .flatten()
        .zip(want.iter().flatten().flatten())
    {
        worst = worst.max((*a as f64 - b).abs());
    }
    assert!(worst < 1e-4, "max |Δlogit| = {worst}");
}

#[test]
fn default_gguf_model_logits_match_transformers_gguf_loader() {
    let exp = read("smollm2-logits.json");
    let path = tsd::assets::default_model(false).unwrap();
    let src = GgufModel::open(&path).unwrap();
    let model = Llama::from_source(&src, &Device::Cpu, DType::F32).unwrap();
    let ids: Vec<u32> = serde_json::from_value(exp["input_ids"].clone()).unwrap();
    let t = ids.len();
    let logits = model
        .forward(
            &Tensor::new(vec![ids], &Device::Cpu).unwrap(),
            &ForwardCtx::eval(),
        )
        .unwrap();
    let last: Vec<f32> = logits
        .get(0)
        .unwrap()
        .get(t - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let top: Vec<u64> = serde_json::from_value(exp["top10_ids"].clone()).unwrap();
    let vals: Vec<f64> = serde_json::from_value(exp["top10_logits"].clone()).unwrap();
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    assert_eq!(order[0] as u64, top[0], "greedy next token");
    for (id, v) in top.iter().zip(&vals) {
        let got = last[*id as usize] as f64;
        assert!(
            (got - v).abs() < 2e-3 * (1.0 + v.abs()),
            "token {id}: {got} vs {v}"
        );
    }
}
