//! The loglik shortcut (issue 11): when a task's labels differ only in their last token, one
//! batched forward pass gives the scores the general KV-cache path gives.

mod common;

use candle_core::{DType, Device};
use common::fixture;
use tsd::data::task;
use tsd::data::Example;
use tsd::eval::prepared::shortcut_applies;
use tsd::eval::{eval_loglik, eval_loglik_general, TaskResult};
use tsd::model::Llama;

fn load(path: &std::path::Path) -> Llama {
    let src = tsd::weights::open_path(path).unwrap();
    Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32).unwrap()
}

/// Questions of different lengths (so batches carry right padding), answers cycling the labels.
fn examples(n: usize, labels: &[&str]) -> Vec<Example> {
    (0..n)
        .map(|i| Example {
            instruction: format!(
                "Please choose the correct answer to the question: {}which of these is number {i}?",
                "so, ".repeat(i * 3 % 7)
            ),
            input: String::new(),
            output: String::new(),
            answer: Some(labels[i % labels.len()].to_string()),
        })
        .collect()
}

fn assert_same(fast: &TaskResult, general: &TaskResult, tol: f64) {
    assert_eq!(fast.predictions.len(), general.predictions.len());
    assert_eq!(fast.correct, general.correct);
    for (a, b) in fast.predictions.iter().zip(&general.predictions) {
        assert_eq!((a.index, &a.prediction), (b.index, &b.prediction));
        for (x, y) in a.labels.iter().zip(&b.labels) {
            assert_eq!(
                (&x.label, x.tokens, x.greedy),
                (&y.label, y.tokens, y.greedy)
            );
            assert!(
                (x.loglik - y.loglik).abs() <= tol * (1.0 + y.loglik.abs()),
                "example {} {}: {} vs {}",
                a.index,
                x.label,
                x.loglik,
                y.loglik
            );
        }
    }
}

#[test]
fn shortcut_equals_the_general_path_on_the_tiny_model() {
    let model = load(&fixture("tiny-llama"));
    let tok = tsd::eval::PromptTokenizer::plain(
        tsd::model::tokenizer::load_tokenizer(&fixture("tiny-llama")).unwrap(),
    );
    let arc = task("ARC-Easy").unwrap();
    assert!(shortcut_applies(&tok, &arc).unwrap());
    // "true" / "false" differ in length: the general path only.
    assert!(!shortcut_applies(&tok, &task("boolq").unwrap()).unwrap());
    let ex = examples(11, arc.labels);
    let fast = eval_loglik(&model, &tok, &arc, &ex, &|| {}).unwrap();
    let general = eval_loglik_general(&model, &tok, &arc, &ex, &|| {}).unwrap();
    assert_same(&fast, &general, 1e-6);
}

#[test]
fn shortcut_equals_the_general_path_on_the_default_model() {
    let path =
        tsd::provision::default_model(false).expect("default model provisioned (run `tsd fetch`)");
    let model = load(&path);
    let tok =
        tsd::eval::PromptTokenizer::plain(tsd::model::tokenizer::load_tokenizer(&path).unwrap());
    let arc = task("ARC-Easy").unwrap();
    assert!(shortcut_applies(&tok, &arc).unwrap());
    let ex = examples(5, arc.labels);
    let fast = eval_loglik(&model, &tok, &arc, &ex, &|| {}).unwrap();
    let general = eval_loglik_general(&model, &tok, &arc, &ex, &|| {}).unwrap();
    assert_same(&fast, &general, 1e-6);
}

/// The prepared scorer (reproduce's grid) takes the shortcut's single shared prefix for ARC-Easy
/// and the per-label rows for BoolQ; both give the general path's scores.
#[test]
fn prepared_scorer_equals_the_general_path_with_and_without_the_shortcut() {
    use tsd::eval::prepared::{eval_loglik_prepared, prepare_loglik};
    let model = load(&fixture("tiny-llama"));
    let tok = tsd::eval::PromptTokenizer::plain(
        tsd::model::tokenizer::load_tokenizer(&fixture("tiny-llama")).unwrap(),
    );
    for name in ["ARC-Easy", "boolq"] {
        let t = task(name).unwrap();
        let ex = examples(5, t.labels);
        let general = eval_loglik_general(&model, &tok, &t, &ex, &|| {}).unwrap();
        for from in [0, 1] {
            let prep = prepare_loglik(&model, &tok, &t, &ex, from, &|| {}).unwrap();
            let fast = eval_loglik_prepared(&model, &prep, &|| {}).unwrap();
            assert_same(&fast, &general, 1e-6);
        }
    }
}
