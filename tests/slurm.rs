//! The reproduction through a real Slurm (`scripts/slurm-local.sh start`, as `.ci/run` does): the
//! emitted scripts go to `sbatch` unmodified through `submit.sh`; the results equal a local run of
//! the same preset (trained tensors byte for byte); a cancelled task is named by `--collect` with
//! its log, and `--emit-jobs --only-missing` re-runs exactly it.
//!
//! These tests fail when no Slurm controller answers. `TSD_SKIP_SLURM=1` skips their Slurm part
//! (printing why) for developers without one; CI never sets it.

mod common;

use common::{fixture, tsd, tsd_with_default_model, write_task};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One Slurm test at a time: they share the node's CPUs with the local runs they compare with.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a whole submission may take (`TSD_SLURM_TIMEOUT_S`, default 20 min).
fn timeout() -> Duration {
    let s = std::env::var("TSD_SLURM_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    Duration::from_secs(s)
}

/// Whether to run the Slurm part: true when a controller answers with an idle node; false (after
/// saying why) only when TSD_SKIP_SLURM=1; otherwise the test fails with the reason.
fn slurm_or_skip() -> bool {
    let why = match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
        Err(e) => format!("sinfo could not run ({e})"),
        Ok(o) if !o.status.success() => format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(o) => {
            let states = String::from_utf8_lossy(&o.stdout).to_string();
            if states
                .lines()
                .any(|l| ["idle", "mixed", "allocated"].contains(&l.trim()))
            {
                return true;
            }
            format!("no usable node (states: {:?})", states.trim())
        }
    };
    if std::env::var("TSD_SKIP_SLURM").as_deref() == Ok("1") {
        eprintln!("skipping the Slurm part: {why} (TSD_SKIP_SLURM=1)");
        return false;
    }
    panic!(
        "Slurm is not available: {why}. Start a one-node cluster with `scripts/slurm-local.sh start` (as root, slurm-wlm and munge installed), or set TSD_SKIP_SLURM=1 to skip"
    );
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("command runs");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `OUT/jobs/submit.sh` with `env`; returns the job ids it printed (`… job N`), in order:
/// the lr check (when submitted), the array, the collect job.
fn submit(out: &Path, env: &[(&str, Option<&Path>)]) -> Vec<String> {
    let mut c = Command::new(out.join("jobs/submit.sh"));
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let text = run(c.env("HF_HUB_OFFLINE", "1"));
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(" job ").map(|(_, id)| id.trim().to_string()))
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert!(ids.len() >= 2, "no job ids in submit.sh's output: {text}");
    ids
}

/// Every job (array tasks included) among `ids` with its state, from the controller.
fn states(ids: &[String]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for id in ids {
        let o = Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix(k))
                    .unwrap_or("")
                    .to_string()
            };
            let task = field("ArrayTaskId=");
            let name = if task.is_empty() {
                field("JobName=")
            } else {
                format!("{}_{task}", field("JobName="))
            };
            v.push((name, field("JobState=")));
        }
    }
    v
}

/// Waits until none of `ids` is pending or running; panics at the timeout with the queue and logs.
fn wait_done(ids: &[String], out: &Path, started: Instant) {
    loop {
        let s = states(ids);
        if !s.is_empty()
            && s.iter().all(|(_, st)| {
                !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"].contains(&st.as_str())
            })
        {
            return;
        }
        if started.elapsed() > timeout() {
            let _ = Command::new("scancel").args(ids).status();
            panic!(
                "Slurm jobs not done after {:?}: {s:?}\nlogs:\n{}",
                timeout(),
                logs(out)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every job log under `OUT/jobs/logs`, for failure messages.
fn logs(out: &Path) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(out.join("jobs/logs")) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s += &format!("--- {}\n", f.display());
            for l in tail.into_iter().rev() {
                s += l;
                s += "\n";
            }
        }
    }
    s
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{}: {e}", path.display());
    }))
    .unwrap()
}

