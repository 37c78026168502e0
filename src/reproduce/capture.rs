//! TSD capture along training: every run's checkpoints against the reference update (cached per
//! run in `OUT/runs/<cell>/capture.json` under the reference's key).

use super::grid::{reference_cell, Cell, Grid};
use super::jobs;
use super::preset::ReferenceKind;
use super::results::{CapturePoint, CaptureSeries, PickDeltaSigma, RunResult, TypeNull};
use crate::error::{Error, Result};
use crate::names::Method;
use crate::weights::WeightSource;
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Grid<'_> {
    /// The reference update's run directory and description, if it exists.
    pub(super) fn reference_dir(&self) -> Option<PathBuf> {
        match self.preset.reference {
            ReferenceKind::FullFineTune => reference_cell(self.preset).map(|c| self.run_dir(&c)),
            ReferenceKind::HighestRankLora => {
                let r = *self.preset.lora_ranks.iter().max()?;
                let seed = *self.preset.seeds.first()?;
                Some(self.run_dir(&Cell {
                    method: Method::Lora,
                    rank: r,
                    seed,
                }))
            }
            ReferenceKind::None => None,
        }
        .filter(|d| jobs::reference_finished(d))
    }

    /// What a cached `capture.json` must have been measured against: the reference's name, its
    /// final step and a sha256 of its `record.json` (a reference trained again, or resumed to
    /// its end, has another record), readable without the reference's weights.
    pub(super) fn reference_key(ref_dir: &Path) -> Result<(String, usize)> {
        use sha2::Digest;
        let path = ref_dir.join("record.json");
        let bytes = crate::fsutil::read(&path)?;
        let rec: crate::train::trainer::RunRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let step = rec.checkpoints.iter().copied().max().unwrap_or(0);
        let sha: String = sha2::Sha256::digest(&bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = ref_dir
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        Ok((format!("{name} step {step} record {sha}"), step))
    }

    /// TSD capture of every run's checkpoints against the reference (cached per run).
    pub(super) fn capture(
        &mut self,
        runs: &[RunResult],
    ) -> Result<(Option<String>, Vec<CaptureSeries>)> {
        let Some(ref_dir) = self.reference_dir() else {
            return Ok((None, Vec::new()));
        };
        // The reference and the base are opened only if a run still needs its capture: a finished
        // reproduction re-renders without them (the reference weights are not kept in git).
        let mut opened: Option<Opened> = None;
        let cache = crate::svd_cache::SvdCache::default_location();
        let mut series: Vec<CaptureSeries> = Vec::new();
        let (key, ref_step) = Self::reference_key(&ref_dir)?;
        let key = ranked_key(key, self.preset.tsd_by);
        for r in runs {
            let cell = Cell {
                method: r.method,
                rank: r.rank,
                seed: r.seed,
            };
            let dir = self.run_dir(&cell);
            if dir == ref_dir {
                continue;
            }
            let path = dir.join("capture.json");
            if let Some(s) = self.cached_series(&path, r, &key, ref_step) {
                series.push(s);
                continue;
            }
            (self.log)(&format!("capture: {}", r.name));
            let t0 = Instant::now();
            if opened.is_none() {
                opened = Some((
                    crate::track::open_reference(&ref_dir.display().to_string())?,
                    crate::provision::open_model(&crate::weights::ModelSpec::new(
                        self.preset.model.clone(),
                    ))?,
                ));
            }
            let (reference, base) = opened.as_ref().expect("just opened");
            let s = self.measure_series(r, &dir, (reference, base.as_ref()), &key, &cache)?;
            crate::fsutil::write_json(&path, &s)?;
            series.push(s);
            self.timing.capture_s += t0.elapsed().as_secs_f64();
        }
        let desc = match (&opened, series.iter().find(|s| !s.reference.is_empty())) {
            (Some((r, _)), _) => r.1.clone(),
            (None, Some(s)) => s.reference.clone(),
            (None, None) => crate::track::open_reference(&ref_dir.display().to_string())?.1,
        };
        Ok((Some(desc), series))
    }

    /// `run`'s saved series at `path` when it was measured against the reference keyed `key`
    /// (final step `ref_step`) by a tsd that measured every figure; otherwise `None`, logging why
    /// it is measured again.
    fn cached_series(
        &self,
        path: &Path,
        run: &RunResult,
        key: &str,
        ref_step: usize,
    ) -> Option<CaptureSeries> {
        let s = crate::fsutil::read_json::<CaptureSeries>(path).ok()?;
        // Written before reference keys existed: valid only if measured at the reference's
        // final step (a reference since resumed or retrained is measured again).
        let legacy_ok = |s: &CaptureSeries| {
            s.reference_key.is_empty()
                && s.reference.rsplit_once(" step ").is_some_and(|(_, rest)| {
                    rest.split(|c: char| !c.is_ascii_digit()).next() == Some(&ref_step.to_string())
                })
        };
        // Series written before q, k, v capture was measured are measured again.
        // Series written before the null model are measured again too.
        let has_qkv = s.points.iter().all(|p| {
            p.accuracy.is_none()
                || (p.accuracy_qkv.is_some() && p.null.is_some() && !p.by_type.is_empty())
        });
        if (s.reference_key == key || legacy_ok(&s)) && has_qkv {
            return Some(s);
        }
        (self.log)(&if s.reference_key == key || legacy_ok(&s) {
            format!(
                "capture: {} was measured by an older tsd (without the null, q, k, v or per-type figures): measuring again",
                run.name
            )
        } else {
            format!(
                "capture: {} was measured against another reference ({}): measuring again",
                run.name,
                if s.reference_key.is_empty() {
                    &s.reference
                } else {
                    &s.reference_key
                }
            )
        });
        None
    }

    /// Tracks `run`'s checkpoints in `dir` against the opened reference.
    fn measure_series(
        &self,
        run: &RunResult,
        dir: &Path,
        (reference, base): (&(crate::track::RefSource, String), &dyn WeightSource),
        key: &str,
        cache: &crate::svd_cache::SvdCache,
    ) -> Result<CaptureSeries> {
        let tr = crate::track::track(
            dir,
            Some(base),
            Some(reference),
            &crate::inspect::InspectOptions {
                tsd_by: self.preset.tsd_by,
                ..Default::default()
            },
            cache,
            &|_| {},
        )?;
        Ok(CaptureSeries {
            run: run.name.clone(),
            reference: reference.1.clone(),
            reference_key: key.to_string(),
            method: run.method,
            rank: run.rank,
            seed: run.seed,
            modules: tr.points.first().map_or(0, |p| p.modules),
            points: tr
                .points
                .iter()
                .zip(&tr.reports)
                .map(|(p, rep)| capture_point(p, rep))
                .collect(),
        })
    }
}

