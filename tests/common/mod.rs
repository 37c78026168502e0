//! Shared helpers for integration tests: fixture paths and running the real `tsd` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The reference numbers written by `scripts/make_peft_fixtures.py` (real PEFT).
pub fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid json")
}

/// The `tsd` binary with an isolated cache directory.
pub fn tsd(home: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("tsd").expect("binary built");
    c.env("TSD_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME");
    c
}

/// The `tsd` binary with an isolated cache directory that holds the user's provisioned default
/// model: `home/models/<file>` links to it in `$TSD_HOME` (default `~/.cache/tsd`), so the SVD cache
/// stays isolated while the model is the one `scripts/test.sh` (or `tsd fetch`) provisioned.
pub fn tsd_with_default_model(home: &Path) -> assert_cmd::Command {
    let theirs = tsd::env::tsd_home()
        .join("models")
        .join(tsd::provision::DEFAULT_MODEL_FILE);
    assert!(
        theirs.exists(),
        "the default model is not provisioned at {}: run scripts/test.sh (or `tsd fetch`) first",
        theirs.display()
    );
    let ours = home.join("models").join(tsd::provision::DEFAULT_MODEL_FILE);
    if !ours.exists() {
        std::fs::create_dir_all(home.join("models")).unwrap();
        std::os::unix::fs::symlink(&theirs, &ours).unwrap();
    }
    tsd(home)
}

/// Copies a fixture directory into `dst` (flat).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Relative closeness with an absolute floor.
pub fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs + rel * a.abs().max(b.abs())
}

/// Writes `n` LLM-Adapters-style examples of `task` into `root/task/file`, cycling `labels`.
#[allow(dead_code)]
pub fn write_task(root: &Path, task: &str, file: &str, n: usize, labels: &[&str]) {
    let dir = root.join(task);
    std::fs::create_dir_all(&dir).unwrap();
    let ex: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let a = labels[i % labels.len()];
            serde_json::json!({"instruction": format!("Q{i}?"), "input": "", "output": format!("the correct answer is {a}"), "answer": a})
        })
        .collect();
    std::fs::write(dir.join(file), serde_json::to_string(&ex).unwrap()).unwrap();
}

/// The tiny LLaMA with a ChatML-like chat template in `tokenizer_config.json` (bos `<s>`, eos
/// `</s>`), written under `dir`.
#[allow(dead_code)]
pub fn tiny_chat_model(dir: &Path) -> PathBuf {
    let m = dir.join("tiny-chat");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-llama").join(f), m.join(f)).unwrap();
    }
    let template = "{% for m in messages %}{{ '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}";
    let config =
        serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template});
    std::fs::write(m.join("tokenizer_config.json"), config.to_string()).unwrap();
    m
}

/// `n` LLM-Adapters-format training examples (`instruction`, `input`, `output`, `answer`; four
/// answers in turn) written to `dir/train.json`.
pub fn write_train_data(dir: &Path, n: usize) -> PathBuf {
    let ex: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let a = ["alpha", "beta", "gamma", "delta"][i % 4];
            serde_json::json!({
                "instruction": format!("Pick the answer for item {i}.\n\nAnswer format: answer1/answer2"),
                "input": "",
                "output": format!("the correct answer is {a}"),
                "answer": a,
            })
        })
        .collect();
    let p = dir.join("train.json");
    std::fs::write(&p, serde_json::to_string(&ex).unwrap()).unwrap();
    p
}