/// Every `.safetensors` file under `dir`, relative paths sorted.
fn tensor_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, d: &Path, v: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, v);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                v.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// The same tensors (names, dtypes, shapes, bytes) in every checkpoint of both grids. The files
/// themselves may differ in their metadata's key order.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (fa, fb) = (tensor_files(&a.join("runs")), tensor_files(&b.join("runs")));
    assert!(!fa.is_empty());
    assert_eq!(fa, fb, "checkpoint files differ");
    for f in &fa {
        let (x, y) = (
            std::fs::read(a.join("runs").join(f)).unwrap(),
            std::fs::read(b.join("runs").join(f)).unwrap(),
        );
        let (x, y) = (
            safetensors::SafeTensors::deserialize(&x).unwrap(),
            safetensors::SafeTensors::deserialize(&y).unwrap(),
        );
        let mut nx = x.names();
        let mut ny = y.names();
        nx.sort();
        ny.sort();
        assert_eq!(nx, ny, "{}", f.display());
        for n in nx {
            let (tx, ty) = (x.tensor(n).unwrap(), y.tensor(n).unwrap());
            assert_eq!(tx.dtype(), ty.dtype(), "{} {n}", f.display());
            assert_eq!(tx.shape(), ty.shape(), "{} {n}", f.display());
            assert!(tx.data() == ty.data(), "{} {n}: bytes differ", f.display());
        }
    }
}

/// The numbers of two reproductions agree: lr check, every run's scores and losses, the base
/// model, TSD capture at every checkpoint.
fn assert_same_results(a: &serde_json::Value, b: &serde_json::Value) {
    assert_eq!(a["lr_check"]["trials"], b["lr_check"]["trials"]);
    assert_eq!(a["lr"], b["lr"]);
    assert_eq!(a["base"]["tasks"], b["base"]["tasks"]);
    let (ra, rb) = (a["runs"].as_array().unwrap(), b["runs"].as_array().unwrap());
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(rb) {
        assert_eq!(x["name"], y["name"]);
        assert_eq!(x["scores"]["tasks"], y["scores"]["tasks"], "{}", x["name"]);
        for k in [
            "final_loss",
            "val_loss",
            "trainable_params",
            "dash_max_delta_sigma",
        ] {
            assert_eq!(x[k], y[k], "{} {k}", x["name"]);
        }
    }
    let points = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["capture"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| serde_json::json!([c["run"], c["points"]]))
            .collect()
    };
    assert_eq!(points(a), points(b));
}

