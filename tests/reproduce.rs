//! `tsd reproduce commonsense`: the smoke preset end to end (CI runs it on the default model), and
//! resumability on the tiny model.

mod common;

use common::{fixture, tsd};
use std::path::Path;

fn write_task(root: &Path, task: &str, file: &str, n: usize, labels: &[&str]) {
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

#[test]
fn smoke_grid_on_the_tiny_model_resumes_without_redoing_runs() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    write_task(&data, "ARC-Easy", "train.json", 30, &["answer1", "answer2"]);
    write_task(&data, "ARC-Easy", "test.json", 6, &["answer1", "answer2"]);
    write_task(&data, "boolq", "test.json", 6, &["true", "false"]);
    let out = d.path().join("out");
    let run = || {
        tsd(d.path())
            .args([
                "reproduce",
                "commonsense",
                "--preset",
                "smoke",
                "--model",
                fixture("tiny-llama").to_str().unwrap(),
            ])
            .args([
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["runs"].as_array().unwrap().len(), 3);
    assert_eq!(r["efficiency"][0]["dash_rank"], 1);
    for run in r["runs"].as_array().unwrap() {
        let acc = run["accuracy"].as_array().unwrap();
        assert_eq!(acc.len(), 2, "boolq and ARC-Easy");
        assert!(run["unparseable_rate"].as_f64().unwrap() >= 0.0);
        assert!(Path::new(
            &out.join("runs")
                .join(run["name"].as_str().unwrap())
                .join("record.json")
        )
        .exists());
    }
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("parameter-efficiency, LoRA-Dash r=1") && stdout.contains("paper: 8–16×")
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 2);
    assert!(
        std::fs::read_to_string(out.join("results.csv"))
            .unwrap()
            .lines()
            .count()
            == 4
    );
    // Everything finished: a second invocation trains and evaluates nothing.
    let second = run();
    assert!(second.status.success());
    let log = String::from_utf8_lossy(&second.stderr);
    assert_eq!(log.matches("done earlier").count(), 3, "{log}");
    assert!(!log.contains("training"));
}

#[test]
fn smoke_preset_runs_on_the_default_model() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/commonsense");
    if !data.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have ../shared/data/commonsense"
        );
        eprintln!("skipping: ../shared/data/commonsense not present");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("smoke");
    let o = tsd(d.path())
        .env_remove("TSD_HOME")
        .args([
            "reproduce",
            "commonsense",
            "--preset",
            "smoke",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["runs"].as_array().unwrap().len(), 3);
    assert!(r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["final_loss"].as_f64().unwrap().is_finite()));
}
