//! `tsd track` on a Trainer run while the Trainer saves and `save_total_limit` deletes old
//! checkpoints (issue 21: 1 read in ~200–730 failed with `checkpoint-N/adapter_model.safetensors:
//! No such file or directory`). A checkpoint that vanishes between the listing and the read is
//! skipped with a warning, never an error; one still being written (no `trainer_state.json`, which
//! the Trainer writes last) is never read.

mod common;

use common::{copy_dir, fixture};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tsd(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tsd"));
    c.env("TSD_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("TSD_TEST_PAUSE");
    c
}

/// The fixture run copied into `dst` (its checkpoints are flat directories).
fn copy_run(dst: &Path) {
    for ck in ["checkpoint-2", "checkpoint-4", "checkpoint-6"] {
        copy_dir(&fixture("hf-trainer-run").join(ck), &dst.join(ck));
    }
}

fn base() -> String {
    fixture("tiny-llama").display().to_string()
}

fn steps(t: &Value) -> Vec<u64> {
    t["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_u64().unwrap())
        .collect()
}

/// Deleted between the listing and the read: the oldest checkpoint wholly (as the rotation's
/// `rmtree` ends), the next one half (its weights gone, its config not yet).
#[test]
fn checkpoints_deleted_while_track_reads_them_are_skipped_with_a_warning() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    copy_run(&run);
    let mut child = tsd(home.path())
        .args([
            "track",
            run.to_str().unwrap(),
            "--base",
            &base(),
            "--json",
            "-q",
        ])
        .env("TSD_TEST_PAUSE", "track-read:2000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "exited before the pause"
        );
        if line.trim() == "tsd-test-pause: track-read" {
            break;
        }
    }
    std::fs::remove_dir_all(run.join("checkpoint-2")).unwrap();
    std::fs::remove_file(run.join("checkpoint-4/adapter_model.safetensors")).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest}");
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(steps(&t), [6]);
    for ck in ["checkpoint-2", "checkpoint-4"] {
        assert!(
            rest.lines().any(|l| l.starts_with("warning:")
                && l.contains(ck)
                && l.contains("deleted while it was read")),
            "no warning naming {ck}: {rest}"
        );
        assert!(
            t["skipped"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.as_str().unwrap().contains(ck)),
            "{ck} not in the record's skipped"
        );
    }
}

/// A checkpoint whose adapter is written but whose trainer_state.json is not (the Trainer writes it
/// last) is being saved: skipped with a warning, not read.
#[test]
fn a_checkpoint_without_its_trainer_state_is_not_read() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    copy_run(&run);
    let half = run.join("checkpoint-8");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(
        run.join("checkpoint-6/adapter_config.json"),
        half.join("adapter_config.json"),
    )
    .unwrap();
    // Weights cut short: reading them would fail.
    std::fs::write(half.join("adapter_model.safetensors"), b"\x10\x00\x00").unwrap();
    let out = tsd(home.path())
        .args([
            "track",
            run.to_str().unwrap(),
            "--base",
            &base(),
            "--json",
            "-q",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(steps(&t), [2, 4, 6]);
    assert!(
        err.lines().any(|l| l.starts_with("warning:")
            && l.contains("checkpoint-8")
            && l.contains("trainer_state.json")),
        "{err}"
    );
}

/// A writer saving a checkpoint every 150 ms in the Trainer's order (weights, config,
/// trainer_state.json) and deleting all but the newest two, while `tsd track` reads the run again
/// and again: every read exits 0.
#[test]
fn track_never_fails_while_a_trainer_saves_and_rotates() {
    let home = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    copy_run(&run);
    let src = fixture("hf-trainer-run").join("checkpoint-6");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (run, stop) = (run.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut step = 8;
            let mut saved = 0;
            while !stop.load(Ordering::Relaxed) {
                let ck = run.join(format!("checkpoint-{step}"));
                std::fs::create_dir_all(&ck).unwrap();
                for f in [
                    "adapter_model.safetensors",
                    "adapter_config.json",
                    "trainer_state.json",
                ] {
                    std::fs::copy(src.join(f), ck.join(f)).unwrap();
                }
                std::fs::remove_dir_all(run.join(format!("checkpoint-{}", step - 4))).unwrap();
                step += 2;
                saved += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            saved
        })
    };
    let t0 = Instant::now();
    let mut reads = 0;
    while (reads < 40 || t0.elapsed() < Duration::from_secs(3))
        && t0.elapsed() < Duration::from_secs(90)
    {
        let out = tsd(home.path())
            .args([
                "track",
                run.to_str().unwrap(),
                "--base",
                &base(),
                "--json",
                "-q",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "read {reads} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!steps(&t).is_empty());
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let saved = writer.join().unwrap();
    assert!(reads >= 10 && saved >= 10, "{reads} reads, {saved} saves");
}
