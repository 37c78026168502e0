//! `--emit-jobs`: the grid as Slurm jobs, and the state of every piece for `--collect`.
//!
//! `OUT/jobs/` gets `jobs.txt` (one command per array task: line i is task i), `array.sbatch` (the
//! array; task i runs piece i), `prepare.sbatch` (the lr check, when the preset has one and it has
//! not finished), `collect.sbatch` (`--collect` once the array has ended) and `submit.sh` (submits
//! them with dependencies). Every `#SBATCH` directive comes before the first command (`sbatch`
//! reads none after it); the binary and directories are absolute (or mapped by `--remote-root`),
//! so the jobs run from any working directory. Each task appends its output to
//! `OUT/jobs/logs/<piece>.log`, ending with `== exit N`; Slurm's own messages (a cancellation, a
//! time limit) go to `OUT/jobs/logs/slurm-<job>-<id>.log`.

use super::preset::Overrides;
use super::{cells, lock, reference_cell, Preset};
use crate::error::{Error, Result};
use crate::train::trainer::RunRecord;
use std::path::{Path, PathBuf};

/// Before tsd starts: SIGTERM / SIGINT to the batch shell go to tsd (or, arriving before it has
/// started, right after it starts).
const FORWARD: &str = "pid=\npending=\nforward() {\n  if [ -n \"$pid\" ]; then kill -s \"$1\" \"$pid\" 2>/dev/null || true; else pending=$1; fi\n}\ntrap 'forward TERM' TERM\ntrap 'forward INT' INT\n";

/// After tsd starts in the background: its exit status in `rc`, however many signals arrive.
/// `wait` returns early (128 + N) when a trapped signal arrives while tsd is still saving: wait
/// again while it lives, then once more for the status of a tsd that ended between the two (bash
/// keeps it; an older bash that already reported it says 127, and `rc` is kept).
const WAIT: &str = "pid=$!\nif [ -n \"$pending\" ]; then kill -s \"$pending\" \"$pid\" 2>/dev/null || true; fi\nrc=0\nwait \"$pid\" || rc=$?\nwhile kill -0 \"$pid\" 2>/dev/null; do\n  rc=0\n  wait \"$pid\" || rc=$?\ndone\nr=0\nwait \"$pid\" 2>/dev/null || r=$?\nif [ \"$r\" -ne 127 ]; then rc=$r; fi\n";

/// Single-quotes `s` for a POSIX shell.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The pieces a cluster runs, in order: `lr-check` (if any) is a prerequisite of the rest.
pub fn pieces(p: &Preset) -> (Option<String>, Vec<String>) {
    let mut v: Vec<String> = cells(p).iter().map(|c| c.name()).collect();
    v.push("base".into());
    if let Some(c) = reference_cell(p) {
        v.push(c.name());
    }
    v.extend(super::controls::pieces(p));
    (p.needs_lr_check().then(|| "lr-check".to_string()), v)
}

/// Where a piece's job output goes: `OUT/jobs/logs/<piece>.log`.
pub fn log_path(out: &Path, piece: &str) -> PathBuf {
    out.join("jobs").join("logs").join(format!("{piece}.log"))
}

/// Where one piece stands in an output directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PieceState {
    Done,
    /// Another process holds the piece's lock.
    Running,
    /// Not finished, and why ("not started", "stopped at step 3 of 6", …).
    Unfinished(String),
}

/// One piece's state with its job log, if a job wrote one.
#[derive(Clone, Debug)]
pub struct PieceStatus {
    pub piece: String,
    pub state: PieceState,
    /// `OUT/jobs/logs/<piece>.log`, written by the piece's job (absent when no job started it).
    pub log: PathBuf,
}

impl PieceStatus {
    /// `lora-r1-s1 (stopped at step 3 of 6; log OUT/jobs/logs/lora-r1-s1.log: exit 1)`.
    pub fn describe(&self) -> String {
        let why = match &self.state {
            PieceState::Done => "finished".to_string(),
            PieceState::Running => "running in another process".to_string(),
            PieceState::Unfinished(w) => w.clone(),
        };
        let log = if self.log.exists() {
            format!("log {}: {}", self.log.display(), log_ending(&self.log))
        } else {
            format!("no job log at {}", self.log.display())
        };
        format!("{} ({why}; {log})", self.piece)
    }
}

/// How a job log ends: the task's exit status, or that it stopped without one.
fn log_ending(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) if l.starts_with("== exit ") => l.trim_start_matches("== ").to_string(),
        _ => "no exit line (killed, cancelled or still running)".to_string(),
    }
}