/// The reference and the base model, opened once for the runs that need their capture.
type Opened = ((crate::track::RefSource, String), Box<dyn WeightSource>);

/// One checkpoint's capture point from its track point and inspection.
fn capture_point(
    p: &crate::track::TrackPoint,
    rep: &crate::inspect::InspectReport,
) -> CapturePoint {
    let (accuracy_qkv, recall_qkv) = qkv_capture(rep);
    let (by_type, delta_sigma) = type_nulls_and_picks(rep);
    CapturePoint {
        by_type,
        delta_sigma,
        step: p.step,
        accuracy: p.mean_accuracy,
        recall: p.mean_recall,
        stability_final: p.stability_final,
        accuracy_qkv,
        recall_qkv,
        null: p.null.clone(),
        null_qkv: crate::track::TrackNull::over(
            rep.modules.iter().filter(|m| is_qkv(&m.module_type)),
        ),
    }
}

/// Per module type (in order of first appearance) and every Dash pick's Δσ of one checkpoint.
fn type_nulls_and_picks(
    rep: &crate::inspect::InspectReport,
) -> (Vec<TypeNull>, Vec<PickDeltaSigma>) {
    let mut types: Vec<String> = Vec::new();
    for m in &rep.modules {
        if !types.contains(&m.module_type) {
            types.push(m.module_type.clone());
        }
    }
    let by_type = types
        .into_iter()
        .filter_map(|t| {
            let null =
                crate::track::TrackNull::over(rep.modules.iter().filter(|m| m.module_type == t))?;
            Some(TypeNull {
                module_type: t,
                null,
            })
        })
        .collect();
    let picks = rep
        .modules
        .iter()
        .filter_map(|m| m.dash.as_ref().map(|d| (m, d)))
        .flat_map(|(m, d)| {
            d.indices
                .iter()
                .zip(&d.delta_sigma)
                .filter_map(move |(i, ds)| {
                    i.map(|index| PickDeltaSigma {
                        module: m.module.clone(),
                        index,
                        delta_sigma: *ds as f64,
                    })
                })
        })
        .collect();
    (by_type, picks)
}

/// A capture cache key with the ranking it was measured under (none for the paper's change
/// rate, so keys written before the ranking existed stay valid).
pub(super) fn ranked_key(key: String, by: crate::directions::Ranking) -> String {
    match by {
        crate::directions::Ranking::ChangeRate => key,
        other => format!("{key} by {}", other.label()),
    }
}

/// Mean accuracy@(8,16) and recall@(8,4) over one checkpoint's q, k and v modules (the paper's
/// module set), `None` when it has none with a capture.
fn qkv_capture(rep: &crate::inspect::InspectReport) -> (Option<f64>, Option<f64>) {
    let caps: Vec<&crate::inspect::CaptureReport> = rep
        .modules
        .iter()
        .filter(|m| is_qkv(&m.module_type))
        .filter_map(|m| m.capture.as_ref())
        .collect();
    let acc: Vec<f64> = caps.iter().map(|c| c.accuracy.value).collect();
    let rec: Vec<f64> = caps.iter().map(|c| c.recall.value).collect();
    (crate::stats::mean(&acc), crate::stats::mean(&rec))
}

/// q, k or v: the paper's module set for capture.
pub(super) fn is_qkv(module_type: &str) -> bool {
    matches!(module_type, "q_proj" | "k_proj" | "v_proj")
}
