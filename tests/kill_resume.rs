//! Kill anywhere (issue 13, part 2): `tsd train` (LoRA-Dash on the tiny LLaMA) is SIGKILLed at
//! random moments — at random times, inside checkpoint writes and inside the Dash switch (the
//! test-only `TSD_TEST_PAUSE` hook, `src/faults.rs`) — and resumed, again and again; the final
//! adapter, optimizer state and losses must equal an uninterrupted run's byte for byte, and no
//! half-written checkpoint may ever be listed.
//!
//! CI runs a few kills. The long run (the figures in `reproductions/reliability/`):
//! `TSD_KILLS=24 TSD_KILL_RECORD=reproductions/reliability/kills.json cargo test --release --test kill_resume -- --nocapture`

mod common;

use common::fixture;
use rand::{Rng, SeedableRng};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const STEPS: usize = 12;
const PAUSE_MS: u64 = 300;

fn write_data(dir: &Path) -> PathBuf {
    let ex: Vec<serde_json::Value> = (0..32)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Item {i}: pick one of alpha/beta/gamma."),
                "input": "",
                "output": format!("the correct answer is {}", ["alpha", "beta", "gamma"][i % 3]),
            })
        })
        .collect();
    let p = dir.join("train.json");
    std::fs::write(&p, serde_json::to_string(&ex).unwrap()).unwrap();
    p
}

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    let model = fixture("tiny-llama");
    let mut v: Vec<String> = vec!["train".into(), "--model".into()];
    v.push(model.to_string_lossy().into());
    v.extend(["--data".into(), data.to_string_lossy().into()]);
    v.extend(["--out".into(), out.to_string_lossy().into()]);
    v.extend(
        [
            "--method",
            "lora-dash",
            "--rank",
            "2",
            "--max-steps",
            "12",
            "--dash-t",
            "5",
            "--dash-s",
            "2",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "1",
            "--save-every",
            "2",
            "--lr",
            "0.03",
            "--warmup-steps",
            "1",
            "--val-size",
            "2",
            "--cutoff-len",
            "64",
            "--seed",
            "5",
            "-q",
        ]
        .map(String::from),
    );
    v
}

fn command(home: &Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tsd"));
    c.args(args)
        .env("TSD_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .env(
            "TSD_TEST_PAUSE",
            format!("checkpoint-write:{PAUSE_MS},dash-switch:{PAUSE_MS}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[derive(Clone, Copy, Debug, serde::Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum KillAt {
    RandomTime,
    CheckpointWrite,
    DashSwitch,
}

#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    kills_requested: usize,
    kills: Vec<serde_json::Value>,
    starts: usize,
    foreign_kills: usize,
    restarts_from_scratch: usize,
    half_written_listed: Vec<String>,
    stale_temp_dirs_left_after_restart: Vec<String>,
    final_bytes_identical: bool,
    losses_identical: bool,
    seconds: f64,
}

/// Waits for the child to print `tsd-test-pause: POINT` (or to exit), then kills it a random
/// moment into the pause. Returns whether it was killed (false: it finished first).
fn kill_at_point(
    child: &mut Child,
    lines: &mpsc::Receiver<String>,
    point: &str,
    delay: Duration,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(l) if l.trim() == format!("tsd-test-pause: {point}") => {
                std::thread::sleep(delay);
                return child.kill().is_ok()
                    && child.try_wait().map(|s| s.is_none()).unwrap_or(true);
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
    }
    panic!("tsd train neither reached {point} nor exited in 60 s");
}

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

/// What the checkpoint directory holds: complete checkpoints listed by tsd must have every file
/// and load; anything else is a leftover temporary directory.
fn check_checkpoints(run: &Path, out: &mut Outcome) -> Vec<String> {
    let listed = tsd::train::trainer::list_checkpoints(run).unwrap_or_default();
    for s in &listed {
        let d = tsd::train::trainer::checkpoint_dir(run, *s);
        let complete = [
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
            "trainer_state.json",
        ]
        .iter()
        .all(|f| d.join(f).is_file())
            && tsd::adapter::load_adapter(&d).is_ok();
        if !complete {
            out.half_written_listed.push(d.display().to_string());
        }
    }
    let mut leftovers = Vec::new();
    if let Ok(rd) = std::fs::read_dir(run.join("checkpoints")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !(n.starts_with("step-") && n.len() == 11) {
                leftovers.push(n);
            }
        }
    }
    leftovers
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    [
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.safetensors",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read(dir.join(f)).unwrap_or_default(),
        )
    })
    .collect()
}

