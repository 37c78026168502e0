//! `tsd reproduce commonsense`: the smoke preset end to end (CI runs it on the default model), and
//! resumability on the tiny model.

mod common;

use common::{fixture, tsd, write_task};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn tiny_data(root: &Path) -> std::path::PathBuf {
    let data = root.join("data");
    write_task(&data, "ARC-Easy", "train.json", 30, &["answer1", "answer2"]);
    write_task(&data, "ARC-Easy", "test.json", 6, &["answer1", "answer2"]);
    write_task(&data, "boolq", "test.json", 6, &["true", "false"]);
    data
}

/// `tsd reproduce commonsense --preset smoke` on the tiny model with extra arguments.
fn smoke(root: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    tsd(root)
        .args([
            "reproduce",
            "commonsense",
            "--preset",
            "smoke",
            "--model",
            fixture("tiny-llama").to_str().unwrap(),
            "--train-on-inputs",
            "true",
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn results(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

#[test]
fn smoke_grid_on_the_tiny_model_resumes_without_redoing_runs() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let out = d.path().join("out");
    let first = smoke(d.path(), &data, &out, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r = results(&out);
    assert_eq!(r["runs"].as_array().unwrap().len(), 3);
    assert_eq!(r["summary"]["efficiency"][0]["dash_rank"], 1);
    // Each comparison's point estimate is the difference of the two runs' headline averages (one
    // seed), inside its interval; the interval and MDE come from the saved predictions.
    let avg_of = |name: &str| {
        r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["scores"]["average"]
            .as_f64()
            .unwrap()
    };
    let comps = r["summary"]["comparisons"].as_array().unwrap();
    assert_eq!(comps.len(), 2, "LoRA-Dash r=1 against LoRA r=1 and r=4");
    for c in comps {
        let b = format!("lora-r{}-s1", c["b_rank"]);
        let want = avg_of("dash-r1-s1") - avg_of(&b);
        let d = &c["diff"];
        let est = d["estimate"].as_f64().unwrap();
        assert!((est - want).abs() < 1e-9, "{c}");
        assert!(d["lo"].as_f64().unwrap() <= est && est <= d["hi"].as_f64().unwrap());
        assert!(c["mde"].as_f64().unwrap() >= 0.0 && c["examples"] == 12);
    }
    assert!(r["summary"]["verdict"]
        .as_str()
        .unwrap()
        .contains("minimum detectable effect"));
    // One count of what trains: Δσ included in both the count and its percentage.
    for x in r["runs"].as_array().unwrap() {
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                out.join("runs")
                    .join(x["name"].as_str().unwrap())
                    .join("record.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(x["trainable_params"], rec["trainable_params"]);
        let pct = 100.0 * rec["trainable_params"].as_f64().unwrap()
            / rec["base_params"].as_f64().unwrap();
        assert!((x["trainable_pct"].as_f64().unwrap() - pct).abs() < 1e-12);
    }
    let lora1 = r["runs"][0]["trainable_params"].as_u64().unwrap();
    let dash1 = r["runs"][2]["trainable_params"].as_u64().unwrap();
    assert!(
        dash1 > lora1,
        "LoRA-Dash r=1 counts its Δσ: {dash1} vs {lora1}"
    );
    for run in r["runs"].as_array().unwrap() {
        let tasks = run["scores"]["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2, "boolq and ARC-Easy");
        assert!(tasks
            .iter()
            .all(|t| t["loglik_examples"] == 6 && t["generate_examples"] == 2));
        // The rate is the share of generated answers without a valid label, over every task.
        let preds: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(
                out.join("runs")
                    .join(run["name"].as_str().unwrap())
                    .join("predictions.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let generated: Vec<&serde_json::Value> = preds
            .iter()
            .filter(|t| t["protocol"] == "generate")
            .flat_map(|t| t["predictions"].as_array().unwrap())
            .collect();
        assert_eq!(
            generated.len(),
            4,
            "2 generated answers for each of 2 tasks"
        );
        let bad = generated
            .iter()
            .filter(|p| p["prediction"].is_null())
            .count();
        let rate = run["scores"]["unparseable_rate"].as_f64().unwrap();
        assert!(
            (rate - 100.0 * bad as f64 / 4.0).abs() < 1e-9,
            "unparseable_rate {rate} vs {bad} of 4 answers without a label"
        );
        assert_eq!(run["scores"]["average"], run["scores"]["loglik_avg"]);
        assert!(Path::new(
            &out.join("runs")
                .join(run["name"].as_str().unwrap())
                .join("record.json")
        )
        .exists());
    }
    // The lr check ran every candidate and the grid used its pick.
    let trials = r["lr_check"]["trials"].as_array().unwrap();
    assert!(
        trials.len() >= 2,
        "both candidates, plus any extension past an edge optimum"
    );
    let best = trials
        .iter()
        .min_by(|a, b| {
            a["val_loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["val_loss"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(r["lr_check"]["chosen"], best["lr"]);
    assert!(r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["lr"] == best["lr"]));
    // Capture at every checkpoint (save_every 3 of 6 steps) against the full fine-tune.
    assert!(r["reference"].as_str().unwrap().contains("full-ref-s1"));
    let cap = r["capture"].as_array().unwrap();
    assert_eq!(cap.len(), 3);
    for c in cap {
        let steps: Vec<u64> = c["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, vec![3, 6]);
        let a = c["points"][0]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a));
        // The paper's module set beside all modules.
        let q = c["points"][0]["accuracy_qkv"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&q));
    }
    // The base model's average is the mean of its per-task (loglik) accuracies.
    let base_tasks = r["base"]["tasks"].as_array().unwrap();
    assert_eq!(base_tasks.len(), 2);
    let mean = base_tasks
        .iter()
        .map(|t| t["loglik"].as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!((r["base"]["average"].as_f64().unwrap() - mean).abs() < 1e-9);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("parameter-efficiency, LoRA-Dash r=1") && stdout.contains("paper: 8–16×")
    );
    assert!(stdout.contains("lr check") && stdout.contains("TSD capture"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4);
    assert!(
        std::fs::read_to_string(out.join("results.csv"))
            .unwrap()
            .lines()
            .count()
            == 4
    );
    // Everything finished: a second invocation trains and evaluates nothing.
    let second = smoke(d.path(), &data, &out, &[]);
    assert!(second.status.success());
    let log = String::from_utf8_lossy(&second.stderr);
    assert_eq!(log.matches("done earlier").count(), 3, "{log}");
    assert!(
        !log.contains("training") && !log.contains("evaluating"),
        "{log}"
    );
    assert_eq!(results(&out)["runs"], r["runs"]);
    // Regression: a finished grid re-renders without the reference weights (not kept in git).
    std::fs::remove_dir_all(out.join("runs/full-ref-s1/checkpoints")).unwrap();
    let third = smoke(d.path(), &data, &out, &[]);
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    assert_eq!(results(&out)["reference"], r["reference"]);
    assert_eq!(results(&out)["capture"], r["capture"]);
    // Other settings on the same output directory are refused, not mixed in.
    let other = tsd(d.path())
        .args(["reproduce", "commonsense", "--preset", "smoke", "--model"])
        .arg(fixture("tiny-llama"))
        .args(["--train-on-inputs", "false", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("other settings"));
}

/// The cluster path: `--emit-jobs` writes one command per piece; running each line and then
/// `--collect` gives the same grid as one local invocation.
#[test]
fn emitted_jobs_then_collect_assemble_the_grid() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let out = d.path().join("cluster");
    let o = smoke(d.path(), &data, &out, &["--emit-jobs"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs = std::fs::read_to_string(out.join("jobs/jobs.txt")).unwrap();
    let lines: Vec<&str> = jobs.lines().collect();
    // 3 cells + base + full reference; the lr check runs first, from prepare.sbatch.
    assert_eq!(lines.len(), 5, "{jobs}");
    let array = std::fs::read_to_string(out.join("jobs/array.sbatch")).unwrap();
    assert!(array.contains("#SBATCH --array=1-5"));
    let prep = std::fs::read_to_string(out.join("jobs/prepare.sbatch")).unwrap();
    assert!(prep.contains("--only lr-check"));
    assert!(std::fs::read_to_string(out.join("jobs/submit.sh"))
        .unwrap()
        .contains("--dependency=afterok"));
    // Collecting before anything ran names what is missing.
    let early = smoke(d.path(), &data, &out, &["--collect"]);
    assert_eq!(early.status.code(), Some(2));
    // A cell before the lr check is refused (the check decides its lr).
    let o = smoke(d.path(), &data, &out, &["--only", "lora-r1-s1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--only lr-check"));
    let run_piece = |piece: &str| {
        let o = smoke(d.path(), &data, &out, &["--only", piece]);
        assert!(
            o.status.success(),
            "{piece}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run_piece("lr-check");
    for l in &lines {
        let piece = l.rsplit("--only ").next().unwrap();
        run_piece(piece);
    }
    let o = smoke(d.path(), &data, &out, &["--only", "lora-r99-s1"]);
    assert_eq!(o.status.code(), Some(2));
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let log = String::from_utf8_lossy(&c.stderr);
    assert!(!log.contains("training"), "{log}");
    let r = results(&out);
    assert_eq!(r["runs"].as_array().unwrap().len(), 3);
    assert_eq!(r["capture"].as_array().unwrap().len(), 3);
    // The same grid run locally in one go gives the same numbers (CPU runs are deterministic).
    let local = d.path().join("local");
    assert!(smoke(d.path(), &data, &local, &[]).status.success());
    let l = results(&local);
    for (a, b) in r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(l["runs"].as_array().unwrap())
    {
        assert_eq!(a["scores"]["tasks"], b["scores"]["tasks"]);
        assert_eq!(a["final_loss"], b["final_loss"]);
    }
}

/// Regression (issue 14): `--collect` measured TSD capture against a full fine-tune reference
/// killed at step 3 of 6, cached it in `capture.json`, and kept reporting it after the reference
/// finished. Now it refuses an unfinished reference, and a cached capture measured against
/// another reference (retrained: another record) is measured again.
#[test]
fn collect_refuses_an_unfinished_reference_and_remeasures_stale_capture() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let out = d.path().join("out");
    let run_piece = |piece: &str| {
        let o = smoke(d.path(), &data, &out, &["--only", piece]);
        assert!(
            o.status.success(),
            "{piece}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    for piece in ["lr-check", "lora-r1-s1", "lora-r4-s1", "dash-r1-s1", "base"] {
        run_piece(piece);
    }
    // The reference as a killed job leaves it: its config, killed at step 4 after the step-3
    // checkpoint (the trainer's own abort, no cleanup).
    run_piece("full-ref-s1");
    let ref_dir = out.join("runs/full-ref-s1");
    let cfg = d.path().join("ref-config.json");
    std::fs::copy(ref_dir.join("config.json"), &cfg).unwrap();
    std::fs::remove_dir_all(&ref_dir).unwrap();
    let killed = tsd(d.path())
        .args(["train", "--quiet", "--abort-after-step", "4", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&ref_dir)
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ref_dir.join("record.json")).unwrap())
            .unwrap();
    assert_eq!(rec["finished"], false);
    assert_eq!(rec["checkpoints"], serde_json::json!([3]));
    // Refused, naming the piece and how far it got, with every other piece finished.
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert_eq!(c.status.code(), Some(2));
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(
        err.contains("1 of 6 pieces") && err.contains("full-ref-s1 (stopped at step 3 of 6"),
        "{err}"
    );
    assert!(!out.join("runs/lora-r1-s1/capture.json").exists());
    // --allow-partial gathers the runs without capture and says why.
    let c = smoke(d.path(), &data, &out, &["--collect", "--allow-partial"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let r = results(&out);
    assert_eq!(r["runs"].as_array().unwrap().len(), 3);
    assert!(r["capture"].as_array().unwrap().is_empty() && r["reference"].is_null());
    let devs = r["deviations"].to_string();
    assert!(
        devs.contains("no TSD capture") && devs.contains("left out: full-ref-s1"),
        "{devs}"
    );
    assert!(!out.join("runs/lora-r1-s1/capture.json").exists());
    // Resumed to its end: capture against step 6.
    run_piece("full-ref-s1");
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let first = results(&out);
    assert!(first["reference"].as_str().unwrap().contains("step 6"));
    assert_eq!(first["capture"].as_array().unwrap().len(), 3);
    let key = |r: &serde_json::Value| {
        r["capture"][0]["reference_key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Retrained from scratch: another record, so every cached capture is measured again.
    std::fs::remove_dir_all(&ref_dir).unwrap();
    run_piece("full-ref-s1");
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert!(c.status.success());
    let log = String::from_utf8_lossy(&c.stderr);
    assert_eq!(
        log.matches("measured against another reference").count(),
        3,
        "{log}"
    );
    let second = results(&out);
    assert_ne!(key(&first), key(&second));
    // A capture.json from before reference keys is kept when it names the reference's final
    // step (re-rendered without the reference's weights) and measured again otherwise.
    let cap = out.join("runs/lora-r1-s1/capture.json");
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cap).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("reference_key");
    std::fs::write(&cap, old.to_string()).unwrap();
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert!(c.status.success());
    assert!(!String::from_utf8_lossy(&c.stderr).contains("capture: lora-r1-s1"));
    let stale = old["reference"]
        .as_str()
        .unwrap()
        .replace("step 6", "step 3");
    old["reference"] = serde_json::Value::String(stale);
    std::fs::write(&cap, old.to_string()).unwrap();
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert!(c.status.success());
    assert!(String::from_utf8_lossy(&c.stderr).contains("capture: lora-r1-s1"));
    assert_eq!(results(&out)["capture"], second["capture"]);
}

/// `--collect --out DIR` without `--preset` reads the setting from DIR; settings that differ
/// are named.
#[test]
fn the_preset_comes_from_the_output_directory() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let out = d.path().join("out");
    let o = smoke(d.path(), &data, &out, &["--emit-jobs"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hint = String::from_utf8_lossy(&o.stdout);
    assert!(
        hint.contains("--data") && hint.contains("--collect"),
        "{hint}"
    );
    let bare = tsd(d.path())
        .args(["reproduce", "commonsense", "--collect", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bare.stderr);
    assert!(
        err.contains("lr-check (") && !err.contains("other settings"),
        "{err}"
    );
    let other = tsd(d.path())
        .args([
            "reproduce",
            "commonsense",
            "--preset",
            "cpu",
            "--collect",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("other settings") && err.contains("lr_check_steps"),
        "{err}"
    );
}

/// Regression: a reference whose record was kept without its weights (a committed reproduction:
/// `checkpoints/` is not committed) counted as finished, so `--only full-ref-s1` did nothing and
/// capture could not be measured again. It is trained again, checked against the kept record's
/// losses, and capture is then measured beside its null.
#[test]
fn a_reference_kept_without_its_weights_is_trained_again() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let out = d.path().join("out");
    let first = smoke(d.path(), &data, &out, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let ref_dir = out.join("runs/full-ref-s1");
    std::fs::remove_dir_all(ref_dir.join("checkpoints")).unwrap();
    let again = smoke(d.path(), &data, &out, &["--only", "full-ref-s1"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("training it again"), "{err}");
    assert!(
        err.contains("every step's loss equals the kept record's"),
        "{err}"
    );
    assert!(ref_dir
        .join("checkpoints")
        .read_dir()
        .unwrap()
        .next()
        .is_some());
    let c = smoke(d.path(), &data, &out, &["--collect"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let cap: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/lora-r1-s1/capture.json")).unwrap(),
    )
    .unwrap();
    let last = cap["points"].as_array().unwrap().last().unwrap().clone();
    let null = &last["null"];
    assert!(null["mean_null"].as_f64().is_some(), "{last}");
    let counted = null["above_null"].as_u64().unwrap()
        + null["not_above_null"].as_u64().unwrap()
        + null["untestable"].as_u64().unwrap();
    assert_eq!(counted, cap["modules"].as_u64().unwrap(), "{last}");
}

/// The empirical controls (README, Definitions: the null of direction metrics): a cross-task and a
/// shuffled-answer full fine-tune are trained as pieces, every run's final checkpoint is measured
/// against them beside its null, and a second invocation trains and measures nothing again.
#[test]
fn controls_are_trained_and_measured_beside_the_null() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    // boolq is evaluated, not trained on: its test examples after the 6 scored ones feed the
    // cross-task control.
    write_task(&data, "boolq", "test.json", 40, &["true", "false"]);
    let out = d.path().join("out");
    let first = smoke(d.path(), &data, &out, &["--controls", "true"]);
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(first.status.success(), "{err}");
    assert!(err.contains("control control-cross-s1: training"), "{err}");
    assert!(
        err.contains("control control-shuffled-s1: training"),
        "{err}"
    );
    // The shuffled control's answers are the runs' answers, permuted.
    let shuffled: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(out.join("controls/control-shuffled-s1/train-0.json")).unwrap(),
    )
    .unwrap();
    let original: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(data.join("ARC-Easy/train.json")).unwrap())
            .unwrap();
    let outputs = |v: &[serde_json::Value]| {
        let mut o: Vec<String> = v.iter().map(|e| e["output"].to_string()).collect();
        o.sort();
        o
    };
    assert_eq!(outputs(&shuffled), outputs(&original[..shuffled.len()]));
    assert!(shuffled
        .iter()
        .zip(&original)
        .any(|(a, b)| a["output"] != b["output"]));
    let r = results(&out);
    let controls = r["summary"]["controls"].as_array().unwrap();
    for (method, rank) in [("lora", 1), ("lora", 4), ("lora-dash", 1)] {
        for control in ["cross-task", "shuffled answers"] {
            let c = controls
                .iter()
                .find(|c| c["method"] == method && c["rank"] == rank && c["control"] == control)
                .unwrap_or_else(|| panic!("{method} r{rank} {control}: {controls:?}"));
            let all = &c["all"];
            assert!(all["null_mean"].as_f64().unwrap() > 0.0, "{c}");
            assert_eq!(all["seeds"], 1);
        }
    }
    assert!(r["summary"]["verdict"]
        .as_str()
        .unwrap()
        .contains("Empirical controls"));
    // LoRA-Dash r = 1's picks against LoRA r = 1 of the same seed: 10 modules × s picks.
    let picks = &r["summary"]["dash_picks"][0];
    assert_eq!(picks["rank"], 1, "{picks}");
    let cj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("controls.json")).unwrap()).unwrap();
    let pair = &cj["dash_pairs"][0];
    assert_eq!(
        (pair["dash_run"].as_str(), pair["lora_run"].as_str()),
        (Some("dash-r1-s1"), Some("lora-r1-s1"))
    );
    let n = pair["picks"].as_array().unwrap().len();
    assert!(n > 0 && picks["picks"] == n, "{picks}");
    for p in pair["picks"].as_array().unwrap() {
        assert!(
            p["z_lora"].as_f64().unwrap().is_finite()
                && p["threshold_lora"].as_f64().unwrap() > 0.0,
            "{p}"
        );
    }
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("enriched in the paired LoRA"));
    // Capture per module type beside its null, and every Dash pick's Δσ over checkpoints.
    let cap: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/dash-r1-s1/capture.json")).unwrap(),
    )
    .unwrap();
    let last = cap["points"].as_array().unwrap().last().unwrap();
    let types: Vec<&str> = last["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["module_type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"q_proj") && types.contains(&"down_proj"),
        "{types:?}"
    );
    assert!(
        !last["delta_sigma"].as_array().unwrap().is_empty(),
        "{last}"
    );
    let stats = r["summary"]["capture"].as_array().unwrap();
    assert!(stats
        .iter()
        .any(|c| !c["by_type"].as_array().unwrap().is_empty()));
    assert!(page.contains("|Δσ| of every pick"));
    let again = smoke(d.path(), &data, &out, &["--controls", "true"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        !err.contains("training") && !err.contains("control: "),
        "{err}"
    );
    assert_eq!(
        results(&out)["summary"]["controls"],
        r["summary"]["controls"]
    );
    // Another ranking re-measures capture and controls (and trains nothing).
    let by = smoke(
        d.path(),
        &data,
        &out,
        &["--controls", "true", "--tsd-by", "enrichment"],
    );
    let err = String::from_utf8_lossy(&by.stderr);
    assert!(by.status.success(), "{err}");
    assert!(
        err.contains("measuring again") && err.contains("control: "),
        "{err}"
    );
    assert!(!err.contains("training"), "{err}");
    assert_eq!(results(&out)["preset"]["tsd_by"], "enrichment");
}

/// `tsd reproduce` on the tiny model as a child process (stderr piped), with extra arguments and
/// `TSD_TEST_PAUSE` set to `pause`.
fn spawn_smoke(root: &Path, data: &Path, out: &Path, extra: &[&str], pause: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tsd"))
        .env("TSD_HOME", root)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .env("TSD_TEST_PAUSE", pause)
        .args(["reproduce", "commonsense", "--preset", "smoke", "--model"])
        .arg(fixture("tiny-llama"))
        .args(["--train-on-inputs", "true", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends the child's stderr lines to a channel.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// Waits (at most 60 s) for the line `tsd-test-pause: POINT`, the child still running.
fn wait_for_pause(child: &mut Child, lines: &mpsc::Receiver<String>, point: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no `{point}` pause in 60 s");
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(50)) {
            if l.trim() == format!("tsd-test-pause: {point}") {
                return;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before the `{point}` pause"
        );
    }
}

fn kill(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The final checkpoint's tensors and the record's losses of a run directory.
fn trained(run: &Path) -> (Vec<Vec<u8>>, serde_json::Value) {
    let ck = tsd::train::trainer::checkpoint_dir(run, 6);
    let files = ["adapter_model.safetensors", "optimizer.safetensors"]
        .iter()
        .map(|f| std::fs::read(ck.join(f)).unwrap())
        .collect();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap();
    let losses = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].clone())
        .collect();
    assert_eq!(rec["finished"], true);
    (files, losses)
}

/// Slurm's SIGTERM (its `--signal` warning, or the time limit) on a training piece stops it after
/// the current step with a checkpoint saved and exit 143, naming the piece; the same command then
/// finishes it with the uninterrupted run's tensors and losses. Outside training (the base
/// model's evaluation) SIGINT / SIGTERM end the command at once with 130 / 143, and a re-run
/// redoes the piece. Regression: reproduce did not listen (the process died by the signal, with
/// the steps since the last checkpoint lost to the SIGKILL that follows).
#[test]
fn sigterm_stops_a_piece_with_a_checkpoint_and_a_rerun_finishes_it_identically() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let (whole, stopped) = (d.path().join("whole"), d.path().join("stopped"));
    let o = smoke(d.path(), &data, &whole, &["--only", "lr-check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::create_dir_all(&stopped).unwrap();
    std::fs::copy(whole.join("lr-check.json"), stopped.join("lr-check.json")).unwrap();
    let o = smoke(d.path(), &data, &whole, &["--only", "lora-r1-s1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // SIGTERM inside the first checkpoint write (step 3 of 6).
    let only = ["--only", "lora-r1-s1"];
    let mut child = spawn_smoke(d.path(), &data, &stopped, &only, "checkpoint-write:400");
    let lines = stderr_lines(&mut child);
    wait_for_pause(&mut child, &lines, "checkpoint-write");
    kill("TERM", child.id());
    let st = child.wait().unwrap();
    let err = lines.iter().collect::<Vec<_>>().join("\n");
    assert_eq!(st.code(), Some(143), "{st}; stderr:\n{err}");
    assert!(
        err.contains("SIGTERM received")
            && err.contains("piece lora-r1-s1 stopped by SIGTERM at step 3 of 6")
            && err.contains("re-running the same command"),
        "{err}"
    );
    let run = stopped.join("runs/lora-r1-s1");
    assert_eq!(
        tsd::train::trainer::latest_checkpoint(&run).unwrap(),
        Some(3)
    );
    assert!(!run.join("eval.json").exists());
    let o = smoke(d.path(), &data, &stopped, &only);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(run.join("eval.json").exists());
    assert!(
        trained(&whole.join("runs/lora-r1-s1")) == trained(&run),
        "the resumed piece's tensors or losses differ from the uninterrupted run's"
    );
    // Outside training: the base model's evaluation ends at once, nothing written, then redone.
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let mut child = spawn_smoke(
            d.path(),
            &data,
            &stopped,
            &["--only", "base"],
            "evaluate:20000",
        );
        let lines = stderr_lines(&mut child);
        wait_for_pause(&mut child, &lines, "evaluate");
        let t0 = Instant::now();
        kill(sig, child.id());
        let st = child.wait().unwrap();
        let err = lines.iter().collect::<Vec<_>>().join("\n");
        assert_eq!(st.code(), Some(code), "SIG{sig}: {st}; stderr:\n{err}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "SIG{sig}: not at once"
        );
        assert!(err.contains("exiting now") && err.contains("a re-run redoes"));
        assert!(!stopped.join("base/eval.json").exists());
    }
    let o = smoke(d.path(), &data, &stopped, &["--only", "base"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stopped.join("base/eval.json").exists());
}

/// The emitted array script (run by bash as Slurm would, without Slurm) forwards the SIGTERM that
/// `--signal=B:TERM@N` sends the batch shell to tsd, waits for it to save, and logs `== exit 143`;
/// running the task again finishes the piece with `== exit 0`.
#[test]
fn the_array_script_forwards_sigterm_to_tsd_and_logs_its_exit() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_data(d.path());
    let out = d.path().join("out");
    let o = smoke(d.path(), &data, &out, &["--only", "lr-check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = smoke(
        d.path(),
        &data,
        &out,
        &["--emit-jobs", "--signal-grace", "300"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = out.join("jobs/array.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("#SBATCH --signal=B:TERM@300\n"), "{text}");
    let task = |pause: &str| {
        Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("TSD_HOME", d.path())
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HOME")
            .env("TSD_TEST_PAUSE", pause)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let log = out.join("jobs/logs/lora-r1-s1.log");
    let mut child = task("checkpoint-write:1000");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("tsd-test-pause")) {
        assert!(Instant::now() < deadline, "no checkpoint write in 60 s");
        assert!(child.try_wait().unwrap().is_none(), "the task ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill("TERM", child.id());
    let st = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(143), "{text}");
    assert!(
        text.contains("piece lora-r1-s1 stopped by SIGTERM at step 3 of 6")
            && text.trim_end().ends_with("== exit 143"),
        "{text}"
    );
    let st = task("").wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        st.success() && text.trim_end().ends_with("== exit 0"),
        "{text}"
    );
    assert!(out.join("runs/lora-r1-s1/eval.json").exists());
}

/// The committed cpu reproduction's record reads back (`Reproduction::read`), writes back
/// unchanged, and renders its page from the record alone: without the runs' records beside it the
/// page says the loss curves are missing rather than computing anything.
#[test]
fn the_committed_record_reads_back_and_renders_alone() {
    let cpu = Path::new(env!("CARGO_MANIFEST_DIR")).join("reproductions/commonsense/cpu");
    let r = tsd::reproduce::Reproduction::read(&cpu).unwrap();
    assert!(!r.summary.configs.is_empty() && !r.runs.is_empty());
    let d = tempfile::tempdir().unwrap();
    let json = tsd::render::to_json(&r).unwrap() + "\n";
    std::fs::write(d.path().join("results.json"), &json).unwrap();
    let again = tsd::reproduce::Reproduction::read(d.path()).unwrap();
    assert_eq!(tsd::render::to_json(&again).unwrap() + "\n", json);
    // A record from before the controls and the null still reads (the new fields are optional).
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old["summary"].as_object_mut().unwrap().remove("controls");
    for c in old["summary"]["capture"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("null_qkv");
        c.as_object_mut().unwrap().remove("null_all");
    }
    std::fs::write(
        d.path().join("results.json"),
        serde_json::to_string(&old).unwrap(),
    )
    .unwrap();
    let (older, page) = tsd::render::reproduction::render_saved_reproduction(d.path()).unwrap();
    assert!(older.summary.controls.is_empty());
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("are not beside this record"), "loss curves");
    assert!(html.contains("No empirical controls in this record"));
    for c in &older.summary.configs {
        assert!(html.contains(&format!("{:.2}", c.mean)));
    }
}
