//! Chat templates rendered and tokenized exactly as transformers 5.24 does: every case of
//! `tests/fixtures/chat/expected.json` (written by `scripts/make_chat_template_fixtures.py`).

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use tsd::model::chat_template::{apply_chat_template, ChatTemplate, RenderOptions, SpecialTokens};
use tsd::model::tokenizer::{load_tokenizer, Tokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Json {
    let text = std::fs::read_to_string(fixtures().join("chat/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Where the fixture's tokenizer `name` lives (the default model: its GGUF).
fn tokenizer_path(name: &str) -> PathBuf {
    match name {
        "smollm2" => tsd::provision::default_model(false)
            .expect("default model provisioned (run `tsd fetch`)"),
        "inline" | "named" => fixtures().join("chat").join(name),
        other => fixtures().join("chat-tokenizers").join(other),
    }
}

fn load(name: &str) -> (Tokenizer, ChatTemplate) {
    let path = tokenizer_path(name);
    let tok = load_tokenizer(&path).unwrap();
    let t = ChatTemplate::load(&path)
        .unwrap()
        .unwrap_or_else(|| panic!("{name}: no chat template"));
    (tok, t)
}

fn special(exp: &Json, name: &str) -> SpecialTokens {
    let m = &exp["special_tokens"][name];
    let get = |k: &str| m.get(k).and_then(Json::as_str).map(str::to_string);
    SpecialTokens {
        bos_token: get("bos_token"),
        eos_token: get("eos_token"),
        pad_token: get("pad_token"),
        unk_token: get("unk_token"),
    }
}

fn messages(exp: &Json, case: &Json) -> Vec<Json> {
    let name = case["conversation"].as_str().unwrap();
    exp["conversations"][name].as_array().unwrap().clone()
}

fn opts<'a>(exp: &'a Json, case: &Json) -> RenderOptions<'a> {
    RenderOptions {
        add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
        tools: (case["conversation"] == "tools").then(|| &exp["tools"]),
    }
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn mask(v: &Json) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect()
}

fn label(case: &Json) -> String {
    format!(
        "{}/{}/{} gen={}",
        case["tokenizer"].as_str().unwrap(),
        case.get("template")
            .and_then(Json::as_str)
            .unwrap_or("model"),
        case["conversation"].as_str().unwrap(),
        case["add_generation_prompt"]
    )
}

#[test]
fn templates_load_from_every_source_with_their_special_tokens() {
    let exp = expected();
    for (name, origin_tail) in [
        ("smollm2", "(GGUF tokenizer.chat_template)"),
        ("llama3", "chat_template.jinja"),
        ("llama3_1", "chat_template.jinja"),
        ("qwen2_5", "chat_template.jinja"),
        ("inline", "tokenizer_config.json"),
        ("named", "tokenizer_config.json"),
    ] {
        let (_, t) = load(name);
        assert!(t.origin().ends_with(origin_tail), "{name}: {}", t.origin());
        assert_eq!(t.special(), &special(&exp, name), "{name}");
        assert!(!t.has_generation_markers(), "{name}");
    }
    // The named list's "default" is the Llama 3 template.
    let (_, named) = load("named");
    let (_, llama3) = load("llama3");
    assert_eq!(named.source(), llama3.source());
}

#[test]
fn text_and_ids_match_transformers() {
    let exp = expected();
    let mut failures = Vec::new();
    let mut loaded = std::collections::BTreeMap::new();
    let cases = exp["cases"].as_array().unwrap();
    for case in cases {
        let name = case["tokenizer"].as_str().unwrap();
        let (tok, t) = loaded.entry(name).or_insert_with(|| load(name));
        let msgs = messages(&exp, case);
        let o = opts(&exp, case);
        let text = t.render(&msgs, &o).unwrap().text;
        if text != case["text"].as_str().unwrap() {
            failures.push(format!(
                "{}: text\n  got  {text:?}\n  want {:?}",
                label(case),
                case["text"].as_str().unwrap()
            ));
            continue;
        }
        let got = apply_chat_template(tok, t, &msgs, &o, false).unwrap();
        assert!(got.assistant_mask.is_none());
        if got.ids != ids(&case["ids"]) {
            failures.push(format!("{}: ids differ", label(case)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() >= 90, "{} cases", cases.len());
}

#[test]
fn smollm2_inserts_its_default_system_turn() {
    let (_, t) = load("smollm2");
    let msgs = vec![serde_json::json!({"role": "user", "content": "Hi"})];
    let text = t.render(&msgs, &RenderOptions::default()).unwrap().text;
    assert!(
        text.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{text}"
    );
    let msgs = vec![
        serde_json::json!({"role": "system", "content": "Be brief."}),
        serde_json::json!({"role": "user", "content": "Hi"}),
    ];
    let text = t.render(&msgs, &RenderOptions::default()).unwrap().text;
    assert!(
        text.starts_with("<|im_start|>system\nBe brief.<|im_end|>"),
        "{text}"
    );
}

#[test]
fn python_printing_and_tojson_match_transformers() {
    let exp = expected();
    let probe = &exp["probe"];
    let t = ChatTemplate::from_source(
        probe["template"].as_str().unwrap(),
        special(&exp, "qwen2_5"),
        "probe.jinja",
    )
    .unwrap();
    let msgs = exp["conversations"]["basic"].as_array().unwrap().clone();
    let text = t.render(&msgs, &RenderOptions::default()).unwrap().text;
    assert_eq!(text, probe["text"].as_str().unwrap());
    let (tok, _) = load("qwen2_5");
    let got = apply_chat_template(&tok, &t, &msgs, &RenderOptions::default(), false).unwrap();
    assert_eq!(got.ids, ids(&probe["ids"]));
}

#[test]
fn training_template_masks_match_transformers() {
    let exp = expected();
    let mut failures = Vec::new();
    for case in exp["training"].as_array().unwrap() {
        let name = case["tokenizer"].as_str().unwrap();
        let template = case["template"].as_str().unwrap();
        let (tok, _) = load(name);
        let t = ChatTemplate::from_source(
            exp["training_templates"][template].as_str().unwrap(),
            special(&exp, name),
            template,
        )
        .unwrap();
        assert!(t.has_generation_markers());
        let msgs = messages(&exp, case);
        let o = opts(&exp, case);
        assert_eq!(
            t.render(&msgs, &o).unwrap().text,
            case["text"].as_str().unwrap()
        );
        let got = apply_chat_template(&tok, &t, &msgs, &o, true).unwrap();
        if got.ids != ids(&case["ids"]) {
            failures.push(format!("{}: ids differ", label(case)));
        } else if got.assistant_mask.as_deref() != Some(&mask(&case["assistant_masks"])[..]) {
            failures.push(format!(
                "{}: mask\n  got  {:?}\n  want {:?}",
                label(case),
                got.assistant_mask,
                case["assistant_masks"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// tsd's prefix rule on the plain templates (no markers) against transformers' masks with TRL's
/// training templates: the same ids; on Llama 3 the same masks; on Qwen2.5 (ChatML) the same
/// masks except the newline token right after `<|im_start|>assistant`, which TRL's
/// `qwen2_5_training.jinja` puts inside `{% generation %}` and tsd leaves to the generation prompt
/// (`add_generation_prompt` writes it): one token per assistant message, 0 in tsd's mask, 1 in TRL's.
#[test]
fn prefix_rule_against_trl_training_masks() {
    let exp = expected();
    let mut unexpected = Vec::new();
    for case in exp["training"].as_array().unwrap() {
        let name = case["tokenizer"].as_str().unwrap();
        let (tok, t) = load(name);
        let msgs = messages(&exp, case);
        let o = opts(&exp, case);
        let got = apply_chat_template(&tok, &t, &msgs, &o, true).unwrap();
        assert_eq!(got.ids, ids(&case["ids"]), "{}", label(case));
        let want = mask(&case["assistant_masks"]);
        let got_mask = got.assistant_mask.unwrap();
        let token = |i: usize| tok.id_to_token(got.ids[i]).unwrap();
        let diff: Vec<usize> = (0..want.len())
            .filter(|&i| got_mask[i] != want[i])
            .collect();
        let assistants = msgs.iter().filter(|m| m["role"] == "assistant").count();
        let newline_after_prompt = |i: usize| {
            got_mask[i] == 0
                && want[i] == 1
                && token(i) == "\u{10a}"
                && tok
                    .decode(&got.ids[..i], false)
                    .unwrap()
                    .ends_with("<|im_start|>assistant")
        };
        let expected_diff = name == "qwen2_5"
            && diff.len() == assistants
            && diff.iter().all(|&i| newline_after_prompt(i));
        if !diff.is_empty() && !expected_diff {
            let shown: Vec<_> = diff
                .iter()
                .map(|&i| (i, token(i), got_mask[i], want[i]))
                .collect();
            unexpected.push(format!("{}: {shown:?}", label(case)));
        }
        if name == "qwen2_5" {
            assert_eq!(diff.len(), assistants, "{}", label(case));
        }
    }
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
}

/// The prefix rule works on every fixture template and conversation (SmolLM2's default system
/// turn, Llama 3.1's tools block, tool calls): the masked tokens hold each assistant reply and
/// none of the user's words.
#[test]
fn prefix_rule_masks_every_assistant_reply() {
    let exp = expected();
    let mut loaded = std::collections::BTreeMap::new();
    for case in exp["cases"].as_array().unwrap() {
        let name = case["tokenizer"].as_str().unwrap();
        let (tok, t) = loaded.entry(name).or_insert_with(|| load(name));
        let msgs = messages(&exp, case);
        let o = opts(&exp, case);
        let got = apply_chat_template(tok, t, &msgs, &o, true)
            .unwrap_or_else(|e| panic!("{}: {e}", label(case)));
        assert_eq!(got.ids, ids(&case["ids"]), "{}", label(case));
        let m = got.assistant_mask.unwrap();
        let masked: Vec<u32> = got
            .ids
            .iter()
            .zip(&m)
            .filter(|(_, &b)| b == 1)
            .map(|(&i, _)| i)
            .collect();
        let masked = tok.decode(&masked, false).unwrap();
        for msg in &msgs {
            let content = msg["content"].as_str().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if msg["role"] == "assistant" {
                assert!(
                    masked.contains(content),
                    "{}: {content:?} not in {masked:?}",
                    label(case)
                );
            } else if !msgs
                .iter()
                .any(|a| a["role"] == "assistant" && a.to_string().contains(content))
            {
                assert!(
                    !masked.contains(content),
                    "{}: {content:?} in {masked:?}",
                    label(case)
                );
            }
        }
        if msgs
            .iter()
            .any(|m| m.get("tool_calls").is_some_and(|v| !v.is_null()))
        {
            assert!(
                masked.contains("get_weather"),
                "{}: {masked:?}",
                label(case)
            );
        }
    }
}
