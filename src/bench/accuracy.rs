//! What `tsd bench bf16`'s accuracy evidence is made of: a batch of natural text (LLM-Adapters
//! commonsense test examples, as evaluation prompt + gold answer) and the comparison of two
//! models' logits on it (per-position KL divergence, top-1 agreement, loss, logit differences),
//! pure functions over `[positions, vocab]` rows so that tsd's and PyTorch's logits go through
//! the same arithmetic.

use crate::data::{eval_prompt, load_examples, test_file, Example};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// One model's logits against a reference's on the same positions. Every figure is f64
/// arithmetic over f32 logits; KL is `KL(p_reference ‖ p_candidate)` per position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogitComparison {
    /// The logits compared (e.g. `tsd bf16`).
    pub candidate: String,
    /// The logits compared against (e.g. `tsd f32`).
    pub reference: String,
    pub positions: usize,
    /// Mean over positions of `Σ_v p_ref(v) (log p_ref(v) − log p_cand(v))` (nats).
    pub kl_mean: f64,
    /// The largest per-position KL (nats).
    pub kl_max: f64,
    /// Fraction of positions whose argmax (first on ties) agrees.
    pub top1_agreement: f64,
    /// Mean cross-entropy of the targets under the reference's logits (nats).
    pub loss_reference: f64,
    pub loss_candidate: f64,
    /// `loss_candidate − loss_reference`.
    pub loss_diff: f64,
    /// RMS of `candidate − reference` over every logit.
    pub rms_logit_diff: f64,
    pub max_abs_logit_diff: f64,
    /// The largest |logit| of the reference.
    pub max_abs_logit_reference: f64,
}

/// `log softmax(row)` in f64 (max-shifted).
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let lse = m + row
        .iter()
        .map(|&x| (f64::from(x) - m).exp())
        .sum::<f64>()
        .ln();
    row.iter().map(|&x| f64::from(x) - lse).collect()
}

/// `KL(p ‖ q) = Σ p (log p − log q)` from log-probabilities (terms with `p = 0` count 0).
pub fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| {
            let p = lp.exp();
            if p == 0.0 {
                0.0
            } else {
                p * (lp - lq)
            }
        })
        .sum()
}

/// The index of the largest value (the first of equals).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Mean over rows of `−log softmax(row)[target]`: `logits` [targets.len(), vocab].
pub fn cross_entropy(logits: &[f32], vocab: usize, targets: &[u32]) -> f64 {
    let total: f64 = logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &t)| -log_softmax(row)[t as usize])
        .sum();
    total / targets.len() as f64
}

/// `candidate` against `reference`, both `[targets.len(), vocab]` row-major logits.
pub fn compare(
    candidate_name: &str,
    reference_name: &str,
    candidate: &[f32],
    reference: &[f32],
    vocab: usize,
    targets: &[u32],
) -> Result<LogitComparison> {
    let n = targets.len();
    if vocab == 0 || n == 0 || candidate.len() != n * vocab || reference.len() != n * vocab {
        return Err(Error::Internal(format!(
            "logit comparison: {} and {} logits for {n} positions of {vocab}",
            candidate.len(),
            reference.len()
        )));
    }
    let (mut kl_sum, mut kl_max, mut agree) = (0f64, 0f64, 0usize);
    for (c, r) in candidate.chunks(vocab).zip(reference.chunks(vocab)) {
        let kl = kl_divergence(&log_softmax(r), &log_softmax(c));
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        agree += usize::from(argmax(c) == argmax(r));
    }
    let (mut sq, mut max_d, mut max_r) = (0f64, 0f64, 0f64);
    for (&c, &r) in candidate.iter().zip(reference) {
        let d = (f64::from(c) - f64::from(r)).abs();
        sq += d * d;
        max_d = max_d.max(d);
        max_r = max_r.max(f64::from(r).abs());
    }
    let (loss_c, loss_r) = (
        cross_entropy(candidate, vocab, targets),
        cross_entropy(reference, vocab, targets),
    );
    Ok(LogitComparison {
        candidate: candidate_name.to_string(),
        reference: reference_name.to_string(),
        positions: n,
        kl_mean: kl_sum / n as f64,
        kl_max,
        top1_agreement: agree as f64 / n as f64,
        loss_reference: loss_r,
        loss_candidate: loss_c,
        loss_diff: loss_c - loss_r,
        rms_logit_diff: (sq / candidate.len() as f64).sqrt(),
        max_abs_logit_diff: max_d,
        max_abs_logit_reference: max_r,
    })
}

/// The test sets of a data directory in LLM-Adapters layout: every `<task>/test.json`, sorted by
/// task name. A directory without one is refused (bad `--data`).
pub fn commonsense_tests(dir: &Path) -> Result<Vec<(String, Vec<Example>)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::InvalidArgument(format!(
            "data directory {} (--data, $TSD_DATA): not readable ({e})",
            dir.display()
        ))
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("test.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "data directory {} (--data, $TSD_DATA): no <task>/test.json in it (LLM-Adapters layout expected)",
            dir.display()
        )));
    }
    names
        .into_iter()
        .map(|t| {
            let ex = load_examples(&test_file(dir, &t))?;
            Ok((t, ex))
        })
        .collect()
}

