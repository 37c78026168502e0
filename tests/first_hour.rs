//! Issue 20, "the first hour of a PEFT user": defaults that break small runs, the declared base,
//! eval data without a data directory, and output that says what is true. Each test runs the real
//! binary on the tiny fixtures.

mod common;

use common::{copy_dir, fixture, tsd};
use std::path::{Path, PathBuf};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `n` LLM-Adapters training examples.
fn write_data(dir: &Path, n: usize) -> PathBuf {
    let ex: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let a = ["alpha", "beta"][i % 2];
            serde_json::json!({"instruction": format!("Item {i}: pick one."), "input": "",
                "output": format!("the correct answer is {a}"), "answer": a})
        })
        .collect();
    let p = dir.join("train.json");
    std::fs::write(&p, serde_json::to_string(&ex).unwrap()).unwrap();
    p
}

/// A short tsd run on the tiny LLaMA (LoRA-Dash across its switch, checkpoints at 2 and 4).
fn small_run(home: &Path, dir: &Path) -> (PathBuf, String) {
    let data = write_data(dir, 40);
    let run = dir.join("run");
    let model = fixture("tiny-llama");
    let out = tsd(home)
        .args(["train", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .args([
            "--method",
            "lora-dash",
            "--rank",
            "2",
            "--dash-s",
            "2",
            "--dash-t",
            "2",
            "--max-steps",
            "4",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "1",
            "--save-every",
            "2",
            "--lr",
            "0.03",
            "--warmup-steps",
            "1",
            "--cutoff-len",
            "64",
            "--val-size",
            "4",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (run, stderr(&out))
}

/// Point 3: `--max-examples 64` with every other default works: the validation split follows
/// the data (10 %, at most 120) and says so; a warm-up as long as the run warns with the peak lr
/// it reaches; an explicit split that leaves no training example is refused naming the flag.
#[test]
fn max_examples_64_trains_with_a_sized_split_and_a_warmup_warning() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let data = write_data(d.path(), 100);
    let run = |out: &str, extra: &[&str]| {
        tsd(&home)
            .args(["train", "--model"])
            .arg(fixture("tiny-llama"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(d.path().join(out))
            .args(["--max-examples", "64", "--method", "lora", "--rank", "2"])
            .args(["--cutoff-len", "64", "-q"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run("a", &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("58 train / 6 val examples"), "{err}");
    assert!(
        err.contains("validation split 10 % of the examples"),
        "{err}"
    );
    // 9 steps (3 epochs × 3 steps of 16) under the default 100 warm-up steps: the last step runs
    // at 8/100 of 2e-4.
    assert!(
        err.contains("warning: --warmup-steps 100 is not shorter than the run's 9 optimizer steps")
            && err.contains("peaks at 1.600e-5"),
        "{err}"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("a/record.json")).unwrap())
            .unwrap();
    let top = rec["steps"].as_array().unwrap().last().unwrap()["lr"]
        .as_f64()
        .unwrap();
    assert!((top - 1.6e-5).abs() < 1e-12, "{top}");
    // A warm-up shorter than the run: no warning.
    let out = run("b", &["--warmup-steps", "2"]);
    assert!(out.status.success() && !stderr(&out).contains("warm-up"));
    assert!(!stderr(&out).contains("--warmup-steps"), "{}", stderr(&out));
    let out = run("c", &["--val-size", "64"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--val-size 64 leaves no training example")
            && err.contains("64 example(s) (--max-examples 64 per data file)")
            && err.lines().count() == 1,
        "{err}"
    );
}

/// Point 5: a base other than the declared one is a warning naming both in inspect, track, report
/// and eval, an error with --strict-base; the declared base (another path to it, or the same
/// bytes for a tsd run) is silent. Matching shapes are not identity: tiny-llama-ft has the same.
#[test]
fn another_base_than_the_declared_one_warns_and_strict_base_refuses() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let ft = fixture("tiny-llama-ft");
    // inspect: the PEFT fixture declares `../tiny-llama`.
    let inspect = |base: &Path, strict: bool| {
        let mut c = tsd(&home);
        c.args(["inspect"])
            .arg(fixture("peft-lora"))
            .arg("--base")
            .arg(base)
            .args(["-q", "--json"]);
        if strict {
            c.arg("--strict-base");
        }
        c.output().unwrap()
    };
    let out = inspect(&ft, false);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("declares base `../tiny-llama`")
            && err.contains(&format!("--base `{}` is used", ft.display()))
            && err.contains("matching shapes do not make it the same model"),
        "{err}"
    );
    let out = inspect(&ft, true);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("(--strict-base)"));
    let out = inspect(&fixture("tiny-llama"), true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("declares base"), "{}", stderr(&out));

    // track and report: a tsd run declares its base by the weights' sha256.
    let (run, _) = small_run(&home, d.path());
    let copy = d.path().join("same-bytes");
    copy_dir(&fixture("tiny-llama"), &copy);
    let track = |base: &Path, strict: bool| {
        let mut c = tsd(&home);
        c.arg("track")
            .arg(&run)
            .arg("--base")
            .arg(base)
            .args(["-q", "--json"]);
        if strict {
            c.arg("--strict-base");
        }
        c.output().unwrap()
    };
    let out = track(&ft, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("weight files' sha256 differ"),
        "{}",
        stderr(&out)
    );
    assert_eq!(track(&ft, true).status.code(), Some(2));
    let out = track(&copy, true);
    assert!(
        out.status.success(),
        "same bytes elsewhere: {}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("declares base"));
    let out = tsd(&home)
        .arg("report")
        .arg(&run)
        .arg("--base")
        .arg(&ft)
        .arg("--strict-base")
        .arg("-o")
        .arg(d.path().join("r.html"))
        .arg("-q")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("declares base"), "{}", stderr(&out));

    // eval: the fine-tuned weights with the tokenizer, against the adapter's declared base.
    let other = d.path().join("other-base");
    copy_dir(&fixture("tiny-llama"), &other);
    std::fs::copy(
        ft.join("model.safetensors"),
        other.join("model.safetensors"),
    )
    .unwrap();
    let data = d.path().join("data");
    common::write_task(&data, "boolq", "test.json", 2, &["true", "false"]);
    let eval = |strict: bool| {
        let mut c = tsd(&home);
        c.args([
            "eval",
            "--tasks",
            "boolq",
            "--protocol",
            "loglik",
            "-q",
            "--model",
        ])
        .arg(&other)
        .arg("--adapter")
        .arg(fixture("peft-lora"))
        .arg("--data")
        .arg(&data);
        if strict {
            c.arg("--strict-base");
        }
        c.output().unwrap()
    };
    let out = eval(false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("declares base `../tiny-llama`")
            && stderr(&out).contains("--model `"),
        "{}",
        stderr(&out)
    );
    assert_eq!(eval(true).status.code(), Some(2));
}

/// Point 6: without a data directory, a task tsd cannot provision is refused before any download,
/// naming --data and where the test sets come from; no message speaks of "these machines".
#[test]
fn eval_without_data_refuses_tasks_it_cannot_provision() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let cwd = d.path().join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = tsd(&home)
        .current_dir(&cwd)
        .env_remove("TSD_DATA")
        .args(["eval", "--tasks", "boolq,social_i_qa", "--model"])
        .arg(fixture("tiny-llama"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no test data for boolq")
            && err.contains("--data")
            && err.contains("LLM-Adapters repository's `dataset/` folder"),
        "{err}"
    );
    assert!(!err.contains("provisioning"), "{err}");
    assert!(!home.join("data").exists(), "something was provisioned");
    // A data directory without the task: the message says where test sets come from.
    let data = d.path().join("data");
    common::write_task(&data, "boolq", "test.json", 2, &["true", "false"]);
    let out = tsd(&home)
        .args(["eval", "--tasks", "hellaswag", "--model"])
        .arg(fixture("tiny-llama"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("these machines"), "{err}");
    assert!(
        err.contains("present in") && err.contains("LLM-Adapters"),
        "{err}"
    );
}

/// Point 7: three reports in one directory keep three track records.
#[test]
fn reports_in_one_directory_keep_their_own_track_records() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let (run, _) = small_run(&home, d.path());
    let out_dir = d.path().join("reports");
    std::fs::create_dir_all(&out_dir).unwrap();
    for name in ["a", "b"] {
        let out = tsd(&home)
            .arg("report")
            .arg(&run)
            .arg("-o")
            .arg(out_dir.join(format!("{name}.html")))
            .arg("-q")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("{name}.track.json")));
    }
    assert!(out_dir.join("a.track.json").is_file());
    assert!(out_dir.join("b.track.json").is_file());
    assert!(!out_dir.join("track.json").exists());
}

/// Point 7: `tsd train`, its record and its report give one trainable count (Δσ included, and
/// said so).
#[test]
fn train_record_and_report_agree_on_the_trainable_count() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let (run, err) = small_run(&home, d.path());
    let printed: u64 = err
        .split("trainable ")
        .nth(1)
        .and_then(|r| r.split(" parameters").next())
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains("2 Δσ per adapted matrix"), "{err}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("record.json")).unwrap()).unwrap();
    assert_eq!(rec["trainable_params"].as_u64(), Some(printed), "{err}");
    let html = d.path().join("r.html");
    let out = tsd(&home)
        .arg("report")
        .arg(&run)
        .args(["--no-track", "-q", "-o"])
        .arg(&html)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains(&format!("{printed} of ")),
        "the report's count is not the printed {printed}"
    );
}

/// Point 7: messages that are true — the lora_bias note does not promise what eval refuses, a
/// declared base missing from the cache does not blame an offline mode nobody set, and DoRA's
/// per-module warning is one line with the count and the modules.
#[test]
fn warnings_are_true_and_grouped() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    // lora_bias on a base without biases: eval refuses, inspect must not say it applies them.
    let out = tsd(&home)
        .arg("inspect")
        .arg(fixture("peft-lora-bias"))
        .arg("--base")
        .arg(fixture("tiny-llama"))
        .args(["-q", "--json"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("applied by tsd eval)"), "{err}");
    assert!(
        err.contains("refuses a LoRA or trained bias on a linear without a bias"),
        "{err}"
    );
    // A declared hub id not in the cache, no offline setting anywhere.
    let a = d.path().join("adapter");
    copy_dir(&fixture("peft-lora"), &a);
    let cfg = a.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["base_model_name_or_path"] = "someone/not-cached".into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let out = tsd(&home)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("TRANSFORMERS_OFFLINE")
        .env("HF_HOME", d.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .arg("inspect")
        .arg(&a)
        .arg("-q")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("offline mode is on"), "{err}");
    assert!(
        err.contains("never downloaded") && err.contains("pass --base"),
        "{err}"
    );
    // DoRA: one line for all modules.
    let out = tsd(&home)
        .arg("inspect")
        .arg(fixture("peft-dora"))
        .arg("--base")
        .arg(fixture("tiny-llama"))
        .args(["-q", "--json"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("DoRA magnitude vector present").count(),
        1,
        "{err}"
    );
    assert!(err.contains("modules: model.layers.0."), "{err}");
}

/// Point 7: piped tables never split a number and honour COLUMNS.
#[test]
fn piped_tables_keep_numbers_whole_and_honour_columns() {
    let d = tempfile::tempdir().unwrap();
    let params = |columns: Option<&str>| {
        let mut c = tsd(d.path());
        c.args([
            "params",
            "--model",
            "llama-7b",
            "--rank",
            "4,64",
            "--targets",
            "q_proj,k_proj,v_proj,up_proj,down_proj",
            "--dash-s",
            "8",
        ]);
        match columns {
            Some(w) => c.env("COLUMNS", w),
            None => c.env_remove("COLUMNS"),
        };
        let out = c.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    for columns in [None, Some("120"), Some("60")] {
        let text = params(columns);
        for n in ["112197632", "112198912", "6738415616", "14024704", "1.6650"] {
            assert!(text.contains(n), "COLUMNS={columns:?}: {n} split:\n{text}");
        }
    }
    let widest = |t: &str| t.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let text = params(Some("120"));
    let table_width = text.lines().next().unwrap().chars().count();
    assert!(
        table_width > 100 && table_width <= 120,
        "{table_width}:\n{text}"
    );
    // Piped without COLUMNS nothing wraps: one line per row.
    let text = params(None);
    assert_eq!(
        text.lines().filter(|l| l.contains("llama-7b")).count(),
        4,
        "{text}"
    );
    assert!(widest(&text) > 0);
}
