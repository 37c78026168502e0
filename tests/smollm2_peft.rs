//! A real PEFT LoRA trained on the default model by Python PEFT (`data/adapters/smollm2-arc-lora`,
//! `scripts/train_smollm2_peft_lora.py`): tsd's own GGUF loader (dequantize, llama.cpp → HF names,
//! Q/K un-permutation) and change rates agree with numpy on transformers' independently loaded W.

mod common;

use common::{close, fixture, tsd_with_default_model};

#[test]
fn real_peft_adapter_on_the_default_model_matches_numpy() {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2-expected.json")).unwrap())
            .unwrap();
    let home = tempfile::tempdir().unwrap();
    let adapter =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/adapters/smollm2-arc-lora");
    let out = tsd_with_default_model(home.path())
        .args([
            "inspect",
            adapter.to_str().unwrap(),
            "--json",
            "--spectrum",
            "--svd-precision",
            "f64",
            "--no-cache",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let modules = exp["modules"].as_object().unwrap();
    assert_eq!(rep["modules"].as_array().unwrap().len(), modules.len());
    let f = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for m in rep["modules"].as_array().unwrap() {
        let name = m["module"].as_str().unwrap();
        let e = &modules[name];
        assert_eq!(m["shape"], e["shape"], "{name}");
        assert!(close(m["scaling"].as_f64().unwrap(), 2.0, 0.0, 0.0));
        assert!(
            close(
                m["delta_fro"].as_f64().unwrap(),
                e["delta_w_fro"].as_f64().unwrap(),
                1e-6,
                0.0
            ),
            "{name} ‖ΔW‖"
        );
        let sigma = f(&m["sigma"]);
        let s1 = sigma[0];
        for (a, b) in sigma.iter().zip(f(&e["sigma_head"])) {
            assert!(close(*a, b, 1e-9, 1e-12 * s1), "{name} σ head {a} vs {b}");
        }
        for (a, b) in sigma[sigma.len() - 5..].iter().zip(f(&e["sigma_tail"])) {
            assert!(close(*a, b, 1e-6, 1e-12 * s1), "{name} σ tail {a} vs {b}");
        }
        let top: Vec<u64> = m["tsd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["index"].as_u64().unwrap())
            .collect();
        let etop: Vec<u64> = e["top8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(top, etop, "{name} top-8");
        let deltas: Vec<f64> = m["tsd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["delta"].as_f64().unwrap())
            .collect();
        for (a, b) in deltas.iter().zip(f(&e["top8_delta"])) {
            assert!(close(*a, b, 1e-6, 0.0), "{name} δ {a} vs {b}");
        }
    }
}
