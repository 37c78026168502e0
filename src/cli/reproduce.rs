use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsd::reproduce::jobs::{self, EmitRequest, SlurmOverrides};
use tsd::reproduce::{default_out, reproduce, Options, Overrides, Preset};

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// LoRA vs LoRA-Dash across ranks on the LLM-Adapters commonsense tasks.
    Commonsense(CommonsenseArgs),
}

#[derive(Args, Debug)]
struct CommonsenseArgs {
    /// `cpu` (the documented 2-core scale-down, ~45 min), `smoke` (minutes) or `paper` (the
    /// paper's protocol, for CUDA machines or a cluster: see --emit-jobs) [default: the preset
    /// recorded in --out's preset.json, else cpu]
    #[arg(long)]
    preset: Option<String>,
    /// Output directory [default: reproductions/commonsense/<preset>]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data in LLM-Adapters layout [default: $TSD_DATA, else ../shared/data/commonsense if present]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override the preset's base model [default: the preset's]
    #[arg(long)]
    model: Option<String>,
    /// Override the preset's seeds, comma-separated [default: the preset's]
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    #[command(flatten)]
    dev: tsd::device::DeviceArgs,
    /// Override the preset's loss placement: whole sequence (true) or response only (false) [default: the preset's]
    #[arg(long)]
    train_on_inputs: Option<bool>,
    /// Also train the empirical controls of TSD capture (a cross-task and a shuffled-answer full
    /// fine-tune) and measure every run against them and against another seed [default: the
    /// preset's: cpu true, smoke and paper false]
    #[arg(long)]
    controls: Option<bool>,
    /// How TSD capture ranks directions: the paper's change rate, or enrichment (README,
    /// Definitions: the null of direction metrics) [default: the preset's, change-rate]
    #[arg(long, value_enum)]
    tsd_by: Option<tsd::directions::TsdBy>,
    /// Write one command per grid piece plus Slurm scripts under OUT/jobs/ and stop.
    #[arg(long, conflicts_with_all = ["only", "collect"])]
    emit_jobs: bool,
    /// Run only this piece (lr-check, base, full-ref-sN, or a cell such as lora-r4-s1) [default: all pieces]
    #[arg(long, conflicts_with = "collect")]
    only: Option<String>,
    /// Train nothing: gather the finished pieces into results.json, results.csv and report.html;
    /// refuses (exit 2, naming every unfinished piece and its log) unless --allow-partial.
    #[arg(long)]
    collect: bool,
    /// With --collect: gather what has finished and list the rest as deviations.
    #[arg(long, requires = "collect")]
    allow_partial: bool,
    /// Touch nothing of the grid: re-render OUT/report.html from the saved record
    /// OUT/results.json (no data, model or training needed).
    #[arg(long, conflicts_with_all = ["emit_jobs", "only", "collect"])]
    render_only: bool,
    #[command(flatten)]
    slurm: SlurmArgs,
}

