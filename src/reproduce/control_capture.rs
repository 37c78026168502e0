//! Every run's final capture against the empirical controls (trained controls and the next seed)
//! and LoRA-Dash's picks against the LoRA run of the same rank and seed (`OUT/controls.json`).

use super::capture::{is_qkv, ranked_key};
use super::controls;
use super::grid::{Cell, Grid};
use super::jobs;
use super::results::RunResult;
use crate::error::{Error, Result};
use crate::names::Method;
use crate::weights::WeightSource;
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Grid<'_> {
    /// Every run's final capture against the empirical controls (`OUT/controls.json`, cached
    /// per run, control and control key): each trained control that has finished and the same
    /// configuration's next seed. Controls whose weights are absent keep their cached entries.
    pub(super) fn controls(
        &mut self,
        runs: &[RunResult],
    ) -> Result<(Vec<controls::ControlCapture>, Vec<controls::DashPair>)> {
        if controls::pieces(self.preset).is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let cached = controls::Controls::read(self.out);
        let cache = crate::svd_cache::SvdCache::default_location();
        let mut base: Option<Box<dyn WeightSource>> = None;
        let mut out = Vec::new();
        for r in runs {
            let cell = Cell {
                method: r.method,
                rank: r.rank,
                seed: r.seed,
            };
            for (control, dir, key) in self.control_targets(&cell, runs)? {
                if let Some(c) = cached.cached(&cell.name(), &control, &key) {
                    out.push(c.clone());
                    continue;
                }
                let t0 = Instant::now();
                (self.log)(&format!("control: {} against {control}", cell.name()));
                if base.is_none() {
                    base = Some(crate::provision::open_model(
                        &crate::weights::ModelSpec::new(self.preset.model.clone()),
                    )?);
                }
                let c = measure_control(
                    &self.run_dir(&cell),
                    &cell,
                    (&control, &dir, &key),
                    base.as_deref().expect("just opened"),
                    &cache,
                    self.preset.tsd_by,
                )?;
                out.push(c);
                self.timing.capture_s += t0.elapsed().as_secs_f64();
            }
        }
        let pairs = self.dash_pairs(runs, &cached, &cache, &mut base)?;
        crate::fsutil::write_json(
            &controls::Controls::path(self.out),
            &controls::Controls {
                captures: out.clone(),
                dash_pairs: pairs.clone(),
            },
        )?;
        Ok((out, pairs))
    }

    /// Every LoRA-Dash run's picks at its final checkpoint against the LoRA run of the same rank
    /// and seed (cached in `controls.json` by both runs' final steps).
    pub(super) fn dash_pairs(
        &mut self,
        runs: &[RunResult],
        cached: &controls::Controls,
        cache: &crate::svd_cache::SvdCache,
        base: &mut Option<Box<dyn WeightSource>>,
    ) -> Result<Vec<controls::DashPair>> {
        let mut pairs = Vec::new();
        for r in runs.iter().filter(|r| r.method == Method::LoraDash) {
            let paired = runs
                .iter()
                .any(|x| x.method == Method::Lora && x.rank == r.rank && x.seed == r.seed);
            if !paired {
                continue;
            }
            let cell = |method| Cell {
                method,
                rank: r.rank,
                seed: r.seed,
            };
            let (dash, lora) = (cell(Method::LoraDash), cell(Method::Lora));
            let last = |c: &Cell| -> Result<crate::run::Checkpoint> {
                let run = crate::run::Run::open(&self.run_dir(c), None)?;
                Ok(run
                    .require_checkpoints()?
                    .last()
                    .expect("non-empty")
                    .clone())
            };
            let (dl, ll) = (last(&dash)?, last(&lora)?);
            let key = format!(
                "{} step {} / {} step {}",
                dash.name(),
                dl.step,
                lora.name(),
                ll.step
            );
            if let Some(p) = cached
                .dash_pairs
                .iter()
                .find(|p| p.dash_run == dash.name() && p.key == key)
            {
                pairs.push(p.clone());
                continue;
            }
            let t0 = Instant::now();
            (self.log)(&format!(
                "control: {} picks against {}",
                dash.name(),
                lora.name()
            ));
            if base.is_none() {
                *base = Some(crate::provision::open_model(
                    &crate::weights::ModelSpec::new(self.preset.model.clone()),
                )?);
            }
            let b = base.as_deref().expect("just opened");
            let picks = pick_pairs_at(&dl, &ll, b, cache)?;
            pairs.push(controls::DashPair {
                dash_run: dash.name(),
                lora_run: lora.name(),
                rank: r.rank,
                seed: r.seed,
                key,
                picks,
            });
            self.timing.capture_s += t0.elapsed().as_secs_f64();
        }
        Ok(pairs)
    }

    /// `(control, directory, key)` for a run: the finished trained controls, then the same
    /// configuration's next seed (cyclically) when it ran.
    pub(super) fn control_targets(
        &self,
        cell: &Cell,
        runs: &[RunResult],
    ) -> Result<Vec<(String, PathBuf, String)>> {
        let mut v = Vec::new();
        for t in controls::Trained::ALL {
            let dir = self.out.join("runs").join(t.piece());
            if jobs::reference_finished(&dir) {
                v.push((
                    t.label().to_string(),
                    dir.clone(),
                    ranked_key(Self::reference_key(&dir)?.0, self.preset.tsd_by),
                ));
            }
        }
        let mut seeds: Vec<u64> = runs
            .iter()
            .filter(|r| r.method == cell.method && r.rank == cell.rank)
            .map(|r| r.seed)
            .collect();
        seeds.sort();
        if let Some(i) = seeds
            .iter()
            .position(|&s| s == cell.seed)
            .filter(|_| seeds.len() > 1)
        {
            let other = Cell {
                seed: seeds[(i + 1) % seeds.len()],
                ..*cell
            };
            v.push((
                "seed".to_string(),
                self.run_dir(&other),
                ranked_key(other.name(), self.preset.tsd_by),
            ));
        }
        Ok(v)
    }
}