/// What a training piece's run directory says when it has not finished.
fn training_state(dir: &Path) -> Option<String> {
    match crate::fsutil::read_json::<RunRecord>(&dir.join("record.json")) {
        Ok(r) if r.finished => None,
        Ok(r) => Some(format!(
            "stopped at step {} of {}",
            r.steps.last().map_or(0, |s| s.step),
            r.total_steps
        )),
        Err(_) if dir.exists() => Some("started, no step recorded".into()),
        Err(_) => Some("not started".into()),
    }
}

/// Whether a piece has finished, read from the files it leaves (each written atomically last):
/// `lr-check.json`; `base/eval.json`; a cell's `runs/<cell>/eval.json`; the reference's finished
/// `record.json`.
fn piece_unfinished(p: &Preset, out: &Path, piece: &str) -> Option<String> {
    let parses = |f: &Path| {
        std::fs::read(f).is_ok_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok())
    };
    if piece == "lr-check" {
        return (!parses(&out.join("lr-check.json"))).then(|| "lr-check.json not written".into());
    }
    if piece == "base" {
        return (!parses(&out.join("base").join("eval.json"))).then(|| "not evaluated".into());
    }
    let dir = out.join("runs").join(piece);
    if super::controls::Trained::from_piece(piece).is_some() && parses(&dir.join("skipped.json")) {
        return None;
    }
    if reference_cell(p).is_some_and(|c| c.name() == piece)
        || super::controls::Trained::from_piece(piece).is_some()
    {
        return training_state(&dir);
    }
    if parses(&dir.join("eval.json")) {
        return None;
    }
    Some(training_state(&dir).unwrap_or_else(|| "trained, not evaluated".into()))
}

/// Every piece of the grid (the lr check first, when the preset has one) and its state.
pub fn status(p: &Preset, out: &Path) -> Result<Vec<PieceStatus>> {
    let (pre, rest) = pieces(p);
    let mut v = Vec::new();
    for piece in pre.into_iter().chain(rest) {
        let state = match piece_unfinished(p, out, &piece) {
            None => PieceState::Done,
            Some(_) if out.join("locks").is_dir() && lock::is_held(out, &piece)? => {
                PieceState::Running
            }
            Some(why) => PieceState::Unfinished(why),
        };
        let log = log_path(out, &piece);
        v.push(PieceStatus { piece, state, log });
    }
    Ok(v)
}

/// Whether the reference update (a full fine-tune, or the grid's highest-rank LoRA) finished
/// training; capture is never measured against an unfinished one.
pub fn reference_finished(dir: &Path) -> bool {
    crate::fsutil::read_json::<RunRecord>(&dir.join("record.json")).is_ok_and(|r| r.finished)
}

/// The run's last recorded checkpoint is on disk: a reference whose record was kept but whose
/// weights were not (a committed reproduction) is not finished.
pub fn final_checkpoint_present(dir: &Path, r: &RunRecord) -> bool {
    match r.checkpoints.last() {
        None => false,
        Some(&step) => crate::run::Run::open(dir, None)
            .is_ok_and(|run| run.checkpoints.iter().any(|c| c.step == step)),
    }
}

/// Slurm resources of each job. The defaults per preset are [`Resources::for_preset`]; every
/// field can be overridden from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// `--cpus-per-task`; the job runs tsd with as many threads (`RAYON_NUM_THREADS`).
    pub cpus: usize,
    /// `--mem` (Slurm's syntax: `8G`, `64000M`).
    pub mem: String,
    /// `--time` (Slurm's syntax: `HH:MM:SS`, `D-HH:MM:SS`).
    pub time: String,
    /// `--gres` (`gpu:1`), for GPU presets.
    pub gres: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// At most this many array tasks at once (`--array=1-N%K`).
    pub max_parallel: Option<usize>,
    /// Further `#SBATCH` options, written as given (`--qos=long`).
    pub extra: Vec<String>,
    /// Seconds before the time limit at which Slurm sends SIGTERM to the batch script
    /// (`--signal=B:TERM@N`), which forwards it to tsd: training saves a checkpoint and the task
    /// exits 143. 0: no early signal (only Slurm's own SIGTERM at the limit, then SIGKILL after
    /// KillWait).
    pub signal_grace: u32,
}

/// The default of [`Resources::signal_grace`]: two minutes for a step and a save.
pub const DEFAULT_SIGNAL_GRACE: u32 = 120;

