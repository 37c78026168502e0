//! Bad input: every case exits with code 2 and a one-line cause, never a panic.

mod common;

use common::{copy_dir, fixture, tsd};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tsd::adapter::{load_adapter, write_adapter};

/// A writable copy of the PEFT LoRA fixture pointing at the tiny base by absolute path.
fn adapter_copy(dir: &Path) -> PathBuf {
    let a = dir.join("adapter");
    copy_dir(&fixture("peft-lora"), &a);
    // The copy declares the base it was made on (the fixture's `../tiny-llama` names nothing
    // beside the copy, and a base that cannot be compared with the declared one is a warning).
    let cfg = a.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["base_model_name_or_path"] = fixture("tiny-llama").display().to_string().into();
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    a
}

/// Runs `tsd inspect` and returns stderr, asserting exit code 2 and no panic.
fn inspect_fails(adapter: &Path, extra: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let base = fixture("tiny-llama");
    let mut args = vec![
        "inspect".to_string(),
        adapter.display().to_string(),
        "--base".into(),
        base.display().to_string(),
        "-q".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tsd(home.path()).args(&args).output().unwrap();
    let all = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {all}");
    assert!(!all.contains("panicked"), "{all}");
    // Warnings (a written adapter declaring a base that does not resolve beside it) come first,
    // each on its line; the error is one line.
    let err: String = all
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(err.starts_with("error: "), "{all}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {all}");
    err
}

fn write_tensors(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    let f = a.join("adapter_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let err = inspect_fails(&a, &[]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    std::fs::write(&f, &bytes[..5]).unwrap();
    inspect_fails(&a, &[]);
}

#[test]
fn header_that_lies_about_sizes() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    let f = a.join("adapter_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Claim a larger shape for the first tensor than its byte range holds.
    let lied = header.replacen("\"shape\":[4,", "\"shape\":[5,", 1);
    assert_ne!(lied, header);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(lied.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&f, out).unwrap();
    let err = inspect_fails(&a, &[]);
    assert!(err.contains("safetensors"), "{err}");
}

#[test]
fn shape_mismatch_with_the_base() {
    let d = tempfile::tempdir().unwrap();
    let mut ad = load_adapter(&fixture("peft-lora")).unwrap();
    let m = &mut ad.modules[0];
    m.a = tsd::linalg::Matrix::new(
        m.a.rows,
        m.a.cols + 1,
        vec![0.01; m.a.rows * (m.a.cols + 1)],
    )
    .unwrap();
    write_adapter(&d.path().join("a"), &ad).unwrap();
    let err = inspect_fails(&d.path().join("a"), &[]);
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn missing_base_tensor() {
    let d = tempfile::tempdir().unwrap();
    let mut ad = load_adapter(&fixture("peft-lora")).unwrap();
    ad.modules[0].module = "model.layers.7.mlp.down_proj".into();
    write_adapter(&d.path().join("a"), &ad).unwrap();
    let err = inspect_fails(&d.path().join("a"), &[]);
    assert!(
        err.contains("missing tensor `model.layers.7.mlp.down_proj.weight`"),
        "{err}"
    );
}

#[test]
fn nan_and_inf_weights() {
    let d = tempfile::tempdir().unwrap();
    let mut ad = load_adapter(&fixture("peft-lora")).unwrap();
    ad.modules[1].b.data[3] = f32::NAN;
    ad.modules[1].b.data[5] = f32::INFINITY;
    write_adapter(&d.path().join("a"), &ad).unwrap();
    let err = inspect_fails(&d.path().join("a"), &[]);
    assert!(err.contains("2 non-finite value(s)"), "{err}");
}

#[test]
fn unknown_dtype() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    write_tensors(
        &a.join("adapter_model.safetensors"),
        vec![
            (
                "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
                Dtype::I8,
                vec![4, 160],
                vec![1u8; 640],
            ),
            (
                "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
                Dtype::F32,
                vec![64, 4],
                vec![0u8; 1024],
            ),
        ],
    );
    let err = inspect_fails(&a, &[]);
    assert!(err.contains("has dtype I8"), "{err}");
}

#[test]
fn empty_adapter() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    write_tensors(
        &a.join("adapter_model.safetensors"),
        vec![("some.other.tensor", Dtype::F32, vec![2], vec![0u8; 8])],
    );
    let err = inspect_fails(&a, &[]);
    assert!(err.contains("holds no LoRA tensors"), "{err}");
    write_tensors(&a.join("adapter_model.safetensors"), vec![]);
    inspect_fails(&a, &[]);
}

#[test]
fn wrong_rank_in_config() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    let cfg = std::fs::read_to_string(a.join("adapter_config.json")).unwrap();
    std::fs::write(
        a.join("adapter_config.json"),
        cfg.replace("\"r\": 4", "\"r\": 8"),
    )
    .unwrap();
    let err = inspect_fails(&a, &[]);
    assert!(
        err.contains("gives rank 8 for this module, but its tensors have rank 4"),
        "{err}"
    );
}

#[test]
fn malformed_config_and_missing_partner_tensor() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    std::fs::write(a.join("adapter_config.json"), "{\"r\": 4,").unwrap();
    assert!(inspect_fails(&a, &[]).contains("invalid JSON"));
    copy_dir(&fixture("peft-lora"), &a);
    write_tensors(
        &a.join("adapter_model.safetensors"),
        vec![(
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
            Dtype::F32,
            vec![4, 160],
            vec![0u8; 2560],
        )],
    );
    assert!(inspect_fails(&a, &[]).contains("missing tensor `lora_B.weight`"));
}

