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

#[test]
fn kv_cache_reproduces_full_forward_and_greedy_search() {
    let src = open_path(&fixture("tiny-llama")).unwrap();
    let model = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
    let ids: Vec<u32> = vec![1, 5, 77, 3, 100, 42, 9, 127, 64, 2];
    let full = model
        .forward(
            &Tensor::new(vec![ids.clone()], &Device::Cpu).unwrap(),
            &ForwardCtx::eval(),
        )
        .unwrap();
    let mut cache = tsd::model::llama::KvCache::new(&model);
    let first = model
        .forward_cached(
            &Tensor::new(vec![ids[..4].to_vec()], &Device::Cpu).unwrap(),
            0,
            &mut cache,
        )
        .unwrap();
    let mut cached = vec![first];
    for (p, &t) in ids.iter().enumerate().skip(4) {
        cached.push(
            model
                .forward_cached(
                    &Tensor::new(vec![vec![t]], &Device::Cpu).unwrap(),
                    p,
                    &mut cache,
                )
                .unwrap(),
        );
    }
    let cached = Tensor::cat(&cached, 1).unwrap();
    let d = full
        .sub(&cached)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "cached logits differ by {d}");
    // one beam = greedy decoding recomputed from scratch at every step
    let cfg = tsd::eval::generate::GenConfig {
        num_beams: 1,
        max_new_tokens: 6,
        length_penalty: 1.0,
        eos: 1000,
    };
    let out = tsd::eval::generate::beam_search(&model, &ids[..4], &cfg).unwrap();
    let mut seq = ids[..4].to_vec();
    for _ in 0..6 {
        let l = model
            .forward(
                &Tensor::new(vec![seq.clone()], &Device::Cpu).unwrap(),
                &ForwardCtx::eval(),
            )
            .unwrap();
        let last: Vec<f32> = l
            .get(0)
            .unwrap()
            .get(seq.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let best = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        seq.push(best);
    }
    assert_eq!(out, seq[4..].to_vec());
    // four beams find a sequence at least as likely (length-normalised) as greedy's
    let beam = tsd::eval::generate::beam_search(
        &model,
        &ids[..4],
        &tsd::eval::generate::GenConfig {
            num_beams: 4,
            ..cfg
        },
    )
    .unwrap();
    let score = |gen: &[u32]| -> f64 {
        let mut s = ids[..4].to_vec();
        s.extend_from_slice(gen);
        let l = candle_nn::ops::log_softmax(
            &model
                .forward(
                    &Tensor::new(vec![s.clone()], &Device::Cpu).unwrap(),
                    &ForwardCtx::eval(),
                )
                .unwrap()
                .get(0)
                .unwrap(),
            1,
        )
        .unwrap();
        let l: Vec<Vec<f32>> = l.to_vec2().unwrap();
        (0..gen.len())
            .map(|i| l[3 + i][gen[i] as usize] as f64)
            .sum::<f64>()
            / gen.len() as f64
    };
    assert_eq!(beam.len(), 6);
    assert!(score(&beam) >= score(&out) - 1e-5);
}
