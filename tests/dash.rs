//! LoRA-Dash adapters: tsd's and the official code's tensor names, index recovery, and folding into
//! a plain rank-(r+s) LoRA that reproduces ΔW exactly.

mod common;

use common::{fixture, tsd};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;
use tsd::adapter::{fold_dash, load_adapter, write_adapter, Adapter, DashNaming, DashState};
use tsd::linalg::{svd, Matrix, Precision};
use tsd::weights::open_path;

const PICKS: [usize; 4] = [30, 2, 17, 25];

/// peft-lora plus Dash directions planted on W's singular directions PICKS with known Δσ.
fn dash_adapter() -> Adapter {
    let mut ad = load_adapter(&fixture("peft-lora")).unwrap();
    let base = open_path(&fixture("tiny-llama")).unwrap();
    for m in &mut ad.modules {
        let w = base.matrix(&format!("{}.weight", m.module)).unwrap();
        let d = svd(&w, Precision::F64).unwrap();
        let s = PICKS.len();
        let u = Matrix::new(
            w.rows,
            s,
            (0..w.rows * s)
                .map(|x| d.u[(x / s, PICKS[x % s])] as f32)
                .collect(),
        )
        .unwrap();
        let vt = Matrix::new(
            s,
            w.cols,
            (0..s * w.cols)
                .map(|x| d.v[(x % w.cols, PICKS[x / w.cols])] as f32)
                .collect(),
        )
        .unwrap();
        m.dash = Some(DashState {
            u,
            vt,
            delta_sigma: vec![0.5, -0.25, 0.125, 1.0],
            indices: Some(PICKS.to_vec()),
            sigma_at_switch: Some(PICKS.iter().map(|&i| d.s[i] as f32).collect()),
            delta_hat_at_switch: Some(vec![1.0; s]),
            naming: DashNaming::Tsd,
        });
    }
    ad
}

fn dense(ad: &Adapter, module: &str) -> faer::Mat<f64> {
    ad.modules
        .iter()
        .find(|m| m.module == module)
        .unwrap()
        .update()
        .to_dense()
}

fn run_json(home: &Path, args: &[&str]) -> serde_json::Value {
    let out = tsd(home).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tsd_named_dash_round_trips_and_reports_its_directions() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dash_adapter();
    let path = dir.path().join("dash");
    write_adapter(&path, &ad).unwrap();
    let back = load_adapter(&path).unwrap();
    assert_eq!(back.modules.len(), ad.modules.len());
    for (a, b) in ad.modules.iter().zip(&back.modules) {
        assert_eq!(a.dash, b.dash);
        assert_eq!(a.a, b.a);
        assert_eq!((a.r, a.alpha, a.scaling), (b.r, b.alpha, b.scaling));
    }
    // Trainable: LoRA + s per module; stored adds Ū, V̄.
    let s = PICKS.len() as u64;
    assert_eq!(
        back.trainable_params(),
        load_adapter(&fixture("peft-lora"))
            .unwrap()
            .trainable_params()
            + 10 * s
    );
    let base = fixture("tiny-llama");
    let r = run_json(
        dir.path(),
        &[
            "inspect",
            path.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--json",
            "-q",
            "--svd-precision",
            "f64",
        ],
    );
    for m in r["modules"].as_array().unwrap() {
        let d = &m["dash"];
        assert_eq!(d["indices"], serde_json::json!(PICKS));
        assert_eq!(d["indices_recovered"], false);
        // total rate on each pick = |lora coordinate + Δσ| / σ; the Dash term moved it.
        let lora: Vec<f64> = d["lora_rate"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let total: Vec<f64> = d["total_rate"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(lora.iter().zip(&total).any(|(l, t)| (l - t).abs() > 1e-3));
    }
}

#[test]
fn official_checkpoint_names_are_read_and_indices_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dash_adapter();
    let path = dir.path().join("official");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::copy(
        fixture("peft-lora/adapter_config.json"),
        path.join("adapter_config.json"),
    )
    .unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for m in &ad.modules {
        let p = format!("base_model.model.{}", m.module);
        let d = m.dash.as_ref().unwrap();
        tensors.push((
            format!("{p}.lora_A.weight"),
            vec![m.a.rows, m.a.cols],
            b(&m.a.data),
        ));
        tensors.push((
            format!("{p}.lora_B.weight"),
            vec![m.b.rows, m.b.cols],
            b(&m.b.data),
        ));
        tensors.push((
            format!("{p}.lora_w_u"),
            vec![d.u.rows, d.u.cols],
            b(&d.u.data),
        ));
        tensors.push((
            format!("{p}.lora_w_vt"),
            vec![d.vt.rows, d.vt.cols],
            b(&d.vt.data),
        ));
        tensors.push((
            format!("{p}.lora_index.weight"),
            vec![1, d.s()],
            b(&d.delta_sigma),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, by)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), by).unwrap(),
            )
        })
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    std::fs::write(
        path.join("adapter_model.safetensors"),
        safetensors::serialize(views, Some(meta)).unwrap(),
    )
    .unwrap();

    let loaded = load_adapter(&path).unwrap();
    assert!(loaded
        .modules
        .iter()
        .all(|m| m.dash.as_ref().unwrap().naming == DashNaming::Official));
    let m0 = &ad.modules[0].module;
    let diff = (&dense(&loaded, m0) - &dense(&ad, m0)).norm_max();
    assert!(
        diff < 1e-6,
        "official and tsd naming must mean the same ΔW ({diff})"
    );
    let base = fixture("tiny-llama");
    let r = run_json(
        dir.path(),
        &[
            "inspect",
            path.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--json",
            "-q",
        ],
    );
    for m in r["modules"].as_array().unwrap() {
        assert_eq!(
            m["dash"]["indices"],
            serde_json::json!(PICKS),
            "{}",
            m["module"]
        );
        assert_eq!(m["dash"]["indices_recovered"], true);
    }
}

