//! LoRA-Dash checkpoints and exports in the layout PEFT loads exactly (README, Adapter formats):
//! `adapter_model.safetensors` + `adapter_config.json` are the folded rank-(r+s) LoRA, and
//! `tsd_dash.safetensors` beside them is the Dash parametrisation tsd reads. The committed
//! checkpoint `tests/fixtures/tsd-written/dash-checkpoint/` is a raw `tsd train --method lora-dash`
//! checkpoint on the tiny LLaMA that `scripts/peft_dash_checkpoint_check.py` loaded in real PEFT
//! (`peft-dash-checkpoint.json` beside it).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{copy_dir, fixture, tsd, write_train_data};
use safetensors::SafeTensors;
use std::path::Path;
use tsd::adapter::{fold_dash, load_adapter, Adapter};
use tsd::eval::merge::adapted_model;
use tsd::nn::ForwardCtx;
use tsd::weights::open_path;

const RANK: usize = 4;
const S: usize = 3;

/// `tsd train --method lora-dash` on the tiny LLaMA: 8 steps, switch after 4, checkpoints at 4
/// and 8. `model` is passed as given (relative to `cwd`).
fn train_dash(home: &Path, cwd: &Path, model: &str, out: &Path) {
    let data = write_train_data(home, 40);
    let args: Vec<String> = [
        "train",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "lora-dash",
        "--rank",
        &RANK.to_string(),
        "--max-steps",
        "8",
        "--dash-t",
        "4",
        "--dash-s",
        &S.to_string(),
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--save-every",
        "4",
        "--lr",
        "0.03",
        "--warmup-steps",
        "1",
        "--val-size",
        "4",
        "--cutoff-len",
        "96",
        "--seed",
        "7",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = tsd(home).current_dir(cwd).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn keys(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut k: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    k.sort();
    k
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The PEFT files of `dir` alone (no `tsd_dash.safetensors`), as PEFT sees them.
fn peft_only(dir: &Path, to: &Path) -> Adapter {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(dir.join(f), to.join(f)).unwrap();
    }
    load_adapter(to).unwrap()
}

fn assert_same_lora(a: &Adapter, b: &Adapter) {
    assert_eq!(a.modules.len(), b.modules.len());
    for (x, y) in a.modules.iter().zip(&b.modules) {
        assert_eq!(x.module, y.module);
        assert_eq!((x.r, x.alpha, x.scaling), (y.r, y.alpha, y.scaling));
        assert_eq!(x.a, y.a, "{}: A", x.module);
        assert_eq!(x.b, y.b, "{}: B", x.module);
    }
}

/// Regression (issue 20, point 1): a Dash checkpoint's PEFT files held the Dash tensors under
/// tsd's names with a rank-r config, which PEFT loads silently without the Dash term. Now they
/// are the fold, and the Dash parametrisation is in `tsd_dash.safetensors`; the pre-switch
/// checkpoint is a plain rank-r LoRA as before.
#[test]
fn dash_checkpoint_is_the_fold_for_peft_and_dash_for_tsd() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let model = fixture("tiny-llama");
    train_dash(d.path(), d.path(), model.to_str().unwrap(), &run);
    let before = run.join("checkpoints/step-000004");
    let after = run.join("checkpoints/step-000008");

    // Before the switch: plain LoRA of rank r, nothing beside it.
    assert!(!before.join("tsd_dash.safetensors").exists());
    let cfg = json(&before.join("adapter_config.json"));
    assert_eq!(
        (cfg["r"].as_u64(), cfg["peft_type"].as_str()),
        (Some(RANK as u64), Some("LORA"))
    );
    assert!(keys(&before.join("adapter_model.safetensors"))
        .iter()
        .all(|(k, _)| !k.contains("lora_dash")));

    // After: PEFT's files are the rank-(r+s) fold with scaling 1.
    let cfg = json(&after.join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"].as_u64(), Some((RANK + S) as u64));
    assert_eq!(cfg["lora_alpha"].as_f64(), Some((RANK + S) as f64));
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["rank_pattern"], serde_json::json!({}));
    let peft_keys = keys(&after.join("adapter_model.safetensors"));
    assert!(
        peft_keys.iter().all(|(k, _)| !k.contains("lora_dash")),
        "{peft_keys:?}"
    );
    assert!(peft_keys
        .iter()
        .filter(|(k, _)| k.ends_with("lora_A.weight"))
        .all(|(_, s)| s[0] == RANK + S));
    // tsd reads the Dash parametrisation, and the PEFT file is exactly its fold.
    let dash = load_adapter(&after).unwrap();
    assert!(dash.modules.iter().all(|m| m.r == RANK
        && m.dash
            .as_ref()
            .is_some_and(|x| x.s() == S && x.indices.is_some())));
    let peft = peft_only(&after, &d.path().join("peft"));
    assert!(!peft.has_dash());
    assert_same_lora(&fold_dash(&dash), &peft);
    // The run's record counts what trains (LoRA + Δσ), the checkpoint's Dash form agrees.
    let rec = json(&run.join("record.json"));
    assert_eq!(
        rec["trainable_params"].as_u64().unwrap(),
        dash.trainable_params()
    );
    // tsd inspect shows the Dash coefficients of the checkpoint.
    let out = tsd(d.path())
        .args(["inspect", after.to_str().unwrap(), "--json", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modules"][0]["dash"]["indices_recovered"], false);
    assert_eq!(
        v["modules"][0]["dash"]["indices"].as_array().unwrap().len(),
        S
    );
}

fn logits(adapter: &Adapter, ids: &serde_json::Value) -> Vec<f64> {
    let src = open_path(&fixture("tiny-llama")).unwrap();
    let model = adapted_model(src.as_ref(), adapter, &Device::Cpu, DType::F32).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(ids.clone()).unwrap();
    let t = Tensor::new(ids, &Device::Cpu).unwrap();
    let l = model
        .forward(&t, &ForwardCtx::eval())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    l.into_iter().flatten().flatten().map(f64::from).collect()
}

fn worst(a: &[f64], want: &serde_json::Value) -> f64 {
    let want: Vec<f64> = want
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s.as_array().unwrap())
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(a.len(), want.len());
    a.iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// tsd's merged model for the committed raw checkpoint gives the logits real PEFT gave for it
/// (merged), both from the Dash parametrisation and from the PEFT files alone; without its Dash
/// term it would not.
#[test]
fn committed_dash_checkpoint_logits_equal_peft() {
    let ck = fixture("tsd-written/dash-checkpoint");
    let rec = json(&fixture("tsd-written/peft-dash-checkpoint.json"));
    assert!(
        rec["peft_merged_vs_dash_model_max_abs_diff"]
            .as_f64()
            .unwrap()
            < 1e-4
    );
    let dash = load_adapter(&ck).unwrap();
    assert!(dash.has_dash(), "tsd must read tsd_dash.safetensors");
    assert_eq!(
        rec["checkpoint"]["dash_r"].as_u64(),
        Some(dash.modules[0].r as u64)
    );
    let ids = &rec["input_ids"];
    let w = worst(&logits(&dash, ids), &rec["logits"]);
    eprintln!("tsd (Dash parametrisation) vs PEFT merged: max |Δlogit| = {w:.3e}");
    assert!(w < 1e-4, "tsd (Dash) vs PEFT merged: {w}");
    let d = tempfile::tempdir().unwrap();
    let peft = peft_only(&ck, d.path());
    let w = worst(&logits(&peft, ids), &rec["logits"]);
    eprintln!("tsd (PEFT files alone) vs PEFT merged: max |Δlogit| = {w:.3e}");
    assert!(w < 1e-4, "tsd (PEFT files) vs PEFT merged: {w}");
    let mut no_dash = dash.clone();
    no_dash.modules.iter_mut().for_each(|m| m.dash = None);
    let off = worst(&logits(&no_dash, ids), &rec["logits"]);
    eprintln!("tsd without the Dash term vs PEFT merged: max |Δlogit| = {off:.3e}");
    assert!(off > 1e-3, "the Dash term barely matters here ({off})");
}

/// Checkpoints written before this layout (Dash tensors inside adapter_model.safetensors under
/// tsd's names, rank-r config) still read as the same Dash adapter; `tsd export` rewrites one in
/// the new layout and `--base-name` sets the declared base.
#[test]
fn old_layout_reads_and_exports_to_the_new_one() {
    let ck = fixture("tsd-written/dash-checkpoint");
    let new = load_adapter(&ck).unwrap();
    let d = tempfile::tempdir().unwrap();
    let old = d.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(
        ck.join("tsd_dash.safetensors"),
        old.join("adapter_model.safetensors"),
    )
    .unwrap();
    let bytes = std::fs::read(ck.join("tsd_dash.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cfg = meta.metadata().as_ref().unwrap()["tsd_adapter_config"].clone();
    std::fs::write(old.join("adapter_config.json"), cfg).unwrap();
    let back = load_adapter(&old).unwrap();
    assert_same_lora(&back, &new);
    for (x, y) in back.modules.iter().zip(&new.modules) {
        assert_eq!(x.dash, y.dash);
    }
    let out = d.path().join("exported");
    let o = tsd(d.path())
        .args([
            "export",
            old.to_str().unwrap(),
            out.to_str().unwrap(),
            "--base-name",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The export's PEFT file is the checkpoint's, byte for byte; its Dash file reads the same.
    assert!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
            == std::fs::read(ck.join("adapter_model.safetensors")).unwrap()
    );
    let exported = load_adapter(&out).unwrap();
    assert_same_lora(&exported, &new);
    for (x, y) in exported.modules.iter().zip(&new.modules) {
        assert_eq!(x.dash, y.dash);
    }
    let cfg = json(&out.join("adapter_config.json"));
    assert_eq!(
        cfg["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    assert!(cfg["revision"].is_null());
    // --fold-dash writes the fold alone; exporting a plain LoRA over it removes the Dash file.
    let folded = d.path().join("folded");
    let o = tsd(d.path())
        .args([
            "export",
            old.to_str().unwrap(),
            folded.to_str().unwrap(),
            "--fold-dash",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!folded.join("tsd_dash.safetensors").exists());
    assert!(!load_adapter(&folded).unwrap().has_dash());
    let o = tsd(d.path())
        .args([
            "export",
            folded.to_str().unwrap(),
            out.to_str().unwrap(),
            "--force",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("tsd_dash.safetensors").exists());
}

/// A PEFT file changed after tsd wrote the Dash file beside it (trained on in PEFT, replaced) is
/// refused by name rather than read as the stale Dash adapter.
#[test]
fn changed_peft_file_beside_a_dash_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ck");
    copy_dir(&fixture("tsd-written/dash-checkpoint"), &dir);
    let plain = d.path().join("plain");
    copy_dir(&fixture("tsd-written/plain"), &plain);
    std::fs::copy(
        plain.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let err = load_adapter(&dir).unwrap_err().to_string();
    assert!(
        err.contains("tsd_dash.safetensors") && err.contains("sha256"),
        "{err}"
    );
}

/// Writes `tests/fixtures/tsd-written/dash-checkpoint/` from a fresh run (the model given
/// relative to that directory, so the committed config names no machine path); then run
/// `scripts/peft_dash_checkpoint_check.py` on it (tests/fixtures/tsd-written/README.md).
#[test]
#[ignore]
fn write_dash_checkpoint_fixture() {
    let d = tempfile::tempdir().unwrap();
    let dst = fixture("tsd-written/dash-checkpoint");
    std::fs::create_dir_all(&dst).unwrap();
    let run = d.path().join("run");
    train_dash(d.path(), &dst, "../../tiny-llama", &run);
    let ck = run.join("checkpoints/step-000008");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tsd_dash.safetensors",
    ] {
        std::fs::copy(ck.join(f), dst.join(f)).unwrap();
    }
}
