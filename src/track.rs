//! `tsd track`: TSD change rates, the TSD set, capture against a reference and amplification for
//! every saved checkpoint of a run — how stable the TSDs are and when LoRA's ΔW starts to capture
//! them (README, Definitions: direction metrics). Each checkpoint is analysed by [`crate::inspect`]; the base SVDs come from the
//! cache after the first checkpoint.

use crate::adapter::load_adapter;
use crate::error::{Error, Result};
use crate::inspect::{inspect, InspectOptions, InspectReport, Reference};
use crate::linalg::cache::SvdCache;
use crate::train::trainer::{checkpoint_dir, list_checkpoints};
use crate::train::{Method, TrainConfig};
use crate::weights::{open_model, open_path, ModelSpec, WeightSource};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One checkpoint's summary over modules.
#[derive(Clone, Debug, Serialize)]
pub struct TrackPoint {
    pub step: usize,
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
}

/// The whole track: summaries and the full per-checkpoint reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrackReport {
    pub run: String,
    pub reference: Option<String>,
    pub points: Vec<TrackPoint>,
    /// TSD indices per module per step: `module → [(step, indices)]`.
    pub tsd_sets: BTreeMap<String, Vec<(usize, Vec<usize>)>>,
    pub reports: Vec<InspectReport>,
}

/// What a `--reference` argument names.
pub enum RefSource {
    Adapter(Box<crate::adapter::Adapter>),
    Model(Box<dyn WeightSource>),
}

/// Resolves a reference: a run directory (its newest checkpoint), an adapter, or a model.
pub fn open_reference(spec: &str) -> Result<(RefSource, String)> {
    let p = Path::new(spec);
    if p.join("config.json").exists() && p.join("checkpoints").is_dir() {
        let cfg = TrainConfig::load(&p.join("config.json"))?;
        let step = list_checkpoints(p)?.into_iter().max().ok_or_else(|| {
            Error::InvalidArgument(format!("reference run {spec} has no checkpoint"))
        })?;
        let dir = checkpoint_dir(p, step);
        return Ok(if cfg.method == Method::Full {
            (
                RefSource::Model(open_path(&dir)?),
                format!("full fine-tune {spec} step {step} (ΔW* = W* − W)"),
            )
        } else {
            (
                RefSource::Adapter(Box::new(load_adapter(&dir)?)),
                format!("run {spec} step {step}"),
            )
        });
    }
    if crate::adapter::read::is_adapter(p) {
        return Ok((
            RefSource::Adapter(Box::new(load_adapter(p)?)),
            format!("adapter {spec}"),
        ));
    }
    Ok((
        RefSource::Model(open_model(&ModelSpec::new(spec))?),
        format!("model {spec} (ΔW* = W* − W)"),
    ))
}

fn overlap(a: &[usize], b: &[usize]) -> f64 {
    let sa: BTreeSet<_> = a.iter().collect();
    let n = b.iter().filter(|x| sa.contains(x)).count();
    n as f64 / a.len().max(1) as f64
}

use crate::stats::mean;

/// Tracks every checkpoint of `run_dir` against `base` (default: the run's own model).
pub fn track(
    run_dir: &Path,
    base: Option<&dyn WeightSource>,
    reference: Option<&(RefSource, String)>,
    opts: &InspectOptions,
    cache: &SvdCache,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<TrackReport> {
    let cfg = TrainConfig::load(&run_dir.join("config.json"))?;
    if cfg.method == Method::Full {
        return Err(Error::InvalidArgument(
            "tsd track analyses LoRA / LoRA-Dash runs; a full fine-tune is a --reference".into(),
        ));
    }
    let steps = list_checkpoints(run_dir)?;
    if steps.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} has no complete checkpoint",
            run_dir.display()
        )));
    }
    let owned;
    let base: &dyn WeightSource = match base {
        Some(b) => b,
        None => {
            owned = open_model(&ModelSpec {
                spec: cfg.model.clone(),
                revision: cfg.revision.clone(),
                offline: true,
            })?;
            owned.as_ref()
        }
    };
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
    for &step in &steps {
        let ad = load_adapter(&checkpoint_dir(run_dir, step))?;
        let rep = inspect(
            &ad,
            base,
            r.as_ref().map(|(x, n)| (x, n.clone())),
            opts,
            cache,
            &|_| {},
        )?;
        reports.push((step, rep));
        progress(step);
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
        });
    }
    Ok(TrackReport {
        run: run_dir.display().to_string(),
        reference: reference.map(|(_, n)| n.clone()),
        points,
        tsd_sets,
        reports: reports.into_iter().map(|(_, r)| r).collect(),
    })
}
