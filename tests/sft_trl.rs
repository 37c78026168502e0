//! `tsd data preview --json` gives, token for token, what TRL 1.16's `SFTTrainer` trains on: every
//! case of `tests/fixtures/sft/expected.json` (written by `scripts/make_sft_fixtures.py` with the
//! real TRL, transformers and tokenizers) — input ids, labels, and the rows TRL drops — for text,
//! prompt/completion, conversational prompt/completion and messages data on the default model
//! (SmolLM2 GGUF) and on Llama 3 / Qwen2.5 tokenizers, under TRL's default loss, the whole
//! sequence, and the assistant-only loss (through TRL's own training templates, `--template-file`).

use assert_cmd::Command;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn expected() -> Json {
    let text = std::fs::read_to_string(root().join("tests/fixtures/sft/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model(name: &str) -> String {
    match name {
        "smollm2" => "default".into(),
        other => root()
            .join("tests/fixtures/chat-tokenizers")
            .join(other)
            .display()
            .to_string(),
    }
}

fn ids(v: &Json) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// `tsd data preview --json` for one case's tokenizer, data and settings.
fn preview(case: &Json, exp: &Json, dir: &Path) -> std::process::Output {
    let tokenizer = case["tokenizer"].as_str().unwrap();
    let data = root()
        .join("tests/fixtures/sft/data")
        .join(case["dataset"].as_str().unwrap());
    let s = &case["settings"];
    let mut args: Vec<String> = vec![
        "data".into(),
        "preview".into(),
        "--data".into(),
        data.display().to_string(),
        "--model".into(),
        model(tokenizer),
        "--cutoff-len".into(),
        s["max_length"].to_string(),
        "-n".into(),
        "1000".into(),
        "--json".into(),
    ];
    if s["completion_only_loss"] == Json::Bool(false) {
        args.extend(["--loss-on".into(), "all".into()]);
    }
    if s["assistant_only_loss"] == Json::Bool(true) {
        args.extend(["--loss-on".into(), "assistant".into()]);
        // TRL swaps in its training template (with `{% generation %}` markers); so does the test.
        if let Some(t) = exp["tokenizers"][tokenizer]["training_chat_template"].as_str() {
            let f = dir.join(format!("{tokenizer}_training.jinja"));
            std::fs::write(&f, t).unwrap();
            args.extend(["--template-file".into(), f.display().to_string()]);
        }
    }
    Command::cargo_bin("tsd")
        .unwrap()
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn data_preview_gives_what_trl_trains_on() {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in exp["cases"].as_array().unwrap() {
        let name = format!(
            "{} {} {}",
            case["tokenizer"], case["dataset"], case["settings"]
        );
        let out = preview(case, &exp, dir.path());
        if !case["error"].is_null() {
            // TRL refuses assistant-only loss on a template it cannot patch (SmolLM2's ChatML);
            // tsd masks by its prefix rule instead (README, Training data).
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Json = serde_json::from_slice(&out.stdout).unwrap();
        let examples = got["examples"].as_array().unwrap();
        let kept: Vec<&Json> = examples.iter().filter(|e| e["dropped"] == false).collect();
        let dropped: Vec<i64> = examples
            .iter()
            .filter(|e| e["dropped"] == true)
            .map(|e| e["row"].as_i64().unwrap())
            .collect();
        assert_eq!(dropped, ids(&case["dropped_rows"]), "{name}: dropped rows");
        let rows = case["rows"].as_array().unwrap();
        assert_eq!(kept.len(), rows.len(), "{name}: rows kept");
        for (g, w) in kept.iter().zip(rows) {
            let row = w["source_row"].as_i64().unwrap();
            assert_eq!(g["row"].as_i64().unwrap(), row, "{name}");
            assert_eq!(
                ids(&g["input_ids"]),
                ids(&w["input_ids"]),
                "{name} row {row}: ids"
            );
            assert_eq!(
                ids(&g["labels"]),
                ids(&w["labels"]),
                "{name} row {row}: labels"
            );
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} cases compared");
}

/// Without TRL's training template, tsd's prefix rule gives Llama 3's assistant masks exactly as
/// TRL's `llama3_training.jinja` does.
#[test]
fn the_prefix_rule_matches_trl_on_llama3() {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for case in exp["cases"].as_array().unwrap() {
        if case["tokenizer"] != "llama3" || case["settings"]["assistant_only_loss"] != true {
            continue;
        }
        let mut exp_no_template = exp.clone();
        exp_no_template["tokenizers"]["llama3"]["training_chat_template"] = Json::Null;
        let out = preview(case, &exp_no_template, dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Json = serde_json::from_slice(&out.stdout).unwrap();
        let kept: Vec<&Json> = got["examples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["dropped"] == false)
            .collect();
        for (g, w) in kept.iter().zip(case["rows"].as_array().unwrap()) {
            assert_eq!(ids(&g["labels"]), ids(&w["labels"]), "{}", case["dataset"]);
        }
        seen += 1;
    }
    assert_eq!(seen, 4);
}