impl Resources {
    /// What one piece of the preset needs: `smoke` (default model, 6 steps) fits in 2 CPUs, 6 GB
    /// and minutes; `cpu` (200 steps, 2 top layers) in 2 CPUs, 8 GB and a few hours; a CUDA preset
    /// (`paper`: LLaMA-7B in bf16, 3 epochs of commonsense_170k) needs one GPU, host memory for
    /// the weights and the data, and a day or two.
    pub fn for_preset(p: &Preset) -> Self {
        let (cpus, mem, time, gres) = if p.device.starts_with("cuda") {
            (8, "64G", "2-00:00:00", Some("gpu:1".to_string()))
        } else if p.name == "smoke" {
            (2, "4G", "00:30:00", None)
        } else {
            (2, "8G", "04:00:00", None)
        };
        Resources {
            cpus,
            mem: mem.into(),
            time: time.into(),
            gres,
            partition: None,
            account: None,
            max_parallel: None,
            extra: Vec::new(),
            signal_grace: DEFAULT_SIGNAL_GRACE,
        }
    }

    /// Refuses values that would break a `#SBATCH` line (whitespace, a newline) or the array.
    fn check(&self) -> Result<()> {
        let bad = |what: &str, v: &str| {
            Err(Error::InvalidArgument(format!(
                "{what} `{v}`: an #SBATCH value must be non-empty without whitespace or quotes"
            )))
        };
        for (what, v) in [("--mem", &self.mem), ("--time", &self.time)]
            .into_iter()
            .chain(self.gres.iter().map(|g| ("--gres", g)))
            .chain(self.partition.iter().map(|g| ("--partition", g)))
            .chain(self.account.iter().map(|g| ("--account", g)))
        {
            if !directive_safe(v) {
                return bad(what, v);
            }
        }
        for e in &self.extra {
            if !e.starts_with('-') || !directive_safe(e) {
                return bad("--sbatch-arg", e);
            }
        }
        if self.signal_grace > 65535 {
            return Err(Error::InvalidArgument(format!(
                "--signal-grace {}: Slurm takes at most 65535 seconds",
                self.signal_grace
            )));
        }
        if self.cpus == 0 || self.max_parallel == Some(0) {
            return Err(Error::InvalidArgument(
                "--cpus and --max-parallel must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The `#SBATCH` lines every job carries.
    fn directives(&self) -> String {
        let mut s = format!(
            "#SBATCH --cpus-per-task={}\n#SBATCH --mem={}\n#SBATCH --time={}\n",
            self.cpus, self.mem, self.time
        );
        for (k, v) in [
            ("gres", &self.gres),
            ("partition", &self.partition),
            ("account", &self.account),
        ] {
            if let Some(v) = v {
                s += &format!("#SBATCH --{k}={v}\n");
            }
        }
        if self.signal_grace > 0 {
            s += &format!("#SBATCH --signal=B:TERM@{}\n", self.signal_grace);
        }
        for e in &self.extra {
            s += &format!("#SBATCH {e}\n");
        }
        s
    }
}

fn directive_safe(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"".contains(c))
}

/// `--remote-root LOCAL=REMOTE`: the cluster sees this machine's `LOCAL` directory as `REMOTE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRoot {
    pub local: PathBuf,
    pub remote: PathBuf,
}

impl RemoteRoot {
    /// Parses `LOCAL=REMOTE` (both absolute).
    pub fn parse(s: &str) -> Result<Self> {
        let (l, r) = s.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("--remote-root `{s}`: expected LOCAL=REMOTE"))
        })?;
        let (local, remote) = (PathBuf::from(l), PathBuf::from(r));
        if !local.is_absolute() || !remote.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "--remote-root `{s}`: both paths must be absolute"
            )));
        }
        Ok(RemoteRoot { local, remote })
    }
}

/// An existing path as the jobs will see it: absolute (resolved here), then mapped through the
/// remote root when it lies under its local side.
pub fn job_path(p: &Path, remote: Option<&RemoteRoot>) -> Result<String> {
    let abs = std::fs::canonicalize(p).map_err(|e| Error::io(p, e))?;
    let mapped = match remote.and_then(|r| {
        let local = std::fs::canonicalize(&r.local).unwrap_or_else(|_| r.local.clone());
        abs.strip_prefix(&local)
            .ok()
            .map(|rest| r.remote.join(rest))
    }) {
        Some(m) => m,
        None => abs,
    };
    mapped.into_os_string().into_string().map_err(|p| {
        Error::InvalidArgument(format!(
            "{}: path is not valid UTF-8",
            Path::new(&p).display()
        ))
    })
}

