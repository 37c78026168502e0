//! `tsd track`: TSD change rates, the TSD set, capture against a reference and amplification for
//! every saved checkpoint of a run (any layout [`crate::run::Run`] reads) — how stable the TSDs are
//! and when LoRA's ΔW starts to capture them (README, Definitions: direction metrics). Each checkpoint is analysed by
//! [`crate::inspect`]; the base SVDs come from the cache after the first checkpoint. The result is a
//! record (`TrackReport`, saved as JSON) that `tsd report` renders without recomputing.

use crate::adapter::load_adapter;
use crate::error::{Error, Result};
use crate::inspect::{inspect, InspectOptions, InspectReport, Reference};
use crate::linalg::cache::SvdCache;
use crate::run::{Run, RunKind};
use crate::weights::{open_model, open_path, ModelSpec, WeightSource};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One checkpoint's summary over modules.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackPoint {
    /// Optimizer step (a directory of adapters: 1-based position).
    pub step: usize,
    /// The checkpoint's directory name.
    #[serde(default)]
    pub checkpoint: String,
    pub modules: usize,
    pub mean_top_delta: f64,
    pub mean_delta_fro: f64,
    pub mean_amplification: f64,
    /// Mean over modules of |TSD set ∩ previous checkpoint's| / s.
    pub stability_prev: Option<f64>,
    /// Mean over modules of |TSD set ∩ final checkpoint's| / s.
    pub stability_final: f64,
    pub mean_recall: Option<f64>,
    pub mean_accuracy: Option<f64>,
    pub near_null_picks: usize,
    pub mean_dash_delta_sigma: Option<f64>,
    /// Capture against its null at this checkpoint (absent in tracks saved before the null
    /// model, and without a reference or with the null off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<TrackNull>,
}

/// One checkpoint's capture beside its null: the tested statistic (accuracy; a LoRA-Dash
/// module's LoRA part) and the module verdicts of that checkpoint's own false-discovery procedure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackNull {
    /// Mean over modules of the tested accuracy, of its null mean and of its null 95th percentile.
    pub mean_accuracy: f64,
    pub mean_null: f64,
    pub mean_null_p95: f64,
    pub mean_kappa: Option<f64>,
    pub above_null: usize,
    pub not_above_null: usize,
    pub untestable: usize,
}

