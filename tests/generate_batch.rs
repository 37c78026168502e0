//! Batched beam search (issue 11): several left-padded prompts in one search give, token for
//! token, what each prompt gives alone through the plain KV-cache path.

mod common;

use candle_core::{DType, Device};
use common::fixture;
use std::path::PathBuf;
use tsd::data::{eval_prompt, load_examples, Example};
use tsd::eval::generate::{beam_search, beam_search_batch, GenConfig};
use tsd::model::Llama;

fn load(path: &std::path::Path) -> Llama {
    let src = tsd::weights::open_path(path).unwrap();
    Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap()
}

fn one_at_a_time(model: &Llama, prompts: &[Vec<u32>], cfg: &GenConfig) -> Vec<Vec<u32>> {
    prompts
        .iter()
        .map(|p| beam_search(model, p, cfg).unwrap())
        .collect()
}

#[test]
fn batched_beam_search_equals_one_at_a_time_on_the_tiny_model() {
    let model = load(&fixture("tiny-llama"));
    let vocab = model.config.vocab_size as u32;
    // Lengths 1..17, so rows carry from 0 to 16 padding columns.
    let prompts: Vec<Vec<u32>> = [5usize, 17, 1, 9, 12, 3]
        .iter()
        .enumerate()
        .map(|(e, &n)| {
            (0..n)
                .map(|i| ((e * 131 + i * 37 + 11) as u32) % vocab)
                .collect()
        })
        .collect();
    let base = GenConfig {
        num_beams: 4,
        max_new_tokens: 10,
        length_penalty: 1.0,
        eos: vocab, // never generated: every search runs to the budget
    };
    let alone = one_at_a_time(&model, &prompts, &base);
    assert_eq!(beam_search_batch(&model, &prompts, &base).unwrap(), alone);
    // EOS = a token the searches repeat (likely everywhere), so hypotheses finish early and examples leave the
    // batch at different steps (the early-stop rule and the row bookkeeping are exercised).
    let mut early = 0;
    for eos in [alone[0][5], alone[2][5], alone[5][3]] {
        let cfg = GenConfig {
            eos,
            ..base.clone()
        };
        let alone = one_at_a_time(&model, &prompts, &cfg);
        early += alone
            .iter()
            .filter(|o| o.len() < cfg.max_new_tokens)
            .count();
        for batch in [2, 4, 6] {
            let mut got = Vec::new();
            for chunk in prompts.chunks(batch) {
                got.extend(beam_search_batch(&model, chunk, &cfg).unwrap());
            }
            assert_eq!(got, alone, "eos {eos}, batch {batch}");
        }
    }
    assert!(early > 0, "no search ended before its budget");
    // Two beams and a length penalty other than 1 go through the same rule.
    let cfg = GenConfig {
        num_beams: 2,
        length_penalty: 0.5,
        eos: alone[2][1],
        ..base
    };
    assert_eq!(
        beam_search_batch(&model, &prompts, &cfg).unwrap(),
        one_at_a_time(&model, &prompts, &cfg)
    );
}

/// Commonsense prompts: the first examples of ARC-Easy and BoolQ from the data directory
/// (`TSD_DATA`, else `../shared/data/commonsense`), else written here in the same format.
fn commonsense_prompts() -> Vec<String> {
    let dir = std::env::var_os("TSD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/commonsense")
        });
    let mut out = Vec::new();
    for (task, n) in [("ARC-Easy", 2), ("boolq", 1)] {
        let f = dir.join(task).join("test.json");
        if f.exists() {
            for ex in load_examples(&f).unwrap().into_iter().take(n) {
                out.push(eval_prompt(&ex.instruction, Some(&ex.input)));
            }
        }
    }
    if out.is_empty() {
        eprintln!(
            "{}: no commonsense test sets; using prompts written in the same format",
            dir.display()
        );
        for q in [
            "Please choose the correct answer to the question: Which tool measures mass?\n\nAnswer1: a ruler Answer2: a balance Answer3: a thermometer Answer4: a clock\n\nAnswer format: answer1/answer2/answer3/answer4",
            "Please answer the following question with true or false, question: is water wet?\n\nAnswer format: true/false",
            "Please choose the correct answer to fill in the blank to complete the given sentence: The cup fell off the table because _ was unsteady.\n\nOption1: the cup Option2: the table Answer format: option1/option2",
        ] {
            out.push(eval_prompt(q, None));
        }
    }
    out
}