/// One run's final checkpoint against one control (a full fine-tune or another run).
fn measure_control(
    run_dir: &Path,
    cell: &Cell,
    (control, dir, key): (&str, &Path, &str),
    base: &dyn WeightSource,
    cache: &crate::svd_cache::SvdCache,
    tsd_by: crate::directions::Ranking,
) -> Result<controls::ControlCapture> {
    let run = crate::run::Run::open(run_dir, None)?;
    let last = run
        .require_checkpoints()?
        .last()
        .expect("non-empty")
        .clone();
    let adapter = crate::adapter::load_adapter(&last.adapter)?;
    let (src, against) = crate::track::open_reference(&dir.display().to_string())?;
    let reference = match &src {
        crate::track::RefSource::Adapter(a) => crate::inspect::Reference::Adapter(a),
        crate::track::RefSource::Model(m) => crate::inspect::Reference::Model(m.as_ref()),
    };
    let rep = crate::inspect::inspect(
        &adapter,
        base,
        Some((&reference, against.clone())),
        &crate::inspect::InspectOptions {
            tsd_by,
            ..Default::default()
        },
        cache,
        &|_| {},
    )?;
    let all = crate::track::TrackNull::over(&rep.modules).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "control {control}: no module of {} has a counterpart in {against}",
            cell.name()
        ))
    })?;
    Ok(controls::ControlCapture {
        run: cell.name(),
        method: cell.method,
        rank: cell.rank,
        seed: cell.seed,
        control: control.to_string(),
        against: crate::fsutil::portable(&against),
        key: key.to_string(),
        step: last.step,
        all,
        qkv: crate::track::TrackNull::over(rep.modules.iter().filter(|m| is_qkv(&m.module_type))),
    })
}

/// The Dash picks of checkpoint `dash` against the same directions in the LoRA checkpoint `lora`.
fn pick_pairs_at(
    dash: &crate::run::Checkpoint,
    lora: &crate::run::Checkpoint,
    base: &dyn WeightSource,
    cache: &crate::svd_cache::SvdCache,
) -> Result<Vec<controls::PickPair>> {
    let opts = crate::inspect::InspectOptions {
        keep_spectrum: true,
        ..Default::default()
    };
    let look = |ck: &crate::run::Checkpoint| {
        crate::inspect::inspect(
            &crate::adapter::load_adapter(&ck.adapter)?,
            base,
            None,
            &opts,
            cache,
            &|_| {},
        )
    };
    Ok(controls::pick_pairs(&look(dash)?, &look(lora)?))
}
