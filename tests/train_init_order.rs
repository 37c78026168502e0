//! `tsd train --init-adapter DIR` (A and B from a PEFT adapter) and `--data-order FILE` (fixed
//! micro-batches), the two flags the step-by-step comparison with PEFT needs (README, Training:
//! tsd against PEFT; `scripts/compare_trainer_trajectory.py`).

mod common;

use common::{copy_dir, fixture, tsd, write_task};
use std::path::Path;

/// The tiny LLaMA with 512 positions (RoPE: the same weights), so that the Alpaca template and
/// the instruction both fit and examples differ.
fn base(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("tiny-llama-512");
    if !dir.exists() {
        copy_dir(&fixture("tiny-llama"), &dir);
        let p = dir.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c["max_position_embeddings"] = 512.into();
        std::fs::write(&p, c.to_string()).unwrap();
    }
    dir
}

fn train(home: &Path, out: &Path, data: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    let mut c = tsd(home);
    c.args(["train", "--model"])
        .arg(base(home.parent().unwrap()))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--method",
            "lora",
            "--rank",
            "4",
            "--alpha",
            "8",
            "--dropout",
            "0",
            "--cutoff-len",
            "320",
            "--val-size",
            "0",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "2",
            "--cpu",
            "--quiet",
        ])
        .args(extra);
    c.assert()
}

fn losses(run: &Path) -> Vec<f64> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap();
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn init_adapter_and_data_order() {
    let guard = tempfile::tempdir().unwrap();
    let tmp = guard.path().to_path_buf();
    let home = tmp.join("home");
    write_task(&tmp, "task", "train.json", 8, &["answer1", "answer2"]);
    let data = tmp.join("task/train.json");
    let init = fixture("peft-lora");
    let init_s = init.to_str().unwrap();

    // Step 1 runs at lr 0 (HF's warm-up), so the checkpoint holds the initial adapter exactly.
    let out = tmp.join("lr0");
    train(
        &home,
        &out,
        &data,
        &[
            "--init-adapter",
            init_s,
            "--max-steps",
            "1",
            "--warmup-steps",
            "5",
        ],
    )
    .success();
    let ck = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (got, want) = (
        tsd::adapter::load_adapter(&ck).unwrap(),
        tsd::adapter::load_adapter(&init).unwrap(),
    );
    assert_eq!(got.modules.len(), want.modules.len());
    for m in &want.modules {
        let g = got.modules.iter().find(|x| x.module == m.module).unwrap();
        assert_eq!(
            (g.a.data.clone(), g.b.data.clone()),
            (m.a.data.clone(), m.b.data.clone()),
            "{}",
            m.module
        );
    }

    // A fixed order makes the run independent of --seed (with an initial adapter and no dropout).
    let order = tmp.join("order.json");
    std::fs::write(&order, "[[3, 1], [0, 7], [5, 5]]").unwrap();
    let o = order.to_str().unwrap();
    let common = [
        "--init-adapter",
        init_s,
        "--data-order",
        o,
        "--max-steps",
        "4",
        "--warmup-steps",
        "1",
        "--lr",
        "1e-2",
    ];
    train(
        &home,
        &tmp.join("a"),
        &data,
        &[&common[..], &["--seed", "1"]].concat(),
    )
    .success();
    train(
        &home,
        &tmp.join("b"),
        &data,
        &[&common[..], &["--seed", "2"]].concat(),
    )
    .success();
    let (la, lb) = (losses(&tmp.join("a")), losses(&tmp.join("b")));
    assert_eq!(la.len(), 4);
    assert_eq!(la, lb);
    // Without it the seeds shuffle differently.
    let free = [
        "--init-adapter",
        init_s,
        "--max-steps",
        "4",
        "--warmup-steps",
        "1",
        "--lr",
        "1e-2",
    ];
    train(
        &home,
        &tmp.join("c"),
        &data,
        &[&free[..], &["--seed", "1"]].concat(),
    )
    .success();
    train(
        &home,
        &tmp.join("d"),
        &data,
        &[&free[..], &["--seed", "2"]].concat(),
    )
    .success();
    assert_ne!(losses(&tmp.join("c")), losses(&tmp.join("d")));

    // Bad input exits 2 and names the flag.
    std::fs::write(&order, "[[3, 8]]").unwrap();
    for (dir, args, flag) in [
        (
            "e",
            vec!["--data-order", o, "--max-steps", "2"],
            "--data-order",
        ),
        (
            "f",
            vec!["--init-adapter", init_s, "--max-steps", "2", "--rslora"],
            "--init-adapter",
        ),
    ] {
        let a = train(&home, &tmp.join(dir), &data, &args).code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(flag), "{err}");
    }
}
