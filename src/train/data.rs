//! The training side of the LLM-Adapters pipeline (the dataset and its prompts are in
//! [`crate::data`]): examples → token ids and labels (-100 = no loss) → a seeded validation split →
//! deterministic length-grouped batches. Tokenization follows `tokenize` /
//! `generate_and_tokenize_prompt` of LLM-Adapters' `finetune.py` (see [`crate::data::prompt`] for
//! the commit).

use crate::data::{train_prompt, Example};
/// Examples and their loading live in [`crate::data`]; re-exported for `reproduce/` until it
/// imports them from there.
use crate::error::{Error, Result};
use crate::model::tokenizer::{encode_truncated, Tokenizer};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};

/// Label of a position that carries no loss (PyTorch's `CrossEntropyLoss` `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Examples per length-sorted group, in batches: each epoch sorts groups of
/// `GROUP_BATCHES × batch_size` shuffled examples by length before cutting them into batches.
pub const GROUP_BATCHES: usize = 50;

/// One tokenized example: `input_ids` [T] and `labels` [T] (`IGNORE_INDEX` where no loss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Tokenizes an example as `finetune.py` does:
/// 1. the full prompt is tokenized with the tokenizer's special tokens (a BOS where the
///    tokenizer adds one) and truncated to `cutoff_len` (HF `truncation=True`);
/// 2. EOS is appended if the last token is not EOS and the length is below `cutoff_len` (so a
///    truncated example gets no EOS; an empty encoding gets one);
/// 3. labels = ids; unless `train_on_inputs`, the first `len(prompt without output)` labels
///    (that prompt tokenized the same way, without EOS) become `IGNORE_INDEX`. The mask length is
///    capped at the sequence length (Python would lengthen the labels instead).
pub fn tokenize_example(
    tok: &Tokenizer,
    eos_id: u32,
    ex: &Example,
    cutoff_len: usize,
    train_on_inputs: bool,
) -> Result<Tokenized> {
    let mut input_ids = encode_truncated(tok, &train_prompt(ex), cutoff_len)?;
    if input_ids.last() != Some(&eos_id) && input_ids.len() < cutoff_len {
        input_ids.push(eos_id);
    }
    let mut labels: Vec<i64> = input_ids.iter().map(|&i| i64::from(i)).collect();
    if !train_on_inputs {
        let user = Example {
            output: String::new(),
            ..ex.clone()
        };
        let user_len = encode_truncated(tok, &train_prompt(&user), cutoff_len)?.len();
        let n = user_len.min(labels.len());
        labels[..n].fill(IGNORE_INDEX);
    }
    Ok(Tokenized { input_ids, labels })
}

