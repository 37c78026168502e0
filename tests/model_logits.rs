//! tsd's candle LLaMA against Hugging Face transformers (`scripts/make_logit_fixtures.py`): the same
//! logits for a tiny random GQA model, and for the default GGUF model loaded by each side's own
//! GGUF reader (tsd: dequantize + un-permute Q/K; transformers: its own converter). Each test runs
//! on both op paths: the fused CPU kernels and the composed candle ops CUDA runs
//! (`tsd::device::with_composed`, as `TSD_COMPOSED=1` does for the binary).

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use tsd::device::with_composed;
use tsd::model::Llama;
use tsd::nn::ForwardCtx;
use tsd::weights::{open_path, GgufModel};

/// The op paths every test runs on: fused CPU kernels, then the composed ops.
const PATHS: [bool; 2] = [false, true];

fn read(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

#[test]
fn tiny_llama_logits_match_transformers() {
    for composed in PATHS {
        with_composed(composed, tiny_llama_logits_match);
    }
}

fn tiny_llama_logits_match() {
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
    for composed in PATHS {
        with_composed(composed, default_gguf_logits_match);
    }
}

fn default_gguf_logits_match() {
    let exp = read("smollm2-logits.json");
    let path = tsd::provision::default_model(false).unwrap();
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
    for composed in PATHS {
        with_composed(composed, kv_cache_reproduces_full_forward);
    }
}

fn kv_cache_reproduces_full_forward() {
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

/// Tiny LLaMA with LoRA-Dash on every linear: LoRA B non-zero, Dash started from W's SVD, Δσ
/// non-zero, so that every adapter path carries signal.
fn dash_model(dtype: DType) -> Llama {
    let src = open_path(&fixture("tiny-llama")).unwrap();
    let mut model = Llama::from_source(src.as_ref(), &Device::Cpu, dtype).unwrap();
    for (i, lin) in model.linears_mut().enumerate() {
        lin.add_lora(4, 8.0, false, i as u64).unwrap();
        let (out, _) = lin.shape().unwrap();
        let b = Tensor::randn(0f32, 0.05, (out, 4), &Device::Cpu).unwrap();
        lin.lora.as_ref().unwrap().b.set(&b).unwrap();
    }
    model
}

fn start_dash(model: &mut Llama) {
    tsd::train::switch::start_dash_all(
        model.linears_mut().collect(),
        3,
        Default::default(),
        &tsd::svd_cache::SvdCache::disabled(),
        usize::MAX,
    )
    .unwrap();
    for (i, lin) in model.linears().enumerate() {
        let ds: Vec<f32> = (0..3).map(|j| 0.01 * (i + j + 1) as f32).collect();
        lin.dash
            .as_ref()
            .unwrap()
            .delta_sigma
            .set(&Tensor::new(ds, &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn ids() -> Tensor {
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|b| (0..24).map(|t| (7 * t + 13 * b + 1) % 128).collect())
        .collect();
    Tensor::new(ids, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Loss and every trainable variable's gradient of a training forward (dropout 0.1, seeded) on
/// one op path.
fn loss_and_grads(model: &Llama, composed: bool) -> (f32, Vec<Tensor>) {
    with_composed(composed, || {
        let ctx = ForwardCtx::train(0.1, 11);
        let logits = model.forward(&ids(), &ctx).unwrap();
        let (b, t, v) = logits.dims3().unwrap();
        let targets: Vec<u32> = (0..b * t).map(|i| (i as u32 * 31 + 5) % v as u32).collect();
        let loss =
            tsd::nn::loss::cross_entropy(&logits.reshape((b * t, v)).unwrap(), &targets).unwrap();
        let grads = loss.backward().unwrap();
        let g = model
            .linears()
            .flat_map(|l| l.vars())
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .expect("every trainable variable gets a gradient")
                    .clone()
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    })
}

/// The gradient test on both paths: every adapter parameter (A, B, Δσ of every module) gets a
/// non-zero gradient, and the fused and composed paths agree on the loss and on every gradient.
#[test]
fn fused_and_composed_paths_give_the_same_loss_and_gradients() {
    let mut model = dash_model(DType::F32);
    start_dash(&mut model);
    let (lf, gf) = loss_and_grads(&model, false);
    let (lc, gc) = loss_and_grads(&model, true);
    assert!((lf - lc).abs() < 1e-5 * lf.abs(), "loss {lf} vs {lc}");
    assert_eq!(gf.len(), 14 * 3);
    assert!(
        gf.iter().zip(&gc).any(|(a, c)| max_diff(a, c) > 0.0),
        "the two paths must differ in rounding somewhere, else one path ran twice"
    );
    for (a, c) in gf.iter().zip(&gc) {
        let scale = c
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 0.0, "zero gradient");
        assert!(
            max_diff(a, c) < 1e-3 * scale,
            "gradient differs by {} (scale {scale})",
            max_diff(a, c)
        );
    }
}

/// Switch continuity on both paths: starting Dash (Δσ = 0) leaves the training forward's logits
/// unchanged (to f32 rounding: the Dash columns join LoRA's product and change its summation).
#[test]
fn dash_switch_is_continuous_on_both_paths() {
    for composed in PATHS {
        with_composed(composed, || {
            let mut model = dash_model(DType::F32);
            let ctx = || ForwardCtx::train(0.1, 3);
            let before = model.forward(&ids(), &ctx()).unwrap();
            tsd::train::switch::start_dash_all(
                model.linears_mut().collect(),
                3,
                Default::default(),
                &tsd::svd_cache::SvdCache::disabled(),
                usize::MAX,
            )
            .unwrap();
            let after = model.forward(&ids(), &ctx()).unwrap();
            let scale = before
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_diff(&before, &after);
            assert!(d < 1e-6 * scale, "composed {composed}: logits jump by {d}");
        });
    }
}

/// A bf16 base (candle's CPU backend has bf16 kernels for every op the composed path uses): the
/// model stays bf16, adapters are f32, and logits stay within bf16 rounding of the same bf16
/// weights computed in f32.
#[test]
fn bf16_base_keeps_f32_adapters_and_close_logits() {
    let src = open_path(&fixture("tiny-llama-bf16")).unwrap();
    let mut f32m = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
    let mut bf16m = Llama::from_source(src.as_ref(), &Device::Cpu, DType::BF16).unwrap();
    for m in [&mut f32m, &mut bf16m] {
        for (i, lin) in m.linears_mut().enumerate() {
            lin.add_lora(4, 8.0, false, i as u64).unwrap();
            let (out, _) = lin.shape().unwrap();
            let b = Tensor::randn(0f32, 0.05, (out, 4), &Device::Cpu).unwrap();
            lin.lora.as_ref().unwrap().b.set(&b).unwrap();
        }
    }
    // same adapters in both
    for (a, b) in f32m.linears().zip(bf16m.linears()) {
        let (la, lb) = (a.lora.as_ref().unwrap(), b.lora.as_ref().unwrap());
        lb.b.set(la.b.as_tensor()).unwrap();
        assert_eq!(b.weight().dtype(), DType::BF16);
        assert_eq!(lb.a.dtype(), DType::F32);
        assert_eq!(lb.b.dtype(), DType::F32);
    }
    let ctx = ForwardCtx::eval();
    let want = f32m.forward(&ids(), &ctx).unwrap();
    let got = bf16m.forward(&ids(), &ctx).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_diff(&got.to_dtype(DType::F32).unwrap(), &want);
    // bf16 keeps 8 significant bits: a relative error of a few 2⁻⁸ through two layers
    assert!(
        d < 0.03 * scale,
        "bf16 logits differ by {d} (scale {scale})"
    );
    assert!(d > 0.0, "the bf16 model must actually compute in bf16");
}