/// Polls `path` until it contains `needle`; false at the deadline.
fn wait_for_text(path: &Path, needle: &str, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The smoke preset on the default model, locally and through Slurm. Slurm's run has its full
/// fine-tune reference cancelled mid-training; `--collect` must refuse and name it with its log,
/// `--only-missing` re-runs exactly it (resuming from its checkpoint), and then the two grids
/// hold the same tensors and numbers.
#[test]
fn smoke_preset_through_slurm_equals_the_local_run() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    write_task(&data, "ARC-Easy", "train.json", 48, &["answer1", "answer2"]);
    write_task(&data, "ARC-Easy", "test.json", 8, &["answer1", "answer2"]);
    write_task(&data, "boolq", "test.json", 8, &["true", "false"]);
    let smoke = |out: &Path, extra: &[&str]| {
        tsd_with_default_model(d.path())
            .args(["reproduce", "commonsense", "--preset", "smoke", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    // The local run (also the check that the smoke preset works on the real model).
    let local = d.path().join("local");
    let o = smoke(&local, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = json(&local.join("results.json"));
    assert_eq!(l["runs"].as_array().unwrap().len(), 3);
    assert!(l["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["final_loss"].as_f64().unwrap().is_finite()));
    assert!(l["base"]["average"].as_f64().unwrap() > 0.0);
    assert_eq!(l["capture"].as_array().unwrap().len(), 3);
    assert!(l["lr_check"]["trials"].as_array().unwrap().len() >= 2);
    if !slurm_or_skip() {
        return;
    }
    let started = Instant::now();
    let out = d.path().join("slurm");
    let o = smoke(&out, &["--emit-jobs"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hint = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        hint.contains("--data") && hint.contains("--collect"),
        "{hint}"
    );
    let env = [("TSD_HOME", Some(d.path()))];
    let ids = submit(&out, &env);
    assert_eq!(ids.len(), 3, "lr check, array, collect");
    // Cancel the reference (the array's last task) once it trains.
    let ref_log = out.join("jobs/logs/full-ref-s1.log");
    assert!(
        wait_for_text(
            &ref_log,
            "reference full-ref-s1: training",
            started + timeout()
        ),
        "the reference never started:\n{}",
        logs(&out)
    );
    run(Command::new("scancel").arg(format!("{}_5", ids[1])));
    wait_done(&ids, &out, started);
    let s = states(&ids);
    assert!(
        s.iter()
            .any(|(n, st)| n == "tsd-grid_5" && st == "CANCELLED"),
        "{s:?}"
    );
    assert_eq!(
        s.iter().filter(|(_, st)| st == "COMPLETED").count(),
        5,
        "the lr check and 4 tasks complete; collect fails: {s:?}"
    );
    // --collect refuses, naming the cancelled piece and its log.
    let c = smoke(&out, &["--collect"]);
    assert_eq!(c.status.code(), Some(2));
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(
        err.contains("1 of 6 pieces")
            && err.contains("full-ref-s1 (")
            && err.contains(&ref_log.display().to_string()),
        "{err}"
    );
    assert!(!out.join("runs/lora-r1-s1/capture.json").exists());
    // The missing-pieces array holds exactly the cancelled piece.
    let o = smoke(&out, &["--emit-jobs", "--only-missing"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs = std::fs::read_to_string(out.join("jobs/jobs.txt")).unwrap();
    assert_eq!(jobs.lines().count(), 1, "{jobs}");
    assert!(jobs.trim_end().ends_with("--only full-ref-s1"), "{jobs}");
    assert!(!out.join("jobs/prepare.sbatch").exists());
    let again = submit(&out, &env);
    assert_eq!(again.len(), 2, "array and collect");
    wait_done(&again, &out, started);
    let s = states(&again);
    assert!(
        s.iter().all(|(_, st)| st == "COMPLETED"),
        "{s:?}\n{}",
        logs(&out)
    );
    let log = std::fs::read_to_string(&ref_log).unwrap();
    assert!(log.trim_end().ends_with("== exit 0"), "{log}");
    // The collect job wrote the results; collecting again recomputes nothing and agrees.
    let r = json(&out.join("results.json"));
    let c = smoke(&out, &["--collect"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert!(!String::from_utf8_lossy(&c.stderr).contains("capture:"));
    assert_same_results(&r, &json(&out.join("results.json")));
    assert_same_results(&l, &r);
    assert_same_tensors(&local, &out);
    eprintln!("Slurm part: {:.0} s", started.elapsed().as_secs_f64());
}

/// A task cancelled before it starts (the jobs are submitted held, with --sbatch-arg) leaves its
/// piece unfinished: the collect job and `--collect` name it and where its log would be, and the
/// missing-pieces array re-runs it alone. Tiny model: seconds.
#[test]
fn a_cancelled_task_is_named_and_rerun_alone() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !slurm_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    for (task, file, n, labels) in [
        ("ARC-Easy", "train.json", 30, ["answer1", "answer2"]),
        ("ARC-Easy", "test.json", 6, ["answer1", "answer2"]),
        ("boolq", "test.json", 6, ["true", "false"]),
    ] {
        let ex: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let a = labels[i % 2];
                serde_json::json!({"instruction": format!("Q{i}?"), "input": "", "output": format!("the correct answer is {a}"), "answer": a})
            })
            .collect();
        std::fs::create_dir_all(data.join(task)).unwrap();
        std::fs::write(
            data.join(task).join(file),
            serde_json::to_string(&ex).unwrap(),
        )
        .unwrap();
    }
    let out = d.path().join("out");
    let grid = |extra: &[&str]| {
        tsd(d.path())
            .args(["reproduce", "commonsense", "--preset", "smoke", "--model"])
            .arg(fixture("tiny-llama"))
            .args(["--train-on-inputs", "true", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = grid(&[
        "--emit-jobs",
        "--cpus",
        "1",
        "--mem",
        "1G",
        "--max-parallel",
        "2",
        "--sbatch-arg=--hold",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let array = std::fs::read_to_string(out.join("jobs/array.sbatch")).unwrap();
    assert!(array.contains("#SBATCH --array=1-5%2\n") && array.contains("#SBATCH --hold\n"));
    let started = Instant::now();
    let ids = submit(&out, &[("TSD_HOME", Some(d.path()))]);
    assert_eq!(ids.len(), 3);
    let s = states(&ids);
    assert!(s.iter().all(|(_, st)| st == "PENDING"), "held: {s:?}");
    // Task 2 is lora-r4-s1 (jobs.txt line 2).
    let jobs = std::fs::read_to_string(out.join("jobs/jobs.txt")).unwrap();
    assert!(jobs.lines().nth(1).unwrap().ends_with("--only lora-r4-s1"));
    run(Command::new("scancel").arg(format!("{}_2", ids[1])));
    run(Command::new("scontrol").arg("release").args(&ids));
    wait_done(&ids, &out, started);
    // A task cancelled while pending never ran (the controller may list it CANCELLED or drop it).
    let s = states(&ids);
    let mut completed: Vec<&str> = s
        .iter()
        .filter(|(_, st)| st == "COMPLETED")
        .map(|(n, _)| n.as_str())
        .collect();
    completed.sort();
    assert_eq!(
        completed,
        [
            "tsd-grid_1",
            "tsd-grid_3",
            "tsd-grid_4",
            "tsd-grid_5",
            "tsd-lr-check"
        ],
        "{s:?}"
    );
    assert!(!out.join("jobs/logs/lora-r4-s1.log").exists());
    // The collect job ran after the array and failed, naming the piece.
    let collect_log = std::fs::read_to_string(out.join("jobs/logs/collect.log")).unwrap();
    assert!(
        collect_log.contains("lora-r4-s1 (") && collect_log.trim_end().ends_with("== exit 2"),
        "{collect_log}"
    );
    let c = grid(&["--collect"]);
    assert_eq!(c.status.code(), Some(2));
    let err = String::from_utf8_lossy(&c.stderr);
    let log = out.join("jobs/logs/lora-r4-s1.log");
    assert!(
        err.contains("1 of 6 pieces")
            && err.contains("lora-r4-s1 (not started")
            && err.contains(&log.display().to_string()),
        "{err}"
    );
    // --allow-partial gathers the rest and says what is left out.
    let c = grid(&["--collect", "--allow-partial"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let r = json(&out.join("results.json"));
    assert_eq!(r["runs"].as_array().unwrap().len(), 2);
    assert!(r["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d.as_str().unwrap().contains("left out: lora-r4-s1")));
    // Re-run exactly the missing piece.
    let o = grid(&[
        "--emit-jobs",
        "--only-missing",
        "--cpus",
        "1",
        "--mem",
        "1G",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs = std::fs::read_to_string(out.join("jobs/jobs.txt")).unwrap();
    assert_eq!(jobs.lines().count(), 1, "{jobs}");
    assert!(jobs.trim_end().ends_with("--only lora-r4-s1"));
    let again = submit(&out, &[("TSD_HOME", Some(d.path()))]);
    wait_done(&again, &out, started);
    let s = states(&again);
    assert!(
        s.iter().all(|(_, st)| st == "COMPLETED"),
        "{s:?}\n{}",
        logs(&out)
    );
    // Only lora-r4-s1 ran again: the other pieces' logs hold one job each.
    for piece in ["lora-r1-s1", "dash-r1-s1", "base", "full-ref-s1"] {
        let text = std::fs::read_to_string(out.join(format!("jobs/logs/{piece}.log"))).unwrap();
        assert_eq!(text.matches("== exit 0").count(), 1, "{piece}: {text}");
    }
    let c = grid(&["--collect"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let r = json(&out.join("results.json"));
    assert_eq!(r["runs"].as_array().unwrap().len(), 3);
    assert_eq!(r["capture"].as_array().unwrap().len(), 3);
    // Nothing is missing now.
    let o = grid(&["--emit-jobs", "--only-missing"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("every piece"));
}

/// Slurm's warning signal (`--signal=B:TERM@N`, here sent at once with `scancel --batch
/// --signal=TERM`) reaches the batch shell, which forwards it to tsd: the training piece saves a
/// checkpoint, its log ends with `== exit 143`, and resubmitting the missing piece continues it
/// to the end. Tiny model: seconds.
#[test]
fn slurm_sigterm_to_the_batch_shell_saves_and_resumes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !slurm_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    write_task(&data, "ARC-Easy", "train.json", 30, &["answer1", "answer2"]);
    write_task(&data, "ARC-Easy", "test.json", 6, &["answer1", "answer2"]);
    write_task(&data, "boolq", "test.json", 6, &["true", "false"]);
    let out = d.path().join("out");
    let grid = |extra: &[&str]| {
        tsd(d.path())
            .args(["reproduce", "commonsense", "--preset", "smoke", "--model"])
            .arg(fixture("tiny-llama"))
            .args(["--train-on-inputs", "true", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = grid(&["--emit-jobs", "--cpus", "1", "--mem", "1G"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let array = std::fs::read_to_string(out.join("jobs/array.sbatch")).unwrap();
    assert!(array.contains("#SBATCH --signal=B:TERM@120\n"), "{array}");
    let started = Instant::now();
    // Every checkpoint write pauses 5 s (the environment goes with the jobs): time to signal.
    let mut c = Command::new(out.join("jobs/submit.sh"));
    let text = run(c
        .env("TSD_HOME", d.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("TSD_TEST_PAUSE", "checkpoint-write:5000"));
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(" job ").map(|(_, id)| id.trim().to_string()))
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(ids.len(), 3, "{text}");
    // Task 1 is lora-r1-s1: signal its batch shell inside its first checkpoint write (step 3).
    let log = out.join("jobs/logs/lora-r1-s1.log");
    assert!(
        wait_for_text(
            &log,
            "tsd-test-pause: checkpoint-write",
            started + timeout()
        ),
        "lora-r1-s1 never wrote a checkpoint:\n{}",
        logs(&out)
    );
    // A task that has just started is "in a transitional state" for a moment: scancel may then
    // report an error although the signal reaches the batch shell. The log says what happened.
    std::thread::sleep(Duration::from_secs(1));
    let o = Command::new("scancel")
        .args(["--batch", "--signal=TERM", &format!("{}_1", ids[1])])
        .output()
        .unwrap();
    eprintln!(
        "scancel: {} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    wait_done(&ids, &out, started);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("piece lora-r1-s1 stopped by SIGTERM at step 3 of 6")
            && text.trim_end().ends_with("== exit 143"),
        "{text}"
    );
    let run_dir = out.join("runs/lora-r1-s1");
    assert_eq!(
        tsd::train::trainer::latest_checkpoint(&run_dir).unwrap(),
        Some(3)
    );
    assert!(!run_dir.join("eval.json").exists());
    // Resubmit the missing piece: it continues from step 3.
    let o = grid(&[
        "--emit-jobs",
        "--only-missing",
        "--cpus",
        "1",
        "--mem",
        "1G",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs = std::fs::read_to_string(out.join("jobs/jobs.txt")).unwrap();
    assert!(
        jobs.lines().count() == 1 && jobs.trim_end().ends_with("--only lora-r1-s1"),
        "{jobs}"
    );
    let again = submit(&out, &[("TSD_HOME", Some(d.path()))]);
    wait_done(&again, &out, started);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.trim_end().ends_with("== exit 0"), "{text}");
    let rec = json(&run_dir.join("record.json"));
    assert_eq!(rec["finished"], true);
    assert_eq!(rec["steps"].as_array().unwrap().len(), 6);
    assert!(run_dir.join("eval.json").exists());
    let c = grid(&["--collect"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
}