impl TrackNull {
    /// The tested capture of `modules` beside its null (each module's primary test; verdicts as
    /// the whole inspection's false-discovery procedure gave them). None when none was tested.
    pub fn over<'a>(
        modules: impl IntoIterator<Item = &'a crate::inspect::ModuleReport>,
    ) -> Option<Self> {
        let stats: Vec<&crate::inspect::CaptureStat> = modules
            .into_iter()
            .filter_map(|m| m.capture.as_ref().map(|c| c.primary()))
            .filter(|s| s.null.is_some())
            .collect();
        if stats.is_empty() {
            return None;
        }
        let tests: Vec<&crate::directions::null::NullTest> =
            stats.iter().filter_map(|s| s.null.as_ref()).collect();
        let of = |f: &dyn Fn(&crate::directions::null::NullTest) -> f64| {
            mean(&tests.iter().map(|t| f(t)).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let count =
            |v: crate::directions::null::Verdict| tests.iter().filter(|t| t.verdict == v).count();
        use crate::directions::null::Verdict;
        Some(TrackNull {
            mean_accuracy: mean(&stats.iter().map(|s| s.value).collect::<Vec<_>>()).unwrap_or(0.0),
            mean_null: of(&|t| t.null_mean),
            mean_null_p95: of(&|t| t.null_p95),
            mean_kappa: mean(&tests.iter().filter_map(|t| t.kappa).collect::<Vec<_>>()),
            above_null: count(Verdict::AboveNull),
            not_above_null: count(Verdict::NotAboveNull),
            untestable: count(Verdict::Untestable),
        })
    }
}

/// The null summary of one checkpoint's inspection.
fn track_null(rep: &InspectReport) -> Option<TrackNull> {
    TrackNull::over(&rep.modules)
}

/// The whole track: summaries and the full per-checkpoint reports. Read back (`tsd report
/// --track`) it carries everything but `reports`.
/// The version of the track record's layout (`tsd track --json`, `report.track.json`); raised when
/// a field changes meaning or goes away. A record saved before it was versioned reads as 0.
pub const TRACK_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackReport {
    /// [`TRACK_SCHEMA_VERSION`] (0: saved before the record was versioned).
    #[serde(default)]
    pub schema_version: u32,
    pub run: String,
    #[serde(default)]
    pub kind: Option<RunKind>,
    /// The base model the checkpoints were analysed against.
    #[serde(default)]
    pub base: String,
    pub reference: Option<String>,
    /// s of the TSD sets.
    #[serde(default = "default_top_s")]
    pub top_s: usize,
    pub points: Vec<TrackPoint>,
    /// TSD indices per module per step: `module → [(step, indices)]`.
    pub tsd_sets: BTreeMap<String, Vec<(usize, Vec<usize>)>>,
    /// Directories of the run that were skipped (half-written or temporary checkpoints).
    #[serde(default)]
    pub skipped: Vec<String>,
    #[serde(skip_deserializing)]
    pub reports: Vec<InspectReport>,
}

impl TrackReport {
    /// Refuses a saved track whose checkpoints are not `run`'s (another run, or since changed).
    pub fn check_matches(&self, run: &Run) -> Result<()> {
        let saved: Vec<&str> = self.points.iter().map(|p| p.checkpoint.as_str()).collect();
        let now: Vec<&str> = run.checkpoints.iter().map(|c| c.name.as_str()).collect();
        if saved != now {
            return Err(Error::InvalidArgument(format!(
                "the saved track covers checkpoints [{}] but {} has [{}]; track the run again",
                saved.join(", "),
                run.dir.display(),
                now.join(", ")
            )));
        }
        Ok(())
    }
}

fn default_top_s() -> usize {
    InspectOptions::default().top_s
}

/// What a `--reference` argument names.
pub enum RefSource {
    Adapter(Box<crate::adapter::Adapter>),
    Model(Box<dyn WeightSource>),
}

/// Resolves a reference: an adapter, a run directory of any layout (its newest checkpoint; a tsd
/// full fine-tune gives ΔW* = W* − W), or a model.
pub fn open_reference(spec: &str) -> Result<(RefSource, String)> {
    let p = Path::new(spec);
    if crate::adapter::read::is_adapter(p) {
        return Ok((
            RefSource::Adapter(Box::new(load_adapter(p)?)),
            format!("adapter {spec}"),
        ));
    }
    if Run::detect(p) {
        let run = Run::open(p, None)?;
        let last = run.require_checkpoints().map_err(|_| {
            Error::InvalidArgument(format!("reference run {spec} has no checkpoint"))
        })?;
        let last = last.last().expect("non-empty");
        let at = match run.kind {
            RunKind::Adapters => last.name.clone(),
            _ => format!("step {}", last.step),
        };
        return Ok(if run.is_full_fine_tune() {
            (
                RefSource::Model(open_path(&last.dir)?),
                format!("full fine-tune {spec} {at} (ΔW* = W* − W)"),
            )
        } else {
            (
                RefSource::Adapter(Box::new(load_adapter(&last.adapter)?)),
                format!("run {spec} {at}"),
            )
        });
    }
    Ok((
        RefSource::Model(open_model(&ModelSpec::new(spec))?),
        format!("model {spec} (ΔW* = W* − W)"),
    ))
}

/// Whether a checkpoint that failed to load is gone (deleted, or being deleted, since it was listed).
fn vanished(c: &crate::run::Checkpoint) -> bool {
    !crate::run::hf::is_complete_adapter(&c.adapter)
}

fn overlap(a: &[usize], b: &[usize]) -> f64 {
    let sa: BTreeSet<_> = a.iter().collect();
    let n = b.iter().filter(|x| sa.contains(x)).count();
    n as f64 / a.len().max(1) as f64
}

use crate::stats::mean;

/// Tracks every checkpoint of `run_dir` against `base` (default: the base the run declares).
pub fn track(
    run_dir: &Path,
    base: Option<&dyn WeightSource>,
    reference: Option<&(RefSource, String)>,
    opts: &InspectOptions,
    cache: &SvdCache,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<TrackReport> {
    let run = Run::open(run_dir, None)?;
    let owned;
    let base: &dyn WeightSource = match base {
        Some(b) => b,
        None => {
            owned = run.open_base(None, false)?.source;
            owned.as_ref()
        }
    };
    track_run(&run, base, reference, opts, cache, progress)
}

/// Tracks every checkpoint of an opened run against `base`; `progress` sees each step.
pub fn track_run(
    run: &Run,
    base: &dyn WeightSource,
    reference: Option<&(RefSource, String)>,
    opts: &InspectOptions,
    cache: &SvdCache,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<TrackReport> {
    if run.is_full_fine_tune() {
        return Err(Error::InvalidArgument(
            "tsd track analyses LoRA / LoRA-Dash runs; a full fine-tune is a --reference".into(),
        ));
    }
    let checkpoints = run.require_checkpoints()?;
    let r = reference.map(|(src, name)| {
        (
            match src {
                RefSource::Adapter(a) => Reference::Adapter(a),
                RefSource::Model(m) => Reference::Model(m.as_ref()),
            },
            name.clone(),
        )
    });
    let mut reports = Vec::new();
    let mut names = Vec::new();
    let mut skipped = run.skipped.clone();
    for c in checkpoints {
        let step = c.step;
        let ad = match load_adapter(&c.adapter) {
            Ok(ad) => ad,
            // A Trainer with `save_total_limit` deletes old checkpoints while the run is read: one
            // listed a moment ago and gone now is skipped, not an error.
            Err(e) if vanished(c) => {
                skipped.push(format!(
                    "{}: deleted while it was read (a Trainer's save_total_limit?): {e}; skipped",
                    c.dir.display()
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        let rep = inspect(
            &ad,
            base,
            r.as_ref().map(|(x, n)| (x, n.clone())),
            opts,
            cache,
            &|_| {},
        )?;
        // A saved track is shared and committed: no machine paths in it.
        let mut rep = rep;
        rep.base = crate::fsutil::portable(&rep.base);
        reports.push((step, rep));
        names.push(c.name.clone());
        progress(step);
    }
    if reports.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} ({}) has no complete checkpoint left: every one was deleted while it was read",
            run.dir.display(),
            run.kind.describe()
        )));
    }
    let mut tsd_sets: BTreeMap<String, Vec<(usize, Vec<usize>)>> = BTreeMap::new();
    for (step, rep) in &reports {
        for m in &rep.modules {
            tsd_sets
                .entry(m.module.clone())
                .or_default()
                .push((*step, m.tsd.iter().map(|t| t.index).collect()));
        }
    }
    let final_sets: BTreeMap<&str, &Vec<usize>> = tsd_sets
        .iter()
        .filter_map(|(k, v)| v.last().map(|l| (k.as_str(), &l.1)))
        .collect();
    let mut points = Vec::new();
    for (i, (step, rep)) in reports.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| &reports[j].1);
        let mut stab_prev = Vec::new();
        let mut stab_final = Vec::new();
        for m in &rep.modules {
            let set: Vec<usize> = m.tsd.iter().map(|t| t.index).collect();
            if let Some(f) = final_sets.get(m.module.as_str()) {
                stab_final.push(overlap(&set, f));
            }
            if let Some(pm) = prev.and_then(|p| p.modules.iter().find(|x| x.module == m.module)) {
                let ps: Vec<usize> = pm.tsd.iter().map(|t| t.index).collect();
                stab_prev.push(overlap(&set, &ps));
            }
        }
        let col = |f: &dyn Fn(&crate::inspect::ModuleReport) -> Option<f64>| -> Vec<f64> {
            rep.modules.iter().filter_map(f).collect()
        };
        points.push(TrackPoint {
            step: *step,
            checkpoint: names[i].clone(),
            modules: rep.modules.len(),
            mean_top_delta: mean(&col(&|m| m.tsd.first().map(|t| t.delta))).unwrap_or(0.0),
            mean_delta_fro: mean(&col(&|m| Some(m.delta_fro))).unwrap_or(0.0),
            mean_amplification: mean(&col(&|m| {
                Some(m.amplification.factor).filter(|x| x.is_finite())
            }))
            .unwrap_or(0.0),
            stability_prev: mean(&stab_prev),
            stability_final: mean(&stab_final).unwrap_or(0.0),
            mean_recall: mean(&col(&|m| m.capture.as_ref().map(|c| c.recall.value))),
            mean_accuracy: mean(&col(&|m| m.capture.as_ref().map(|c| c.accuracy.value))),
            near_null_picks: rep.modules.iter().map(|m| m.near_null_picks).sum(),
            mean_dash_delta_sigma: mean(&col(&|m| m.dash.as_ref().map(|d| d.delta_sigma_max_abs))),
            null: track_null(rep),
        });
    }
    Ok(TrackReport {
        schema_version: TRACK_SCHEMA_VERSION,
        run: run.dir.display().to_string(),
        kind: Some(run.kind),
        base: crate::fsutil::portable(&base.describe()),
        reference: reference.map(|(_, n)| n.clone()),
        top_s: opts.top_s,
        points,
        tsd_sets,
        skipped,
        reports: reports.into_iter().map(|(_, r)| r).collect(),
    })
}
