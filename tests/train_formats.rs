//! Every training-data format and schema trains through the real `tsd train`: JSON, JSON Lines
//! and Parquet files of the LLM-Adapters, text, prompt/completion, conversational
//! prompt/completion and messages schemas (`tests/fixtures/data-formats/`, written by the real
//! `datasets` / pyarrow), ShareGPT conversations and a Hugging Face dataset from a local hub cache
//! (`hf:`), on the tiny LLaMA given a ChatML template. Each run's record names its data: the
//! files with their sizes and sha256, the schema, the loss rule and the length cut.

use assert_cmd::Command;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

mod common;

/// The tiny LLaMA with a ChatML-like chat template.
fn chat_model(dir: &Path) -> PathBuf {
    common::tiny_chat_model(dir)
}

fn train(model: &Path, data: &str, run: &Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("tsd")
        .unwrap()
        .env("HF_HUB_CACHE", fixtures().join("data-formats/hub"))
        .env("HF_HUB_OFFLINE", "1")
        .args(["train", "--model"])
        .arg(model)
        .args(["--data", data, "--out"])
        .arg(run)
        .args([
            "--method",
            "lora",
            "--rank",
            "2",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "2",
            "--val-size",
            "1",
            "--warmup-steps",
            "0",
            "--save-every",
            "2",
            "--cutoff-len",
            "64",
            "-q",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn record(run: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap()
}

#[test]
fn every_format_and_schema_trains_and_is_recorded() {
    let d = tempfile::tempdir().unwrap();
    let model = chat_model(d.path());
    let cases = [
        ("alpaca", "alpaca", "all"),
        ("text", "text", "all"),
        ("prompt_completion", "prompt_completion", "completion"),
        (
            "chat_prompt_completion",
            "chat_prompt_completion",
            "completion",
        ),
        ("messages", "messages", "all"),
    ];
    for (file, schema, loss) in cases {
        for ext in ["json", "jsonl", "parquet"] {
            let data = fixtures().join(format!("data-formats/{file}.{ext}"));
            let run = d.path().join(format!("run-{file}-{ext}"));
            let out = train(&model, data.to_str().unwrap(), &run, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{file}.{ext}: {err}");
            let rec = record(&run);
            let data_rec = &rec["data"];
            assert_eq!(data_rec["schema"], schema, "{file}.{ext}");
            assert_eq!(data_rec["loss_on"], loss, "{file}.{ext}");
            assert_eq!(data_rec["max_length"], 64);
            let f = &data_rec["files"][0];
            let bytes = std::fs::read(&data).unwrap();
            assert_eq!(f["bytes"], bytes.len() as u64);
            assert_eq!(
                f["sha256"].as_str().unwrap(),
                tsd::fsutil::sha256_file(&data).unwrap(),
                "{file}.{ext}"
            );
            assert_eq!(rec["steps"].as_array().unwrap().len(), 2, "{file}.{ext}");
            assert!(rec["steps"][0]["loss"].as_f64().unwrap().is_finite());
        }
    }
}

#[test]
fn sharegpt_hub_datasets_and_assistant_loss_train() {
    let d = tempfile::tempdir().unwrap();
    let model = chat_model(d.path());
    let sharegpt = fixtures().join("data-formats/sharegpt.jsonl");
    let run = d.path().join("sharegpt");
    // ShareGPT's `from`/`value` become `role`/`content`; its `human`/`gpt` roles are kept, as
    // TRL keeps them, so there is no `assistant` turn to mask by.
    let out = train(&model, sharegpt.to_str().unwrap(), &run, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = record(&run);
    assert_eq!(rec["data"]["schema"], "messages");
    assert_eq!(rec["data"]["loss_on"], "all");
    let out = train(
        &model,
        sharegpt.to_str().unwrap(),
        &d.path().join("sg2"),
        &["--loss-on", "assistant"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "row 0 (0-based): --loss-on assistant: a conversation has no assistant tokens"
        ),
        "{err}"
    );

    let msgs = fixtures().join("data-formats/messages.jsonl");
    let run = d.path().join("assistant");
    let out = train(
        &model,
        msgs.to_str().unwrap(),
        &run,
        &["--loss-on", "assistant"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = record(&run);
    assert_eq!(rec["data"]["loss_on"], "assistant");
    assert!(rec["data"]["chat_template"]
        .as_str()
        .unwrap()
        .ends_with("tokenizer_config.json"));

    let run = d.path().join("hub");
    let out = train(&model, "hf:tsd-fixtures/chat/completion:train", &run, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = record(&run);
    assert_eq!(rec["data"]["schema"], "prompt_completion");
    assert_eq!(
        rec["data"]["spec"][0],
        "hf:tsd-fixtures/chat/completion:train"
    );
    assert_eq!(rec["data"]["files"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_data_and_loss_choices_are_refused_naming_them() {
    let d = tempfile::tempdir().unwrap();
    let model = chat_model(d.path());
    let bad = fixtures().join("data-formats/bad/missing_field.jsonl");
    let out = train(&model, bad.to_str().unwrap(), &d.path().join("r1"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing_field.jsonl") && err.contains("row"),
        "{err}"
    );

    let text = fixtures().join("data-formats/text.jsonl");
    let out = train(
        &model,
        text.to_str().unwrap(),
        &d.path().join("r2"),
        &["--loss-on", "assistant"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--loss-on assistant") && err.contains("text"),
        "{err}"
    );

    // Conversations need a chat template: the plain tiny LLaMA has none.
    let msgs = fixtures().join("data-formats/messages.jsonl");
    let plain = fixtures().join("tiny-llama");
    let out = train(&plain, msgs.to_str().unwrap(), &d.path().join("r3"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chat template"), "{err}");
}

/// A run resumed on changed data is refused, naming the run.
#[test]
fn resume_refuses_changed_data() {
    let d = tempfile::tempdir().unwrap();
    let model = chat_model(d.path());
    let data = d.path().join("t.jsonl");
    std::fs::copy(fixtures().join("data-formats/text.jsonl"), &data).unwrap();
    let run = d.path().join("run");
    let out = train(&model, data.to_str().unwrap(), &run, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"text\": \"one more row\"}\n");
    std::fs::write(&data, text).unwrap();
    let out = Command::cargo_bin("tsd")
        .unwrap()
        .args(["train", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("training data changed"), "{err}");
}