#[test]
fn batched_beam_search_equals_one_at_a_time_on_the_default_model() {
    let path =
        tsd::provision::default_model(false).expect("default model provisioned (run `tsd fetch`)");
    let model = load(&path);
    let tok = tsd::model::tokenizer::load_tokenizer(&path).unwrap();
    let eos = tsd::model::tokenizer::load_tokenizer_info(&path)
        .unwrap()
        .eos;
    let prompts: Vec<Vec<u32>> = commonsense_prompts()
        .iter()
        .map(|p| tsd::model::tokenizer::encode(&tok, p).unwrap())
        .collect();
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert!(
        lens.iter().min() != lens.iter().max(),
        "prompts of one length would not exercise padding: {lens:?}"
    );
    let cfg = GenConfig {
        num_beams: 4,
        max_new_tokens: 32,
        length_penalty: 1.0,
        eos,
    };
    assert_eq!(
        beam_search_batch(&model, &prompts, &cfg).unwrap(),
        one_at_a_time(&model, &prompts, &cfg)
    );
}

/// `--batch-size 0` and an unknown `--loglik-path` are refused with exit code 2 and the value named.
#[test]
fn eval_refuses_a_zero_batch_and_an_unknown_loglik_path() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("boolq")).unwrap();
    std::fs::write(
        d.path().join("boolq/test.json"),
        r#"[{"instruction": "Is 2 even?", "input": "", "output": "", "answer": "true"}]"#,
    )
    .unwrap();
    for (flag, value, says) in [
        ("--batch-size", "0", "batch size 0"),
        ("--loglik-path", "fast", "--loglik-path `fast`"),
    ] {
        let out = common::tsd(d.path())
            .args(["eval", "--model", fixture("tiny-llama").to_str().unwrap()])
            .args([
                "--tasks",
                "boolq",
                "--data",
                d.path().to_str().unwrap(),
                "-q",
            ])
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag}: {err}");
    }
}

/// Adds a LoRA with random B (so it changes the outputs) to every linear of layers `from..`.
fn adapt_from(model: &mut Llama, from: usize) {
    use candle_core::Tensor;
    for (i, lin) in model.linears_mut().enumerate() {
        let layer: usize = lin.module.split('.').nth(2).unwrap().parse().unwrap();
        if layer < from {
            continue;
        }
        lin.add_lora(2, 4.0, false, i as u64).unwrap();
        let l = lin.lora.as_ref().unwrap();
        let (o, r) = l.b.as_tensor().dims2().unwrap();
        l.b.set(&Tensor::randn(0f32, 0.5, (o, r), &Device::Cpu).unwrap())
            .unwrap();
    }
}

/// The prepared path (lower layers' prefill computed once on the bare model, an adapter on layers
/// `from..` afterwards) against the plain batched evaluation of the adapted model: the same
/// generated text for every example, at batch sizes that split the examples unevenly.
fn prepared_equals_plain(
    path: &std::path::Path,
    examples: &[Example],
    froms: &[usize],
    cfg: &GenConfig,
) {
    use tsd::data::task;
    use tsd::eval::eval_generate_batched;
    use tsd::eval::prepared::{eval_generate_prepared, prepare_generate};
    let tok =
        tsd::eval::PromptTokenizer::plain(tsd::model::tokenizer::load_tokenizer(path).unwrap());
    let t = task("ARC-Easy").unwrap();
    let bare = eval_generate_batched(&load(path), &tok, &t, examples, cfg, 2, &|| {}).unwrap();
    for &from in froms {
        for batch in [2, 3] {
            let mut model = load(path);
            let prep = prepare_generate(&model, &tok, &t, examples, cfg, batch, from).unwrap();
            assert_eq!(prep.len(), examples.len());
            adapt_from(&mut model, from);
            let plain =
                eval_generate_batched(&model, &tok, &t, examples, cfg, batch, &|| {}).unwrap();
            let fast = eval_generate_prepared(&model, &tok, &prep, cfg, &|| {}).unwrap();
            let text = |r: &tsd::eval::TaskResult| -> Vec<Option<String>> {
                r.predictions.iter().map(|p| p.output.clone()).collect()
            };
            assert_eq!(text(&plain), text(&fast), "from {from}, batch {batch}");
            // A second adapter run from the same states: decoding never writes into them.
            let again = eval_generate_prepared(&model, &tok, &prep, cfg, &|| {}).unwrap();
            assert_eq!(
                text(&again),
                text(&fast),
                "from {from}, batch {batch}: states changed"
            );
            assert_eq!(
                (plain.correct, plain.unparseable),
                (fast.correct, fast.unparseable)
            );
            // The adapter changes what is generated (otherwise the comparison proves little).
            assert_ne!(
                text(&plain),
                text(&bare),
                "from {from}: the adapter changed nothing"
            );
        }
    }
}

fn examples_of(prompts: &[&str]) -> Vec<Example> {
    prompts
        .iter()
        .map(|q| Example {
            instruction: q.to_string(),
            input: String::new(),
            output: String::new(),
            answer: Some("answer1".into()),
        })
        .collect()
}

