//! Running a whole reproduction (or one piece of it, or gathering finished pieces): each piece
//! under its lock in `OUT/locks/`, the invocation's timing appended to `OUT/timing.json`.

use super::controls;
use super::grid::{cells, reference_cell, Cell, Grid};
use super::jobs;
use super::lock;
use super::preset::{Preset, ReferenceKind};
use super::results::{Reproduction, RunResult, Scores, Timing};
use super::summary;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What one invocation does.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this piece (`lr-check`, `base`, or a cell name such as `lora-r4-s1`), then stop.
    pub only: Option<String>,
    /// Train nothing: gather finished pieces (and compute capture) into the results. Unfinished
    /// pieces are refused, all named at once, unless `allow_partial`.
    pub collect: bool,
    /// With `collect`: gather what has finished and list the rest as deviations.
    pub allow_partial: bool,
}

/// Takes a piece's lock for this process, refusing when another process runs the piece.
fn hold(out: &Path, piece: &str) -> Result<lock::Lock> {
    lock::try_lock(out, piece)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "piece {piece} is being run by another process (it holds {}): wait for it, or stop it first",
            lock::lock_path(out, piece).display()
        ))
    })
}

/// Appends this invocation's timing to `OUT/timing.json` (under a lock: array tasks finish at
/// the same time) when it computed something; returns every invocation so far.
fn record_timing(out: &Path, timing: &Timing) -> Result<Vec<Timing>> {
    let _guard = lock::lock(out, "timing")?;
    let tpath = out.join("timing.json");
    let mut invocations: Vec<Timing> = crate::fsutil::read_json(&tpath).unwrap_or_default();
    let worked = timing.lower_cache_s
        + timing.eval_prepare_s
        + timing.lr_check_s
        + timing.train_s
        + timing.eval_s
        + timing.capture_s
        > 0.0;
    if worked {
        // Only invocations that computed something: a re-render costs nothing worth summing.
        invocations.push(timing.clone());
        crate::fsutil::write_json(&tpath, &invocations)?;
    }
    Ok(invocations)
}

/// Runs (or resumes, or with `opts.collect` only gathers) the reproduction in `out`. With
/// `opts.only` it does that one piece and returns `None`. Each piece runs under its lock in
/// `OUT/locks/`, so two processes (array tasks, a local run) never train the same piece.
pub fn reproduce(
    preset: &Preset,
    data: &Path,
    out: &Path,
    opts: &Options,
    log: &dyn Fn(&str),
) -> Result<Option<Reproduction>> {
    let t0 = Instant::now();
    let mut grid = Grid::new(preset, data, out, log)?;
    if let Some(only) = &opts.only {
        run_only(&mut grid, only, t0)?;
        return Ok(None);
    }
    let (partial, unfinished) = if opts.collect {
        unfinished_pieces(preset, out, opts.allow_partial)?
    } else {
        (Vec::new(), Vec::new())
    };
    let done = |piece: &str| !unfinished.iter().any(|p| p == piece);
    let (lr, lr_check) = if opts.collect {
        grid.lr(false)?
    } else {
        let _guard = hold(out, "lr-check")?;
        grid.lr(true)?
    };
    let runs = grid_runs(&mut grid, lr, opts.collect, &done)?;
    let base = if opts.collect {
        done("base")
            .then(|| crate::fsutil::read_json::<Scores>(&out.join("base").join("eval.json")))
            .transpose()?
    } else {
        let _guard = hold(out, "base")?;
        Some(grid.base()?)
    };
    if !opts.collect {
        train_references(&mut grid, lr)?;
    }
    let (reference, capture) = grid.capture(&runs)?;
    let (control_captures, dash_pairs) = grid.controls(&runs)?;
    let data = run_data(&grid, &runs)?;
    let caps: Vec<_> = capture
        .iter()
        .map(|c| (c.method, c.rank, c.points.clone()))
        .collect();
    let summary = summary::summarize(
        preset,
        &data,
        base.as_ref(),
        &caps,
        &control_captures,
        &dash_pairs,
    )?;
    let mut timing = grid.timing.clone();
    timing.total_s = t0.elapsed().as_secs_f64();
    let invocations = record_timing(out, &timing)?;
    let mut deviations = grid_deviations(&grid, lr, lr_check.as_ref(), partial);
    if reference.is_none() && preset.reference != ReferenceKind::None {
        deviations.push("no TSD capture: the reference update has not finished".into());
    }
    if !control_captures.is_empty() {
        deviations.push("not in the paper: empirical controls of TSD capture — full fine-tunes like the reference on other tasks (evaluation-only tasks' test examples beyond every scored one, never scored) and on the runs' training inputs with answers permuted within each task, and each run against the same setting's next seed".into());
    }
    Ok(Some(Reproduction {
        preset: preset.clone(),
        lr,
        lr_check,
        base,
        runs,
        reference,
        capture,
        summary,
        deviations,
        timing,
        invocations,
    }))
}

