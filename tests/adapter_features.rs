//! PEFT features beyond lora_A/lora_B, against what PEFT 0.21.2 wrote and computed
//! (`scripts/make_peft_fixtures.py` → `tests/fixtures/peft-features.json`): named adapters in
//! subfolders, modules_to_save, LoRA and trained biases, embedding LoRA, regex target_modules,
//! layers_to_transform, exclude_modules.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, tsd};
use serde_json::Value;
use std::path::Path;
use tsd::adapter::read_adapter;
use tsd::eval::merge::adapted_model;
use tsd::nn::ForwardCtx;
use tsd::weights::open_path;

fn features() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("peft-features.json")).unwrap()).unwrap()
}

/// `(fixture dir, adapter name, its record)` for every adapter PEFT wrote.
fn all_adapters() -> Vec<(String, String, Value)> {
    let f = features();
    let mut out = Vec::new();
    for (dir, fx) in f["fixtures"].as_object().unwrap() {
        for (name, rec) in fx["adapters"].as_object().unwrap() {
            out.push((dir.clone(), name.clone(), rec.clone()));
        }
    }
    assert!(out.len() >= 11, "{} adapters", out.len());
    out
}

fn base_of(dir: &str) -> String {
    features()["fixtures"][dir]["base_dir"]
        .as_str()
        .unwrap()
        .to_string()
}

fn run(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    tsd(home.path())
        .current_dir(fixture(""))
        .args(args)
        .output()
        .unwrap()
}

