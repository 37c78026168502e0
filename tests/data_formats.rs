//! Training-data formats against the real `datasets` library: every good file of
//! `tests/fixtures/data-formats/` read into the rows `datasets.load_dataset` returns
//! (`expected.json`, written by `scripts/make_data_format_fixtures.py`), every (repo, config,
//! split) of its Hugging Face cache tree resolved to the files and rows `datasets` resolves, the
//! rows typed by schema, and every refusal naming its file, row and field.
//!
//! Parquet fixtures are everywhere here, so the file needs the default `parquet` feature.
#![cfg(feature = "parquet")]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tsd::data::files::read_rows;
use tsd::data::{load_dataset, Record, Schema};
use tsd::error::Error;
use tsd::provision::hub::HubCache;
use tsd::provision::resolve_data_in;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-formats")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cache() -> HubCache {
    HubCache::new(dir().join("hub"))
}

fn load(files: &[PathBuf]) -> tsd::error::Result<tsd::data::Dataset> {
    let spec: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    load_dataset(&spec, files, None)
}

#[test]
fn every_good_file_reads_as_datasets_reads_it() {
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(files.len() >= 20, "{}", files.len());
    for (name, rows) in files {
        let got = read_rows(&dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&Value::Array(got), rows, "{name}");
    }
}

#[test]
fn schemas_are_detected_and_records_typed() {
    let want = [
        ("alpaca", Schema::Alpaca),
        ("text", Schema::Text),
        ("prompt_completion", Schema::PromptCompletion),
        ("chat_prompt_completion", Schema::ChatPromptCompletion),
        ("messages", Schema::Messages),
    ];
    for (name, schema) in want {
        let mut per_format = Vec::new();
        for ext in ["json", "jsonl", "parquet"] {
            let f = dir().join(format!("{name}.{ext}"));
            let ds = load(std::slice::from_ref(&f)).unwrap_or_else(|e| panic!("{name}.{ext}: {e}"));
            assert_eq!(ds.manifest.schema, schema, "{name}.{ext}");
            assert!(ds.records.iter().all(|r| r.schema() == schema));
            assert_eq!(ds.manifest.files.len(), 1);
            let m = &ds.manifest.files[0];
            assert_eq!(m.rows, ds.records.len());
            assert_eq!(m.bytes, std::fs::metadata(&f).unwrap().len());
            assert_eq!(m.sha256.len(), 64);
            per_format.push(ds.records);
        }
        // JSON, JSON Lines and Parquet give the same records.
        assert_eq!(per_format[0], per_format[1], "{name}");
        assert_eq!(per_format[0], per_format[2], "{name}");
    }
    let ds = load(&[dir().join("alpaca.parquet")]).unwrap();
    let Record::Alpaca(e) = &ds.records[0] else {
        panic!()
    };
    assert_eq!(
        (e.instruction.as_str(), e.input.as_str(), e.output.as_str()),
        ("Add the numbers.", "2 and 3", "5")
    );
    assert_eq!(e.answer.as_deref(), Some("5"));
    let ds = load(&[dir().join("messages.parquet")]).unwrap();
    let Record::Messages { messages, tools } = &ds.records[0] else {
        panic!()
    };
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": "Hello!"})
    );
    // `tools` as a JSON string is parsed.
    assert_eq!(
        tools.as_ref().unwrap()[0]["function"]["name"],
        "get_weather"
    );
    let ds = load(&[dir().join("chat_prompt_completion.parquet")]).unwrap();
    let Record::ChatPromptCompletion {
        prompt,
        completion,
        tools,
    } = &ds.records[1]
    else {
        panic!()
    };
    assert_eq!(prompt.len(), 2);
    assert_eq!(completion[0]["content"], "Snow.");
    assert!(tools.as_ref().unwrap().is_array());
}

