//! `tsd track` and `tsd report` on run directories that tsd did not write: a real Hugging Face
//! Trainer run (`tests/fixtures/hf-trainer-run`, by `scripts/make_trainer_run_fixture.py`), its
//! named-adapter and axolotl variants, and a plain directory of adapters. Regression for issue 10:
//! `tsd track OUTPUT_DIR` failed with `config.json: No such file or directory`, `tsd report` with
//! `record.json: No such file`.

mod common;

use common::{fixture, tsd};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// The Trainer run copied into `dst/run` (its relative base no longer resolves there).
fn trainer_run(dst: &Path) -> PathBuf {
    let run = dst.join("run");
    copy_tree(&fixture("hf-trainer-run"), &run);
    run
}

fn base() -> String {
    fixture("tiny-llama").display().to_string()
}

/// A page's text with the escapes minijinja writes for `/` and quotes undone.
/// A page without its provenance line (the command and date of the rendering).
fn without_provenance(page: &str) -> String {
    page.lines()
        .filter(|l| !l.starts_with("<p class=\"meta prov\">"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_page(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap()
        .replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
}

fn ok(out: &std::process::Output) -> &std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tsd track RUN --json` with extra arguments; (JSON, stderr).
fn track(home: &Path, run: &Path, extra: &[&str]) -> (Value, String) {
    let out = tsd(home)
        .args(["track", run.to_str().unwrap(), "--json", "-q"])
        .args(extra)
        .output()
        .unwrap();
    ok(&out);
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn steps(t: &Value) -> Vec<u64> {
    t["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_u64().unwrap())
        .collect()
}

fn names(t: &Value) -> Vec<String> {
    t["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["checkpoint"].as_str().unwrap().to_string())
        .collect()
}

fn fro(t: &Value) -> Vec<f64> {
    t["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["mean_delta_fro"].as_f64().unwrap())
        .collect()
}

#[test]
fn trainer_run_is_tracked_with_the_numbers_of_an_inspect_of_each_checkpoint() {
    let home = tempfile::tempdir().unwrap();
    let run = fixture("hf-trainer-run");
    // The base comes from the adapters' base_model_name_or_path (`../tiny-llama`, relative to the run).
    let (t, _) = track(home.path(), &run, &[]);
    assert_eq!(t["kind"], "hf-trainer");
    assert_eq!(steps(&t), [2, 4, 6]);
    assert_eq!(names(&t), ["checkpoint-2", "checkpoint-4", "checkpoint-6"]);
    assert!(t["base"].as_str().unwrap().contains("tiny-llama"));
    let reports = t["reports"].as_array().unwrap();
    for (i, name) in names(&t).iter().enumerate() {
        let out = tsd(home.path())
            .args([
                "inspect",
                run.join(name).to_str().unwrap(),
                "--base",
                &base(),
                "--json",
                "-q",
            ])
            .output()
            .unwrap();
        let ins: Value = serde_json::from_slice(&ok(&out).stdout).unwrap();
        let (a, b) = (
            ins["modules"].as_array().unwrap(),
            reports[i]["modules"].as_array().unwrap(),
        );
        assert_eq!(a.len(), 10, "{name}: 2 layers × 5 target modules");
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["module"], y["module"]);
            assert_eq!(x["delta_fro"], y["delta_fro"], "{name} {}", x["module"]);
            assert_eq!(x["tsd"], y["tsd"], "{name} {}", x["module"]);
            assert_eq!(x["amplification"], y["amplification"]);
        }
        let mean = a
            .iter()
            .map(|m| m["delta_fro"].as_f64().unwrap())
            .sum::<f64>()
            / a.len() as f64;
        assert!((mean - fro(&t)[i]).abs() <= 1e-12 * mean, "{name}");
    }
    // Training moved the adapter: ‖ΔW‖ grows over the checkpoints.
    let f = fro(&t);
    assert!(f[0] < f[1] && f[1] < f[2], "{f:?}");
}

#[test]
fn trainer_run_report_shows_the_trainer_loss_curve_and_renders_a_saved_track() {
    let home = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let run = fixture("hf-trainer-run");
    let html = out_dir.path().join("report.html");
    ok(&tsd(home.path())
        .args(["report", run.to_str().unwrap(), "-q", "-o"])
        .arg(&html)
        .output()
        .unwrap());
    let page = read_page(&html);
    // The curve numbers come from the Trainer's own log_history.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint-6/trainer_state.json")).unwrap(),
    )
    .unwrap();
    let hist = state["log_history"].as_array().unwrap();
    let losses: Vec<f64> = hist.iter().filter_map(|e| e["loss"].as_f64()).collect();
    let evals: Vec<f64> = hist
        .iter()
        .filter_map(|e| e["eval_loss"].as_f64())
        .collect();
    assert_eq!((losses.len(), evals.len()), (6, 3));
    assert!(page.contains(&format!(
        "{:.4} → {:.4}",
        losses[0],
        losses[losses.len() - 1]
    )));
    assert!(page.contains(&format!("{:.4} → {:.4}", evals[0], evals[evals.len() - 1])));
    assert!(page.contains("checkpoint-6/trainer_state.json"));
    for legend in [
        "training loss",
        "evaluation loss",
        "learning rate",
        "gradient norm",
    ] {
        assert!(page.contains(legend), "missing {legend}");
    }
    assert!(page.contains("Directions over checkpoints"));
    assert!(
        !page.contains("LoRA-Dash switch"),
        "no Dash switch in a Trainer run"
    );
    // loss, lr, grad norm, stability, amplification
    assert!(page.matches("<svg").count() >= 5);
    // The track record it rendered is saved beside the report; rendering it again recomputes
    // nothing and gives the same page.
    let saved = out_dir.path().join("report.track.json");
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(steps(&t), [2, 4, 6]);
    let again = out_dir.path().join("again.html");
    ok(&tsd(home.path())
        .args(["report", run.to_str().unwrap(), "-q", "--track"])
        .arg(&saved)
        .arg("-o")
        .arg(&again)
        .output()
        .unwrap());
    assert_eq!(
        without_provenance(&read_page(&again)),
        without_provenance(&page)
    );
    assert!(page.contains("<p class=\"meta prov\"><code>tsd report "));
    // A saved track of other checkpoints is refused, not rendered beside the wrong curves.
    let d = tempfile::tempdir().unwrap();
    let other = trainer_run(d.path());
    std::fs::remove_dir_all(other.join("checkpoint-4")).unwrap();
    let out = tsd(home.path())
        .args(["report", other.to_str().unwrap(), "-q", "--track"])
        .arg(&saved)
        .arg("-o")
        .arg(d.path().join("x.html"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("track the run again"));
}

#[test]
fn named_adapter_subfolders_and_axolotl_layout_read_like_the_root_layout() {
    let home = tempfile::tempdir().unwrap();
    let (root, _) = track(home.path(), &fixture("hf-trainer-run"), &[]);
    for sub in ["my_task", "adapter_model"] {
        let d = tempfile::tempdir().unwrap();
        let run = trainer_run(d.path());
        for ck in ["checkpoint-2", "checkpoint-4", "checkpoint-6"] {
            let to = run.join(ck).join(sub);
            std::fs::create_dir_all(&to).unwrap();
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                std::fs::rename(run.join(ck).join(f), to.join(f)).unwrap();
            }
        }
        let (t, _) = track(home.path(), &run, &["--base", &base()]);
        assert_eq!(steps(&t), [2, 4, 6], "{sub}");
        assert_eq!(fro(&t), fro(&root), "{sub}");
        assert_eq!(t["tsd_sets"], root["tsd_sets"], "{sub}");
    }
    // Two named adapters per checkpoint: refused until one is chosen.
    let d = tempfile::tempdir().unwrap();
    let run = trainer_run(d.path());
    for ck in ["checkpoint-2", "checkpoint-4", "checkpoint-6"] {
        for sub in ["first", "second"] {
            let to = run.join(ck).join(sub);
            std::fs::create_dir_all(&to).unwrap();
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                std::fs::copy(run.join(ck).join(f), to.join(f)).unwrap();
            }
        }
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::remove_file(run.join(ck).join(f)).unwrap();
        }
    }
    let out = tsd(home.path())
        .args(["track", run.to_str().unwrap(), "--base", &base(), "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("first, second") && err.contains("--adapter-name"),
        "{err}"
    );
    let (t, _) = track(
        home.path(),
        &run,
        &["--base", &base(), "--adapter-name", "second"],
    );
    assert_eq!(fro(&t), fro(&root));
}

#[test]
fn a_directory_of_adapters_is_tracked_in_natural_name_order() {
    let home = tempfile::tempdir().unwrap();
    let (root, _) = track(home.path(), &fixture("hf-trainer-run"), &[]);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("adapters");
    // Lexicographic order would put ep-10 before ep-2 and ep-9.
    for (name, ck) in [
        ("ep-10", "checkpoint-6"),
        ("ep-2", "checkpoint-2"),
        ("ep-9", "checkpoint-4"),
    ] {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture("hf-trainer-run").join(ck).join(f), to.join(f)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    let (t, err) = track(home.path(), &dir, &["--base", &base()]);
    assert_eq!(t["kind"], "adapters");
    assert_eq!(names(&t), ["ep-2", "ep-9", "ep-10"]);
    assert_eq!(steps(&t), [1, 2, 3]);
    assert_eq!(fro(&t), fro(&root));
    assert!(
        !err.contains("notes"),
        "a non-adapter folder is not a checkpoint: {err}"
    );
    // The report of a run without curves shows the directions.
    let html = d.path().join("r.html");
    ok(&tsd(home.path())
        .args([
            "report",
            dir.to_str().unwrap(),
            "--base",
            &base(),
            "-q",
            "-o",
        ])
        .arg(&html)
        .output()
        .unwrap());
    let page = read_page(&html);
    assert!(page.contains("No training curves") && page.contains("<th>ep-10</th>"));
}

#[test]
fn trainer_checkpoints_are_ordered_by_step_not_by_name_or_time() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    // checkpoint-10 is written first (oldest mtime) and sorts before checkpoint-9 as a string.
    copy_tree(
        &fixture("hf-trainer-run").join("checkpoint-6"),
        &run.join("checkpoint-10"),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    copy_tree(
        &fixture("hf-trainer-run").join("checkpoint-2"),
        &run.join("checkpoint-9"),
    );
    let (t, _) = track(home.path(), &run, &["--base", &base()]);
    assert_eq!(steps(&t), [9, 10]);
    assert_eq!(names(&t), ["checkpoint-9", "checkpoint-10"]);
    // The curves come from the newest checkpoint's trainer_state.json.
    let html = d.path().join("r.html");
    ok(&tsd(home.path())
        .args([
            "report",
            run.to_str().unwrap(),
            "--base",
            &base(),
            "--no-track",
            "-q",
            "-o",
        ])
        .arg(&html)
        .output()
        .unwrap());
    assert!(read_page(&html).contains("checkpoint-10/trainer_state.json"));
}

#[test]
fn a_base_that_does_not_resolve_is_exit_2_saying_to_pass_base() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = trainer_run(d.path());
    for cmd in ["track", "report"] {
        let out = tsd(home.path())
            .args([cmd, run.to_str().unwrap(), "-q"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{cmd}: {err}");
        assert!(
            err.contains("`../tiny-llama`") && err.contains("pass --base"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn half_written_and_temporary_checkpoints_are_skipped_with_a_warning_and_pickles_never_read() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = trainer_run(d.path());
    // A save interrupted before the weights: config and state, no adapter weights.
    let half = run.join("checkpoint-8");
    std::fs::create_dir_all(&half).unwrap();
    for f in ["adapter_config.json", "trainer_state.json"] {
        std::fs::copy(run.join("checkpoint-6").join(f), half.join(f)).unwrap();
    }
    copy_tree(&run.join("checkpoint-6"), &run.join("tmp-checkpoint-10"));
    copy_tree(&run.join("checkpoint-6"), &run.join("checkpoint-12.tmp"));
    // training_args.bin is a pickle: tsd must not read it (garbage there changes nothing).
    for ck in ["checkpoint-2", "checkpoint-4", "checkpoint-6"] {
        std::fs::write(run.join(ck).join("training_args.bin"), b"not a pickle").unwrap();
    }
    let (t, err) = track(home.path(), &run, &["--base", &base()]);
    assert_eq!(steps(&t), [2, 4, 6]);
    for skipped in ["checkpoint-8", "tmp-checkpoint-10", "checkpoint-12.tmp"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("warning:") && l.contains(skipped)),
            "no warning naming {skipped}: {err}"
        );
    }
    let (root, _) = track(home.path(), &fixture("hf-trainer-run"), &[]);
    assert_eq!(fro(&t), fro(&root));
    // Only half-written checkpoints: nothing to track is an error, not an empty track.
    let d2 = tempfile::tempdir().unwrap();
    copy_tree(&half, &d2.path().join("run/checkpoint-8"));
    let out = tsd(home.path())
        .args([
            "track",
            d2.path().join("run").to_str().unwrap(),
            "--base",
            &base(),
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no complete checkpoint"));
}

#[test]
fn a_final_adapter_at_the_output_root_does_not_hide_the_checkpoints() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = trainer_run(d.path());
    // What `trainer.save_model(output_dir)` adds after training.
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(run.join("checkpoint-6").join(f), run.join(f)).unwrap();
    }
    let (t, err) = track(home.path(), &run, &["--base", &base()]);
    assert_eq!(steps(&t), [2, 4, 6]);
    assert!(
        err.contains("warning:") && err.contains("save_model"),
        "{err}"
    );
}

#[test]
fn a_directory_that_is_no_run_is_refused_naming_the_layouts() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = tsd(home.path())
        .args(["track", d.path().to_str().unwrap(), "--base", &base(), "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint-N/") && err.contains("checkpoints/"),
        "{err}"
    );
    // One adapter is not a run.
    let out = tsd(home.path())
        .args(["track", fixture("peft-lora").to_str().unwrap(), "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tsd inspect"));
}

/// `tsd inspect --reference RUN` takes the run's newest checkpoint as the reference, as `track`
/// does (one reference resolver): the capture equals that of an inspect against the checkpoint
/// itself, and the reference is named as the run at its step.
#[test]
fn inspect_takes_a_run_as_reference_like_its_newest_checkpoint() {
    let home = tempfile::tempdir().unwrap();
    let run = fixture("hf-trainer-run");
    let inspect = |reference: &Path| -> Value {
        let out = tsd(home.path())
            .args([
                "inspect",
                run.join("checkpoint-2").to_str().unwrap(),
                "--reference",
                reference.to_str().unwrap(),
                "--base",
                &base(),
                "--no-null",
                "--json",
                "-q",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&ok(&out).stdout).unwrap()
    };
    let by_run = inspect(&run);
    let by_checkpoint = inspect(&run.join("checkpoint-6"));
    let name = by_run["reference"].as_str().unwrap();
    assert!(
        name.starts_with("run ") && name.ends_with(" step 6"),
        "{name}"
    );
    let (a, b) = (
        by_run["modules"].as_array().unwrap(),
        by_checkpoint["modules"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 10);
    for (x, y) in a.iter().zip(b) {
        assert!(x["capture"].is_object(), "{}", x["module"]);
        assert_eq!(x["capture"], y["capture"], "{}", x["module"]);
    }
}

/// Regression: a run directory given to `inspect --reference` was opened as a model and refused;
/// one that has no complete checkpoint is refused (exit 2) as a reference run.
#[test]
fn inspect_refuses_a_reference_run_without_checkpoints() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("run");
    std::fs::create_dir_all(empty.join("checkpoint-3")).unwrap();
    std::fs::write(empty.join("checkpoint-3/adapter_config.json"), "{").unwrap();
    let out = tsd(home.path())
        .args([
            "inspect",
            fixture("hf-trainer-run")
                .join("checkpoint-2")
                .to_str()
                .unwrap(),
            "--reference",
            empty.to_str().unwrap(),
            "--base",
            &base(),
            "--no-null",
            "-q",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("reference run") && err.contains("no checkpoint"),
        "{err}"
    );
}