fn inspect(dir: &str, name: Option<&str>) -> Value {
    let base = base_of(dir);
    let mut args = vec!["inspect", dir, "--base", &base, "--json", "-q"];
    if let Some(n) = name {
        args.extend(["--adapter-name", n]);
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "{dir} {name:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn trainable_counts_equal_peft_get_nb_trainable_parameters() {
    for (dir, name, rec) in all_adapters() {
        let report = inspect(&dir, Some(&name));
        assert_eq!(
            report["params"]["trainable"], rec["trainable"],
            "{dir}/{name}: tsd vs PEFT trainable parameters"
        );
        assert_eq!(report["adapter_name"], name.as_str());
    }
}

#[test]
fn a_lone_named_adapter_is_picked_and_several_must_be_chosen() {
    let r = inspect("peft-named", None);
    assert_eq!(r["adapter_name"], "task");
    assert_eq!(
        r["params"]["trainable"],
        features()["fixtures"]["peft-named"]["adapters"]["task"]["trainable"]
    );
    let out = run(&["inspect", "peft-multi", "--base", "tiny-llama", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default, other") && err.contains("--adapter-name"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = run(&[
        "inspect",
        "peft-multi",
        "--base",
        "tiny-llama",
        "--adapter-name",
        "nope",
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nope`") && err.contains("default, other"),
        "{err}"
    );
    // The default adapter and the named one really are different adapters.
    let d = inspect("peft-multi", Some("default"));
    let o = inspect("peft-multi", Some("other"));
    assert_ne!(d["modules"][0]["module"], o["modules"][0]["module"]);
}

/// inspect --json names every tensor beyond the analysed modules, with its kind.
#[test]
fn modules_to_save_biases_and_embeddings_are_named() {
    let kinds = |dir: &str| -> Vec<(String, String, bool)> {
        inspect(dir, None)["other_tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["kind"].as_str().unwrap().to_string(),
                    t["tensor"].as_str().unwrap().to_string(),
                    t["trainable"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let m = kinds("peft-modules-to-save");
    for t in [
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.1.input_layernorm.weight",
    ] {
        assert!(
            m.contains(&("modules_to_save".into(), t.into(), true)),
            "{t}: {m:?}"
        );
    }
    let b = kinds("peft-lora-bias");
    assert_eq!(b.len(), 6);
    assert!(b.contains(&(
        "lora_bias".into(),
        "model.layers.0.mlp.down_proj.lora_B.bias".into(),
        true
    )));
    let all = kinds("peft-bias-all");
    assert!(all.contains(&(
        "trained_bias".into(),
        "model.layers.1.self_attn.o_proj.bias".into(),
        true
    )));
    assert_eq!(kinds("peft-bias-lora-only").len(), 4);
    let e = kinds("peft-embedding");
    assert!(e.contains(&("embedding_lora".into(), "model.embed_tokens".into(), true)));
    // PEFT saves the embedding layer beside an embedding LoRA; it is frozen.
    assert!(e.contains(&("saved".into(), "model.embed_tokens.weight".into(), false)));
}

fn logits_of(model: &tsd::model::Llama, ids: &Value) -> Vec<f64> {
    let ids: Vec<Vec<u32>> = serde_json::from_value(ids.clone()).unwrap();
    let t = Tensor::new(ids, &Device::Cpu).unwrap();
    let l = model
        .forward(&t, &ForwardCtx::eval())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    l.into_iter().flatten().flatten().map(f64::from).collect()
}

fn worst_diff(a: &[f64], rec: &Value) -> f64 {
    let want: Vec<f64> = rec["logits"]
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

/// What `tsd eval --adapter` evaluates is PEFT's model with the adapter applied, for every adapter
/// on the tiny Llama whose parts tsd's model has a place for.
const MERGEABLE: &[(&str, &str)] = &[
    ("peft-named", "task"),
    ("peft-multi", "default"),
    ("peft-multi", "other"),
    ("peft-modules-to-save", "default"),
    ("peft-embedding", "default"),
    ("peft-regex", "default"),
    ("peft-layers", "default"),
    ("peft-exclude", "default"),
];

fn merged_logits(adapter_dir: &Path, name: Option<&str>, base: &str, ids: &Value) -> Vec<f64> {
    let adapter = read_adapter(adapter_dir, name).unwrap();
    let src = open_path(&fixture(base)).unwrap();
    let model = adapted_model(src.as_ref(), &adapter, &Device::Cpu, DType::F32).unwrap();
    logits_of(&model, ids)
}

#[test]
fn merged_logits_equal_peft() {
    let f = features();
    let src = open_path(&fixture("tiny-llama")).unwrap();
    let bare = tsd::model::Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
    for (dir, name) in MERGEABLE {
        let fx = &f["fixtures"][dir];
        let rec = &fx["adapters"][name];
        let got = merged_logits(&fixture(dir), Some(name), "tiny-llama", &fx["input_ids"]);
        let worst = worst_diff(&got, rec);
        assert!(worst < 1e-4, "{dir}/{name}: max |Δlogit| vs PEFT = {worst}");
        // The adapter matters: the bare base is far from PEFT's adapted logits.
        let off = worst_diff(&logits_of(&bare, &fx["input_ids"]), rec);
        assert!(
            off > 1e-2,
            "{dir}/{name}: the adapter barely changes the logits ({off})"
        );
    }
}

/// `tsd export` keeps modules_to_save, biases and embedding LoRA (config and tensors): the
/// export has PEFT's keys, its config the same fields, and it means the same model.
#[test]
fn export_keeps_every_feature() {
    let f = features();
    let out_root = tempfile::tempdir().unwrap();
    for (dir, name, rec) in all_adapters() {
        let out = out_root.path().join(format!("{dir}-{name}"));
        let o = run(&[
            "export",
            &dir,
            out.to_str().unwrap(),
            "--adapter-name",
            &name,
        ]);
        assert!(
            o.status.success(),
            "{dir}/{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        for field in [
            "modules_to_save",
            "bias",
            "lora_bias",
            "layers_to_transform",
            "exclude_modules",
        ] {
            assert_eq!(cfg[field], rec["config"][field], "{dir}/{name}: {field}");
        }
        let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut got: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        got.sort();
        let want: Vec<(String, Vec<usize>)> = rec["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::from_value(v.clone()).unwrap()))
            .collect();
        assert_eq!(
            got, want,
            "{dir}/{name}: exported keys and shapes vs PEFT's file"
        );
        if MERGEABLE.contains(&(dir.as_str(), name.as_str())) {
            let fx = &f["fixtures"][&dir];
            let logits = merged_logits(&out, None, "tiny-llama", &fx["input_ids"]);
            let worst = worst_diff(&logits, &rec);
            assert!(
                worst < 1e-4,
                "{dir}/{name} exported: max |Δlogit| = {worst}"
            );
        }
    }
}

fn eval_data() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("boolq")).unwrap();
    let ex = serde_json::json!([{"instruction": "Is 2 even?", "input": "", "output": "", "answer": "true"}]);
    std::fs::write(d.path().join("boolq/test.json"), ex.to_string()).unwrap();
    d
}

/// PEFT itself refuses to merge `lora_bias` into a linear without a bias; tsd's eval refuses too,
/// naming the tensors, instead of merging without them.
#[test]
fn eval_refuses_a_lora_bias_it_cannot_apply_and_needs_a_name_among_several() {
    let data = eval_data();
    let eval = |adapter: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            "tiny-llama",
            "--tasks",
            "boolq",
            "--protocol",
            "loglik",
            "--data",
            data.path().to_str().unwrap(),
            "--adapter",
            adapter,
            "--json",
            "-q",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = eval("peft-lora-bias", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"),
        "{err}"
    );
    let out = eval("peft-modules-to-save", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = eval("peft-multi", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("default, other"));
    let out = eval("peft-multi", &["--adapter-name", "other"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression: LoRA tensors for a module the config does not select (PEFT would not load them)
/// were analysed silently; they are refused, naming the module.
#[test]
fn lora_tensors_outside_the_configs_targets_are_refused() {
    let d = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture("peft-layers"), d.path());
    let cfg_path = d.path().join("adapter_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["layers_to_transform"] = serde_json::json!([0]);
    cfg["base_model_name_or_path"] = Value::Null;
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let base = fixture("tiny-llama");
    let out = run(&[
        "inspect",
        d.path().to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.layers.1.self_attn"), "{err}");
}

/// Regression: `tsd eval --adapter` printed none of the adapter's warnings and merged without the
/// tensors it did not recognise; it prints them, and refuses tensors it cannot apply, by name.
#[test]
fn eval_prints_adapter_warnings_and_refuses_unknown_tensors() {
    let data = eval_data();
    let base = fixture("tiny-llama");
    let eval = |adapter: &Path| {
        run(&[
            "eval",
            "--model",
            base.to_str().unwrap(),
            "--tasks",
            "boolq",
            "--protocol",
            "loglik",
            "--data",
            data.path().to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--json",
            "-q",
        ])
    };
    let d = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture("peft-named/task"), d.path());
    let cfg_path = d.path().join("adapter_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["init_lora_weights"] = "pissa".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = eval(d.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: init_lora_weights = `pissa`"),
        "{err}"
    );

    // One extra tensor tsd does not know: named in the warning and in eval's refusal.
    let weights = d.path().join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let extra = [1f32, 2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let odd = "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight";
    views.push((
        odd.into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &extra).unwrap(),
    ));
    let out_bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(&weights, out_bytes).unwrap();
    let out = eval(d.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: tensor(s) with unrecognised names were ignored: {odd}"
        )),
        "{err}"
    );
    assert!(err.trim().lines().last().unwrap().contains(odd), "{err}");
}

/// Trained biases (`bias="all"`: whole `X.bias` tensors replacing the base's) and PEFT's
/// `lora_only` biases on a base whose linears carry biases (tiny-llama-bias: attention_bias and
/// mlp_bias): the merged model's logits equal PEFT's, and the adapter is not a no-op.
#[test]
fn biases_on_a_biased_base_merge_as_peft_computes() {
    let f = features();
    let src = open_path(&fixture("tiny-llama-bias")).unwrap();
    let bare = tsd::model::Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
    for dir in ["peft-bias-all", "peft-bias-lora-only"] {
        let fx = &f["fixtures"][dir];
        assert_eq!(fx["base_dir"], "tiny-llama-bias");
        let rec = &fx["adapters"]["default"];
        let got = merged_logits(&fixture(dir), None, "tiny-llama-bias", &fx["input_ids"]);
        let worst = worst_diff(&got, rec);
        assert!(worst < 1e-4, "{dir}: max |Δlogit| vs PEFT = {worst}");
        let off = worst_diff(&logits_of(&bare, &fx["input_ids"]), rec);
        assert!(
            off > 1e-3,
            "{dir}: the adapter barely changes the logits ({off})"
        );
    }
}
