//! `tsd eval` (loglik protocol) end to end on the tiny model, with and without an adapter.

mod common;

use common::{fixture, tsd};

#[test]
fn loglik_eval_scores_every_label_and_counts_accuracy() {
    let d = tempfile::tempdir().unwrap();
    let task_dir = d.path().join("boolq");
    std::fs::create_dir_all(&task_dir).unwrap();
    let ex: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"instruction": format!("Is {i} even?"), "input": "", "output": "", "answer": if i % 2 == 0 { "true" } else { "false" }}))
        .collect();
    std::fs::write(
        task_dir.join("test.json"),
        serde_json::to_string(&ex).unwrap(),
    )
    .unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = tsd(d.path())
            .args([
                "eval",
                "--model",
                fixture("tiny-llama").to_str().unwrap(),
                "--tasks",
                "boolq",
                "--data",
                d.path().to_str().unwrap(),
                "--json",
                "-q",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = run(&["--protocol", "loglik"]);
    let r = &base[0];
    assert_eq!(r["protocol"], "loglik");
    assert_eq!(r["examples"], 5);
    let preds = r["predictions"].as_array().unwrap();
    let correct = preds.iter().filter(|p| p["correct"] == true).count();
    assert_eq!(r["correct"], correct);
    assert!(preds
        .iter()
        .all(|p| p["scores"].as_array().unwrap().len() == 2));
    // The PEFT fixture adapter changes the scores.
    let with = run(&[
        "--protocol",
        "loglik",
        "--adapter",
        fixture("peft-lora").to_str().unwrap(),
    ]);
    assert_ne!(with[0]["predictions"][0]["scores"], preds[0]["scores"]);
    // generate: beam search output saved per example; no label in it counts as unparseable.
    let g = run(&[
        "--protocol",
        "generate",
        "--beams",
        "2",
        "--max-new-tokens",
        "8",
    ]);
    let gp = g[0]["predictions"].as_array().unwrap();
    assert_eq!(g[0]["protocol"], "generate");
    assert!(gp.iter().all(|p| p["output"].is_string()));
    let unparseable = gp.iter().filter(|p| p["prediction"].is_null()).count();
    assert_eq!(g[0]["unparseable"], unparseable);
    // A missing task is a clear error.
    let out = tsd(d.path())
        .args([
            "eval",
            "--model",
            fixture("tiny-llama").to_str().unwrap(),
            "--tasks",
            "piqa",
            "--data",
            d.path().to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
