//! Full disk (issue 13, part 3), for real: a small tmpfs is mounted and filled (the tests need
//! root and `mount`; without them they fail and say so). ENOSPC during a checkpoint, an SVD-cache
//! entry, a report and a reproduction result file: a clear error (or, for the cache, a warning and
//! a finished analysis), the previous checkpoint / file intact, nothing partial under a final name.

mod common;

use common::{fixture, tsd};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "these tests need a real full disk: `mount -t tmpfs` was refused ({}); run them as root",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { _dir: dir, path }
    }

    /// Fills the filesystem: a file grows until ENOSPC.
    fn fill(&self) -> PathBuf {
        let p = self.path.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn no_temp_files(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with(".tsd-tmp-") || n.contains(".tmp-") {
            bad.push(e.display().to_string());
        }
    }
    bad
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_one() {
    let fs = Tmpfs::mount("8m");
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("train.json");
    let ex: Vec<serde_json::Value> = (0..16)
        .map(|i| serde_json::json!({"instruction": format!("Item {i}"), "input": "", "output": "the answer is beta"}))
        .collect();
    std::fs::write(&data, serde_json::to_string(&ex).unwrap()).unwrap();
    let run = fs.path.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsd"))
        .args(["train", "--model"])
        .arg(fixture("tiny-llama"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .args([
            "--method",
            "lora",
            "--rank",
            "2",
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "2",
            "--save-every",
            "2",
            "--val-size",
            "2",
            "--cutoff-len",
            "48",
            "-q",
        ])
        .env("TSD_HOME", d.path().join("home"))
        .env("HF_HUB_OFFLINE", "1")
        .env("TSD_TEST_PAUSE", "checkpoint-write:1500")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = 0;
    let mut lines = Vec::new();
    // The second checkpoint (step 4) is being written: its adapter is in the temporary directory,
    // its trainer state not yet. The disk fills now.
    while seen < 2 {
        let mut l = String::new();
        assert!(
            err.read_line(&mut l).unwrap() > 0,
            "tsd exited early: {lines:?}"
        );
        seen += (l.trim() == "tsd-test-pause: checkpoint-write") as usize;
        lines.push(l);
    }
    let before =
        std::fs::read(run.join("checkpoints/step-000002/adapter_model.safetensors")).unwrap();
    fs.fill();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(2),
        "exit code on a full disk; stderr: {rest}"
    );
    assert!(
        rest.contains("No space left on device"),
        "a clear error: {rest}"
    );
    assert_eq!(
        rest.trim()
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{rest}"
    );
    // The previous checkpoint is intact and is the newest one listed.
    assert_eq!(
        tsd::train::trainer::latest_checkpoint(&run).unwrap(),
        Some(2)
    );
    let after =
        std::fs::read(run.join("checkpoints/step-000002/adapter_model.safetensors")).unwrap();
    assert_eq!(before, after);
    tsd::adapter::load_adapter(&run.join("checkpoints/step-000002")).unwrap();
    assert!(
        !run.join("checkpoints/step-000004").exists(),
        "no partial checkpoint under its final name"
    );
}

fn inspect(home: &Path, html: Option<&Path>) -> std::process::Output {
    let mut c = tsd(home);
    c.arg("inspect")
        .arg(fixture("peft-lora"))
        .arg("--base")
        .arg(fixture("tiny-llama"))
        .arg("-q");
    if let Some(h) = html {
        c.arg("--html").arg(h);
    }
    c.output().unwrap()
}

#[test]
fn a_full_disk_under_the_svd_cache_warns_and_the_analysis_finishes() {
    let fs = Tmpfs::mount("4m");
    let home = fs.path.join("home");
    std::fs::create_dir_all(home.join("svd")).unwrap();
    fs.fill();
    let out = inspect(&home, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("could not write SVD cache entry") && err.contains("No space left"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(home.join("svd"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        left.is_empty(),
        "nothing (partial entry or temp file) left in the cache: {left:?}"
    );
}

#[test]
fn a_full_disk_while_writing_a_report_keeps_the_old_report() {
    let fs = Tmpfs::mount("4m");
    let home = tempfile::tempdir().unwrap();
    let html = fs.path.join("report.html");
    let out = inspect(home.path(), Some(&html));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = std::fs::read(&html).unwrap();
    fs.fill();
    let out = inspect(home.path(), Some(&html));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("report.html"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&html).unwrap(),
        good,
        "the previous report is intact"
    );
    assert!(
        no_temp_files(&fs.path).is_empty(),
        "{:?}",
        no_temp_files(&fs.path)
    );
}

/// `tsd reproduce` writes every result file (`results.json`, a piece's `result.json`, scores)
/// through `fsutil::atomic_write`; the whole command is too slow for a test, so the writer is
/// tested here on the full filesystem with a result-sized payload.
#[test]
fn a_full_disk_while_writing_a_reproduction_result_keeps_the_old_one() {
    let fs = Tmpfs::mount("1m");
    let p = fs.path.join("reproduce/results.json");
    tsd::fsutil::atomic_write(&p, b"{\"runs\": []}\n").unwrap();
    fs.fill();
    let big = vec![b' '; 256 * 1024];
    let e = tsd::fsutil::atomic_write(&p, &big).unwrap_err();
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(e.is_user_input());
    assert_eq!(std::fs::read(&p).unwrap(), b"{\"runs\": []}\n");
    assert!(
        no_temp_files(&fs.path).is_empty(),
        "{:?}",
        no_temp_files(&fs.path)
    );
}