/// What `--emit-jobs` writes: the command every job repeats and what each job requests.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The tsd binary as the jobs call it (absolute).
    pub tsd: String,
    /// The arguments after the binary that every job repeats (`reproduce commonsense --preset
    /// smoke --out /abs/out --data /abs/data …`), paths as the jobs see them.
    pub args: Vec<String>,
    /// The output directory as the jobs see it.
    pub out: String,
    pub resources: Resources,
    /// Only the pieces that have not finished (a re-run after failures).
    pub only_missing: bool,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub dir: PathBuf,
    /// The array's pieces, in task order.
    pub pieces: Vec<String>,
    /// Whether `prepare.sbatch` (the lr check) runs before the array.
    pub prepare: bool,
    /// Pieces left out because another process runs them.
    pub running: Vec<String>,
    /// The command that gathers the results (also what `collect.sbatch` runs).
    pub collect: String,
}

/// Writes the job files under `out/jobs/` (`out` as this machine sees it). With
/// `spec.only_missing`, only unfinished pieces, and nothing when none is (`pieces` empty).
pub fn emit_jobs(p: &Preset, spec: &JobSpec, out: &Path) -> Result<Emitted> {
    spec.resources.check()?;
    if !directive_safe(&spec.out) {
        return Err(Error::InvalidArgument(format!(
            "--out {}: Slurm's #SBATCH --output/--chdir cannot carry whitespace or quotes in a path",
            spec.out
        )));
    }
    let dir = out.join("jobs");
    let command = std::iter::once(&spec.tsd)
        .chain(&spec.args)
        .map(|a| sh(a))
        .collect::<Vec<_>>()
        .join(" ");
    let collect = command.clone() + " --collect";
    let (pre, todo, running) = select_pieces(p, spec, out)?;
    if spec.only_missing && pre.is_none() && todo.is_empty() {
        return Ok(Emitted {
            dir,
            pieces: todo,
            prepare: false,
            running,
            collect,
        });
    }
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io(dir.join("logs"), e))?;
    let mut jobs = String::new();
    for piece in &todo {
        jobs += &format!("{command} --only {piece}\n");
    }
    crate::fsutil::atomic_write(&dir.join("jobs.txt"), jobs.as_bytes())?;
    let scripts = Scripts {
        spec,
        command: &command,
        jdir: format!("{}/jobs", spec.out),
    };
    crate::fsutil::atomic_write(&dir.join("array.sbatch"), scripts.array(&todo).as_bytes())?;
    let collect_job = format!(
        "{}{}",
        scripts.header("tsd-collect", "slurm-%x-%j.log", ""),
        scripts.body("", "collect", "--collect")
    );
    crate::fsutil::atomic_write(&dir.join("collect.sbatch"), collect_job.as_bytes())?;
    let prep_path = dir.join("prepare.sbatch");
    if let Some(piece) = &pre {
        let prep = format!(
            "{}{}",
            scripts.header("tsd-lr-check", "slurm-%x-%j.log", ""),
            scripts.body("", piece, &format!("--only {piece}"))
        );
        crate::fsutil::atomic_write(&prep_path, prep.as_bytes())?;
    } else if prep_path.exists() {
        std::fs::remove_file(&prep_path).map_err(|e| Error::io(&prep_path, e))?;
    }
    write_submit(&dir, spec, pre.is_some(), &todo, &collect)?;
    Ok(Emitted {
        dir,
        pieces: todo,
        prepare: pre.is_some(),
        running,
        collect,
    })
}

/// The pieces to emit: the lr check (if the preset has one), the array's pieces, and the pieces
/// another process runs; with `spec.only_missing`, only the unfinished ones.
fn select_pieces(
    p: &Preset,
    spec: &JobSpec,
    out: &Path,
) -> Result<(Option<String>, Vec<String>, Vec<String>)> {
    let (pre, mut todo) = pieces(p);
    if !spec.only_missing {
        return Ok((pre, todo, Vec::new()));
    }
    let st = status(p, out)?;
    let keep = |name: &str| {
        st.iter()
            .find(|s| s.piece == name)
            .is_some_and(|s| matches!(s.state, PieceState::Unfinished(_)))
    };
    let running = st
        .iter()
        .filter(|s| s.state == PieceState::Running)
        .map(|s| s.piece.clone())
        .collect();
    let pre = pre.filter(|x| keep(x));
    todo.retain(|x| keep(x));
    Ok((pre, todo, running))
}

/// The batch scripts' common parts: directives and the body that runs one piece.
struct Scripts<'a> {
    spec: &'a JobSpec,
    /// The tsd command every job repeats, quoted for the shell.
    command: &'a str,
    /// `OUT/jobs` as the jobs see it.
    jdir: String,
}