/// One example as text: the evaluation prompt `tsd eval` gives the model
/// ([`crate::data::eval_prompt`]) followed by the gold answer as the training data writes it
/// (`output`, e.g. "the correct answer is true").
pub fn example_text(ex: &Example) -> String {
    eval_prompt(&ex.instruction, Some(&ex.input)) + &ex.output
}

/// A token stream of at least `need` ids: examples taken round-robin over `tasks` (in the given
/// order) from each task's first, each [`example_text`] encoded by `encode` and followed by
/// `eos`. Returns the stream and how many examples of each task it holds (a last example may be
/// cut by the caller). Too few examples in all is refused.
pub fn round_robin_stream(
    tasks: &[(String, Vec<Example>)],
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    eos: u32,
    need: usize,
) -> Result<(Vec<u32>, Vec<usize>)> {
    let mut stream = Vec::with_capacity(need);
    let mut counts = vec![0usize; tasks.len()];
    let longest = tasks.iter().map(|t| t.1.len()).max().unwrap_or(0);
    'outer: for i in 0..longest {
        for (k, (_, examples)) in tasks.iter().enumerate() {
            let Some(ex) = examples.get(i) else { continue };
            if stream.len() >= need {
                break 'outer;
            }
            stream.extend(encode(&example_text(ex))?);
            stream.push(eos);
            counts[k] += 1;
        }
    }
    if stream.len() < need {
        return Err(Error::InvalidArgument(format!(
            "the test examples give {} tokens, fewer than the {need} the accuracy batch needs",
            stream.len()
        )));
    }
    Ok((stream, counts))
}

/// Cuts `stream` into `batch` rows of `seq_len + 1` tokens: inputs [batch, seq_len] (each row's
/// first `seq_len`) and targets [batch · seq_len] (the next token of each input), row-major.
pub fn next_token_rows(stream: &[u32], batch: usize, seq_len: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for row in stream.chunks_exact(seq_len + 1).take(batch) {
        inputs.extend_from_slice(&row[..seq_len]);
        targets.extend_from_slice(&row[1..]);
    }
    (inputs, targets)
}