/// `--only PIECE`: runs that one piece under its lock and records the invocation's timing (also
/// when a signal stopped it: the time it spent still counts).
fn run_only(grid: &mut Grid, only: &str, t0: Instant) -> Result<()> {
    let (preset, out) = (grid.preset, grid.out);
    let (pre, names) = jobs::pieces(preset);
    if !pre.iter().chain(&names).any(|n| n == only) {
        return Err(Error::InvalidArgument(format!(
            "--only {only}: not a piece of this grid ({})",
            pre.iter()
                .chain(&names)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let _guard = hold(out, only)?;
    let done = run_piece(grid, only);
    // A piece stopped by a signal still counts the time it spent.
    if let Err(e @ Error::Stopped { .. }) = done {
        let mut timing = grid.timing.clone();
        timing.total_s = t0.elapsed().as_secs_f64();
        record_timing(out, &timing)?;
        return Err(e);
    }
    done?;
    let mut timing = grid.timing.clone();
    timing.total_s = t0.elapsed().as_secs_f64();
    record_timing(out, &timing)?;
    Ok(())
}

/// Runs the piece named `only` (a name of this grid's pieces).
fn run_piece(grid: &mut Grid, only: &str) -> Result<()> {
    let preset = grid.preset;
    if only == "lr-check" {
        grid.lr(true).map(drop)
    } else if only == "base" {
        grid.base().map(drop)
    } else if reference_cell(preset).is_some_and(|c| c.name() == *only) {
        grid.lr(false)
            .and_then(|(lr, _)| grid.reference_run(lr, true))
    } else if let Some(t) = controls::Trained::from_piece(only) {
        grid.lr(false)
            .and_then(|(lr, _)| grid.control_run(t, lr, true))
    } else {
        let all = cells(preset);
        let c = all
            .iter()
            .find(|c| c.name() == *only)
            .expect("a piece name");
        grid.lr(false)
            .and_then(|(lr, _)| grid.cell(c, lr, "").map(drop))
    }
}

/// `--collect`: the unfinished pieces as deviations and by name; refused, naming every one, unless
/// `allow_partial`.
fn unfinished_pieces(
    preset: &Preset,
    out: &Path,
    allow_partial: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let st = jobs::status(preset, out)?;
    let open: Vec<&jobs::PieceStatus> = st
        .iter()
        .filter(|s| s.state != jobs::PieceState::Done)
        .collect();
    if !open.is_empty() && !allow_partial {
        return Err(Error::Unfinished(format!(
            "--collect: {} of {} pieces in {} have not finished: {}. Re-run them: the same command with `--emit-jobs --only-missing`, then {}/jobs/submit.sh (or each with `--only PIECE`); or gather the rest with --allow-partial",
            open.len(),
            st.len(),
            out.display(),
            open.iter().map(|s| s.describe()).collect::<Vec<_>>().join("; "),
            out.display()
        )));
    }
    let partial = open
        .iter()
        .map(|s| format!("not finished, left out: {}", s.describe()))
        .collect();
    let unfinished = open.iter().map(|s| s.piece.clone()).collect();
    Ok((partial, unfinished))
}

/// Every cell's result: trained and evaluated (or read when done earlier), each under its lock;
/// with `collect`, only read from the finished cells.
fn grid_runs(
    grid: &mut Grid,
    lr: f64,
    collect: bool,
    done: &dyn Fn(&str) -> bool,
) -> Result<Vec<RunResult>> {
    let all = cells(grid.preset);
    let mut runs = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let label = format!("[{}/{}]", i + 1, all.len());
        if collect {
            if done(&c.name()) {
                let p = grid.run_dir(c).join("eval.json");
                runs.push(crate::fsutil::read_json::<RunResult>(&p)?);
            }
        } else {
            let _guard = hold(grid.out, &c.name())?;
            runs.push(grid.cell(c, lr, &label)?);
        }
    }
    Ok(runs)
}

/// Trains the full fine-tune reference and the preset's trained controls, each under its lock.
fn train_references(grid: &mut Grid, lr: f64) -> Result<()> {
    let (preset, out) = (grid.preset, grid.out);
    if let Some(c) = reference_cell(preset) {
        let _guard = hold(out, &c.name())?;
        grid.reference_run(lr, false)?;
    }
    for t in controls::Trained::ALL {
        if controls::pieces(preset).iter().any(|p| p == t.piece()) {
            let _guard = hold(out, t.piece())?;
            grid.control_run(t, lr, false)?;
        }
    }
    Ok(())
}

/// Every run's result with its per-example outcomes (`predictions.json`), for the summary.
fn run_data<'r>(grid: &Grid, runs: &'r [RunResult]) -> Result<Vec<summary::RunData<'r>>> {
    runs.iter()
        .map(|r| {
            let cell = Cell {
                method: r.method,
                rank: r.rank,
                seed: r.seed,
            };
            Ok(summary::RunData {
                result: r,
                outcomes: summary::read_outcomes(
                    &grid.run_dir(&cell).join("predictions.json"),
                    grid.preset.protocol,
                )?,
            })
        })
        .collect()
}

/// The preset's departures from the paper, then the pieces `--collect --allow-partial` left out.
fn grid_deviations(
    grid: &Grid,
    lr: f64,
    lr_check: Option<&super::results::LrCheck>,
    partial: Vec<String>,
) -> Vec<String> {
    let lr_tried: Vec<f64> = lr_check
        .map(|c| c.trials.iter().map(|t| t.lr).collect())
        .unwrap_or_default();
    let mut deviations = grid.preset.deviations(&grid.missing, lr, &lr_tried);
    deviations.extend(partial);
    deviations
}

/// Where results go by default.
pub fn default_out(preset: &str) -> PathBuf {
    PathBuf::from("reproductions/commonsense").join(preset)
}