impl Scripts<'_> {
    /// The shebang and every `#SBATCH` line of one script.
    fn header(&self, name: &str, output: &str, extra: &str) -> String {
        format!(
            "#!/bin/bash\n#SBATCH --job-name={name}\n{extra}{}#SBATCH --output={}/logs/{output}\n#SBATCH --chdir={}\n",
            self.spec.resources.directives(),
            self.jdir,
            self.spec.out
        )
    }

    /// The body after the directives: one piece, its output appended to its log with a header
    /// line and the exit status, tsd's threads matched to the CPUs Slurm granted. tsd runs in the
    /// background so that the shell can forward SIGTERM / SIGINT to it (Slurm's `--signal=B:`
    /// warning reaches only the batch shell) and then wait for its own exit status ([`WAIT`]).
    fn body(&self, prelude: &str, piece_expr: &str, what: &str) -> String {
        format!(
            "set -euo pipefail\n{prelude}piece={piece_expr}\nlog={}/\"$piece\".log\nexport RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\necho \"== $(date -u +%FT%TZ) Slurm job ${{SLURM_JOB_ID:-?}} on $(hostname): $piece\" >>\"$log\"\n{FORWARD}{} {what} >>\"$log\" 2>&1 &\n{WAIT}echo \"== exit $rc\" >>\"$log\"\nexit \"$rc\"\n",
            sh(&format!("{}/logs", self.jdir)),
            self.spec.resources.cpus,
            self.command
        )
    }

    /// `array.sbatch`: task i runs piece i of `todo`.
    fn array(&self, todo: &[String]) -> String {
        let array_spec = match self.spec.resources.max_parallel {
            Some(k) => format!("1-{}%{k}", todo.len()),
            None => format!("1-{}", todo.len()),
        };
        let list: Vec<String> = todo.iter().map(|x| sh(x)).collect();
        format!(
            "{}# Task i runs piece i (line i of jobs.txt); re-run one task with `sbatch --array=I {}/array.sbatch`.\n{}",
            self.header(
                "tsd-grid",
                "slurm-%x-%A_%a.log",
                &format!("#SBATCH --array={array_spec}\n")
            ),
            self.jdir,
            self.body(
                &format!("pieces=(\n  {}\n)\n", list.join("\n  ")),
                "\"${pieces[$((SLURM_ARRAY_TASK_ID - 1))]}\"",
                "--only \"$piece\""
            )
        )
    }
}

/// `submit.sh` (executable): the lr check if `prepare`, the array after it, `--collect` after the
/// array has ended.
fn write_submit(
    dir: &Path,
    spec: &JobSpec,
    prepare: bool,
    todo: &[String],
    collect: &str,
) -> Result<()> {
    let submit_array = if prepare {
        "pre=$(sbatch --parsable \"$d/prepare.sbatch\")\npre=${pre%%;*}\necho \"lr-check job $pre\"\narr=$(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:\"$pre\" \"$d/array.sbatch\")\n"
    } else {
        "arr=$(sbatch --parsable \"$d/array.sbatch\")\n"
    };
    let submit = format!(
        "#!/bin/bash\n# Submits the grid: {}the array ({} tasks: {}), then --collect once the array has ended.\nset -euo pipefail\nd=$(cd \"$(dirname \"$0\")\" && pwd)\n{submit_array}arr=${{arr%%;*}}\necho \"array job $arr\"\ncol=$(sbatch --parsable --dependency=afterany:\"$arr\" \"$d/collect.sbatch\")\ncol=${{col%%;*}}\necho \"collect job $col\"\necho \"logs in $d/logs; results in {}/results.json once job $col has run, or run:\"\necho {}\n",
        if prepare { "the lr check, " } else { "" },
        todo.len(),
        todo.join(" "),
        spec.out,
        sh(collect)
    );
    let f = dir.join("submit.sh");
    crate::fsutil::atomic_write(&f, submit.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(&f, e))?;
    }
    Ok(())
}

/// The flags that give the same overrides to a job (`--model` a path as the jobs see it when
/// it names an existing path here).
fn override_args(o: &Overrides, r: Option<&RemoteRoot>) -> Result<Vec<String>> {
    let mut args: Vec<String> = Vec::new();
    if let Some(m) = &o.model {
        let m = if Path::new(m).exists() {
            job_path(Path::new(m), r)?
        } else {
            m.clone()
        };
        args.extend(["--model".into(), m]);
    }
    if !o.seeds.is_empty() {
        let s: Vec<String> = o.seeds.iter().map(u64::to_string).collect();
        args.extend(["--seeds".into(), s.join(",")]);
    }
    if let Some(d) = &o.device {
        args.extend(["--device".into(), d.clone()]);
    }
    if let Some(d) = &o.dtype {
        args.extend(["--dtype".into(), d.clone()]);
    }
    if let Some(t) = o.train_on_inputs {
        args.extend(["--train-on-inputs".into(), t.to_string()]);
    }
    if let Some(c) = o.controls {
        args.extend(["--controls".into(), c.to_string()]);
    }
    if let Some(by) = o.tsd_by {
        args.extend(["--tsd-by".into(), tsd_by_value(by).to_string()]);
    }
    Ok(args)
}

