//! Base models resolved by Hugging Face id from the HF cache layout (`$HF_HOME/hub`), offline.

mod common;

use common::{fixture, tsd};
use std::path::Path;

/// Lays out `$hf_home/hub/models--{owner}--{name}` as huggingface_hub does (refs + snapshots).
fn cache_model(hf_home: &Path, id: &str, src: &Path) {
    let repo = hf_home
        .join("hub")
        .join(format!("models--{}", id.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), snap.join(f)).unwrap();
    }
}

#[test]
fn hub_id_resolves_from_the_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let hf = home.path().join("hf");
    cache_model(&hf, "tsd-test/tiny-llama", &fixture("tiny-llama"));
    let adapter = fixture("peft-lora");
    let run = |base: &str| {
        let out = tsd(home.path())
            .env("HF_HOME", &hf)
            .args([
                "inspect",
                adapter.to_str().unwrap(),
                "--base",
                base,
                "--json",
                "-q",
                "--offline",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let from_hub = run("tsd-test/tiny-llama");
    let from_dir = run(fixture("tiny-llama").to_str().unwrap());
    assert!(from_hub["base"].as_str().unwrap().contains("snapshots"));
    for (a, b) in from_hub["modules"]
        .as_array()
        .unwrap()
        .iter()
        .zip(from_dir["modules"].as_array().unwrap())
    {
        assert_eq!(a["tsd"], b["tsd"]);
    }
    // An uncached revision is refused offline rather than fetched.
    let out = tsd(home.path())
        .env("HF_HOME", &hf)
        .args([
            "inspect",
            adapter.to_str().unwrap(),
            "--base",
            "tsd-test/tiny-llama",
            "--revision",
            "v2",
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn params_reads_a_config_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let hf = home.path().join("hf");
    cache_model(&hf, "tsd-test/tiny-llama", &fixture("tiny-llama"));
    let out = tsd(home.path())
        .env("HF_HOME", &hf)
        .args([
            "params",
            "--model",
            "tsd-test/tiny-llama",
            "--rank",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // tiny-llama: 2 layers; q 64x64, k,v 32x64, up 160x64, down 64x160 → r·(in+out) summed
    let per_layer = 4 * ((64 + 64) + 2 * (32 + 64) + 2 * (160 + 64));
    assert_eq!(v[0]["trainable"], 2 * per_layer);
}
