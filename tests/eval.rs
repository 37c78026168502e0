//! `tsd eval` (loglik protocol) end to end on the tiny model, with and without an adapter.

mod common;

use common::{fixture, tsd};

#[test]
fn loglik_eval_scores_every_label_and_counts_accuracy() {
    let d = tempfile::tempdir().unwrap();
    let task_dir = d.path().join("boolq");
    std::fs::create_dir_all(&task_dir).unwrap();
    let ex: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"instruction": format!("Is {i} even?"), "input": "", "output": "", "answer": if i % 2 == 0 { "true" } else { "false" }}))
        .collect();
    std::fs::write(
        task_dir.join("test.json"),
        serde_json::to_string(&ex).unwrap(),
    )
    .unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = tsd(d.path())
            .args([
                "eval",
                "--model",
                fixture("tiny-llama").to_str().unwrap(),
                "--tasks",
                "boolq",
                "--data",
                d.path().to_str().unwrap(),
                "--json",
                "-q",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = run(&["--protocol", "loglik"]);
    let r = &base[0];
    assert_eq!(r["protocol"], "loglik");
    assert_eq!(r["examples"], 5);
    let preds = r["predictions"].as_array().unwrap();
    let correct = preds.iter().filter(|p| p["correct"] == true).count();
    assert_eq!(r["correct"], correct);
    for p in preds {
        let labels = p["labels"].as_array().unwrap();
        let names: Vec<&str> = labels
            .iter()
            .map(|l| l["label"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["true", "false"]);
        // The character-level tokenizer: one token per character of `the correct answer is L`.
        for l in labels {
            let n = "the correct answer is ".len() + l["label"].as_str().unwrap().len();
            assert_eq!(l["tokens"], n);
            assert!(l["loglik"].as_f64().unwrap() < 0.0);
            assert!(l["greedy"].is_boolean());
        }
        let best = labels
            .iter()
            .max_by(|a, b| {
                a["loglik"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["loglik"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(p["prediction"], best["label"]);
    }
    // --predictions writes the same records, one JSON line per example, every label scored.
    let pred_dir = d.path().join("preds");
    let again = run(&[
        "--protocol",
        "loglik",
        "--predictions",
        pred_dir.to_str().unwrap(),
    ]);
    assert_eq!(again[0]["predictions"], r["predictions"]);
    let text = std::fs::read_to_string(pred_dir.join("boolq.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (line, p) in lines.iter().zip(preds) {
        assert_eq!(line, p);
        assert_eq!(line["labels"].as_array().unwrap().len(), 2);
    }
    // The PEFT fixture adapter changes the scores.
    let with = run(&[
        "--protocol",
        "loglik",
        "--adapter",
        fixture("peft-lora").to_str().unwrap(),
    ]);
    assert_ne!(with[0]["predictions"][0]["labels"], preds[0]["labels"]);
    // generate: beam search output saved per example; no label in it counts as unparseable.
    let g = run(&[
        "--protocol",
        "generate",
        "--beams",
        "2",
        "--max-new-tokens",
        "8",
    ]);
    let gp = g[0]["predictions"].as_array().unwrap();
    assert_eq!(g[0]["protocol"], "generate");
    assert!(gp.iter().all(|p| p["output"].is_string()));
    let unparseable = gp.iter().filter(|p| p["prediction"].is_null()).count();
    assert_eq!(g[0]["unparseable"], unparseable);
    // A missing task is a clear error.
    let out = tsd(d.path())
        .args([
            "eval",
            "--model",
            fixture("tiny-llama").to_str().unwrap(),
            "--tasks",
            "piqa",
            "--data",
            d.path().to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The prepared scorer (lower layers computed once, prompt shared by the labels through the KV
/// cache) gives the same scores as the plain scorer, for an adapter on the layers it recomputes.
#[test]
fn prepared_loglik_equals_plain_loglik() {
    use candle_core::{DType, Device, Tensor};
    use tsd::data::task;
    use tsd::data::Example;
    use tsd::eval::prepared::{eval_loglik_prepared, prepare_loglik};
    use tsd::eval::{eval_loglik_full_sequences, eval_loglik_general};
    use tsd::model::Llama;
    let src = tsd::weights::open_path(&fixture("tiny-llama")).unwrap();
    let tok = tsd::eval::PromptTokenizer::plain(
        tsd::model::tokenizer::load_tokenizer(&fixture("tiny-llama")).unwrap(),
    );
    let ex = |i: usize, a: &str| Example {
        instruction: format!("Q{i}: which one? {}", "x".repeat(i * 7)),
        input: String::new(),
        output: String::new(),
        answer: Some(a.into()),
    };
    let examples: Vec<Example> = (0..4)
        .map(|i| ex(i, ["answer1", "answer3"][i % 2]))
        .collect();
    for from in [0usize, 1, 2] {
        let mut model = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
        let prepared_task = task("ARC-Easy").unwrap();
        // Prepare on the bare model: layers below `from` never carry the adapter.
        let prep = prepare_loglik(&model, &tok, &prepared_task, &examples, from, &|| {}).unwrap();
        for (i, lin) in model.linears_mut().enumerate() {
            let layer: usize = lin.module.split('.').nth(2).unwrap().parse().unwrap();
            if layer < from {
                continue;
            }
            lin.add_lora(2, 4.0, false, i as u64).unwrap();
            let l = lin.lora.as_ref().unwrap();
            let (o, r) = l.b.as_tensor().dims2().unwrap();
            let b = Tensor::randn(0f32, 0.5, (o, r), &Device::Cpu).unwrap();
            l.b.set(&b).unwrap();
        }
        let plain = eval_loglik_general(&model, &tok, &prepared_task, &examples, &|| {}).unwrap();
        let fast = eval_loglik_prepared(&model, &prep, &|| {}).unwrap();
        assert_eq!(plain.truncated, fast.truncated);
        for (p, f) in plain.predictions.iter().zip(&fast.predictions) {
            assert_eq!(p.prediction, f.prediction, "from {from}");
            for (a, b) in p.labels.iter().zip(&f.labels) {
                assert_eq!((&a.label, a.tokens), (&b.label, b.tokens));
                let (a, b) = (a.loglik, b.loglik);
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + a.abs()),
                    "from {from}: {a} vs {b}"
                );
            }
        }
        // The adapter matters (otherwise the comparison above proves little).
        let bare = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap();
        let base =
            eval_loglik_full_sequences(&bare, &tok, &prepared_task, &examples, &|| {}).unwrap();
        if from < 2 {
            assert_ne!(base.predictions[0].labels, plain.predictions[0].labels);
        }
    }
}

/// The BIG-bench Social IQa examples (the head of the pinned task.json) convert to the
/// LLM-Adapters layout: same labels and answers, same text up to BIG-bench's capitalisation.
#[test]
fn bigbench_social_iqa_converts_to_llm_adapters_layout() {
    let raw = std::fs::read(fixture("bigbench/social_iqa_task_head.json")).unwrap();
    let got = tsd::provision::bigbench_to_llm_adapters(&raw).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].answer.as_deref(), Some("answer3"));
    assert_eq!(got[1].answer.as_deref(), Some("answer1"));
    assert!(got[0]
        .instruction
        .ends_with("Answer1: Make a new plan Answer2: Go home and see Riley Answer3: Find somewhere to go\n\nAnswer format: answer1/answer2/answer3"));
    let text = std::fs::read_to_string(fixture("llm-adapters/social_i_qa/test-head.json")).unwrap();
    let theirs: Vec<tsd::data::Example> = serde_json::from_str(&text).unwrap();
    assert_eq!(theirs.len(), got.len());
    for (a, b) in got.iter().zip(&theirs) {
        assert_eq!(a.answer, b.answer);
        assert_eq!(a.output, b.output);
        assert_eq!(a.instruction.to_lowercase(), b.instruction.to_lowercase());
    }
    // Malformed input is an error, not a panic.
    assert!(tsd::provision::bigbench_to_llm_adapters(b"{\"examples\": 3}").is_err());
    assert!(tsd::provision::bigbench_to_llm_adapters(
        br#"{"examples": [{"input": "q", "target_scores": {"a": 0, "b": 0}}]}"#
    )
    .is_err());
}

/// `--chat-template` wraps each prompt in the model's template as one user turn with the
/// generation prompt; every output says so; a model without a template is refused.
#[test]
fn chat_template_prompts_are_labelled_everywhere() {
    let d = tempfile::tempdir().unwrap();
    common::write_task(d.path(), "boolq", "test.json", 3, &["true", "false"]);
    let model = common::tiny_chat_model(d.path());
    let run = |model: &std::path::Path, fmt: &str, chat: bool| {
        let mut c = tsd(d.path());
        c.args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--tasks",
            "boolq",
        ])
        .args([
            "--data",
            d.path().to_str().unwrap(),
            "--protocol",
            "loglik",
            "-q",
        ]);
        if !fmt.is_empty() {
            c.arg(fmt);
        }
        if chat {
            c.arg("--chat-template");
        }
        c.output().unwrap()
    };
    let json = run(&model, "--json", true);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["prompt"], "chat_template");
    let plain: serde_json::Value =
        serde_json::from_slice(&run(&model, "--json", false).stdout).unwrap();
    assert!(plain[0].get("prompt").is_none());
    // The wrapped prompt is another input: the log-likelihoods differ.
    assert_ne!(
        v[0]["predictions"][0]["labels"][0]["loglik"],
        plain[0]["predictions"][0]["labels"][0]["loglik"]
    );
    let csv = String::from_utf8(run(&model, "--csv", true).stdout).unwrap();
    assert!(
        csv.starts_with("task,protocol,examples,correct,accuracy,prompt\n"),
        "{csv}"
    );
    assert!(csv.contains(",chat_template\n"), "{csv}");
    let table = String::from_utf8(run(&model, "", true).stdout).unwrap();
    assert!(
        table.contains("prompts wrapped in the model's chat template"),
        "{table}"
    );
    let refused = run(&fixture("tiny-llama"), "--json", true);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has no chat template"));
}
