use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsd::reproduce::jobs::{self, EmitRequest};
use tsd::reproduce::{default_out, reproduce, Options, Preset};

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
    #[command(flatten)]
    overrides: tsd::reproduce::preset::OverrideFlags,
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
    slurm: jobs::SlurmArgs,
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
    let overrides = a.overrides.overrides();
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
