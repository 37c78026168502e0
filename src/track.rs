//! `tsd track`: TSD change rates, the TSD set, capture against a reference and amplification for
//! every saved checkpoint of a run (any layout [`crate::run::Run`] reads) — how stable the TSDs are
//! and when LoRA's ΔW starts to capture them (README, Definitions: direction metrics). Each checkpoint is analysed by
//! [`crate::inspect`]; the base SVDs come from the cache after the first checkpoint. The result is a
//! record (`TrackReport`, saved as JSON) that `tsd report` renders without recomputing.

use crate::adapter::load_adapter;
use crate::error::{Error, Result};
use crate::inspect::{inspect, InspectOptions, InspectReport, Reference};
use crate::run::{Run, RunKind};
use crate::svd_cache::SvdCache;
use crate::weights::{ModelSpec, WeightSource};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

pub use crate::run::base::{open_reference, RefSource};

/// `tsd track`'s analysis (and `tsd report`'s), validated: which run, against which base and
/// reference, with which settings.
pub struct TrackPlan {
    /// The run directory (any layout [`Run`] reads).
    pub run: PathBuf,
    /// The adapter subfolder to read in each checkpoint (none: its root, else its only one).
    pub adapter_name: Option<String>,
    /// The base as given (`--base`); none: the run's declared base, where it resolves locally.
    pub base: Option<ModelSpec>,
    /// Refuse a given base that cannot be shown to be the declared one (else a warning).
    pub strict_base: bool,
    /// An adapter, a run directory (its newest checkpoint) or a model ([`open_reference`]).
    pub reference: Option<String>,
    pub opts: InspectOptions,
}

/// A track's inputs, opened: [`OpenedTrack::run`] analyses the run's checkpoints.
pub struct OpenedTrack {
    pub base: Box<dyn WeightSource>,
    pub reference: Option<(RefSource, String)>,
    pub opts: InspectOptions,
}

impl TrackPlan {
    /// Opens the run; `warn` sees each skipped directory.
    pub fn open_run(&self, warn: &dyn Fn(&str)) -> Result<Run> {
        let run = Run::open(&self.run, self.adapter_name.as_deref())?;
        for w in &run.skipped {
            warn(w);
        }
        Ok(run)
    }

    /// Checks the null's settings and that `run` has checkpoints, opens the base (`warn` sees the declared-base warning,
    /// if any) and the reference.
    pub fn open(&self, run: &Run, warn: &dyn Fn(&str)) -> Result<OpenedTrack> {
        self.opts.null.validate()?;
        run.require_checkpoints()?;
        // Listed, not yet read: where tests/trainer_rotation.rs deletes a checkpoint as a Trainer's
        // save_total_limit does.
        crate::faults::pause("track-read");
        let opened = run.open_base(self.base.as_ref(), self.strict_base)?;
        if let Some(w) = &opened.warning {
            warn(w);
        }
        let reference = self.reference.as_deref().map(open_reference).transpose()?;
        Ok(OpenedTrack {
            base: opened.source,
            reference,
            opts: self.opts.clone(),
        })
    }
}

impl OpenedTrack {
    /// [`track_run`] with the SVD cache at its default location; `progress` sees each step.
    pub fn run(&self, run: &Run, progress: &(dyn Fn(usize) + Sync)) -> Result<TrackReport> {
        track_run(
            run,
            self.base.as_ref(),
            self.reference.as_ref(),
            &self.opts,
            &SvdCache::default_location(),
            progress,
        )
    }
}

/// Where `tsd report`'s direction analysis comes from.
pub enum ReportTrack {
    /// A saved track record (`tsd track RUN --json -o FILE`).
    Saved(PathBuf),
    /// Tracked now (and saved beside the report).
    Track,
    /// None: `--no-track`, no checkpoint, or a full fine-tune.
    Skip,
}

/// `tsd report`, validated: the run's track plan, where its direction analysis comes from and
/// where the page goes.
pub struct ReportPlan {
    pub track: TrackPlan,
    /// A saved track record to render instead of tracking.
    pub saved_track: Option<PathBuf>,
    /// Curves only: no direction analysis.
    pub no_track: bool,
    /// The page (none: `RUN/report.html`).
    pub output: Option<PathBuf>,
}

impl ReportPlan {
    /// The page's path: as given, else `RUN/report.html`.
    pub fn output(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| self.track.run.join("report.html"))
    }

    /// Where the direction analysis of `run` comes from.
    pub fn track_source(&self, run: &Run) -> ReportTrack {
        if let Some(f) = &self.saved_track {
            ReportTrack::Saved(f.clone())
        } else if self.no_track || run.checkpoints.is_empty() || run.is_full_fine_tune() {
            ReportTrack::Skip
        } else {
            ReportTrack::Track
        }
    }
}