/// The `--tsd-by` value naming a ranking.
fn tsd_by_value(by: crate::directions::Ranking) -> &'static str {
    match by {
        crate::directions::Ranking::ChangeRate => "change-rate",
        crate::directions::Ranking::Enrichment => "enrichment",
    }
}

/// The command line's changes to what each job requests (`None`: the preset's
/// [`Resources::for_preset`]).
#[derive(Clone, Debug, Default)]
pub struct SlurmOverrides {
    pub cpus: Option<usize>,
    pub mem: Option<String>,
    pub time: Option<String>,
    pub gres: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub max_parallel: Option<usize>,
    pub signal_grace: Option<u32>,
    /// Further sbatch options, written as given.
    pub extra: Vec<String>,
}

impl SlurmOverrides {
    /// What each job of `p` requests, with these overrides.
    pub fn resources(&self, p: &Preset) -> Resources {
        let mut res = Resources::for_preset(p);
        if let Some(v) = self.cpus {
            res.cpus = v;
        }
        if let Some(v) = &self.mem {
            res.mem = v.clone();
        }
        if let Some(v) = &self.time {
            res.time = v.clone();
        }
        if let Some(v) = &self.gres {
            res.gres = Some(v.clone());
        }
        res.partition = self.partition.clone();
        res.account = self.account.clone();
        res.max_parallel = self.max_parallel;
        res.extra = self.extra.clone();
        if let Some(v) = self.signal_grace {
            res.signal_grace = v;
        }
        res
    }
}

/// What `--emit-jobs` was asked for.
#[derive(Clone, Debug)]
pub struct EmitRequest<'a> {
    /// The setting, overrides applied.
    pub preset: &'a Preset,
    /// The preset was read from `out` (the jobs name no `--preset` then).
    pub from_dir: bool,
    /// The invocation's overrides, repeated by every job.
    pub overrides: &'a Overrides,
    pub out: &'a Path,
    pub data: &'a Path,
    /// The tsd binary the jobs run (`None`: this one).
    pub tsd: Option<PathBuf>,
    /// `LOCAL=REMOTE` (see [`RemoteRoot`]).
    pub remote_root: Option<String>,
    pub slurm: SlurmOverrides,
    /// Only the pieces that have not finished.
    pub only_missing: bool,
}

/// `--emit-jobs`: checks the setting against `out` (writing its preset.json), then writes the
/// jobs with every path absolute as the cluster sees it.
pub fn emit(req: &EmitRequest) -> Result<Emitted> {
    let p = req.preset;
    if p.device.starts_with("cuda") && req.tsd.is_none() && !cfg!(feature = "cuda") {
        return Err(Error::InvalidArgument(format!(
            "preset {} runs on {}, but this tsd was built without the cuda feature: build one with `cargo build --release --features cuda` and emit with it, or name it with --tsd PATH",
            p.name, p.device
        )));
    }
    super::check_setup(p, req.data, req.out)?;
    let remote = req
        .remote_root
        .as_deref()
        .map(RemoteRoot::parse)
        .transpose()?;
    let r = remote.as_ref();
    let exe = match &req.tsd {
        Some(t) => t.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::Internal(format!("locating this tsd binary: {e}")))?,
    };
    let mut args: Vec<String> = vec!["reproduce".into(), "commonsense".into()];
    if !req.from_dir {
        args.extend(["--preset".into(), p.name.clone()]);
    }
    args.extend([
        "--out".into(),
        job_path(req.out, r)?,
        "--data".into(),
        job_path(req.data, r)?,
    ]);
    args.extend(override_args(req.overrides, r)?);
    let spec = JobSpec {
        tsd: job_path(&exe, r)?,
        args,
        out: job_path(req.out, r)?,
        resources: req.slurm.resources(p),
        only_missing: req.only_missing,
    };
    emit_jobs(p, &spec, req.out)
}