#[test]
fn sharegpt_is_converted_as_trl_does_and_parts_are_kept() {
    for f in ["sharegpt.jsonl", "sharegpt.parquet"] {
        let ds = load(&[dir().join(f)]).unwrap();
        assert_eq!(ds.manifest.schema, Schema::Messages);
        assert_eq!(
            ds.records[0],
            Record::Messages {
                messages: vec![
                    json!({"role": "human", "content": "Hi"}),
                    json!({"role": "gpt", "content": "Hello!"})
                ],
                tools: None
            },
            "{f}"
        );
    }
    let ds = load(&[dir().join("messages_parts.jsonl")]).unwrap();
    let Record::Messages { messages, .. } = &ds.records[1] else {
        panic!()
    };
    assert_eq!(
        messages[1]["content"],
        json!([{"type": "text", "text": "A dog."}])
    );
}

#[test]
fn max_examples_cuts_each_file_and_a_directory_means_train_json() {
    let files = [dir().join("text.jsonl"), dir().join("text.parquet")];
    let ds = load_dataset(&["x".into()], &files, Some(2)).unwrap();
    assert_eq!(ds.records.len(), 4);
    assert_eq!(ds.records[2], Record::Text("The sky is blue.".into()));
    assert_eq!(ds.manifest.spec, ["x"]);
    let task =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm-adapters/ARC-Easy");
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(task.join("train-head.json"), t.path().join("train.json")).unwrap();
    let ds = load(&[t.path().to_path_buf()]).unwrap();
    assert_eq!(ds.manifest.schema, Schema::Alpaca);
    assert_eq!(ds.records.len(), 3);
    assert!(ds.manifest.files[0].path.ends_with("train.json"));
    let s = serde_json::to_value(&ds.manifest).unwrap();
    assert_eq!(s["schema"], "alpaca");
}

/// The message of a refusal, which must be bad input (exit 2).
fn refusal(r: tsd::error::Result<impl std::fmt::Debug>) -> String {
    let e = r.unwrap_err();
    assert!(e.is_user_input(), "{e}");
    e.to_string()
}

#[test]
fn malformed_files_are_refused_by_file_row_and_field() {
    let bad = |n: &str| dir().join("bad").join(n);
    let e = refusal(load(&[bad("missing_field.jsonl")]));
    assert!(
        e.contains("missing_field.jsonl")
            && e.contains("row 3 (0-based)")
            && e.contains("`completion`")
            && e.contains("missing"),
        "{e}"
    );
    let e = refusal(load(&[bad("mixed.jsonl")]));
    assert!(
        e.contains("mixed.jsonl")
            && e.contains("row 2 (0-based)")
            && e.contains("prompt_completion")
            && e.contains("row 0 is text"),
        "{e}"
    );
    let e = refusal(load(&[bad("bad_line.jsonl")]));
    assert!(
        e.contains("bad_line.jsonl") && e.contains("line 3 (1-based)"),
        "{e}"
    );
    let e = refusal(load(&[bad("wrong_type.jsonl")]));
    assert!(
        e.contains("wrong_type.jsonl")
            && e.contains("row 1 (0-based)")
            && e.contains("`text`")
            && e.contains("a number"),
        "{e}"
    );
    let e = refusal(load(&[bad("no_role.jsonl")]));
    assert!(
        e.contains("no_role.jsonl")
            && e.contains("row 1 (0-based)")
            && e.contains("messages[0].role"),
        "{e}"
    );
    let e = refusal(load(&[bad("one_object.json")]));
    assert!(e.contains("one_object.json") && e.contains("field="), "{e}");
    let e = refusal(load(&[bad("no_schema.jsonl")]));
    assert!(
        e.contains("no_schema.jsonl") && e.contains("row 0 (0-based)") && e.contains("question"),
        "{e}"
    );
    let e = refusal(load(&[
        dir().join("text.jsonl"),
        dir().join("messages.parquet"),
    ]));
    assert!(
        e.contains("text.jsonl")
            && e.contains("messages.parquet")
            && e.contains("different schemas"),
        "{e}"
    );
    let e = refusal(load(&[dir().join("nope.jsonl")]));
    assert!(e.contains("nope.jsonl"), "{e}");
}

fn hub_rows(files: &[PathBuf]) -> Value {
    Value::Array(files.iter().flat_map(|f| read_rows(f).unwrap()).collect())
}

