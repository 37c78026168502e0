//! What a reproduction's runs say, computed once in the library from the saved per-run records
//! and per-example predictions: per-configuration means, a paired bootstrap 95 % interval for
//! every comparison the verdict makes, the minimum detectable effect, the parameter-efficiency
//! ratio with the cases where it is not informative, tasks at chance, TSD capture on all adapted
//! modules and on q, k, v alone (the paper's set), the paper's table and the verdict. The CLI
//! (terminal table, CSV) and the HTML page render this record; neither recomputes it.
//!
//! The bootstrap (README, Definitions: uncertainty): a comparison of configuration A (e.g.
//! LoRA-Dash r = 1) with B (LoRA r = 4) uses the seeds both ran and, per task, the test examples
//! both scored under the headline protocol. One resample draws the seeds with replacement and,
//! per task, the examples with replacement (the same draw for every seed and for both
//! configurations: the pairing), and computes the mean over drawn seeds of the mean over tasks of
//! A's minus B's accuracy on the drawn examples. [`RESAMPLES`] resamples from a fixed seed, the
//! 2.5th and 97.5th percentiles form the interval; its standard deviation is the standard error,
//! and `(z₀.₉₇₅ + z₀.₈) · SE` the difference this run would detect with 80 % power at the 5 % level.

use super::{Preset, Protocol, RunResult, Scores};
use crate::error::{Error, Result};
use crate::names::Method;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 4000;
/// The bootstrap's random seed: the same records give the same intervals.
pub const BOOTSTRAP_SEED: u64 = 0x7d5_b007;
const Z_975: f64 = 1.959_963_984_540_054;
const Z_80: f64 = 0.841_621_233_572_914_4;

/// One run's per-example outcome under the headline protocol: task → `(example index, correct,
/// gold answer)`, in index order.
pub type Outcomes = BTreeMap<String, Vec<(usize, bool, String)>>;

#[derive(Deserialize)]
struct SavedPrediction {
    index: usize,
    answer: String,
    correct: bool,
}

#[derive(Deserialize)]
struct SavedTask {
    task: String,
    protocol: String,
    predictions: Vec<SavedPrediction>,
}

/// Reads a run's `predictions.json` (what `tsd reproduce` and `tsd eval --predictions` write) and
/// keeps the `protocol` results.
pub fn read_outcomes(path: &Path, protocol: Protocol) -> Result<Outcomes> {
    let bytes = crate::fsutil::read(path)?;
    let saved: Vec<SavedTask> = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let want = protocol.as_str();
    let mut out = Outcomes::new();
    for t in saved.into_iter().filter(|t| t.protocol == want) {
        let mut v: Vec<(usize, bool, String)> = t
            .predictions
            .into_iter()
            .map(|p| (p.index, p.correct, p.answer))
            .collect();
        v.sort_by_key(|x| x.0);
        out.insert(t.task, v);
    }
    Ok(out)
}

/// A point estimate with its bootstrap 95 % interval and standard error (percentage points).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    pub se: f64,
}

impl Interval {
    /// Whether the interval lies entirely on one side of 0.
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// `+1.2 (−0.5 … +2.9)`.
    pub fn describe(&self) -> String {
        format!("{:+.1} ({:+.1} … {:+.1})", self.estimate, self.lo, self.hi)
    }
}

/// One method and rank, over its seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigStats {
    pub method: Method,
    pub rank: usize,
    pub seeds: Vec<u64>,
    /// Mean trainable parameters (LoRA A, B; Dash: + Δσ) and their % of the base model.
    pub trainable_params: f64,
    pub trainable_pct: f64,
    /// Mean over seeds of the headline average (%), half the range over seeds, and the bootstrap
    /// interval of the mean (examples and seeds resampled).
    pub mean: f64,
    pub spread: f64,
    pub ci: Option<Interval>,
    pub generate_mean: Option<f64>,
    pub unparseable_mean: Option<f64>,
}

/// A − B for two configurations, paired over examples and seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub a_method: Method,
    pub a_rank: usize,
    pub b_method: Method,
    pub b_rank: usize,
    /// `None`: over the mean of all tasks (the headline); else one task.
    pub task: Option<String>,
    pub seeds: usize,
    /// Examples per seed (summed over tasks) both configurations scored.
    pub examples: usize,
    /// Difference in accuracy points (A − B).
    pub diff: Interval,
    /// Minimum detectable effect (points): `(z₀.₉₇₅ + z₀.₈) · SE`.
    pub mde: f64,
}

impl Comparison {
    /// `LoRA-Dash r=1 − LoRA r=4`.
    pub fn label(&self) -> String {
        format!(
            "{} r={} − {} r={}",
            self.a_method.label(),
            self.a_rank,
            self.b_method.label(),
            self.b_rank
        )
    }
}

/// The parameter-efficiency ratio for one LoRA-Dash rank (overall or on one task).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Efficiency {
    pub dash_rank: usize,
    pub task: Option<String>,
    pub dash_mean: f64,
    /// Smallest LoRA rank of the grid whose accuracy is not significantly below LoRA-Dash's
    /// (the paired interval of LoRA-Dash − LoRA includes 0 or lies below it).
    pub lora_rank: Option<usize>,
    /// `lora_rank / dash_rank`; `None` when no LoRA rank of the grid reaches LoRA-Dash (the
    /// ratio is then above `max LoRA rank / dash_rank`).
    pub ratio: Option<f64>,
    /// False when LoRA's accuracy does not rise significantly from its lowest to its highest rank
    /// in the grid: rank buys nothing there, so a ratio of ranks says nothing.
    pub informative: bool,
    pub note: String,
}

