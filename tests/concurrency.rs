//! Concurrency (issue 13, part 4): two `tsd inspect` processes on the same base and the same SVD
//! cache at once give identical analyses, and the cache they filled together is valid (a third
//! run is all hits and agrees). Repeated with fresh caches so the two race on every entry.

mod common;

use common::{fixture, tsd};
use std::path::Path;

fn inspect_cmd(home: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tsd"));
    c.env("TSD_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .arg("inspect")
        .arg(fixture("peft-lora"))
        .arg("--base")
        .arg(fixture("tiny-llama"))
        .args(["--json", "--spectrum"]);
    c
}

/// The analysis without what legitimately differs between runs (timings, cache outcomes).
fn analysis(stdout: &[u8]) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !k.contains("seconds") && !k.contains("cache"));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(stdout).expect("inspect --json");
    strip(&mut v);
    v
}

#[test]
fn two_inspects_sharing_a_cache_agree_and_leave_it_valid() {
    for round in 0..3 {
        let home = tempfile::tempdir().unwrap();
        let (x, y) = {
            let ca = inspect_cmd(home.path())
                .stdout(std::process::Stdio::piped())
                .spawn();
            let cb = inspect_cmd(home.path())
                .stdout(std::process::Stdio::piped())
                .spawn();
            (
                ca.unwrap().wait_with_output().unwrap(),
                cb.unwrap().wait_with_output().unwrap(),
            )
        };
        assert!(x.status.success() && y.status.success());
        assert_eq!(analysis(&x.stdout), analysis(&y.stdout), "round {round}");
        // A third run reads only what the two wrote: every module a hit, the same analysis.
        let z = tsd(home.path())
            .arg("inspect")
            .arg(fixture("peft-lora"))
            .arg("--base")
            .arg(fixture("tiny-llama"))
            .args(["--json", "--spectrum"])
            .output()
            .unwrap();
        assert!(z.status.success());
        let v: serde_json::Value = serde_json::from_slice(&z.stdout).unwrap();
        let modules = v["modules"].as_array().unwrap().len();
        assert!(modules > 0);
        assert_eq!(
            v["cache_hits"].as_u64(),
            Some(modules as u64),
            "round {round}: {}",
            v["cache_hits"]
        );
        assert_eq!(analysis(&z.stdout), analysis(&x.stdout));
        let left: Vec<String> = std::fs::read_dir(home.path().join("svd"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".safetensors"))
            .collect();
        assert!(
            left.is_empty(),
            "temporary files left in the cache: {left:?}"
        );
    }
}