#[test]
fn prepared_generate_equals_batched_beam_search_on_the_tiny_model() {
    let examples = examples_of(&[
        "Q: which one?",
        "Q: which one of these is the longest question here? xxxxxxxx",
        "Q",
        "Q: a middle one, xxxx",
        "Q: yet another, yyyyyyyyyyyyyyyy",
    ]);
    let cfg = GenConfig {
        num_beams: 4,
        max_new_tokens: 12,
        length_penalty: 1.0,
        eos: 2,
    };
    prepared_equals_plain(&fixture("tiny-llama"), &examples, &[0, 1], &cfg);
}

#[test]
fn prepared_generate_equals_batched_beam_search_on_the_default_model() {
    let path =
        tsd::provision::default_model(false).expect("default model provisioned (run `tsd fetch`)");
    let eos = tsd::model::tokenizer::load_tokenizer_info(&path)
        .unwrap()
        .eos;
    let examples = examples_of(&[
        "Please choose the correct answer to the question: Which tool measures mass?\n\nAnswer1: a ruler Answer2: a balance Answer3: a thermometer Answer4: a clock\n\nAnswer format: answer1/answer2/answer3/answer4",
        "Please answer the following question with true or false, question: is water wet?\n\nAnswer format: true/false",
        "Please choose the correct answer to fill in the blank to complete the given sentence: The cup fell off the table because _ was unsteady.\n\nOption1: the cup Option2: the table Answer format: option1/option2",
    ]);
    let cfg = GenConfig {
        num_beams: 4,
        max_new_tokens: 16,
        length_penalty: 1.0,
        eos,
    };
    let layers = load(&path).num_layers();
    prepared_equals_plain(&path, &examples, &[layers - 2], &cfg);
}

/// The KV cache against the full forward pass: rows reordered and repeated by `select`, a clone
/// extended with other tokens than the original (the two share buffers until one writes), and
/// several appends into the spare capacity.
#[test]
fn kv_cache_select_clone_and_append_match_the_full_forward() {
    use candle_core::{IndexOp, Tensor};
    use tsd::model::KvCache;
    let model = load(&fixture("tiny-llama"));
    let ctx = tsd::nn::ForwardCtx::eval();
    let vocab = model.config.vocab_size as u32;
    let seq = |r: u32, n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (r * 71 + i * 13 + 5) % vocab)
            .collect()
    };
    let (a, b) = (seq(1, 10), seq(2, 10));
    let full = |s: &[u32]| -> Tensor {
        let ids = Tensor::from_vec(s.to_vec(), (1, s.len()), &Device::Cpu).unwrap();
        model
            .forward(&ids, &ctx)
            .unwrap()
            .i((0, s.len() - 1))
            .unwrap()
    };
    let close = |x: &Tensor, y: &Tensor| {
        let d = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "differs by {d}");
    };
    let prompt = Tensor::from_vec([&a[..6], &b[..6]].concat(), (2, 6), &Device::Cpu).unwrap();
    let mut cache = KvCache::new(&model);
    model.forward_cached(&prompt, 0, &mut cache).unwrap();
    // Rows b, a, b, each continued by its own next tokens.
    cache.select(&[1, 0, 1]).unwrap();
    let mut other = cache.clone();
    let rows = [&b, &a, &b];
    for step in 6..9 {
        let ids: Vec<u32> = rows.iter().map(|r| r[step]).collect();
        let l = model
            .forward_cached(
                &Tensor::from_vec(ids, (3, 1), &Device::Cpu).unwrap(),
                step,
                &mut cache,
            )
            .unwrap();
        for (i, r) in rows.iter().enumerate() {
            close(&l.i((i, 0)).unwrap(), &full(&r[..=step]));
        }
    }
    // The clone taken before those appends still holds the 6-token prefixes.
    let alt = [seq(3, 1)[0], seq(4, 1)[0], seq(5, 1)[0]];
    let l = model
        .forward_cached(
            &Tensor::from_vec(alt.to_vec(), (3, 1), &Device::Cpu).unwrap(),
            6,
            &mut other,
        )
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        close(&l.i((i, 0)).unwrap(), &full(&[&r[..6], &[alt[i]]].concat()));
    }
    // The original after the clone wrote: rows reordered without changing their number.
    cache.select(&[2, 0, 1]).unwrap();
    let rows = [&b, &b, &a];
    let ids: Vec<u32> = rows.iter().map(|r| r[9]).collect();
    let l = model
        .forward_cached(
            &Tensor::from_vec(ids, (3, 1), &Device::Cpu).unwrap(),
            9,
            &mut cache,
        )
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        close(&l.i((i, 0)).unwrap(), &full(&r[..]));
    }
}