/// sha256 (hex) of token ids as little-endian u32 bytes.
pub fn ids_sha256(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    crate::fsutil::sha256_hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal to f32 input precision (ln 3 as an f32 is ln 3 to 1e-8).
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-7
    }

    /// Equal to f64 rounding, for f64 inputs.
    fn exact(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-14
    }

    #[test]
    fn log_softmax_of_known_rows() {
        let l = log_softmax(&[3f32.ln(), 0.0]);
        assert!(
            close(l[0], 0.75f64.ln()) && close(l[1], 0.25f64.ln()),
            "{l:?}"
        );
        // Shift-invariant and stable for large logits.
        let l = log_softmax(&[1000.0, 1000.0]);
        assert!(close(l[0], 0.5f64.ln()) && close(l[1], 0.5f64.ln()));
    }

    #[test]
    fn kl_of_two_known_distributions() {
        // p = (1/2, 1/2), q = (3/4, 1/4): KL = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3).
        let p = [0.5f64.ln(), 0.5f64.ln()];
        let q = [0.75f64.ln(), 0.25f64.ln()];
        assert!(exact(kl_divergence(&p, &q), 0.5 * (4.0f64 / 3.0).ln()));
        // And the other way: ¾ ln(3/2) + ¼ ln(1/2).
        let want = 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln();
        assert!(exact(kl_divergence(&q, &p), want));
        assert_eq!(kl_divergence(&p, &p), 0.0);
        // A zero-probability reference term counts 0, not NaN.
        assert_eq!(kl_divergence(&[0.0, f64::NEG_INFINITY], &[0.0, -5.0]), 0.0);
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[2.0]), 0);
    }

    #[test]
    fn cross_entropy_by_hand() {
        // Rows (0, 0) and (ln 3, 0); targets 1 and 0: (ln 2 − ln ¾) / 2.
        let logits = [0.0, 0.0, 3f32.ln(), 0.0];
        let want = (2f64.ln() - 0.75f64.ln()) / 2.0;
        assert!((cross_entropy(&logits, 2, &[1, 0]) - want).abs() < 1e-7);
    }

    #[test]
    fn comparison_by_hand() {
        // Position 0: reference (0, 0), candidate (ln 3, 0), both argmax 0 (the reference's tie
        // goes to the first); position 1: reference (1, 0), candidate (0, 1), argmax 0 against 1.
        let reference = [0.0, 0.0, 1.0, 0.0];
        let candidate = [3f32.ln(), 0.0, 0.0, 1.0];
        let c = compare("c", "r", &candidate, &reference, 2, &[0, 0]).unwrap();
        let kl0 = 0.5 * (4.0f64 / 3.0).ln();
        // Position 1: p = softmax(1, 0), q = its mirror (p1, p0).
        let (p0, p1) = (1f64.exp() / (1f64.exp() + 1.0), 1.0 / (1f64.exp() + 1.0));
        let kl1 = p0 * (p0 / p1).ln() + p1 * (p1 / p0).ln();
        assert!(close(c.kl_mean, (kl0 + kl1) / 2.0), "{c:?}");
        assert!(close(c.kl_max, kl0.max(kl1)));
        assert_eq!(c.top1_agreement, 0.5);
        assert_eq!(c.positions, 2);
        let d = [f64::from(3f32.ln()), 0.0, 1.0, 1.0];
        let rms = (d.iter().map(|x| x * x).sum::<f64>() / 4.0).sqrt();
        assert!(close(c.rms_logit_diff, rms));
        assert!(close(c.max_abs_logit_diff, f64::from(3f32.ln())));
        assert_eq!(c.max_abs_logit_reference, 1.0);
        let lr = cross_entropy(&reference, 2, &[0, 0]);
        let lc = cross_entropy(&candidate, 2, &[0, 0]);
        assert!(close(c.loss_reference, lr) && close(c.loss_candidate, lc));
        assert!(close(c.loss_diff, lc - lr));
        // Identical logits: nothing differs.
        let same = compare("a", "a", &reference, &reference, 2, &[0, 1]).unwrap();
        assert_eq!(
            (same.kl_mean, same.kl_max, same.top1_agreement),
            (0.0, 0.0, 1.0)
        );
        assert_eq!((same.rms_logit_diff, same.max_abs_logit_diff), (0.0, 0.0));
        // Mismatched lengths are a bug, not a figure.
        assert!(compare("a", "b", &reference, &reference[..2], 2, &[0, 1]).is_err());
    }

    fn ex(instruction: &str, output: &str) -> Example {
        Example {
            instruction: instruction.into(),
            input: String::new(),
            output: output.into(),
            answer: None,
        }
    }

    /// A toy tokenizer: one id per byte.
    fn bytes(text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }

    #[test]
    fn stream_is_round_robin_eval_prompt_plus_answer_then_eos() {
        let tasks = vec![
            ("a".to_string(), vec![ex("A0?", "x"), ex("A1?", "y")]),
            ("b".to_string(), vec![ex("B0?", "z")]),
        ];
        let eos = 1000;
        let one = |e: &Example| {
            let mut v = bytes(&(eval_prompt(&e.instruction, None) + &e.output)).unwrap();
            v.push(eos);
            v
        };
        let all: Vec<u32> = [&tasks[0].1[0], &tasks[1].1[0], &tasks[0].1[1]]
            .into_iter()
            .flat_map(one)
            .collect();
        let (s, counts) = round_robin_stream(&tasks, &bytes, eos, all.len()).unwrap();
        assert_eq!(s, all);
        assert_eq!(counts, vec![2, 1]);
        // Stops once enough: one token more than the first example needs the second.
        let first = one(&tasks[0].1[0]).len();
        let (s, counts) = round_robin_stream(&tasks, &bytes, eos, first + 1).unwrap();
        assert_eq!(counts, vec![1, 1]);
        assert_eq!(s[..first], all[..first]);
        assert_eq!(s[first - 1], eos);
        let (_, counts) = round_robin_stream(&tasks, &bytes, eos, first).unwrap();
        assert_eq!(counts, vec![1, 0]);
        assert!(round_robin_stream(&tasks, &bytes, eos, all.len() + 1).is_err());
        // The prompt is tsd eval's, the answer the training data's.
        assert_eq!(
            example_text(&tasks[0].1[0]),
            format!("{}x", eval_prompt("A0?", None))
        );
    }

    #[test]
    fn rows_are_inputs_and_next_tokens() {
        let stream: Vec<u32> = (0..11).collect();
        let (inputs, targets) = next_token_rows(&stream, 2, 4);
        assert_eq!(inputs, vec![0, 1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(targets, vec![1, 2, 3, 4, 6, 7, 8, 9]);
        assert_eq!(
            ids_sha256(&[1]),
            crate::fsutil::sha256_hex(&[1, 0, 0, 0]),
            "little-endian u32"
        );
    }

    #[test]
    fn test_sets_load_sorted_and_a_dir_without_any_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm-adapters");
        for t in ["social_i_qa", "ARC-Easy"] {
            std::fs::create_dir(d.path().join(t)).unwrap();
            let head = std::fs::read_dir(fixture.join(t))
                .unwrap()
                .flatten()
                .find(|e| e.path().extension().is_some_and(|x| x == "json"))
                .unwrap();
            std::fs::copy(head.path(), d.path().join(t).join("test.json")).unwrap();
        }
        std::fs::create_dir(d.path().join("empty")).unwrap();
        let tests = commonsense_tests(d.path()).unwrap();
        let names: Vec<&str> = tests.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["ARC-Easy", "social_i_qa"]);
        assert!(tests.iter().all(|t| !t.1.is_empty()));
        let e = commonsense_tests(&d.path().join("empty")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = commonsense_tests(&d.path().join("missing")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
}