/// What the emitted Slurm jobs request and call (with --emit-jobs).
#[derive(Args, Debug)]
struct SlurmArgs {
    /// With --emit-jobs: only the pieces that have not finished (after failed or cancelled tasks).
    #[arg(long, requires = "emit_jobs")]
    only_missing: bool,
    /// The tsd binary the jobs run [default: this binary, by its absolute path]
    #[arg(long, requires = "emit_jobs")]
    tsd: Option<PathBuf>,
    /// LOCAL=REMOTE: the cluster sees this machine's LOCAL directory as REMOTE (paths in the jobs
    /// are rewritten) [default: the paths as resolved here]
    #[arg(long, requires = "emit_jobs")]
    remote_root: Option<String>,
    /// Slurm partition [default: the cluster's default]
    #[arg(long, requires = "emit_jobs")]
    partition: Option<String>,
    /// Slurm account [default: the user's default]
    #[arg(long, requires = "emit_jobs")]
    account: Option<String>,
    /// Time limit per job [default: per preset: smoke 00:30:00, cpu 04:00:00, paper 2-00:00:00]
    #[arg(long, requires = "emit_jobs")]
    time: Option<String>,
    /// Memory per job [default: per preset: smoke 4G, cpu 8G, paper 64G]
    #[arg(long, requires = "emit_jobs")]
    mem: Option<String>,
    /// CPUs per job, also tsd's thread count in the job [default: per preset: 2 on CPU, 8 with a GPU]
    #[arg(long, requires = "emit_jobs")]
    cpus: Option<usize>,
    /// Generic resources per job [default: gpu:1 for CUDA presets, none otherwise]
    #[arg(long, requires = "emit_jobs")]
    gres: Option<String>,
    /// At most this many array tasks at once (--array=1-N%K) [default: no cap]
    #[arg(long, requires = "emit_jobs")]
    max_parallel: Option<usize>,
    /// Seconds before the time limit at which Slurm sends SIGTERM to each job (--signal=B:TERM@N),
    /// which tsd answers by saving a checkpoint and exiting 143; 0: none (Slurm's own SIGTERM at
    /// the limit, SIGKILL after KillWait, often 30 s) [default: 120]
    #[arg(long, requires = "emit_jobs", value_name = "SECONDS")]
    signal_grace: Option<u32>,
    /// Any other sbatch option for every job, e.g. --sbatch-arg=--qos=long (repeatable) [default: none]
    #[arg(long, requires = "emit_jobs", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    let Which::Commonsense(a) = a.which;
    if a.render_only {
        let out = match (&a.out, &a.preset) {
            (Some(o), _) => o.clone(),
            (None, p) => default_out(p.as_deref().unwrap_or(tsd::reproduce::DEFAULT_PRESET)),
        };
        let (r, page) = tsd::render::reproduction::render_saved_reproduction(&out)?;
        print!("{}", tsd::render::reproduction::summary(&r));
        eprintln!(
            "wrote {} from {}",
            page.display(),
            out.join(tsd::reproduce::RESULTS_FILE).display()
        );
        return Ok(());
    }
    let (mut p, from_dir) = Preset::chosen(a.preset.as_deref(), a.out.as_deref())?;
    tsd::device::check_composed_env()?;
    let overrides = a.overrides();
    overrides.apply(&mut p);
    let out = a.out.clone().unwrap_or_else(|| default_out(&p.name));
    let data = tsd::env::data_dir(a.data.as_deref()).ok_or_else(|| super::input_error("no data directory: pass --data DIR (LLM-Adapters layout with <task>/train.json and <task>/test.json) or set TSD_DATA"))?;
    if a.emit_jobs {
        let req = EmitRequest {
            preset: &p,
            from_dir,
            overrides: &overrides,
            out: &out,
            data: &data,
            tsd: a.slurm.tsd.clone(),
            remote_root: a.slurm.remote_root.clone(),
            slurm: a.slurm.overrides(),
            only_missing: a.slurm.only_missing,
        };
        tsd::render::reproduction::print_emitted(&jobs::emit(&req)?, &out);
        return Ok(());
    }
    // SIGINT / SIGTERM (Slurm's warning and time limit): training stops after its current step
    // with a checkpoint saved; anywhere else (evaluation, capture) tsd exits at once. Either way
    // the exit code is 130 / 143 and re-running the same command continues.
    tsd::signals::install_exiting()?;
    let opts = Options {
        only: a.only.clone(),
        collect: a.collect,
        allow_partial: a.allow_partial,
    };
    let Some(r) = reproduce(&p, &data, &out, &opts, &|m| eprintln!("reproduce: {m}"))? else {
        eprintln!(
            "reproduce: piece {} done in {}",
            a.only.unwrap_or_default(),
            out.display()
        );
        return Ok(());
    };
    tsd::render::reproduction::write_outputs(&r, &out)?;
    print!("{}", tsd::render::reproduction::summary(&r));
    eprintln!(
        "wrote {}/results.json, results.csv, report.html",
        out.display()
    );
    Ok(())
}

impl CommonsenseArgs {
    /// The flags that change the preset.
    fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model.clone(),
            seeds: self.seeds.clone(),
            device: self.dev.device.map(|d| d.to_string()),
            dtype: self.dev.dtype.map(|d| d.to_string()),
            train_on_inputs: self.train_on_inputs,
            controls: self.controls,
            tsd_by: self.tsd_by.map(|by| by.ranking()),
        }
    }
}

impl SlurmArgs {
    /// The flags that change what each job requests.
    fn overrides(&self) -> SlurmOverrides {
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
