//! `tsd train` end to end on the tiny LLaMA fixture (char-level tokenizer): loss falls, the Dash
//! switch is recorded and continuous, checkpoints are PEFT adapters that `tsd inspect` reads, and a
//! killed run resumes to bit-identical weights.

mod common;

use common::{fixture, tsd, write_train_data};
use std::path::Path;

fn train(home: &Path, args: &[&str]) -> std::process::Output {
    train_on(home, args, false)
}

/// `tsd train` on the fused CPU kernels, or (`composed`) on the composed ops CUDA runs.
fn train_on(home: &Path, args: &[&str], composed: bool) -> std::process::Output {
    tsd(home)
        .env("TSD_COMPOSED", if composed { "1" } else { "0" })
        .arg("train")
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

fn losses(rec: &serde_json::Value) -> Vec<f64> {
    rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].as_f64().unwrap())
        .collect()
}

fn common_args<'a>(data: &'a str, out: &'a str, method: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        "",
        "--data",
        data,
        "--out",
        out,
        "--method",
        method,
        "--rank",
        "4",
        "--max-steps",
        steps,
        "--dash-t",
        "4",
        "--dash-s",
        "3",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--save-every",
        "3",
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
    ]
}

fn record(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap()
}

#[test]
fn lora_dash_run_learns_switches_and_checkpoints_are_inspectable() {
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    let run = d.path().join("run");
    let model = fixture("tiny-llama");
    let mut args = common_args(
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "lora-dash",
        "12",
    );
    args[1] = model.to_str().unwrap();
    let out = train(d.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = record(&run);
    assert_eq!(rec["finished"], true);
    let steps = rec["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 12);
    // The switch is announced on the terminal (regression: it was silent).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("LoRA-Dash: switched after step 4").count(),
        1,
        "{stderr}"
    );
    let first = steps[0]["loss"].as_f64().unwrap();
    let last = steps[11]["loss"].as_f64().unwrap();
    assert!(last < first - 0.25, "loss should fall: {first} → {last}");
    assert_eq!(rec["dash_switch"]["step"], 4);
    assert_eq!(rec["checkpoints"], serde_json::json!([3, 6, 9, 12]));
    assert!(rec["peak_rss_bytes"].as_u64().unwrap() > 0);
    // Lora-Dash trainable = LoRA + s per adapted module.
    let ck = run.join("checkpoints/step-000012");
    let ad = tsd::adapter::load_adapter(&ck).unwrap();
    assert!(ad
        .modules
        .iter()
        .all(|m| m.dash.as_ref().is_some_and(|d| d.s() == 3)));
    assert!(
        ad.modules.iter().any(|m| m
            .dash
            .as_ref()
            .unwrap()
            .delta_sigma
            .iter()
            .any(|&x| x != 0.0)),
        "Δσ must train"
    );
    // The record counts what trains after the switch, Δσ included (regression: it kept the count
    // from before the switch).
    assert_eq!(
        rec["trainable_params"].as_u64().unwrap(),
        ad.trainable_params(),
        "record's trainable_params vs the saved adapter's"
    );
    // The picks saved with the adapter are the ones recorded at the switch.
    let picks = &rec["dash_switch"]["modules"][0];
    let m0 = ad
        .modules
        .iter()
        .find(|m| m.module == picks["module"].as_str().unwrap())
        .unwrap();
    let rec_idx: Vec<usize> = picks["tsd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        m0.dash.as_ref().unwrap().indices.as_ref().unwrap(),
        &rec_idx
    );
    // tsd inspect reads the checkpoint (base resolved from the adapter config's model path).
    let out = tsd(d.path())
        .args(["inspect", ck.to_str().unwrap(), "--json", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modules"][0]["dash"]["indices_recovered"], false);
    // tsd track: one point per checkpoint; the final TSD sets overlap themselves fully.
    let out = tsd(d.path())
        .args([
            "track",
            run.to_str().unwrap(),
            "--json",
            "-q",
            "--top-s",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pts = t["points"].as_array().unwrap();
    assert_eq!(
        pts.iter()
            .map(|p| p["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 6, 9, 12]
    );
    assert_eq!(pts[3]["stability_final"], 1.0);
    assert!(
        pts[0]["mean_dash_delta_sigma"].is_null()
            && pts[3]["mean_dash_delta_sigma"].as_f64().unwrap() > 0.0
    );
    // A new run refuses to overwrite an existing one.
    let again = train(d.path(), &args);
    assert_eq!(again.status.code(), Some(2));
}

/// On each op path (fused CPU kernels; the composed ops CUDA runs) a killed run resumes to
/// bit-identical weights; the two paths agree with each other to rounding.
#[test]
fn killed_run_resumes_to_identical_weights() {
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    let model = fixture("tiny-llama");
    let mut finals = Vec::new();
    for composed in [false, true] {
        let a = d.path().join(format!("a-{composed}"));
        let b = d.path().join(format!("b-{composed}"));
        for (run, abort) in [(&a, None), (&b, Some("5"))] {
            let mut args = common_args(
                data.to_str().unwrap(),
                run.to_str().unwrap(),
                "lora-dash",
                "9",
            );
            args[1] = model.to_str().unwrap();
            if let Some(s) = abort {
                args.extend(["--abort-after-step", s]);
            }
            let out = train_on(d.path(), &args, composed);
            assert_eq!(
                out.status.success(),
                abort.is_none(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // b died after step 5 (last checkpoint: step 3, before the switch at 4)
        assert_eq!(tsd::train::trainer::latest_checkpoint(&b).unwrap(), Some(3));
        let out = train_on(d.path(), &["--resume", b.to_str().unwrap()], composed);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wa = tsd::adapter::load_adapter(&a.join("checkpoints/step-000009")).unwrap();
        let wb = tsd::adapter::load_adapter(&b.join("checkpoints/step-000009")).unwrap();
        assert_eq!(wa.modules.len(), wb.modules.len());
        for (x, y) in wa.modules.iter().zip(&wb.modules) {
            // bit-identical on CPU: same data order, dropout masks, optimizer state and Dash picks
            assert!(
                x == y,
                "{} (composed {composed}): resumed run must reach the same final weights",
                x.module
            );
        }
        let (ra, rb) = (record(&a), record(&b));
        assert_eq!(losses(&ra), losses(&rb), "composed {composed}");
        finals.push((ra, wa));
    }
    let ((rf, wf), (rc, wc)) = (&finals[0], &finals[1]);
    for (x, y) in losses(rf).iter().zip(losses(rc)) {
        assert!(
            (x - y).abs() < 1e-4 * x.abs(),
            "fused loss {x} vs composed {y}"
        );
    }
    assert_ne!(losses(rf), losses(rc), "the paths must differ in rounding");
    let picks = |r: &serde_json::Value| -> Vec<Vec<u64>> {
        r["dash_switch"]["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["tsd"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["index"].as_u64().unwrap())
                    .collect()
            })
            .collect()
    };
    assert_eq!(picks(rf), picks(rc), "same Dash picks on both paths");
    for (x, y) in wf.modules.iter().zip(&wc.modules) {
        let (dx, dy) = (x.dash.as_ref().unwrap(), y.dash.as_ref().unwrap());
        for (p, q) in dx.delta_sigma.iter().zip(&dy.delta_sigma) {
            assert!((p - q).abs() < 1e-3 * p.abs().max(1e-3), "Δσ {p} vs {q}");
        }
    }
}

/// A bf16 base on the CPU (adapters and optimizer state f32): the loss follows the f32 run on
/// the same bf16 weights within bf16 rounding, and Δσ trains.
#[test]
fn bf16_base_trains_like_the_f32_run() {
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    // the bf16 fixture holds weights and config; the tokenizer is tiny-llama's
    let model = d.path().join("tiny-llama-bf16");
    common::copy_dir(&fixture("tiny-llama-bf16"), &model);
    std::fs::copy(
        fixture("tiny-llama").join("tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    let mut runs = Vec::new();
    for dtype in ["f32", "bf16"] {
        let run = d.path().join(dtype);
        let mut args = common_args(
            data.to_str().unwrap(),
            run.to_str().unwrap(),
            "lora-dash",
            "9",
        );
        args[1] = model.to_str().unwrap();
        args.extend(["--dtype", dtype]);
        let out = train(d.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ad = tsd::adapter::load_adapter(&run.join("checkpoints/step-000009")).unwrap();
        assert!(ad.modules.iter().any(|m| m
            .dash
            .as_ref()
            .unwrap()
            .delta_sigma
            .iter()
            .any(|&x| x != 0.0)));
        runs.push(losses(&record(&run)));
    }
    assert_ne!(runs[0], runs[1], "the bf16 run must compute in bf16");
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert!((a - b).abs() < 0.02 * a.abs(), "f32 loss {a} vs bf16 {b}");
    }
}

/// `--device`, `--dtype` and `TSD_COMPOSED` take known values only (exit 2, value named).
#[test]
fn unknown_device_dtype_and_path_values_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    let run = d.path().join("r");
    let model = fixture("tiny-llama");
    for (flag, value) in [
        ("--dtype", "fp32"),
        ("--device", "gpu"),
        ("--device", "cuda:x"),
    ] {
        let mut args = common_args(data.to_str().unwrap(), run.to_str().unwrap(), "lora", "2");
        args[1] = model.to_str().unwrap();
        args.extend([flag, value]);
        let out = train(d.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(value));
        let out = tsd(d.path())
            .args(["eval", "--tasks", "boolq", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "eval {flag} {value}");
    }
    let mut args = common_args(data.to_str().unwrap(), run.to_str().unwrap(), "lora", "2");
    args[1] = model.to_str().unwrap();
    let out = tsd(d.path())
        .env("TSD_COMPOSED", "yes")
        .arg("train")
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TSD_COMPOSED"));
    assert!(!run.exists(), "a refused run leaves nothing behind");
}

#[test]
fn full_fine_tuning_gives_a_reference_for_capture() {
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    let model = fixture("tiny-llama");
    let run = d.path().join("full");
    let mut args = common_args(data.to_str().unwrap(), run.to_str().unwrap(), "full", "3");
    args[1] = model.to_str().unwrap();
    let out = train(d.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ck = run.join("checkpoints/step-000003");
    assert!(ck.join("model.safetensors").exists());
    let out = tsd(d.path())
        .args([
            "inspect",
            fixture("peft-lora").to_str().unwrap(),
            "--base",
            model.to_str().unwrap(),
            "--reference",
            ck.to_str().unwrap(),
            "--json",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The reference is ΔW* = W* − W of the same module: recompute its change rates by hand
    // (δ_i = |u_iᵀ ΔW* v_i| / σ_i over W's SVD) and check the reported reference TSDs and capture.
    let read = |path: &Path| std::fs::read(path).unwrap();
    let (w0_bytes, w1_bytes) = (
        read(&model.join("model.safetensors")),
        read(&ck.join("model.safetensors")),
    );
    let w0_st = safetensors::SafeTensors::deserialize(&w0_bytes).unwrap();
    let w1_st = safetensors::SafeTensors::deserialize(&w1_bytes).unwrap();
    let modules = v["modules"].as_array().unwrap();
    assert!(!modules.is_empty());
    for m in modules {
        let name = m["module"].as_str().unwrap();
        let key = format!("{name}.weight");
        let dec = |st: &safetensors::SafeTensors, p: &Path| {
            tsd::weights::tensor::decode_matrix(p, &key, &st.tensor(&key).unwrap())
                .unwrap()
                .to_f64()
        };
        let w0 = dec(&w0_st, &model);
        let w1 = dec(&w1_st, &ck);
        let dw = &w1 - &w0;
        assert!(
            dw.norm_max() > 0.0,
            "{name}: the full fine-tune changed nothing"
        );
        let svd = tsd::linalg::svd(
            &tsd::weights::tensor::decode_matrix(&model, &key, &w0_st.tensor(&key).unwrap())
                .unwrap(),
            tsd::linalg::Precision::F32,
        )
        .unwrap();
        let k = svd.s.len();
        let delta: Vec<f64> = (0..k)
            .map(|i| {
                let mut p = 0.0;
                for r in 0..dw.nrows() {
                    for c in 0..dw.ncols() {
                        p += svd.u[(r, i)] * dw[(r, c)] * svd.v[(c, i)];
                    }
                }
                p.abs() / (svd.s[i] + 1e-12 * svd.s[0])
            })
            .collect();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| delta[b].total_cmp(&delta[a]));
        let reported: Vec<usize> = m["capture"]["reference_top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            reported,
            order[..reported.len()].to_vec(),
            "{name}: reference TSDs"
        );
        // accuracy@(8,16) = |top-8 predicted ∩ top-16 reference| / 8
        let predicted: Vec<usize> = m["tsd"]
            .as_array()
            .unwrap()
            .iter()
            .take(8)
            .map(|t| t["index"].as_u64().unwrap() as usize)
            .collect();
        let hits = predicted.iter().filter(|i| order[..16].contains(i)).count();
        let acc = m["capture"]["accuracy"]["value"].as_f64().unwrap();
        assert!(
            (acc - hits as f64 / 8.0).abs() < 1e-12,
            "{name}: accuracy {acc} vs {hits}/8"
        );
    }
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, "{\"not\": \"a list\"}").unwrap();
    let run = d.path().join("r");
    let mut args = common_args(bad.to_str().unwrap(), run.to_str().unwrap(), "lora", "2");
    args[1] = model.to_str().unwrap();
    let out = train(d.path(), &args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = train(
        d.path(),
        &["--resume", d.path().join("nothing").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    // Regression: a cutoff beyond the model's positions used to fail deep in rope with a raw
    // tensor error; it is now refused up front.
    let data = write_train_data(d.path(), 40);
    let mut args = common_args(data.to_str().unwrap(), run.to_str().unwrap(), "lora", "2");
    args[1] = model.to_str().unwrap();
    let at = args.iter().position(|a| *a == "--cutoff-len").unwrap();
    args[at + 1] = "256";
    let out = train(d.path(), &args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds the model's 128 positions"));
    let cfg = d.path().join("cfg.json");
    std::fs::write(&cfg, "{\"rnak\": 4}").unwrap();
    let out = tsd(d.path())
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rnak"));
}

#[test]
fn cached_lower_layers_give_the_same_training_as_recomputing_them() {
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    let mut losses = Vec::new();
    for cache in [false, true] {
        let run = d.path().join(format!("run-{cache}"));
        let cfg = serde_json::json!({
            "model": fixture("tiny-llama"), "data": [data], "method": "lora-dash", "rank": 4, "top_layers": 1,
            "cache_lower_layers": cache, "max_steps": 6, "dash_t": 3, "dash_s": 2, "batch_size": 4, "micro_batch_size": 2,
            "val_size": 4, "cutoff_len": 96, "lr": 0.03, "warmup_steps": 1, "save_every": 6, "seed": 3
        });
        let cfg_path = d.path().join(format!("cfg-{cache}.json"));
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let out = train(
            d.path(),
            &[
                "--config",
                cfg_path.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rec = record(&run);
        assert_eq!(rec["lower_cache_seconds"].as_f64().unwrap() > 0.0, cache);
        losses.push(self::losses(&rec));
        // only the top layer is adapted
        let ad = tsd::adapter::load_adapter(&run.join("checkpoints/step-000006")).unwrap();
        assert!(ad
            .modules
            .iter()
            .all(|m| m.module.starts_with("model.layers.1.")));
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!((a - b).abs() < 1e-5 * a.abs(), "{a} vs {b}");
    }
}

/// The record names the base by the sha256 of its weight file (computed here independently); the
/// hash is remembered by (path, size, mtime) and recomputed once the file changes; and a top-layers
/// run's checkpoints carry `layers_to_transform`, so PEFT adapts only the layers trained.
#[test]
fn record_names_the_base_by_sha256_and_top_layers_reach_the_peft_config() {
    use sha2::{Digest, Sha256};
    let d = tempfile::tempdir().unwrap();
    let data = write_train_data(d.path(), 40);
    let model = d.path().join("tiny-llama");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let want: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cache = d.path().join("sha256-cache.json");
    let planted = "0".repeat(64);
    let run_once = |name: &str| {
        let run = d.path().join(name);
        let mut args = common_args(data.to_str().unwrap(), run.to_str().unwrap(), "lora", "3");
        args[1] = model.to_str().unwrap();
        args.extend(["--targets", "q_proj,v_proj", "--top-layers", "1"]);
        let out = train(d.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (run.clone(), record(&run)["base_files"].clone())
    };
    let files = |sha: &str| serde_json::json!([{"file": "model.safetensors", "bytes": bytes.len(), "sha256": sha}]);

    let (run, got) = run_once("run-a");
    assert_eq!(got, files(&want));
    // A planted cache entry for the same size and mtime is what the next run reports: the file is
    // not hashed again.
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(text.contains(&want));
    std::fs::write(&cache, text.replace(&want, &planted)).unwrap();
    assert_eq!(run_once("run-b").1, files(&planted));
    // A new mtime invalidates the entry.
    let f = std::fs::File::options().write(true).open(&weights).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert_eq!(run_once("run-c").1, files(&want));

    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/step-000003/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([1]));
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let ad = tsd::adapter::load_adapter(&run.join("checkpoints/step-000003")).unwrap();
    let modules: Vec<&str> = ad.modules.iter().map(|m| m.module.as_str()).collect();
    assert_eq!(
        modules,
        [
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
}
