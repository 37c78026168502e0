//! Both matrix-kernel paths of an x86-64 host, run for real: `tsd train` (LoRA-Dash, so the
//! switch's SVD runs too) natively, and twice under `qemu-x86_64 -cpu Haswell` (AVX2 and FMA, no
//! AVX-512), where gemm takes its AVX2+FMA kernels. The records name the path each process ran;
//! the two emulated runs write byte-identical adapters (a path is stable); the emulated run's
//! losses and adapters are close to the native ones; resuming on the other path warns once.
//!
//! Needs `qemu-x86_64` (Debian's `qemu-user`, which `scripts/test.sh` installs): without it the
//! test prints a skip line, or fails when `CI` is set.

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

mod common;

use common::fixture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The emulated CPU: Haswell has AVX2 and FMA and no AVX-512 (qemu 7.2's TCG emulates no AVX-512).
const QEMU_CPU: &str = "Haswell";

fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("qemu-x86_64"))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-x86_64 is not installed (CI is set, so this test must run): apt-get install qemu-user"
        );
        eprintln!(
            "SKIP kernel_path: qemu-x86_64 not found (install qemu-user; scripts/test.sh does)"
        );
    }
    found
}

fn write_data(dir: &Path) -> PathBuf {
    common::write_train_data(dir, 16)
}

/// `tsd train ARGS`, natively or under qemu with [`QEMU_CPU`].
fn tsd(home: &Path, qemu: Option<&Path>, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_tsd");
    let mut c = match qemu {
        Some(q) => {
            let mut c = Command::new(q);
            c.args(["-cpu", QEMU_CPU, bin]);
            c
        }
        None => Command::new(bin),
    };
    let out = c
        .env("TSD_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .env("TSD_COMPOSED", "0")
        .arg("train")
        .args(args)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tsd train {args:?} (qemu: {}): {}",
        qemu.is_some(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn train(home: &Path, qemu: Option<&Path>, data: &Path, run: &Path) {
    let model = fixture("tiny-llama");
    #[rustfmt::skip]
    let args = [
        "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(),
        "--out", run.to_str().unwrap(), "--method", "lora-dash", "--rank", "4",
        "--max-steps", "4", "--dash-t", "2", "--dash-s", "2", "--batch-size", "2",
        "--micro-batch-size", "2", "--save-every", "4", "--lr", "0.03", "--warmup-steps", "1",
        "--val-size", "2", "--cutoff-len", "48", "--seed", "7",
    ];
    tsd(home, qemu, &args);
}

fn record(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap()
}

fn losses(rec: &serde_json::Value) -> Vec<f64> {
    let steps = rec["steps"].as_array().unwrap().iter();
    let val = rec["val"].as_array().unwrap().iter();
    steps
        .chain(val)
        .map(|s| s["loss"].as_f64().unwrap())
        .collect()
}

/// The checkpoint files that hold trained numbers.
const WEIGHT_FILES: [&str; 2] = ["adapter_model.safetensors", "tsd_dash.safetensors"];

fn weights_file(run: &Path, name: &str) -> PathBuf {
    run.join("checkpoints/step-000004").join(name)
}

/// Every tensor of a safetensors file, by name, as f64 (f32 weights, i64 direction indices).
fn tensors(path: &Path) -> Vec<(String, safetensors::Dtype, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::I64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, t.dtype(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Largest `|a − b| / max(|a|, |b|, floor)` over paired values.
fn max_rel_diff(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(floor))
        .fold(0.0, f64::max)
}

#[test]
fn both_kernel_paths_are_named_stable_and_agree() {
    let Some(qemu) = qemu() else { return };
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let data = write_data(d.path());
    let native = d.path().join("native");
    let (q1, q2) = (d.path().join("qemu1"), d.path().join("qemu2"));

    let t0 = std::time::Instant::now();
    train(&home, None, &data, &native);
    let native_s = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    train(&home, Some(&qemu), &data, &q1);
    let qemu_s = t0.elapsed().as_secs_f64();
    train(&home, Some(&qemu), &data, &q2);

    // The records name each process's path: this host's natively, AVX2+FMA under Haswell.
    let expected_native = if std::arch::is_x86_feature_detected!("avx512f") {
        "avx512f"
    } else if std::arch::is_x86_feature_detected!("fma") {
        "avx2+fma"
    } else {
        "scalar"
    };
    assert_eq!(tsd::kernels::current().name, expected_native);
    let (rn, r1, r2) = (record(&native), record(&q1), record(&q2));
    assert_eq!(
        rn["kernel_path"]["name"], expected_native,
        "{}",
        rn["kernel_path"]
    );
    for r in [&r1, &r2] {
        assert_eq!(r["kernel_path"]["name"], "avx2+fma", "{}", r["kernel_path"]);
        assert_eq!(
            r["kernel_path"]["features"],
            serde_json::json!(["-avx512f", "+fma"])
        );
        assert!(r["dash_switch"].is_object(), "the switch (SVD) ran");
    }

    // Stable within a path: the two emulated runs are byte-identical.
    for f in WEIGHT_FILES {
        assert!(
            std::fs::read(weights_file(&q1, f)).unwrap()
                == std::fs::read(weights_file(&q2, f)).unwrap(),
            "{f} differs between two runs on one kernel path"
        );
    }
    assert_eq!(losses(&r1), losses(&r2));

    // Across paths: close (README allows the last bits to differ).
    let loss_diff = max_rel_diff(&losses(&rn), &losses(&r1), 0.0);
    let mut weight_diff = 0.0f64;
    let mut identical = losses(&rn) == losses(&r1);
    for f in WEIGHT_FILES {
        let (a, b) = (weights_file(&native, f), weights_file(&q1, f));
        identical &= std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap();
        let (ta, tb) = (tensors(&a), tensors(&b));
        assert_eq!(
            ta.iter().map(|t| &t.0).collect::<Vec<_>>(),
            tb.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
        for ((name, dtype, x), (_, _, y)) in ta.iter().zip(&tb) {
            if *dtype == safetensors::Dtype::I64 {
                // The directions LoRA-Dash picked: the same on both paths.
                assert_eq!(
                    x, y,
                    "{f} {name}: picked directions differ across kernel paths"
                );
                continue;
            }
            let diff = max_rel_diff(x, y, 1e-3);
            assert!(
                diff <= 1e-4,
                "{f} {name}: relative difference {diff:e} across kernel paths"
            );
            weight_diff = weight_diff.max(diff);
        }
    }
    assert!(
        loss_diff <= 1e-4,
        "losses differ by {loss_diff:e} across kernel paths"
    );
    eprintln!(
        "kernel paths: native {expected_native} {native_s:.2} s, qemu -cpu {QEMU_CPU} avx2+fma {qemu_s:.2} s; \
         across paths max rel. difference: losses {loss_diff:e}, adapters {weight_diff:e}; bit-identical: {identical}"
    );

    // Resuming on the other path warns, once; on the same path it does not.
    let other = d.path().join("native-resumed-under-qemu");
    common::copy_dir(&native, &other);
    copy_tree(&native.join("checkpoints"), &other.join("checkpoints"));
    let warning = "bit-identical resume holds on one kernel path";
    let out = tsd(&home, Some(&qemu), &["--resume", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(warning).count(), 1, "{err}");
    let out = tsd(&home, None, &["--resume", native.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(warning), "{err}");
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}