/// What the emitted Slurm jobs request and call (with --emit-jobs).
#[derive(clap::Args, Debug)]
pub struct SlurmArgs {
    /// With --emit-jobs: only the pieces that have not finished (after failed or cancelled tasks).
    #[arg(long, requires = "emit_jobs")]
    pub only_missing: bool,
    /// The tsd binary the jobs run [default: this binary, by its absolute path]
    #[arg(long, requires = "emit_jobs")]
    pub tsd: Option<PathBuf>,
    /// LOCAL=REMOTE: the cluster sees this machine's LOCAL directory as REMOTE (paths in the jobs
    /// are rewritten) [default: the paths as resolved here]
    #[arg(long, requires = "emit_jobs")]
    pub remote_root: Option<String>,
    /// Slurm partition [default: the cluster's default]
    #[arg(long, requires = "emit_jobs")]
    pub partition: Option<String>,
    /// Slurm account [default: the user's default]
    #[arg(long, requires = "emit_jobs")]
    pub account: Option<String>,
    /// Time limit per job [default: per preset: smoke 00:30:00, cpu 04:00:00, paper 2-00:00:00]
    #[arg(long, requires = "emit_jobs")]
    pub time: Option<String>,
    /// Memory per job [default: per preset: smoke 4G, cpu 8G, paper 64G]
    #[arg(long, requires = "emit_jobs")]
    pub mem: Option<String>,
    /// CPUs per job, also tsd's thread count in the job [default: per preset: 2 on CPU, 8 with a GPU]
    #[arg(long, requires = "emit_jobs")]
    pub cpus: Option<usize>,
    /// Generic resources per job [default: gpu:1 for CUDA presets, none otherwise]
    #[arg(long, requires = "emit_jobs")]
    pub gres: Option<String>,
    /// At most this many array tasks at once (--array=1-N%K) [default: no cap]
    #[arg(long, requires = "emit_jobs")]
    pub max_parallel: Option<usize>,
    /// Seconds before the time limit at which Slurm sends SIGTERM to each job (--signal=B:TERM@N),
    /// which tsd answers by saving a checkpoint and exiting 143; 0: none (Slurm's own SIGTERM at
    /// the limit, SIGKILL after KillWait, often 30 s) [default: 120]
    #[arg(long, requires = "emit_jobs", value_name = "SECONDS")]
    pub signal_grace: Option<u32>,
    /// Any other sbatch option for every job, e.g. --sbatch-arg=--qos=long (repeatable) [default: none]
    #[arg(long, requires = "emit_jobs", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
}