#[test]
fn fold_dash_reproduces_delta_w_exactly_as_plain_peft_lora() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dash_adapter();
    let src = dir.path().join("dash");
    write_adapter(&src, &ad).unwrap();
    let out = dir.path().join("folded");
    let st = tsd(dir.path())
        .args([
            "export",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--fold-dash",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let folded = load_adapter(&out).unwrap();
    assert!(!folded.has_dash());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["use_rslora"], false);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    for m in &ad.modules {
        let want = dense(&ad, &m.module);
        let got = dense(&folded, &m.module);
        let err = (&got - &want).norm_max() / want.norm_max();
        assert!(err < 1e-6, "{}: folded ΔW differs by {err}", m.module);
        let f = folded
            .modules
            .iter()
            .find(|x| x.module == m.module)
            .unwrap();
        assert_eq!((f.r, f.scaling), (m.r + PICKS.len(), 1.0));
    }
    // Existing non-empty output is not overwritten without --force.
    let again = tsd(dir.path())
        .args(["export", src.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn folding_a_rank_pattern_adapter_keeps_per_module_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let ad = load_adapter(&fixture("peft-rslora")).unwrap();
    let out = dir.path().join("f");
    write_adapter(&out, &fold_dash(&ad)).unwrap();
    let back = load_adapter(&out).unwrap();
    for (a, b) in ad.modules.iter().zip(&back.modules) {
        assert_eq!(a.r, b.r, "{}", a.module);
        assert_eq!(b.scaling, 1.0);
        let err = (&a.update().to_dense() - &b.update().to_dense()).norm_max();
        assert!(err < 1e-5, "{}: {err}", a.module);
    }
}

/// Writes the adapters that `scripts/peft_load_check.py` loaded in real PEFT: a folded Dash adapter,
/// a folded rsLoRA one and a plain re-write.
fn write_interop_adapters(root: &Path) {
    let dash = dash_adapter();
    write_adapter(&root.join("dash-folded"), &fold_dash(&dash)).unwrap();
    let rs = load_adapter(&fixture("peft-rslora")).unwrap();
    write_adapter(&root.join("rslora-folded"), &fold_dash(&rs)).unwrap();
    write_adapter(
        &root.join("plain"),
        &load_adapter(&fixture("peft-lora")).unwrap(),
    )
    .unwrap();
}

/// Regenerates the committed fixtures (`cargo test --release --test dash -- --ignored`, then run
/// the script; see `tests/fixtures/tsd-written/README.md`).
#[test]
#[ignore]
fn write_tsd_written_fixtures() {
    write_interop_adapters(&fixture("tsd-written"));
}

/// What today's `write_adapter` writes is what PEFT checked: the same config and the same tensors
/// (names, dtypes, shapes, values) as the committed fixtures that `peft_load_check.py` loaded.
#[test]
fn todays_writer_writes_the_adapters_peft_checked() {
    let d = tempfile::tempdir().unwrap();
    write_interop_adapters(d.path());
    for name in ["plain", "dash-folded", "rslora-folded"] {
        let (ours, theirs) = (d.path().join(name), fixture("tsd-written").join(name));
        let json = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
                .unwrap()
        };
        assert_eq!(json(&ours), json(&theirs), "{name}: adapter_config.json");
        let (a, b) = (
            std::fs::read(ours.join("adapter_model.safetensors")).unwrap(),
            std::fs::read(theirs.join("adapter_model.safetensors")).unwrap(),
        );
        let (a, b) = (
            safetensors::SafeTensors::deserialize(&a).unwrap(),
            safetensors::SafeTensors::deserialize(&b).unwrap(),
        );
        let mut names: Vec<String> = a.names().into_iter().map(String::from).collect();
        names.sort();
        let mut expected: Vec<String> = b.names().into_iter().map(String::from).collect();
        expected.sort();
        assert_eq!(names, expected, "{name}: tensor names");
        for t in &names {
            let (x, y) = (a.tensor(t).unwrap(), b.tensor(t).unwrap());
            assert_eq!(x.dtype(), y.dtype(), "{name} {t}");
            assert_eq!(x.shape(), y.shape(), "{name} {t}");
            assert!(
                x.data() == y.data(),
                "{name} {t}: values differ from the PEFT-checked file"
            );
        }
    }
}

/// Adapters written by tsd, loaded by real PEFT (`peft-delta.safetensors` holds PEFT's merged ΔW per
/// module): tsd's own ΔW for the same files must agree.
#[test]
fn tsd_written_adapters_mean_the_same_delta_w_in_peft() {
    for (name, original) in [
        ("plain", None),
        ("dash-folded", Some(dash_adapter())),
        ("rslora-folded", None),
    ] {
        let dir = fixture("tsd-written").join(name);
        let ad = load_adapter(&dir).unwrap();
        let bytes = std::fs::read(dir.join("peft-delta.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), ad.modules.len(), "{name}");
        for m in &ad.modules {
            let view = st.tensor(&m.module).unwrap();
            let peft = tsd::weights::tensor::decode_matrix(&dir, &m.module, &view)
                .unwrap()
                .to_f64();
            let ours = m.update().to_dense();
            let err = (&peft - &ours).norm_max() / ours.norm_max();
            assert!(
                err < 1e-5,
                "{name} {}: PEFT's ΔW differs from tsd's by {err}",
                m.module
            );
            if let Some(orig) = &original {
                let want = dense(orig, &m.module);
                assert!(
                    (&peft - &want).norm_max() / want.norm_max() < 1e-5,
                    "{name} {}: folded ≠ Dash ΔW",
                    m.module
                );
            }
        }
    }
}