#[test]
fn hub_cache_configs_and_splits_resolve_as_datasets_does() {
    let exp = expected();
    for (repo, r) in exp["hub"].as_object().unwrap() {
        let snap = dir().join(r["snapshot"].as_str().unwrap());
        let default = r["default_config"].as_str().unwrap();
        for (config, splits) in r["configs"].as_object().unwrap() {
            for (split, want) in splits.as_object().unwrap() {
                let spec = format!("hf:{repo}/{config}:{split}");
                let files = resolve_data_in(&cache(), std::slice::from_ref(&spec))
                    .unwrap_or_else(|e| panic!("{spec}: {e}"));
                let rel: Vec<String> = files
                    .iter()
                    .map(|f| f.strip_prefix(&snap).unwrap().display().to_string())
                    .collect();
                assert_eq!(json!(rel), want["files"], "{spec}");
                assert_eq!(hub_rows(&files), want["rows"], "{spec}");
                load_dataset(std::slice::from_ref(&spec), &files, None)
                    .unwrap_or_else(|e| panic!("{spec}: {e}"));
                if config == default {
                    // The default config, and `train` as the default split.
                    let short = if split == "train" {
                        format!("hf:{repo}")
                    } else {
                        format!("hf:{repo}:{split}")
                    };
                    assert_eq!(
                        resolve_data_in(&cache(), std::slice::from_ref(&short)).unwrap(),
                        files,
                        "{short}"
                    );
                }
            }
        }
    }
    // A revision by ref and by commit.
    let sha =
        std::fs::read_to_string(dir().join("hub/datasets--tsd-fixtures--chat/refs/main")).unwrap();
    let a = resolve_data_in(&cache(), &["hf:tsd-fixtures/chat@main/completion".into()]).unwrap();
    let b = resolve_data_in(
        &cache(),
        &[format!("hf:tsd-fixtures/chat@{}/completion", sha.trim())],
    )
    .unwrap();
    assert_eq!(a, b);
    let ds = load_dataset(&["hf:tsd-fixtures/chat/completion".into()], &a, None).unwrap();
    assert_eq!(ds.manifest.schema, Schema::PromptCompletion);
    assert_eq!(ds.records.len(), 4);
}

#[test]
fn hub_refusals_name_the_cache_and_what_is_available() {
    let root = dir().join("hub");
    let e = refusal(resolve_data_in(
        &cache(),
        &["hf:tsd-fixtures/absent".into()],
    ));
    assert!(
        e.contains(
            &root
                .join("datasets--tsd-fixtures--absent")
                .display()
                .to_string()
        ) && e.contains("only from the local")
            && e.contains("huggingface-cli download --repo-type dataset tsd-fixtures/absent"),
        "{e}"
    );
    let e = refusal(resolve_data_in(
        &cache(),
        &["hf:tsd-fixtures/chat@v9".into()],
    ));
    assert!(e.contains("refs/v9") && e.contains("revision `v9`"), "{e}");
    let zeros = "0".repeat(40);
    let e = refusal(resolve_data_in(
        &cache(),
        &[format!("hf:tsd-fixtures/chat@{zeros}")],
    ));
    assert!(
        e.contains(&format!("snapshots/{zeros}")) && e.contains("no snapshot"),
        "{e}"
    );
    let e = refusal(resolve_data_in(
        &cache(),
        &["hf:tsd-fixtures/chat/nope".into()],
    ));
    assert!(
        e.contains("no config `nope`") && e.contains("chat, completion"),
        "{e}"
    );
    let e = refusal(resolve_data_in(
        &cache(),
        &["hf:tsd-fixtures/chat:validation".into()],
    ));
    assert!(
        e.contains("no split `validation`") && e.contains("train, test"),
        "{e}"
    );
    let e = refusal(resolve_data_in(&cache(), &["hf:tsd-fixtures".into()]));
    assert!(e.contains("hf:ORG/NAME"), "{e}");
    // A local path goes through as it is.
    assert_eq!(
        resolve_data_in(&cache(), &["x/y.jsonl".into()]).unwrap(),
        [Path::new("x/y.jsonl")]
    );
    // The error is the library's config error (exit 2).
    let e = resolve_data_in(&cache(), &["hf:tsd-fixtures/absent".into()]).unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
}