/// Whether a task's runs beat chance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskChance {
    pub task: String,
    pub examples: usize,
    /// 100 / the size of the task's label set (`answer1`–`answer5` for the multiple-choice tasks,
    /// whose questions mostly have fewer options: a floor, not the chance level).
    pub uniform: f64,
    /// Accuracy of always answering the most frequent gold answer among these examples (%): the
    /// level a run must beat.
    pub majority: f64,
    pub runs: usize,
    /// Runs whose Wilson 95 % lower bound on accuracy lies above `majority`.
    pub runs_above: usize,
    /// No run is above chance: the task cannot inform the comparison.
    pub at_chance: bool,
}

/// TSD capture accuracy@(8,16) at one step, mean over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureStats {
    pub method: Method,
    pub rank: usize,
    pub step: usize,
    /// Over every adapted module (q, k, v, up, down here).
    pub all: Option<f64>,
    /// Over q, k, v only: the paper's module set.
    pub qkv: Option<f64>,
    /// The tested capture (a LoRA-Dash run's LoRA part) beside its rotation null, over all
    /// modules and over q, k, v; mean over seeds (absent in results from before the null model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_all: Option<CaptureNull>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_qkv: Option<CaptureNull>,
    /// The same per module type (empty in results from before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_type: Vec<TypeCapture>,
}

/// One module type's capture beside its null at one step, mean over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TypeCapture {
    pub module_type: String,
    pub null: CaptureNull,
}

/// One configuration's final capture against one control, mean over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlStats {
    pub method: Method,
    pub rank: usize,
    /// `seed`, `cross-task` or `shuffled answers`.
    pub control: String,
    pub all: CaptureNull,
    pub qkv: Option<CaptureNull>,
}

fn control_stats(controls: &[super::controls::ControlCapture]) -> Vec<ControlStats> {
    let mut keys: Vec<(Method, usize, String)> = Vec::new();
    for c in controls {
        let k = (c.method, c.rank, c.control.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(method, rank, control)| {
            let of: Vec<&super::controls::ControlCapture> = controls
                .iter()
                .filter(|c| c.method == method && c.rank == rank && c.control == control)
                .collect();
            let all: Vec<&crate::track::TrackNull> = of.iter().map(|c| &c.all).collect();
            let qkv: Vec<&crate::track::TrackNull> =
                of.iter().filter_map(|c| c.qkv.as_ref()).collect();
            ControlStats {
                method,
                rank,
                control,
                all: CaptureNull::mean_of(&all),
                qkv: (!qkv.is_empty()).then(|| CaptureNull::mean_of(&qkv)),
            }
        })
        .collect()
}

/// LoRA-Dash's picks at one rank against the LoRA runs of the same rank and seeds: how many of
/// the directions Dash amplifies are enriched (|z| above the module's null max-|z| threshold) in
/// Dash's own LoRA part and in the plain LoRA of the same seed, and whether larger |Δσ| goes with
/// larger |z| in that LoRA.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DashPickStats {
    pub rank: usize,
    pub seeds: usize,
    pub picks: usize,
    pub near_null: usize,
    pub enriched_in_dash_lora: usize,
    pub enriched_in_lora: usize,
    pub mean_abs_z_dash_lora: f64,
    pub mean_abs_z_lora: f64,
    /// Spearman's rank correlation of |Δσ| with the paired LoRA's |z| over the picks.
    pub spearman_delta_sigma_z_lora: Option<f64>,
}