fn losses(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("record.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["steps"]
        .as_array()
        .map(|a| a.iter().map(|s| s["loss"].clone()).collect())
        .unwrap_or_default()
}

fn kill_and_resume(kills: usize, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let data = write_data(d.path());
    let (reference, run) = (d.path().join("reference"), d.path().join("run"));
    let st = command(&home, &train_args(&data, &reference))
        .env_remove("TSD_TEST_PAUSE")
        .status()
        .unwrap();
    assert!(st.success(), "the uninterrupted run failed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Outcome {
        kills_requested: kills,
        ..Default::default()
    };
    let mut left_before: Vec<String> = Vec::new();
    let mut finished = false;
    while !finished {
        let resume = run.join("config.json").exists();
        let args = if resume {
            vec![
                "train".into(),
                "--resume".into(),
                run.to_string_lossy().into(),
                "-q".into(),
            ]
        } else {
            if run.exists() {
                // Killed before the run's config was written: nothing to resume from.
                out.restarts_from_scratch += 1;
                std::fs::remove_dir_all(&run).unwrap();
            }
            train_args(&data, &run)
        };
        let started = Instant::now();
        let mut child = command(&home, &args).spawn().unwrap();
        out.starts += 1;
        let lines = stderr_lines(&mut child);
        if out.kills.len() >= kills {
            let st = child.wait().unwrap();
            let err: Vec<String> = lines.iter().collect();
            assert!(st.success(), "the last resume failed: {}", err.join("\n"));
            finished = true;
        } else {
            let at = [
                KillAt::RandomTime,
                KillAt::CheckpointWrite,
                KillAt::DashSwitch,
            ][out.kills.len() % 3];
            let delay = Duration::from_millis(rng.random_range(0..PAUSE_MS));
            let killed = match at {
                KillAt::RandomTime => {
                    let wait = Duration::from_millis(rng.random_range(0..2500));
                    let until = Instant::now() + wait;
                    while Instant::now() < until && child.try_wait().unwrap().is_none() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    child.kill().is_ok()
                }
                KillAt::CheckpointWrite => {
                    kill_at_point(&mut child, &lines, "checkpoint-write", delay)
                }
                KillAt::DashSwitch => kill_at_point(&mut child, &lines, "dash-switch", delay),
            };
            let st = child.wait().unwrap();
            // Killed means it died of our SIGKILL (not that it had already exited).
            let killed = killed && std::os::unix::process::ExitStatusExt::signal(&st) == Some(9);
            if killed {
                let step = tsd::train::trainer::latest_checkpoint(&run).ok().flatten();
                out.kills
                    .push(serde_json::json!({"at": at, "latest_checkpoint_after": step}));
            } else if st.success() {
                // It finished before the kill point came (the switch happens once per run):
                // start over from scratch so that every requested kill lands.
                std::fs::remove_dir_all(&run).unwrap();
                out.restarts_from_scratch += 1;
                continue;
            } else if std::os::unix::process::ExitStatusExt::signal(&st) == Some(9) {
                // SIGKILLed by someone else (the OOM killer, a neighbour's cleanup on a shared
                // machine): also a kill to survive, counted apart from ours.
                out.foreign_kills += 1;
            } else {
                let err: Vec<String> = lines.iter().collect();
                panic!(
                    "tsd train failed without a kill of ours ({st}; kill {} of {kills}, aimed at {at:?}, after {:?} on this start): {}",
                    out.kills.len() + 1,
                    started.elapsed(),
                    err.join("\n")
                );
            }
        }
        let left = check_checkpoints(&run, &mut out);
        // Leftovers of an earlier (dead) process still there after this start: not cleaned up.
        for l in &left_before {
            if left.contains(l) && !out.stale_temp_dirs_left_after_restart.contains(l) {
                out.stale_temp_dirs_left_after_restart.push(l.clone());
            }
        }
        left_before = left;
    }
    let ck = |r: &Path| tsd::train::trainer::checkpoint_dir(r, STEPS);
    out.final_bytes_identical = files(&ck(&reference)) == files(&ck(&run));
    out.losses_identical = losses(&reference) == losses(&run) && !losses(&run).is_empty();
    out.seconds = t0.elapsed().as_secs_f64();
    out
}

#[test]
fn killed_anywhere_and_resumed_reaches_the_uninterrupted_bytes() {
    let kills: usize = std::env::var("TSD_KILLS")
        .ok()
        .map(|v| v.parse().expect("TSD_KILLS is a number"))
        .unwrap_or(4);
    let out = kill_and_resume(kills, 2026);
    let text = serde_json::to_string_pretty(&out).unwrap();
    println!("{text}");
    if let Ok(p) = std::env::var("TSD_KILL_RECORD") {
        std::fs::write(p, text + "\n").unwrap();
    }
    assert_eq!(out.kills.len(), kills);
    assert!(
        out.half_written_listed.is_empty(),
        "{:?}",
        out.half_written_listed
    );
    assert!(
        out.stale_temp_dirs_left_after_restart.is_empty(),
        "temporary checkpoints of killed runs survived the next start: {:?}",
        out.stale_temp_dirs_left_after_restart
    );
    assert!(
        out.final_bytes_identical,
        "the resumed run's final checkpoint differs"
    );
    assert!(out.losses_identical, "the resumed run's losses differ");
}

/// SIGINT (Ctrl-C) and SIGTERM (`kill`, Slurm's time limit and `--signal` warning) stop an
/// unfinished run after the step in progress with a checkpoint saved, exit 130 / 143 (never 0: a
/// scheduler must see that it did not finish), and `--resume` reaches the uninterrupted run's bytes.
#[test]
fn sigint_and_sigterm_save_exit_nonzero_and_resume_exactly() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let data = write_data(d.path());
    let reference = d.path().join("reference");
    let st = command(&home, &train_args(&data, &reference))
        .env_remove("TSD_TEST_PAUSE")
        .status()
        .unwrap();
    assert!(st.success(), "the uninterrupted run failed");
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let run = d.path().join(format!("run-{sig}"));
        let mut child = command(&home, &train_args(&data, &run)).spawn().unwrap();
        let lines = stderr_lines(&mut child);
        // Signal it inside the first checkpoint write (step 2 of 12).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no checkpoint write in 60 s");
            if let Ok(l) = lines.recv_timeout(Duration::from_millis(50)) {
                if l.trim() == "tsd-test-pause: checkpoint-write" {
                    break;
                }
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "exited before a checkpoint"
            );
        }
        let st = Command::new("kill")
            .args([format!("-{sig}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let st = child.wait().unwrap();
        let err: Vec<String> = lines.iter().collect();
        let err = err.join("\n");
        assert_eq!(st.code(), Some(code), "SIG{sig}: {st}; stderr:\n{err}");
        assert!(
            err.contains(&format!("SIG{sig} received"))
                && err.contains(&format!("stopped by SIG{sig} at step 2 of {STEPS}"))
                && err.contains("--resume"),
            "SIG{sig}: {err}"
        );
        assert_eq!(
            tsd::train::trainer::latest_checkpoint(&run).unwrap(),
            Some(2),
            "SIG{sig}: the step's checkpoint was not saved"
        );
        let args: Vec<String> = vec![
            "train".into(),
            "--resume".into(),
            run.to_string_lossy().into(),
            "-q".into(),
        ];
        let out = command(&home, &args)
            .env_remove("TSD_TEST_PAUSE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resume after SIG{sig}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ck = |r: &Path| tsd::train::trainer::checkpoint_dir(r, STEPS);
        assert!(
            files(&ck(&reference)) == files(&ck(&run)),
            "SIG{sig}: the resumed run's final checkpoint differs"
        );
        assert_eq!(losses(&reference), losses(&run), "SIG{sig}: losses differ");
    }
}
