//! `tsd train --frozen-products bf16`: the frozen weights' products through the AVX512-BF16 kernel
//! (`src/nn/bf16.rs`). Where the CPU has it, a run is repeatable to the bit, records the choice in
//! `config.json`, and its losses stay within bf16's rounding of the f32 run's; where it has not
//! (this host under `qemu-x86_64 -cpu Haswell`), the flag is refused with exit code 2; and it is
//! refused with any device or dtype but the CPU in f32.

mod common;

use common::fixture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn write_data(dir: &Path) -> PathBuf {
    common::write_train_data(dir, 16)
}

/// `tsd train` on the tiny fixture (through `runner` when given, e.g. qemu), with `extra` flags.
fn train(runner: &[&str], data: &Path, run: &Path, extra: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_tsd");
    let mut c = match runner.split_first() {
        Some((exe, args)) => {
            let mut c = Command::new(exe);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let model = fixture("tiny-llama");
    #[rustfmt::skip]
    c.args([
        "train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(),
        "--out", run.to_str().unwrap(), "--method", "lora-dash", "--rank", "4",
        "--max-steps", "4", "--dash-t", "2", "--dash-s", "2", "--batch-size", "2",
        "--micro-batch-size", "2", "--save-every", "4", "--lr", "0.03", "--warmup-steps", "1",
        "--val-size", "2", "--cutoff-len", "48", "--seed", "7", "-q",
    ]);
    c.args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env("TSD_COMPOSED", "0")
        .output()
        .unwrap()
}

fn losses(run: &Path) -> Vec<f64> {
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap();
    let steps = rec["steps"].as_array().unwrap().iter();
    steps
        .chain(rec["val"].as_array().unwrap().iter())
        .map(|s| s["loss"].as_f64().unwrap())
        .collect()
}

fn adapter(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/step-000004/adapter_model.safetensors")).unwrap()
}

fn refused(out: &Output, what: &str) {
    let all = String::from_utf8_lossy(&out.stderr);
    // qemu's own warnings about CPU features its emulator lacks are not tsd's.
    let err: Vec<&str> = all
        .lines()
        .filter(|l| !l.starts_with("qemu-x86_64: warning"))
        .collect();
    let err = err.join("\n");
    assert_eq!(out.status.code(), Some(2), "{what}: {all}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    assert!(err.contains("frozen_products bf16"), "{what}: {err}");
}

#[test]
fn bf16_products_are_repeatable_close_to_f32_and_refused_where_unsupported() {
    let d = tempfile::tempdir().unwrap();
    let data = write_data(d.path());
    let bf16 = ["--frozen-products", "bf16"];
    if tsd::nn::bf16::available() {
        let (f32_run, a, b) = (d.path().join("f32"), d.path().join("a"), d.path().join("b"));
        for (run, extra) in [(&f32_run, &[][..]), (&a, &bf16[..]), (&b, &bf16[..])] {
            let out = train(&[], &data, run, extra);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config = std::fs::read_to_string(a.join("config.json")).unwrap();
        assert!(config.contains(r#""frozen_products": "bf16""#), "{config}");
        let f32_config = std::fs::read_to_string(f32_run.join("config.json")).unwrap();
        assert!(
            !f32_config.contains("frozen_products"),
            "the default is left out"
        );
        assert_eq!(adapter(&a), adapter(&b), "bf16 runs repeat to the bit");
        assert_eq!(losses(&a), losses(&b));
        assert_ne!(
            adapter(&a),
            adapter(&f32_run),
            "bf16 products were not used"
        );
        for (x, y) in losses(&a).iter().zip(losses(&f32_run)) {
            assert!((x - y).abs() <= 0.02 * y.abs(), "bf16 loss {x} vs f32 {y}");
        }
    } else {
        refused(&train(&[], &data, &d.path().join("n"), &bf16), "native");
        eprintln!("this CPU has no AVX512-BF16: only the refusal was checked natively");
    }
    // Only the CPU's f32 model takes the kernel.
    let mut flags = bf16.to_vec();
    flags.extend(["--dtype", "bf16"]);
    refused(
        &train(&[], &data, &d.path().join("dt"), &flags),
        "dtype bf16",
    );
    // A CPU without AVX512-BF16: qemu's Haswell model (tests/kernel_path.rs installs the same).
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        match which("qemu-x86_64") {
            Some(q) => {
                let q = q.to_string_lossy().into_owned();
                let out = train(&[&q, "-cpu", "Haswell"], &data, &d.path().join("q"), &bf16);
                refused(&out, "qemu Haswell");
            }
            None => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "qemu-x86_64 missing under CI"
                );
                eprintln!("SKIP the Haswell refusal: qemu-x86_64 not found (install qemu-user)");
            }
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|f| f.is_file())
}