fn dash_pick_stats(pairs: &[super::controls::DashPair]) -> Vec<DashPickStats> {
    let mut ranks: Vec<usize> = pairs.iter().map(|p| p.rank).collect();
    ranks.sort();
    ranks.dedup();
    ranks
        .into_iter()
        .map(|rank| {
            let of: Vec<&super::controls::DashPair> =
                pairs.iter().filter(|p| p.rank == rank).collect();
            let picks: Vec<&super::controls::PickPair> =
                of.iter().flat_map(|p| p.picks.iter()).collect();
            let m = |f: &dyn Fn(&super::controls::PickPair) -> f64| {
                crate::stats::mean(&picks.iter().map(|p| f(p)).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            let ds: Vec<f64> = picks.iter().map(|p| p.delta_sigma.abs()).collect();
            let zl: Vec<f64> = picks.iter().map(|p| p.z_lora.abs()).collect();
            DashPickStats {
                rank,
                seeds: of.len(),
                picks: picks.len(),
                near_null: picks
                    .iter()
                    .filter(|p| p.sigma_ratio < crate::directions::NEAR_NULL_RATIO)
                    .count(),
                enriched_in_dash_lora: picks
                    .iter()
                    .filter(|p| p.z_dash_lora.abs() > p.threshold_dash)
                    .count(),
                enriched_in_lora: picks
                    .iter()
                    .filter(|p| p.z_lora.abs() > p.threshold_lora)
                    .count(),
                mean_abs_z_dash_lora: m(&|p| p.z_dash_lora.abs()),
                mean_abs_z_lora: m(&|p| p.z_lora.abs()),
                spearman_delta_sigma_z_lora: crate::stats::spearman(&ds, &zl),
            }
        })
        .collect()
}

/// Capture beside its null at one step, mean over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureNull {
    /// Mean tested accuracy, its null mean and the null's 95th percentile.
    pub accuracy: f64,
    pub null_mean: f64,
    pub null_p95: f64,
    pub kappa: Option<f64>,
    /// Module verdicts summed over seeds.
    pub above_null: usize,
    pub not_above_null: usize,
    pub untestable: usize,
    pub seeds: usize,
}

impl CaptureNull {
    fn mean_of(points: &[&crate::track::TrackNull]) -> Self {
        let m = |f: &dyn Fn(&crate::track::TrackNull) -> f64| {
            crate::stats::mean(&points.iter().map(|p| f(p)).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        CaptureNull {
            accuracy: m(&|p| p.mean_accuracy),
            null_mean: m(&|p| p.mean_null),
            null_p95: m(&|p| p.mean_null_p95),
            kappa: crate::stats::mean(
                &points
                    .iter()
                    .filter_map(|p| p.mean_kappa)
                    .collect::<Vec<_>>(),
            ),
            above_null: points.iter().map(|p| p.above_null).sum(),
            not_above_null: points.iter().map(|p| p.not_above_null).sum(),
            untestable: points.iter().map(|p| p.untestable).sum(),
            seeds: points.len(),
        }
    }
}

/// One row of the paper's LLaMA-7B table, with Params% recomputed by `tsd params`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PaperRow {
    pub model: String,
    pub method: String,
    pub rank: Option<usize>,
    pub params_pct: String,
    pub params_pct_tsd: Option<String>,
    /// Per task in [`Summary::paper_tasks`] order (%).
    pub tasks: Vec<Option<f64>>,
    pub avg: f64,
}

/// Everything the verdict and the pages say, computed once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub protocol: Protocol,
    pub bootstrap: String,
    pub configs: Vec<ConfigStats>,
    /// Every LoRA-Dash rank against every LoRA rank (headline average).
    pub comparisons: Vec<Comparison>,
    /// LoRA at its highest rank against its lowest: does rank buy accuracy here?
    pub rank_effect: Option<Comparison>,
    /// Median over `comparisons` of their minimum detectable effect (points).
    pub mde: Option<f64>,
    pub efficiency: Vec<Efficiency>,
    /// Per task above chance.
    pub efficiency_by_task: Vec<Efficiency>,
    pub task_comparisons: Vec<Comparison>,
    pub chance: Vec<TaskChance>,
    pub capture: Vec<CaptureStats>,
    /// Every configuration's final capture against the empirical controls, mean over seeds
    /// (empty without controls or in results from before them).
    #[serde(default)]
    pub controls: Vec<ControlStats>,
    /// LoRA-Dash's picks against the paired LoRA runs, per rank (empty without controls).
    #[serde(default)]
    pub dash_picks: Vec<DashPickStats>,
    pub paper_tasks: Vec<String>,
    pub paper: Vec<PaperRow>,
    pub verdict: String,
}

impl Summary {
    /// The headline's chance levels `(majority, uniform)`: the means over tasks of each task's
    /// recorded majority and uniform levels (uniform where the task has one).
    pub fn chance_means(&self) -> (Option<f64>, Option<f64>) {
        let majority: Vec<f64> = self.chance.iter().map(|c| c.majority).collect();
        let uniform: Vec<f64> = self
            .chance
            .iter()
            .filter(|c| c.uniform > 0.0)
            .map(|c| c.uniform)
            .collect();
        (crate::stats::mean(&majority), crate::stats::mean(&uniform))
    }
}

/// Per-example differences for one comparison: `d[seed][task]` aligned by example index.
struct Paired {
    d: Vec<Vec<Vec<f64>>>,
    examples: usize,
}

/// Aligns A's and B's outcomes: seeds both have, and per task the indices every involved run scored.
fn pair(a: &[&Outcomes], b: Option<&[&Outcomes]>, task: Option<&str>) -> Option<Paired> {
    let runs: Vec<&Outcomes> = a.iter().chain(b.unwrap_or(&[]).iter()).copied().collect();
    let first = runs.first()?;
    let tasks: Vec<&String> = first
        .keys()
        .filter(|t| task.is_none_or(|x| x == t.as_str()))
        .filter(|t| runs.iter().all(|r| r.contains_key(*t)))
        .collect();
    let mut common: Vec<Vec<usize>> = Vec::new();
    for t in &tasks {
        let mut idx: Vec<usize> = first[*t].iter().map(|x| x.0).collect();
        for r in &runs[1..] {
            let have: std::collections::BTreeSet<usize> = r[*t].iter().map(|x| x.0).collect();
            idx.retain(|i| have.contains(i));
        }
        common.push(idx);
    }
    let value = |o: &Outcomes, t: &str, idx: &[usize]| -> Vec<f64> {
        let m: BTreeMap<usize, bool> = o[t].iter().map(|x| (x.0, x.1)).collect();
        idx.iter().map(|i| f64::from(u8::from(m[i]))).collect()
    };
    let mut d = Vec::new();
    for (s, oa) in a.iter().enumerate() {
        let mut per_task = Vec::new();
        for (t, idx) in tasks.iter().zip(&common) {
            if idx.is_empty() {
                continue;
            }
            let va = value(oa, t, idx);
            let row = match b {
                Some(b) => {
                    let vb = value(b[s], t, idx);
                    va.iter().zip(&vb).map(|(x, y)| x - y).collect()
                }
                None => va,
            };
            per_task.push(row);
        }
        if per_task.is_empty() {
            return None;
        }
        d.push(per_task);
    }
    let examples = d.first().map_or(0, |t| t.iter().map(Vec::len).sum());
    (examples > 0).then_some(Paired { d, examples })
}

/// Mean over seeds of the mean over tasks of the per-task mean, ×100.
fn statistic(d: &[Vec<Vec<f64>>]) -> f64 {
    let per_seed: Vec<f64> = d
        .iter()
        .map(|tasks| {
            tasks
                .iter()
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
                .sum::<f64>()
                / tasks.len() as f64
        })
        .collect();
    100.0 * per_seed.iter().sum::<f64>() / per_seed.len() as f64
}

/// The two-way (seeds × examples) paired bootstrap of [`statistic`] (see the module docs).
fn bootstrap(p: &Paired) -> Interval {
    let mut rng = rand::rngs::StdRng::seed_from_u64(BOOTSTRAP_SEED);
    let seeds = p.d.len();
    let lens: Vec<usize> = p.d[0].iter().map(Vec::len).collect();
    let mut stats = Vec::with_capacity(RESAMPLES);
    let mut counts: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
    for _ in 0..RESAMPLES {
        for (c, &n) in counts.iter_mut().zip(&lens) {
            c.iter_mut().for_each(|x| *x = 0);
            for _ in 0..n {
                c[rng.random_range(0..n)] += 1;
            }
        }
        let mut total = 0.0;
        for _ in 0..seeds {
            let s = rng.random_range(0..seeds);
            let mut acc = 0.0;
            for (t, c) in counts.iter().enumerate() {
                let v = &p.d[s][t];
                let sum: f64 = v.iter().zip(c).map(|(x, &k)| x * f64::from(k)).sum();
                acc += sum / lens[t] as f64;
            }
            total += acc / lens.len() as f64;
        }
        stats.push(100.0 * total / seeds as f64);
    }
    stats.sort_by(f64::total_cmp);
    let q = |f: f64| stats[((f * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    let m = stats.iter().sum::<f64>() / RESAMPLES as f64;
    let var = stats.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (RESAMPLES - 1) as f64;
    Interval {
        estimate: statistic(&p.d),
        lo: q(0.025),
        hi: q(0.975),
        se: var.sqrt(),
    }
}

/// Wilson score 95 % interval's lower bound for `k` of `n` (a fraction).
fn wilson_lower(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, Z_975);
    let denom = 1.0 + z * z / n;
    let centre = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (centre - half) / denom
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Mean and half the range.
fn mean_spread(xs: &[f64]) -> (f64, f64) {
    let m = crate::stats::mean(xs).unwrap_or(0.0);
    let hi = xs.iter().copied().fold(f64::MIN, f64::max);
    let lo = xs.iter().copied().fold(f64::MAX, f64::min);
    (m, if xs.len() > 1 { (hi - lo) / 2.0 } else { 0.0 })
}

/// The inputs of [`summarize`]: each run's result with its per-example outcomes.
pub struct RunData<'a> {
    pub result: &'a RunResult,
    pub outcomes: Outcomes,
}

/// The grid's runs of one method and rank, seed-sorted.
fn of<'a>(runs: &'a [RunData<'a>], m: Method, rank: usize) -> Vec<&'a RunData<'a>> {
    let mut v: Vec<&RunData> = runs
        .iter()
        .filter(|r| r.result.method == m && r.result.rank == rank)
        .collect();
    v.sort_by_key(|r| r.result.seed);
    v
}

fn compare(
    runs: &[RunData],
    (am, ar): (Method, usize),
    (bm, br): (Method, usize),
    task: Option<&str>,
) -> Option<Comparison> {
    let a = of(runs, am, ar);
    let b = of(runs, bm, br);
    let seeds: Vec<u64> = a
        .iter()
        .map(|r| r.result.seed)
        .filter(|s| b.iter().any(|x| x.result.seed == *s))
        .collect();
    fn pick<'r>(v: &[&'r RunData<'r>], seeds: &[u64]) -> Vec<&'r Outcomes> {
        seeds
            .iter()
            .map(|s| {
                &v.iter()
                    .find(|r| r.result.seed == *s)
                    .expect("a common seed")
                    .outcomes
            })
            .collect()
    }
    let (oa, ob) = (pick(&a, &seeds), pick(&b, &seeds));
    let p = pair(&oa, Some(&ob), task)?;
    let diff = bootstrap(&p);
    Some(Comparison {
        a_method: am,
        a_rank: ar,
        b_method: bm,
        b_rank: br,
        task: task.map(String::from),
        seeds: seeds.len(),
        examples: p.examples,
        mde: (Z_975 + Z_80) * diff.se,
        diff,
    })
}

/// The ratio for one Dash rank from its comparisons with each LoRA rank (ascending).
fn efficiency_of(
    dash_rank: usize,
    dash_mean: f64,
    task: Option<&str>,
    against: &[&Comparison],
    rank_effect: Option<&Comparison>,
    max_lora: usize,
) -> Efficiency {
    let reach = against.iter().find(|c| c.diff.lo <= 0.0).map(|c| c.b_rank);
    let informative = rank_effect.is_some_and(|e| e.diff.lo > 0.0);
    let mut note = match rank_effect {
        Some(e) if !informative => format!(
            "not informative: LoRA's accuracy does not rise with rank here ({}: {} points), so rank buys nothing and a ratio of ranks says nothing",
            e.label(),
            e.diff.describe()
        ),
        Some(e) => format!("LoRA's accuracy rises with rank ({}: {} points)", e.label(), e.diff.describe()),
        None => "not informative: the grid has a single LoRA rank".into(),
    };
    if reach.is_none() {
        note = format!(
            "no LoRA rank of the grid reaches it: the ratio is above {max_lora}/{dash_rank}; {note}"
        );
    }
    Efficiency {
        dash_rank,
        task: task.map(String::from),
        dash_mean,
        lora_rank: reach,
        ratio: reach.map(|l| l as f64 / dash_rank as f64),
        informative,
        note,
    }
}

/// Parses the paper's table (`PAPER_TABLE`'s CSV) and adds Params% as `tsd params` computes it
/// (LLaMA-7B, q, k, v, up, down; LoRA-Dash adds s = 8 Δσ per matrix).
pub fn paper_table(csv_text: &str) -> Result<(Vec<String>, Vec<PaperRow>)> {
    let bad = |m: String| Error::Internal(format!("the paper's table: {m}"));
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = rd
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    let col = |n: &str| header.iter().position(|h| h == n);
    let (Some(cm), Some(cr), Some(cp), Some(ca)) =
        (col("method"), col("rank"), col("params_pct"), col("avg"))
    else {
        return Err(bad(format!("unexpected header {header:?}")));
    };
    let tasks: Vec<String> = header[cp + 1..ca].to_vec();
    let llama7b = crate::model::LlamaConfig::builtin("llama-7b");
    let mut rows = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let rank: Option<usize> = rec[cr].parse().ok();
        let method = rec[cm].to_string();
        let tsd_pct = match (&llama7b, rank) {
            (Some(cfg), Some(rank)) if method != "full" => {
                let plan = crate::params::ParamPlan {
                    rank,
                    targets: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
                        .map(String::from)
                        .to_vec(),
                    dash_s: (method == "lora-dash").then_some(8),
                };
                Some(crate::params::pct2(
                    crate::params::count(cfg, &plan)?.pct_nominal,
                    false,
                ))
            }
            _ => None,
        };
        rows.push(PaperRow {
            model: rec[0].to_string(),
            method,
            rank,
            params_pct: rec[cp].to_string(),
            params_pct_tsd: tsd_pct,
            tasks: (cp + 1..ca).map(|i| rec[i].parse().ok()).collect(),
            avg: rec[ca]
                .parse()
                .map_err(|_| bad(format!("avg `{}` is not a number", &rec[ca])))?,
        });
    }
    Ok((tasks, rows))
}

/// One checkpoint's capture: accuracy@(8,16) over all modules and over q, k, v, each beside its
/// null where it was measured.
pub type CapturePointData = super::CapturePoint;

/// One run's capture series: its method, rank and points.
pub type CaptureData = (Method, usize, Vec<CapturePointData>);

/// Computes the summary. `capture` pairs each run's name with its capture points
/// `(step, all modules, q/k/v only)`.
pub fn summarize(
    preset: &Preset,
    runs: &[RunData],
    base: Option<&Scores>,
    capture: &[CaptureData],
    controls: &[super::controls::ControlCapture],
    dash_pairs: &[super::controls::DashPair],
) -> Result<Summary> {
    let ranks = Ranks::of(preset);
    let configs = config_stats(runs, &ranks);
    let chance = task_chance(runs);
    let rank_effect = ranks.rank_effect(runs, None);
    let (comparisons, efficiency) =
        overall_efficiency(runs, &ranks, &configs, rank_effect.as_ref());
    let (task_comparisons, efficiency_by_task) =
        task_efficiency(runs, &ranks, &chance, preset.protocol);
    let cap = capture_stats(capture, &ranks);
    let (paper_tasks, paper) = paper_table(super::PAPER_TABLE)?;
    let mde = median(comparisons.iter().map(|c| c.mde).collect());
    let mut s = Summary {
        protocol: preset.protocol,
        bootstrap: format!(
            "paired bootstrap over test examples (per task) and seeds, {RESAMPLES} resamples, seed {BOOTSTRAP_SEED:#x}; 95 % percentile intervals; minimum detectable effect = (z0.975 + z0.8) × SE"
        ),
        configs,
        comparisons,
        rank_effect,
        mde,
        efficiency,
        efficiency_by_task,
        task_comparisons,
        chance,
        capture: cap,
        controls: control_stats(controls),
        dash_picks: dash_pick_stats(dash_pairs),
        paper_tasks,
        paper,
        verdict: String::new(),
    };
    s.verdict = verdict(&s, preset, runs, base);
    Ok(s)
}

/// The grid's LoRA and LoRA-Dash ranks, sorted.
struct Ranks {
    lora: Vec<usize>,
    dash: Vec<usize>,
}

impl Ranks {
    fn of(preset: &Preset) -> Self {
        let mut lora = preset.lora_ranks.clone();
        lora.sort();
        let mut dash = preset.dash_ranks.clone();
        dash.sort();
        Ranks { lora, dash }
    }

    fn max_lora(&self) -> usize {
        self.lora.last().copied().unwrap_or(0)
    }

    /// `(method, its ranks)`, LoRA first.
    fn by_method(&self) -> [(Method, &Vec<usize>); 2] {
        [(Method::Lora, &self.lora), (Method::LoraDash, &self.dash)]
    }

    /// LoRA's highest rank against its lowest, overall or on one task: does rank buy accuracy?
    fn rank_effect(&self, runs: &[RunData], task: Option<&str>) -> Option<Comparison> {
        match (self.lora.first(), self.lora.last()) {
            (Some(&lo), Some(&hi)) if hi > lo => {
                compare(runs, (Method::Lora, hi), (Method::Lora, lo), task)
            }
            _ => None,
        }
    }
}

/// Each configuration's mean, spread and interval over its seeds, LoRA ranks then LoRA-Dash.
fn config_stats(runs: &[RunData], ranks: &Ranks) -> Vec<ConfigStats> {
    let mut configs = Vec::new();
    for (m, ranks) in ranks.by_method() {
        for &k in ranks.iter() {
            let v = of(runs, m, k);
            if v.is_empty() {
                continue;
            }
            let avgs: Vec<f64> = v.iter().map(|r| r.result.average()).collect();
            let (mean, spread) = mean_spread(&avgs);
            let outs: Vec<&Outcomes> = v.iter().map(|r| &r.outcomes).collect();
            let mean_of = |f: &dyn Fn(&RunResult) -> Option<f64>| {
                crate::stats::mean(&v.iter().filter_map(|r| f(r.result)).collect::<Vec<_>>())
            };
            configs.push(ConfigStats {
                method: m,
                rank: k,
                seeds: v.iter().map(|r| r.result.seed).collect(),
                trainable_params: mean_of(&|r| Some(r.trainable_params as f64)).unwrap_or(0.0),
                trainable_pct: mean_of(&|r| Some(r.trainable_pct)).unwrap_or(0.0),
                mean,
                spread,
                ci: pair(&outs, None, None).map(|p| bootstrap(&p)),
                generate_mean: mean_of(&|r| r.scores.generate_avg),
                unparseable_mean: mean_of(&|r| r.scores.unparseable_rate),
            });
        }
    }
    configs
}

/// Chance per task, from the gold answers of the first run's examples.
fn task_chance(runs: &[RunData]) -> Vec<TaskChance> {
    let mut chance = Vec::new();
    let Some(first) = runs.first() else {
        return chance;
    };
    for (t, ex) in &first.outcomes {
        let mut freq: BTreeMap<&str, usize> = BTreeMap::new();
        for e in ex {
            *freq.entry(e.2.as_str()).or_default() += 1;
        }
        let n = ex.len();
        let majority = 100.0 * freq.values().copied().max().unwrap_or(0) as f64 / n.max(1) as f64;
        let labels = crate::data::task(t).map_or(0, |k| k.labels.len());
        let above = runs
            .iter()
            .filter(|r| {
                r.outcomes.get(t).is_some_and(|o| {
                    let k = o.iter().filter(|x| x.1).count();
                    100.0 * wilson_lower(k, o.len()) > majority
                })
            })
            .count();
        chance.push(TaskChance {
            task: t.clone(),
            examples: n,
            uniform: if labels > 0 {
                100.0 / labels as f64
            } else {
                0.0
            },
            majority,
            runs: runs.len(),
            runs_above: above,
            at_chance: above == 0,
        });
    }
    chance
}

/// Every LoRA-Dash rank against every LoRA rank over all tasks, and each Dash rank's ratio.
fn overall_efficiency(
    runs: &[RunData],
    ranks: &Ranks,
    configs: &[ConfigStats],
    rank_effect: Option<&Comparison>,
) -> (Vec<Comparison>, Vec<Efficiency>) {
    let dash_mean = |k: usize| {
        configs
            .iter()
            .find(|c| c.method == Method::LoraDash && c.rank == k)
            .map_or(0.0, |c| c.mean)
    };
    let mut comparisons = Vec::new();
    let mut efficiency = Vec::new();
    for &d in &ranks.dash {
        let mine: Vec<Comparison> = ranks
            .lora
            .iter()
            .filter_map(|&l| compare(runs, (Method::LoraDash, d), (Method::Lora, l), None))
            .collect();
        if !mine.is_empty() {
            let refs: Vec<&Comparison> = mine.iter().collect();
            efficiency.push(efficiency_of(
                d,
                dash_mean(d),
                None,
                &refs,
                rank_effect,
                ranks.max_lora(),
            ));
        }
        comparisons.extend(mine);
    }
    (comparisons, efficiency)
}

/// The same per task above chance: comparisons (each task's rank effect last) and ratios.
fn task_efficiency(
    runs: &[RunData],
    ranks: &Ranks,
    chance: &[TaskChance],
    protocol: Protocol,
) -> (Vec<Comparison>, Vec<Efficiency>) {
    let mut task_comparisons = Vec::new();
    let mut efficiency_by_task = Vec::new();
    for c in chance.iter().filter(|c| !c.at_chance) {
        let t = c.task.as_str();
        let effect = ranks.rank_effect(runs, Some(t));
        for &d in &ranks.dash {
            let mine: Vec<Comparison> = ranks
                .lora
                .iter()
                .filter_map(|&l| compare(runs, (Method::LoraDash, d), (Method::Lora, l), Some(t)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let refs: Vec<&Comparison> = mine.iter().collect();
            let dm = crate::stats::mean(
                &of(runs, Method::LoraDash, d)
                    .iter()
                    .filter_map(|r| task_score(&r.result.scores, t, protocol))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(0.0);
            efficiency_by_task.push(efficiency_of(
                d,
                dm,
                Some(t),
                &refs,
                effect.as_ref(),
                ranks.max_lora(),
            ));
            task_comparisons.extend(mine);
        }
        task_comparisons.extend(effect);
    }
    (task_comparisons, efficiency_by_task)
}

/// Capture per configuration and step, mean over seeds.
fn capture_stats(capture: &[CaptureData], ranks: &Ranks) -> Vec<CaptureStats> {
    let mut cap = Vec::new();
    for (m, ranks) in ranks.by_method() {
        for &k in ranks.iter() {
            let series: Vec<&Vec<CapturePointData>> = capture
                .iter()
                .filter(|c| c.0 == m && c.1 == k)
                .map(|c| &c.2)
                .collect();
            let mut steps: Vec<usize> = series
                .iter()
                .flat_map(|s| s.iter().map(|p| p.step))
                .collect();
            steps.sort();
            steps.dedup();
            for st in steps {
                cap.push(capture_at(m, k, &series, st));
            }
        }
    }
    cap
}

/// One configuration's capture at step `st`, mean over its series (seeds).
fn capture_at(m: Method, k: usize, series: &[&Vec<CapturePointData>], st: usize) -> CaptureStats {
    let at = |f: &dyn Fn(&CapturePointData) -> Option<f64>| {
        crate::stats::mean(
            &series
                .iter()
                .filter_map(|s| s.iter().find(|p| p.step == st).and_then(f))
                .collect::<Vec<_>>(),
        )
    };
    let null = |pick: fn(&CapturePointData) -> Option<&crate::track::TrackNull>| {
        let with: Vec<&crate::track::TrackNull> = series
            .iter()
            .filter_map(|s| s.iter().find(|p| p.step == st).and_then(pick))
            .collect();
        (!with.is_empty()).then(|| CaptureNull::mean_of(&with))
    };
    let mut types: Vec<&str> = Vec::new();
    for p in series
        .iter()
        .filter_map(|s| s.iter().find(|p| p.step == st))
    {
        for t in &p.by_type {
            if !types.contains(&t.module_type.as_str()) {
                types.push(&t.module_type);
            }
        }
    }
    let by_type = types
        .iter()
        .map(|t| {
            let with: Vec<&crate::track::TrackNull> = series
                .iter()
                .filter_map(|s| s.iter().find(|p| p.step == st))
                .flat_map(|p| p.by_type.iter().filter(|x| x.module_type == *t))
                .map(|x| &x.null)
                .collect();
            TypeCapture {
                module_type: t.to_string(),
                null: CaptureNull::mean_of(&with),
            }
        })
        .collect();
    CaptureStats {
        method: m,
        rank: k,
        step: st,
        all: at(&|p| p.accuracy),
        qkv: at(&|p| p.accuracy_qkv),
        null_all: null(|p| p.null.as_ref()),
        null_qkv: null(|p| p.null_qkv.as_ref()),
        by_type,
    }
}

/// A task's accuracy under `protocol` in one set of scores.
fn task_score(s: &Scores, task: &str, protocol: Protocol) -> Option<f64> {
    let t = s.tasks.iter().find(|t| t.task == task)?;
    match protocol {
        Protocol::Loglik => t.loglik,
        Protocol::Generate => t.generate,
    }
}

/// A plain paragraph on what the numbers can and cannot say.
fn verdict(s: &Summary, preset: &Preset, runs: &[RunData], base: Option<&Scores>) -> String {
    let p = preset.protocol.as_str();
    if s.comparisons.is_empty() {
        return format!(
            "no LoRA-Dash run has a LoRA run of the same seed to be compared with ({} runs, {p})",
            runs.len()
        );
    }
    let mut out = comparisons_sentence(s, p);
    if let Some(m) = s.mde {
        out += &format!(
            ". This run could have detected differences of about {m:.1} points (minimum detectable effect, median over comparisons), not smaller ones"
        );
    }
    if let Some(e) = &s.rank_effect {
        if e.diff.lo <= 0.0 {
            out += &format!(
                ". LoRA's accuracy does not rise with rank here ({} = {} points): rank buys nothing at this scale, so the efficiency ratio is not informative",
                e.label(),
                e.diff.describe()
            );
        }
    }
    let at_chance: Vec<&str> = s
        .chance
        .iter()
        .filter(|c| c.at_chance)
        .map(|c| c.task.as_str())
        .collect();
    if !at_chance.is_empty() {
        out += &format!(
            ". At chance in every run (no run's 95 % lower bound beats always giving the most frequent answer): {}",
            at_chance.join(", ")
        );
    }
    if let Some(b) = base {
        out += &format!("; base model {:.1} %", b.average);
    }
    if let Some(c) = capture_sentence(&s.capture) {
        out += &format!(". {c}");
    }
    if let Some(c) = controls_sentence(&s.controls) {
        out += &format!(". {c}");
    }
    for d in &s.dash_picks {
        out += &format!(
            ". LoRA-Dash r = {}'s {} picks ({} near-null, {} seed(s)): {} enriched in its own LoRA part and {} in the plain LoRA of the same seed (mean |z| {:.2} and {:.2}); Spearman of |Δσ| with that LoRA's |z|: {}",
            d.rank,
            d.picks,
            d.near_null,
            d.seeds,
            d.enriched_in_dash_lora,
            d.enriched_in_lora,
            d.mean_abs_z_dash_lora,
            d.mean_abs_z_lora,
            d.spearman_delta_sigma_z_lora
                .map_or("-".into(), |r| format!("{r:+.2}"))
        );
    }
    out
}

/// What the comparisons say (`s.comparisons` non-empty), under protocol `p`.
fn comparisons_sentence(s: &Summary, p: &str) -> String {
    let seeds = s.comparisons.iter().map(|c| c.seeds).max().unwrap_or(0);
    let examples = s.comparisons.iter().map(|c| c.examples).max().unwrap_or(0);
    let sig: Vec<&Comparison> = s
        .comparisons
        .iter()
        .filter(|c| c.diff.excludes_zero())
        .collect();
    let largest = s
        .comparisons
        .iter()
        .max_by(|a, b| a.diff.estimate.abs().total_cmp(&b.diff.estimate.abs()))
        .expect("non-empty");
    if sig.is_empty() {
        format!(
            "LoRA-Dash and LoRA cannot be told apart at this scale: each of the {} comparisons (every LoRA-Dash rank against every LoRA rank, {p}, {examples} test examples × {seeds} seed(s)) has a 95 % interval that includes 0; the largest difference is {:+.1} points ({}, 95 % interval {:+.1} … {:+.1})",
            s.comparisons.len(),
            largest.diff.estimate,
            largest.label(),
            largest.diff.lo,
            largest.diff.hi
        )
    } else {
        let parts: Vec<String> = sig
            .iter()
            .map(|c| format!("{} = {} points", c.label(), c.diff.describe()))
            .collect();
        format!(
            "{} of {} comparisons ({p}, {examples} test examples × {seeds} seed(s)) exclude 0 at 95 %: {}; the others include 0",
            sig.len(),
            s.comparisons.len(),
            parts.join("; ")
        )
    }
}

/// κ against each empirical control, all modules, per configuration.
fn controls_sentence(controls: &[ControlStats]) -> Option<String> {
    let mut configs: Vec<(Method, usize)> = Vec::new();
    for c in controls {
        if !configs.contains(&(c.method, c.rank)) {
            configs.push((c.method, c.rank));
        }
    }
    let parts: Vec<String> = configs
        .iter()
        .map(|&(m, r)| {
            let each: Vec<String> = controls
                .iter()
                .filter(|c| c.method == m && c.rank == r)
                .map(|c| {
                    format!(
                        "{} {:.2} vs null {:.2} (κ {})",
                        c.control,
                        c.all.accuracy,
                        c.all.null_mean,
                        c.all.kappa.map_or("-".into(), |k| format!("{k:+.2}"))
                    )
                })
                .collect();
            format!("{} r = {}: {}", m.label(), r, each.join(", "))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "Empirical controls, final checkpoint, all modules, mean over seeds: {}",
            parts.join("; ")
        )
    })
}

/// What TSD capture at each configuration's last step says against its rotation null (q, k, v).
fn capture_sentence(capture: &[CaptureStats]) -> Option<String> {
    let mut last: Vec<&CaptureStats> = Vec::new();
    for c in capture {
        match last
            .iter_mut()
            .find(|l| l.method == c.method && l.rank == c.rank)
        {
            Some(l) if l.step < c.step => *l = c,
            Some(_) => {}
            None => last.push(c),
        }
    }
    let parts: Vec<String> = last
        .iter()
        .filter_map(|c| {
            let n = c.null_qkv.as_ref()?;
            Some(format!(
                "{} r = {} {:.2} against a null of {:.2} (κ {}; {} of {} module tests above null, {} untestable)",
                c.method.label(),
                c.rank,
                n.accuracy,
                n.null_mean,
                n.kappa.map_or("-".into(), |k| format!("{k:+.2}")),
                n.above_null,
                n.above_null + n.not_above_null + n.untestable,
                n.untestable
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "TSD capture accuracy@(8,16) on q, k, v at the last step, beside the rotation null of each run's own update (LoRA-Dash: its LoRA part), mean over seeds: {}",
            parts.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(task: &str, correct: &[bool]) -> Outcomes {
        let mut o = Outcomes::new();
        o.insert(
            task.into(),
            correct
                .iter()
                .enumerate()
                .map(|(i, &c)| (i, c, if i % 2 == 0 { "a" } else { "b" }.to_string()))
                .collect(),
        );
        o
    }

    #[test]
    fn a_planted_difference_is_found_and_no_difference_is_not() {
        // A is right on 60 % of 400 examples, B on the same 40 % plus nothing: A − B = +20 points.
        let a: Vec<bool> = (0..400).map(|i| i % 5 < 3).collect();
        let b: Vec<bool> = (0..400).map(|i| i % 5 < 2).collect();
        let (oa, ob) = (outcomes("boolq", &a), outcomes("boolq", &b));
        let p = pair(&[&oa, &oa], Some(&[&ob, &ob]), None).unwrap();
        let iv = bootstrap(&p);
        assert!((iv.estimate - 20.0).abs() < 1e-9, "{iv:?}");
        assert!(iv.lo > 15.0 && iv.hi < 25.0 && iv.excludes_zero(), "{iv:?}");
        // Paired: the discordant examples are the 80 where A alone is right; SE of a mean of
        // 0/1 differences with p = 0.2 over 400: sqrt(0.2·0.8/400) = 2 points.
        assert!((iv.se - 2.0).abs() < 0.3, "{iv:?}");
        let same = pair(&[&oa, &oa], Some(&[&oa, &oa]), None).unwrap();
        let z = bootstrap(&same);
        assert_eq!((z.estimate, z.lo, z.hi), (0.0, 0.0, 0.0));
    }

    #[test]
    fn unpaired_noise_gives_an_interval_that_covers_zero() {
        // Two runs that each get a different half right: equal accuracy, all examples discordant.
        let a: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let b: Vec<bool> = (0..200).map(|i| i % 2 == 1).collect();
        let (oa, ob) = (outcomes("piqa", &a), outcomes("piqa", &b));
        let iv = bootstrap(&pair(&[&oa], Some(&[&ob]), None).unwrap());
        assert_eq!(iv.estimate, 0.0);
        assert!(iv.lo < -8.0 && iv.hi > 8.0, "{iv:?}");
    }

    #[test]
    fn seeds_that_disagree_widen_the_interval() {
        let a1: Vec<bool> = (0..300).map(|i| i % 10 < 6).collect();
        let a2: Vec<bool> = (0..300).map(|i| i % 10 < 4).collect();
        let b: Vec<bool> = (0..300).map(|i| i % 10 < 5).collect();
        let (o1, o2, ob) = (
            outcomes("boolq", &a1),
            outcomes("boolq", &a2),
            outcomes("boolq", &b),
        );
        let agree = bootstrap(&pair(&[&o1, &o1], Some(&[&ob, &ob]), None).unwrap());
        let split = bootstrap(&pair(&[&o1, &o2], Some(&[&ob, &ob]), None).unwrap());
        assert!((split.estimate - 0.0).abs() < 1e-9);
        assert!(split.se > 2.0 * agree.se, "{agree:?} vs {split:?}");
    }

    #[test]
    fn wilson_bound_matches_the_formula() {
        // 60 of 100: Wilson lower bound 0.5020 (standard tables).
        assert!((wilson_lower(60, 100) - 0.5020).abs() < 1e-3);
        assert_eq!(wilson_lower(0, 0), 0.0);
    }

    #[test]
    fn the_paper_table_parses_with_tsd_params() {
        let (tasks, rows) = paper_table(super::super::PAPER_TABLE).unwrap();
        assert_eq!(tasks.len(), 8);
        let dash4 = rows
            .iter()
            .find(|r| r.method == "lora-dash" && r.rank == Some(4))
            .unwrap();
        assert_eq!(dash4.avg, 75.7);
        assert!(dash4.params_pct_tsd.is_some());
        assert!(rows
            .iter()
            .any(|r| r.method == "full" && r.params_pct_tsd.is_none()));
    }
}