/// A saved track record of `run`, refused (naming `path`) when its checkpoints are not `run`'s.
pub fn read_saved_track(path: &Path, run: &Run) -> Result<TrackReport> {
    let t: TrackReport = crate::fsutil::read_json(path)?;
    t.check_matches(run).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(t)
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

/// TSD indices per module per step: `module → [(step, indices)]`.
fn tsd_sets_of(reports: &[(usize, InspectReport)]) -> BTreeMap<String, Vec<(usize, Vec<usize>)>> {
    let mut tsd_sets: BTreeMap<String, Vec<(usize, Vec<usize>)>> = BTreeMap::new();
    for (step, rep) in reports {
        for m in &rep.modules {
            tsd_sets
                .entry(m.module.clone())
                .or_default()
                .push((*step, m.tsd.iter().map(|t| t.index).collect()));
        }
    }
    tsd_sets
}

/// One checkpoint's summary: means over its modules, its TSD sets' overlap with the previous
/// checkpoint's (`prev`) and the final one's, its null.
fn track_point(
    step: usize,
    checkpoint: &str,
    rep: &InspectReport,
    prev: Option<&InspectReport>,
    final_sets: &BTreeMap<&str, &Vec<usize>>,
) -> TrackPoint {
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
    TrackPoint {
        step,
        checkpoint: checkpoint.to_string(),
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
    }
}

/// Each checkpoint's inspect report with its name, and the run's skipped directories plus the
/// checkpoints that vanished while they were read: `(reports by step, names, skipped)`.
#[allow(clippy::type_complexity)]
fn read_checkpoints(
    run: &Run,
    checkpoints: &[crate::run::Checkpoint],
    base: &dyn WeightSource,
    r: Option<&(Reference, String)>,
    opts: &InspectOptions,
    cache: &SvdCache,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Vec<(usize, InspectReport)>, Vec<String>, Vec<String>)> {
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
            r.map(|(x, n)| (x, n.clone())),
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
    Ok((reports, names, skipped))
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
    let r = reference.map(|(src, name)| (Reference::from(src), name.clone()));
    let (reports, names, skipped) =
        read_checkpoints(run, checkpoints, base, r.as_ref(), opts, cache, progress)?;
    if reports.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} ({}) has no complete checkpoint left: every one was deleted while it was read",
            run.dir.display(),
            run.kind.describe()
        )));
    }
    let tsd_sets = tsd_sets_of(&reports);
    let final_sets: BTreeMap<&str, &Vec<usize>> = tsd_sets
        .iter()
        .filter_map(|(k, v)| v.last().map(|l| (k.as_str(), &l.1)))
        .collect();
    let points = reports
        .iter()
        .enumerate()
        .map(|(i, (step, rep))| {
            let prev = i.checked_sub(1).map(|j| &reports[j].1);
            track_point(*step, &names[i], rep, prev, &final_sets)
        })
        .collect();
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

/// Where a run is and what to analyse it against (shared by `track` and `report`).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run directory: `tsd train`'s, a Hugging Face Trainer output directory (checkpoint-N/), or a
    /// directory of adapter directories.
    pub run: PathBuf,
    /// Base model [default: the run's declared base — tsd's --model, else the adapters'
    /// base_model_name_or_path and revision — when it resolves locally]
    #[arg(long)]
    pub base: Option<String>,
    /// Hugging Face revision of --base when it is a hub id [default: main]
    #[arg(long, requires = "base")]
    pub revision: Option<String>,
    /// Refuse (exit 2) a --base that cannot be shown to be the run's declared base (by the run
    /// record's sha256, else by name or path) instead of warning
    #[arg(long, requires = "base")]
    pub strict_base: bool,
    /// The adapter subfolder to read in each checkpoint (PEFT's folder for a named adapter)
    /// [default: the checkpoint's root, else its only adapter subfolder]
    #[arg(long)]
    pub adapter_name: Option<String>,
    /// Reference for capture metrics: a run directory of any layout (its newest checkpoint; a tsd
    /// full fine-tune gives ΔW* = W* − W), an adapter, or a model [default: none]
    #[arg(long)]
    pub reference: Option<String>,
}

impl RunArgs {
    /// The track plan with TSD sets of `top_s` (the null's flags are checked when it opens).
    pub fn plan(&self, top_s: usize, null: &crate::inspect::NullArgs) -> TrackPlan {
        TrackPlan {
            run: self.run.clone(),
            adapter_name: self.adapter_name.clone(),
            base: self.base.as_ref().map(|b| ModelSpec {
                spec: b.clone(),
                revision: self.revision.clone(),
                offline: false,
                local_only: false,
            }),
            strict_base: self.strict_base,
            reference: self.reference.clone(),
            opts: InspectOptions {
                top_s,
                tsd_by: null.tsd_by.ranking(),
                null: null.options(),
                ..Default::default()
            },
        }
    }
}