impl SlurmArgs {
    /// The flags that change what each job requests.
    pub fn overrides(&self) -> SlurmOverrides {
        SlurmOverrides {
            cpus: self.cpus,
            mem: self.mem.clone(),
            time: self.time.clone(),
            gres: self.gres.clone(),
            partition: self.partition.clone(),
            account: self.account.clone(),
            max_parallel: self.max_parallel,
            signal_grace: self.signal_grace,
            extra: self.sbatch_arg.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_spaces_and_quotes() {
        assert_eq!(sh("plain/path-1.0"), "plain/path-1.0");
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(sh(""), "''");
    }

    #[test]
    fn paper_grid_has_a_job_per_cell() {
        let p = Preset::named("paper").unwrap();
        let (pre, v) = pieces(&p);
        assert!(pre.is_none());
        assert_eq!(v.len(), p.lora_ranks.len() + p.dash_ranks.len() + 1);
        let c = Preset::named("cpu").unwrap();
        let (pre, v) = pieces(&c);
        assert_eq!(pre.as_deref(), Some("lr-check"));
        assert!(v.contains(&"full-ref-s1".to_string()));
    }

    fn spec(p: &Preset, out: &Path) -> JobSpec {
        JobSpec {
            tsd: "/opt/tsd/bin/tsd".into(),
            args: vec![
                "reproduce".into(),
                "commonsense".into(),
                "--preset".into(),
                p.name.clone(),
            ],
            out: out.display().to_string(),
            resources: Resources::for_preset(p),
            only_missing: false,
        }
    }

    /// Regression: `#SBATCH --array` came after `set -euo pipefail`, where sbatch ignores it.
    #[test]
    fn every_directive_comes_before_the_first_command() {
        let d = tempfile::tempdir().unwrap();
        let p = Preset::named("paper").unwrap();
        let mut s = spec(&p, d.path());
        s.resources.max_parallel = Some(3);
        s.resources.partition = Some("gpu".into());
        s.resources.extra = vec!["--qos=long".into()];
        let e = emit_jobs(&p, &s, d.path()).unwrap();
        assert!(!e.prepare);
        let array = std::fs::read_to_string(d.path().join("jobs/array.sbatch")).unwrap();
        let first_command = array
            .lines()
            .skip(1)
            .position(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let directives: Vec<&str> = array
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("#SBATCH"))
            .map(|(i, l)| {
                assert!(i <= first_command, "{l} after the first command");
                l
            })
            .collect();
        for want in [
            "#SBATCH --array=1-11%3",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --partition=gpu",
            "#SBATCH --qos=long",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --time=2-00:00:00",
        ] {
            assert!(directives.contains(&want), "{want} missing:\n{array}");
        }
        assert!(array.contains("/opt/tsd/bin/tsd reproduce"), "{array}");
        // Slurm's warning before the time limit reaches the batch shell, which forwards it to tsd
        // (running in the background) and waits for tsd's own exit status.
        for script in ["array.sbatch", "collect.sbatch"] {
            let text = std::fs::read_to_string(d.path().join("jobs").join(script)).unwrap();
            let at = |needle: &str| {
                text.find(needle)
                    .unwrap_or_else(|| panic!("{script}: no `{needle}`:\n{text}"))
            };
            assert!(at("#SBATCH --signal=B:TERM@120\n") < at("set -euo pipefail"));
            assert!(at("trap 'forward TERM' TERM") < at(" 2>&1 &\n"));
            assert!(at("trap 'forward INT' INT") < at(" 2>&1 &\n"));
            assert!(at(" 2>&1 &\n") < at("wait \"$pid\""));
            assert!(at("wait \"$pid\"") < at("echo \"== exit $rc\""));
        }
        s.resources.signal_grace = 0;
        emit_jobs(&p, &s, d.path()).unwrap();
        let array = std::fs::read_to_string(d.path().join("jobs/array.sbatch")).unwrap();
        assert!(!array.contains("--signal"), "{array}");
        s.resources.signal_grace = 70000;
        assert!(emit_jobs(&p, &s, d.path()).is_err());
        assert!(array.contains("RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-8}\""));
        // %a only where there is an array: the other jobs' logs are named by job id.
        let collect = std::fs::read_to_string(d.path().join("jobs/collect.sbatch")).unwrap();
        assert!(collect.contains("slurm-%x-%j.log") && !collect.contains("%a"));
    }

    #[test]
    fn bad_directive_values_and_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = Preset::named("smoke").unwrap();
        let mut s = spec(&p, d.path());
        s.resources.extra = vec!["qos=long".into()];
        assert!(emit_jobs(&p, &s, d.path()).is_err());
        let mut s = spec(&p, d.path());
        s.resources.time = "1 day".into();
        assert!(emit_jobs(&p, &s, d.path()).is_err());
        let mut s = spec(&p, d.path());
        s.out = "/a b".into();
        assert!(emit_jobs(&p, &s, d.path()).is_err());
        assert!(RemoteRoot::parse("rel=/x").is_err());
        assert_eq!(
            RemoteRoot::parse("/home/me=/cluster/me").unwrap().remote,
            PathBuf::from("/cluster/me")
        );
    }

    #[test]
    fn only_missing_keeps_the_unfinished_pieces() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        let p = Preset::named("smoke").unwrap();
        let (_, all) = pieces(&p);
        std::fs::write(out.join("lr-check.json"), "{}").unwrap();
        std::fs::create_dir_all(out.join("base")).unwrap();
        std::fs::write(out.join("base/eval.json"), "{}").unwrap();
        for c in &all[..2] {
            std::fs::create_dir_all(out.join("runs").join(c)).unwrap();
            std::fs::write(out.join("runs").join(c).join("eval.json"), "{}").unwrap();
        }
        let mut s = spec(&p, out);
        s.only_missing = true;
        let e = emit_jobs(&p, &s, out).unwrap();
        assert_eq!(e.pieces, vec![all[2].clone(), "full-ref-s1".to_string()]);
        assert!(!e.prepare && !out.join("jobs/prepare.sbatch").exists());
        let array = std::fs::read_to_string(out.join("jobs/array.sbatch")).unwrap();
        assert!(array.contains("#SBATCH --array=1-2\n"));
        assert_eq!(
            std::fs::read_to_string(out.join("jobs/jobs.txt"))
                .unwrap()
                .lines()
                .count(),
            2
        );
        // A piece held by another process is left out and reported.
        let _held = lock::try_lock(out, "full-ref-s1").unwrap().unwrap();
        let e = emit_jobs(&p, &s, out).unwrap();
        assert_eq!(e.pieces, vec![all[2].clone()]);
        assert_eq!(e.running, vec!["full-ref-s1".to_string()]);
    }
}