#[test]
fn pickle_adapters_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("pickled");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::copy(
        fixture("peft-lora/adapter_config.json"),
        a.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(a.join("adapter_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let err = inspect_fails(&a, &[]);
    assert!(err.contains("pickle checkpoints are refused"), "{err}");
}

#[test]
fn bad_arguments_and_missing_paths() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    inspect_fails(&a, &["--top-s", "0"]);
    inspect_fails(&d.path().join("nope"), &[]);
    let home = tempfile::tempdir().unwrap();
    let out = tsd(home.path())
        .args([
            "inspect",
            a.to_str().unwrap(),
            "--base",
            "/definitely/not/here",
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = tsd(home.path())
        .args(["params", "--model", "llama-7b", "--targets", "attn"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target module `attn`"));
}

#[test]
fn offline_hub_id_not_in_cache_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let a = adapter_copy(d.path());
    let home = tempfile::tempdir().unwrap();
    let out = tsd(home.path())
        .env("HF_HOME", home.path().join("hf"))
        .args([
            "inspect",
            a.to_str().unwrap(),
            "--base",
            "someone/not-cached",
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(err.contains("offline mode is on"), "{err}");
}

/// Regression: candle appends a backtrace to its errors when RUST_BACKTRACE is set, which turned
/// the one-line cause into dozens of lines.
#[test]
fn malformed_gguf_base_is_one_line_even_with_backtraces_on() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.gguf");
    std::fs::write(&bad, [0x13u8; 600]).unwrap();
    let out = tsd(d.path())
        .env("RUST_BACKTRACE", "1")
        .args([
            "inspect",
            fixture("peft-lora").to_str().unwrap(),
            "--base",
            bad.to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a valid GGUF file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// Runs `tsd ARGS`, asserting exit code 2 and a one-line cause; returns the cause.
fn fails_with_2(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = tsd(home.path()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// Regression: an `Io` error printed `{path}: {source}` and then its `source` again
/// (`training data not found: training data not found`).
#[test]
fn causes_are_not_repeated() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.json");
    let err = fails_with_2(&[
        "train",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        missing.to_str().unwrap(),
        "--out",
        d.path().join("run").to_str().unwrap(),
        "--cutoff-len",
        "96",
    ]);
    assert_eq!(err.matches("training data not found").count(), 1, "{err}");
    let err = fails_with_2(&[
        "train",
        "--config",
        missing.to_str().unwrap(),
        "--out",
        d.path().join("run").to_str().unwrap(),
    ]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// Regression: `--method lora-dash` with `--dash-t` at or past the run's steps trained plain LoRA
/// under a LoRA-Dash label; it is refused before a run directory is made.
#[test]
fn dash_switch_past_the_last_step_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("train.json");
    let ex: Vec<serde_json::Value> = (0..24)
        .map(|i| serde_json::json!({"instruction": format!("Q{i}?"), "input": "", "output": "the correct answer is true", "answer": "true"}))
        .collect();
    std::fs::write(&data, serde_json::to_string(&ex).unwrap()).unwrap();
    let run = d.path().join("run");
    let err = fails_with_2(&[
        "train",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--method",
        "lora-dash",
        "--max-steps",
        "4",
        "--dash-t",
        "4",
        "--batch-size",
        "4",
        "--val-size",
        "4",
        "--cutoff-len",
        "96",
        "-q",
    ]);
    assert!(
        err.contains("--dash-t 4") && err.contains("4 optimizer steps"),
        "{err}"
    );
    assert!(!run.exists(), "no run directory is left behind");
}

/// Bad CLI values are user input (exit 2), not internal failures.
#[test]
fn cli_value_errors_exit_2() {
    let err = fails_with_2(&["params", "--model", "llama-7b", "--rank", "0"]);
    assert!(err.contains("--rank values must be positive"), "{err}");
    let err = fails_with_2(&["eval", "--tasks", "nonsense", "--data", "."]);
    assert!(err.contains("unknown task `nonsense`"), "{err}");
}

/// An invalid `TSD_MEMORY_BUDGET` (inspect's budget for modules in flight) is refused, naming it.
#[test]
fn invalid_memory_budget_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = tsd(home.path())
        .env("TSD_MEMORY_BUDGET", "lots")
        .args(["inspect", &fixture("peft-lora").display().to_string()])
        .args(["--base", &fixture("tiny-llama").display().to_string(), "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("TSD_MEMORY_BUDGET") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let ok = tsd(home.path())
        .env("TSD_MEMORY_BUDGET", "1")
        .args(["inspect", &fixture("peft-lora").display().to_string()])
        .args(["--base", &fixture("tiny-llama").display().to_string(), "-q"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "a 1-byte budget runs one module at a time: {ok:?}"
    );
}

/// `tsd bench bf16 --data` naming a directory without `<task>/test.json` is refused before any
/// timing starts (the accuracy batch would otherwise fall back to pseudo-random ids).
#[test]
fn bench_bf16_refuses_a_data_dir_without_test_sets() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().display().to_string();
    let out = d.path().join("bf16.json").display().to_string();
    let err = fails_with_2(&["bench", "bf16", "--no-model", "--data", &dir, "--out", &out]);
    assert!(err.contains("no <task>/test.json"), "{err}");
    let missing = d.path().join("missing").display().to_string();
    let err = fails_with_2(&["bench", "bf16", "--data", &missing, "--out", &out]);
    assert!(err.contains("not readable"), "{err}");
    assert!(!d.path().join("bf16.json").exists());
    let err = fails_with_2(&["bench", "bf16", "--seq-len", "0", "--out", &out]);
    assert!(err.contains("--seq-len"), "{err}");
}