/// Salt so that the split's shuffle is not the batcher's epoch-0 shuffle when both get one seed.
const SPLIT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// Splits `0..n_examples` into (train, validation) index lists, both ascending: a seeded
/// shuffle whose first `val_size` indices are the validation set. Deterministic for a given
/// seed (and the `rand` version in Cargo.lock); it is not HF `datasets`' numpy permutation, so
/// the same seed picks different examples than `train_test_split(seed=42)` would.
pub fn split_validation(
    n_examples: usize,
    val_size: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if val_size == 0 {
        return Ok(((0..n_examples).collect(), Vec::new()));
    }
    if val_size >= n_examples {
        return Err(Error::InvalidArgument(format!(
            "validation size {val_size} leaves no training examples out of {n_examples}"
        )));
    }
    let mut idx: Vec<usize> = (0..n_examples).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ SPLIT_SALT));
    let mut val = idx[..val_size].to_vec();
    let mut train = idx[val_size..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// One epoch's batches, shared between the cache and callers.
type EpochBatches = Arc<Vec<Vec<usize>>>;

/// Deterministic length-grouped batches over examples `0..lengths.len()`.
///
/// Epoch `e` uses `StdRng::seed_from_u64(seed ^ e)`: shuffle all indices; cut them into groups of
/// [`GROUP_BATCHES`]` × batch_size`; sort each group by length, longest first (stable, so ties
/// keep the shuffled order); cut each group into batches; shuffle the batch order. Every example
/// appears exactly once per epoch; only the epoch's last group can end in a short batch, so an
/// epoch has `ceil(n / batch_size)` batches. Batch `g` of the whole run is batch
/// `g % batches_per_epoch` of epoch `g / batches_per_epoch`, so a run resumed at a saved global
/// batch index sees exactly the batches it would have seen.
#[derive(Debug)]
pub struct Batcher {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    /// A fixed order (`--data-order`): these micro-batches, cycled.
    fixed: Option<Arc<Vec<Vec<usize>>>>,
    /// The last epoch computed, since `batch_at` is called once per step.
    cache: Mutex<Option<(usize, EpochBatches)>>,
}

impl Batcher {
    /// `lengths[i]` is example i's token count; `batch_size` ≥ 1; at least one example.
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        if lengths.is_empty() {
            return Err(Error::InvalidArgument(
                "no training examples to batch".into(),
            ));
        }
        Ok(Batcher {
            lengths,
            batch_size,
            seed,
            fixed: None,
            cache: Mutex::new(None),
        })
    }

    /// A batcher that cycles through the given micro-batches (`--data-order`): each must be
    /// non-empty, at most `batch_size` long, and index one of `lengths`.
    pub fn with_order(
        lengths: Vec<usize>,
        batch_size: usize,
        order: Vec<Vec<usize>>,
    ) -> Result<Self> {
        let mut b = Self::new(lengths, batch_size, 0)?;
        if order.is_empty() {
            return Err(Error::InvalidArgument(
                "--data-order: no micro-batch given".into(),
            ));
        }
        for (k, mb) in order.iter().enumerate() {
            if mb.is_empty() || mb.len() > batch_size {
                return Err(Error::InvalidArgument(format!(
                    "--data-order: micro-batch {k} has {} example(s); expected 1 to {batch_size} (--micro-batch-size)",
                    mb.len()
                )));
            }
            if let Some(&i) = mb.iter().find(|&&i| i >= b.lengths.len()) {
                return Err(Error::InvalidArgument(format!(
                    "--data-order: micro-batch {k} names example {i}, but there are {} training examples",
                    b.lengths.len()
                )));
            }
        }
        b.fixed = Some(Arc::new(order));
        Ok(b)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Always false (`new` refuses an empty set); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// `ceil(n / batch_size)`.
    pub fn batches_per_epoch(&self) -> usize {
        if let Some(f) = &self.fixed {
            return f.len();
        }
        self.lengths.len().div_ceil(self.batch_size)
    }

    /// All batches of one epoch, in order (each a list of example indices).
    pub fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ epoch as u64);
        let mut idx: Vec<usize> = (0..self.lengths.len()).collect();
        idx.shuffle(&mut rng);
        let mut batches = Vec::with_capacity(self.batches_per_epoch());
        for group in idx.chunks_mut(GROUP_BATCHES * self.batch_size) {
            group.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            batches.extend(group.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }

    /// `(epoch, example indices)` of the run's `global`-th batch (0-based, across epochs).
    pub fn batch_at(&self, global: usize) -> (usize, Vec<usize>) {
        let per = self.batches_per_epoch();
        let (epoch, k) = (global / per, global % per);
        if let Some(f) = &self.fixed {
            return (epoch, f[k].clone());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let batches = match cache.as_ref() {
            Some((e, b)) if *e == epoch => Arc::clone(b),
            _ => {
                let b = Arc::new(self.epoch_batches(epoch));
                *cache = Some((epoch, Arc::clone(&b)));
                b
            }
        };
        (epoch, batches[k].clone())
    }

    /// The run's batches from global index `start` on, without end: `(epoch, indices)`.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = (usize, Vec<usize>)> + '_ {
        (start..).map(|g| self.batch_at(g))
    }
}

/// Right-pads a batch to its longest sequence T: ids `[B·T]` (row-major, `pad_id` at pads),
/// labels `[B·T]` (`IGNORE_INDEX` at pads), attention mask `[B·T]` (1 = token, 0 = pad), and T.
///
/// LLM-Adapters pads on the left (`padding_side = "left"`, to a multiple of 8); with causal
/// attention, RoPE's relative positions and pads masked out of attention and loss, right padding
/// gives the same loss and needs no position offsets.
pub fn pad_batch(items: &[&Tokenized], pad_id: u32) -> (Vec<u32>, Vec<i64>, Vec<u8>, usize) {
    let t = items.iter().map(|x| x.input_ids.len()).max().unwrap_or(0);
    let n = items.len() * t;
    let (mut ids, mut labels, mut mask) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for x in items {
        let pad = t - x.input_ids.len();
        ids.extend_from_slice(&x.input_ids);
        ids.extend(std::iter::repeat_n(pad_id, pad));
        labels.extend_from_slice(&x.labels);
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        mask.extend(std::iter::repeat_n(1u8, x.input_ids.len()));
        mask.extend(std::iter::repeat_n(0u8, pad));
    }
    (ids, labels, mask, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::{decode, encode, load_tokenizer};
    use std::collections::HashSet;

    /// The first example of `ARC-Easy/train.json`, as stored there.
    fn arc_easy_first() -> Example {
        Example {
            instruction: "Please choose the correct answer to the question: Which factor will most likely cause a person to develop a fever?\n\nAnswer1: a leg muscle relaxing after exercise Answer2: a bacterial population in the bloodstream Answer3: several viral particles on the skin Answer4: carbohydrates being digested in the stomach\n\nAnswer format: answer1/answer2/answer3/answer4".into(),
            input: String::new(),
            output: "the correct answer is answer2".into(),
            answer: Some("answer2".into()),
        }
    }

    fn tokenizer() -> Tokenizer {
        let p = crate::provision::default_model(false)
            .expect("default model provisioned (run `tsd fetch`)");
        load_tokenizer(&p).unwrap()
    }

    #[test]
    fn tokenize_appends_eos_and_masks_the_prompt() {
        let tok = tokenizer();
        let ex = arc_easy_first();
        let eos = 2;
        let plain = encode(&tok, &train_prompt(&ex)).unwrap();

        let t = tokenize_example(&tok, eos, &ex, 256, true).unwrap();
        assert_eq!(t.input_ids[..plain.len()], plain[..]);
        assert_eq!(t.input_ids.len(), plain.len() + 1);
        assert_eq!(t.input_ids.last(), Some(&eos));
        let as_labels: Vec<i64> = t.input_ids.iter().map(|&i| i as i64).collect();
        assert_eq!(t.labels, as_labels, "train_on_inputs: loss on every token");

        let m = tokenize_example(&tok, eos, &ex, 256, false).unwrap();
        assert_eq!(m.input_ids, t.input_ids);
        let user = Example {
            output: String::new(),
            ..ex.clone()
        };
        let user_len = encode(&tok, &train_prompt(&user)).unwrap().len();
        assert!(user_len > 0 && user_len < m.labels.len());
        assert!(m.labels[..user_len].iter().all(|&l| l == IGNORE_INDEX));
        assert_eq!(m.labels[user_len..], as_labels[user_len..]);
        let trained: Vec<u32> = m.labels[user_len..].iter().map(|&l| l as u32).collect();
        let text = decode(&tok, &trained, false).unwrap();
        assert!(
            text.ends_with("the correct answer is answer2<|im_end|>"),
            "{text:?}"
        );
    }

    #[test]
    fn tokenize_truncates_and_follows_the_eos_rule() {
        let tok = tokenizer();
        let ex = arc_easy_first();
        let eos = 2;
        let plain = encode(&tok, &train_prompt(&ex)).unwrap();
        let n = plain.len();
        // Truncated: no EOS (length is not below the cutoff).
        let t = tokenize_example(&tok, eos, &ex, 10, true).unwrap();
        assert_eq!(t.input_ids, plain[..10]);
        assert_eq!(t.labels.len(), 10);
        // Exactly at the cutoff: no room for EOS.
        let t = tokenize_example(&tok, eos, &ex, n, true).unwrap();
        assert_eq!(t.input_ids, plain);
        // One more: EOS fits.
        let t = tokenize_example(&tok, eos, &ex, n + 1, true).unwrap();
        assert_eq!(t.input_ids.len(), n + 1);
        assert_eq!(t.input_ids[n], eos);
        // Text that already ends in EOS gets no second one.
        let mut ends = ex.clone();
        ends.output.push_str("<|im_end|>");
        let t = tokenize_example(&tok, eos, &ends, 256, true).unwrap();
        assert_eq!(t.input_ids.last(), Some(&eos));
        assert_ne!(t.input_ids[t.input_ids.len() - 2], eos);
        // Masking under truncation: the prompt alone exceeds the cutoff → everything masked.
        let t = tokenize_example(&tok, eos, &ex, 10, false).unwrap();
        assert_eq!(t.labels, vec![IGNORE_INDEX; 10]);
        assert!(tokenize_example(&tok, eos, &ex, 0, true).is_err());
    }

    #[test]
    fn validation_split_is_deterministic_and_disjoint() {
        let (train, val) = split_validation(1000, 120, 42).unwrap();
        assert_eq!((train.len(), val.len()), (880, 120));
        assert_eq!(
            split_validation(1000, 120, 42).unwrap(),
            (train.clone(), val.clone())
        );
        let tset: HashSet<_> = train.iter().collect();
        assert!(val.iter().all(|i| !tset.contains(i)));
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert!(val.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(split_validation(1000, 120, 43).unwrap().1, val);
        assert_eq!(
            split_validation(5, 0, 1).unwrap(),
            ((0..5).collect(), Vec::new())
        );
        assert!(split_validation(5, 5, 1).is_err());
    }

    fn lengths(n: usize) -> Vec<usize> {
        (0..n).map(|i| 20 + (i * 37) % 200).collect()
    }

    #[test]
    fn batcher_is_deterministic_and_covers_each_example_once_per_epoch() {
        let n = 2_345;
        let a = Batcher::new(lengths(n), 16, 7).unwrap();
        let b = Batcher::new(lengths(n), 16, 7).unwrap();
        assert_eq!(a.batches_per_epoch(), n.div_ceil(16));
        for epoch in 0..3 {
            let ea = a.epoch_batches(epoch);
            assert_eq!(ea, b.epoch_batches(epoch));
            assert_eq!(ea.len(), a.batches_per_epoch());
            let mut seen: Vec<usize> = ea.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "epoch {epoch}");
            assert_eq!(ea.iter().filter(|b| b.len() != 16).count(), 1);
        }
        assert_ne!(a.epoch_batches(0), a.epoch_batches(1));
        assert_ne!(
            a.epoch_batches(0),
            Batcher::new(lengths(n), 16, 8).unwrap().epoch_batches(0)
        );
    }

    #[test]
    fn batch_at_equals_iterating_and_resumes_exactly() {
        let a = Batcher::new(lengths(300), 8, 3).unwrap();
        let per = a.batches_per_epoch();
        let run: Vec<(usize, Vec<usize>)> = (0..3)
            .flat_map(|e| a.epoch_batches(e).into_iter().map(move |b| (e, b)))
            .collect();
        for (g, expected) in run.iter().enumerate() {
            assert_eq!(&a.batch_at(g), expected, "global batch {g}");
        }
        // Random access (cache misses) and a fresh batcher resumed mid-run agree.
        let resumed = Batcher::new(lengths(300), 8, 3).unwrap();
        assert_eq!(resumed.batch_at(2 * per + 1), run[2 * per + 1]);
        assert_eq!(resumed.batch_at(3), run[3]);
        let tail: Vec<_> = resumed.iter_from(per - 2).take(5).collect();
        assert_eq!(tail[..], run[per - 2..per + 3]);
    }

    #[test]
    fn batches_are_length_grouped() {
        // All examples in one group (≤ 50 × batch size): batches partition the sorted order.
        let lens: Vec<usize> = (0..100).map(|i| (i * 7919) % 1000).collect();
        let a = Batcher::new(lens.clone(), 4, 11).unwrap();
        let ranges: Vec<(usize, usize)> = a
            .epoch_batches(0)
            .iter()
            .map(|b| {
                let l = b.iter().map(|&i| lens[i]);
                (l.clone().min().unwrap(), l.max().unwrap())
            })
            .collect();
        for (i, x) in ranges.iter().enumerate() {
            for y in &ranges[i + 1..] {
                assert!(x.1 < y.0 || y.1 < x.0, "{x:?} and {y:?} interleave");
            }
        }
        assert!(Batcher::new(vec![], 4, 0).is_err());
        assert!(Batcher::new(vec![1], 0, 0).is_err());
    }

    #[test]
    fn pad_batch_right_pads_with_ignored_labels() {
        let a = Tokenized {
            input_ids: vec![5, 6, 7],
            labels: vec![IGNORE_INDEX, 6, 7],
        };
        let b = Tokenized {
            input_ids: vec![8],
            labels: vec![8],
        };
        let (ids, labels, mask, t) = pad_batch(&[&a, &b], 0);
        assert_eq!(t, 3);
        assert_eq!(ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(
            labels,
            vec![IGNORE_INDEX, 6, 7, 8, IGNORE_INDEX, IGNORE_INDEX]
        );
        assert_eq!(mask, vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(pad_batch(&[], 0), (vec![], vec![], vec![], 0));
    }
}
