use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsd::reproduce::jobs::{self, EmitRequest, SlurmOverrides};
use tsd::reproduce::{default_out, reproduce, Options, Overrides, Preset, Reproduction};
use tsd::train::Method;

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
    dev: super::DeviceArgs,
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
    tsd_by: Option<super::TsdBy>,
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
        let (r, page) = tsd::report::render_saved_reproduction(&out)?;
        print_summary(&r);
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
    let data = tsd::assets::data_dir(a.data.as_deref()).ok_or_else(|| super::input_error("no data directory: pass --data DIR (LLM-Adapters layout with <task>/train.json and <task>/test.json) or set TSD_DATA"))?;
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
        return print_emitted(&jobs::emit(&req)?, &out);
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
    write_outputs(&r, &out)?;
    print_summary(&r);
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

/// What `--emit-jobs` wrote, and how to submit and gather it.
fn print_emitted(e: &jobs::Emitted, out: &std::path::Path) -> Result<()> {
    for piece in &e.running {
        eprintln!("reproduce: {piece} is running in another process: left out");
    }
    if e.pieces.is_empty() {
        println!(
            "every piece in {} has finished; gather them: {}",
            out.display(),
            e.collect
        );
        return Ok(());
    }
    println!(
        "wrote {n} array task(s) ({}){} to {d}: jobs.txt, array.sbatch, collect.sbatch{}, submit.sh",
        e.pieces.join(", "),
        if e.prepare {
            " after the lr check"
        } else {
            ""
        },
        if e.prepare { ", prepare.sbatch" } else { "" },
        n = e.pieces.len(),
        d = e.dir.display()
    );
    println!("submit: {}/submit.sh", e.dir.display());
    println!("afterwards (collect.sbatch runs it too): {}", e.collect);
    Ok(())
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Lora => "lora",
        Method::LoraDash => "lora-dash",
        Method::Full => "full",
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |x| format!("{x:.digits$}"))
}

/// One row per run of `results.csv`, from the saved results.
fn results_csv(r: &Reproduction) -> Result<Vec<u8>> {
    let tasks: Vec<String> = r
        .runs
        .first()
        .map(|x| x.scores.tasks.iter().map(|t| t.task.clone()).collect())
        .unwrap_or_default();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "name",
        "method",
        "rank",
        "seed",
        "lr",
        "trainable_params",
        "trainable_pct",
    ]
    .map(String::from)
    .to_vec();
    for t in &tasks {
        header.push(format!("{t}_loglik"));
        header.push(format!("{t}_generate"));
    }
    header.extend(
        [
            "average",
            "loglik_avg",
            "generate_avg",
            "unparseable_rate",
            "final_loss",
            "val_loss",
            "wall_s",
            "tokens_per_s",
            "dash_mean_sigma_ratio",
            "dash_max_delta_sigma",
        ]
        .map(String::from),
    );
    let io = |e: csv::Error| tsd::Error::Internal(format!("results.csv: {e}"));
    w.write_record(&header).map_err(io)?;
    for x in &r.runs {
        let mut row = vec![
            x.name.clone(),
            method_name(x.method).to_string(),
            x.rank.to_string(),
            x.seed.to_string(),
            x.lr.to_string(),
            x.trainable_params.to_string(),
            x.trainable_pct.to_string(),
        ];
        for t in &tasks {
            let s = x.scores.tasks.iter().find(|s| &s.task == t);
            row.push(opt(s.and_then(|s| s.loglik), 2));
            row.push(opt(s.and_then(|s| s.generate), 2));
        }
        row.extend([
            format!("{:.3}", x.scores.average),
            opt(x.scores.loglik_avg, 3),
            opt(x.scores.generate_avg, 3),
            opt(x.scores.unparseable_rate, 1),
            format!("{:.4}", x.final_loss),
            opt(x.val_loss, 4),
            format!("{:.1}", x.wall_s),
            format!("{:.1}", x.tokens_per_s),
            opt(x.dash_mean_sigma_ratio, 4),
            x.dash_max_delta_sigma
                .map_or(String::new(), |v| format!("{v:.3e}")),
        ]);
        w.write_record(&row).map_err(io)?;
    }
    Ok(w.into_inner()
        .map_err(|e| tsd::Error::Internal(format!("results.csv: {e}")))?)
}

fn write_outputs(r: &Reproduction, out: &std::path::Path) -> Result<()> {
    let json = tsd::output::to_json(r)? + "\n";
    tsd::fsutil::atomic_write(&out.join("results.json"), json.as_bytes())?;
    tsd::fsutil::atomic_write(&out.join("results.csv"), &results_csv(r)?)?;
    tsd::report::write_reproduction(r, out)?;
    Ok(())
}

fn print_summary(r: &Reproduction) {
    let p = &r.preset;
    let proto = format!("{:?}", p.protocol).to_lowercase();
    println!(
        "preset {} · model {} · {} runs · lr {:e}{} · headline accuracy: {proto}",
        p.name,
        p.model,
        r.runs.len(),
        r.lr,
        if r.lr_check.is_some() {
            " (from the lr check)"
        } else {
            ""
        }
    );
    if let Some(c) = &r.lr_check {
        for t in &c.trials {
            println!(
                "  lr check {:>8.1e}: validation loss {}{}",
                t.lr,
                t.val_loss.map_or("diverged".into(), |v| format!("{v:.4}")),
                if t.lr == c.chosen { "  ← chosen" } else { "" }
            );
        }
    }
    println!(
        "{:<14} {:>5} {:>5} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "run",
        "rank",
        "seed",
        "trainable",
        "avg %",
        "loglik",
        "generate",
        "unparse %",
        "val loss",
        "wall s"
    );
    if let Some(b) = &r.base {
        println!(
            "{:<14} {:>5} {:>5} {:>10} {:>8.2} {:>8} {:>8} {:>9} {:>8} {:>8}",
            "base model",
            "-",
            "-",
            0,
            b.average,
            opt(b.loglik_avg, 2),
            opt(b.generate_avg, 1),
            opt(b.unparseable_rate, 0),
            "",
            ""
        );
    }
    for x in &r.runs {
        println!(
            "{:<14} {:>5} {:>5} {:>10} {:>8.2} {:>8} {:>8} {:>9} {:>8} {:>8.0}",
            x.name,
            x.rank,
            x.seed,
            x.trainable_params,
            x.scores.average,
            opt(x.scores.loglik_avg, 2),
            opt(x.scores.generate_avg, 1),
            opt(x.scores.unparseable_rate, 0),
            opt(x.val_loss, 3),
            x.wall_s
        );
    }
    let sm = &r.summary;
    println!("{}", sm.bootstrap);
    for c in &sm.comparisons {
        println!(
            "  {:<26} {:>24} points   MDE {:.1}   ({} examples × {} seeds)",
            c.label(),
            c.diff.describe(),
            c.mde,
            c.examples,
            c.seeds
        );
    }
    if let Some(e) = &sm.rank_effect {
        println!(
            "  {:<26} {:>24} points   MDE {:.1}   (does LoRA rank buy accuracy?)",
            e.label(),
            e.diff.describe(),
            e.mde
        );
    }
    for e in &sm.efficiency {
        println!(
            "parameter-efficiency, LoRA-Dash r={} ({:.2} %): {} (paper: 8–16×){}",
            e.dash_rank,
            e.dash_mean,
            e.ratio.map_or(
                "no LoRA rank in the grid reaches it".to_string(),
                |v| format!("{v:.0}× (LoRA r={})", e.lora_rank.unwrap_or(0))
            ),
            if e.informative {
                ""
            } else {
                " — not informative"
            }
        );
    }
    for e in &sm.efficiency_by_task {
        println!(
            "  on {:<14} LoRA-Dash r={}: {}{}",
            e.task.as_deref().unwrap_or(""),
            e.dash_rank,
            e.ratio
                .map_or("no LoRA rank reaches it".to_string(), |v| format!(
                    "{v:.0}×"
                )),
            if e.informative {
                ""
            } else {
                " (not informative)"
            }
        );
    }
    let chance: Vec<String> = sm
        .chance
        .iter()
        .map(|c| {
            format!(
                "{} {}/{} runs above {:.0} %",
                c.task, c.runs_above, c.runs, c.majority
            )
        })
        .collect();
    println!(
        "above chance (Wilson 95 % lower bound > majority answer): {}",
        chance.join(", ")
    );
    let paper = |m: &str, k: usize| {
        sm.paper
            .iter()
            .find(|p| p.method == m && p.rank == Some(k))
            .map_or("-".to_string(), |p| format!("{:.1} %", p.avg))
    };
    println!(
        "paper (LLaMA-7B, generate): LoRA-Dash r=4 {} vs LoRA r=32 {}, r=64 {}",
        paper("lora-dash", 4),
        paper("lora", 32),
        paper("lora", 64)
    );
    if let Some(rf) = &r.reference {
        println!(
            "TSD capture accuracy@(8,16) against {rf}, all adapted modules / q,k,v only (paper: ~0.75–0.82 on q,k,v):"
        );
        for s in &r.capture {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|p| {
                    let null = p.null_qkv.as_ref().map_or(String::new(), |n| {
                        format!(
                            " (q,k,v tested {:.2} vs null {:.2})",
                            n.mean_accuracy, n.mean_null
                        )
                    });
                    format!(
                        "{}: {}/{}{null}",
                        p.step,
                        opt(p.accuracy, 2),
                        opt(p.accuracy_qkv, 2)
                    )
                })
                .collect();
            println!("  {:<14} {}", s.run, pts.join("  "));
        }
    }
    if !r.summary.controls.is_empty() {
        println!("TSD capture at the final checkpoint against the empirical controls, all modules, mean over seeds (tested accuracy / null / κ):");
        for c in &r.summary.controls {
            println!(
                "  {:<10} r={:<3} {:<17} {:.2} / {:.2} / {}",
                tsd::reproduce::summary::method_label(c.method),
                c.rank,
                c.control,
                c.all.accuracy,
                c.all.null_mean,
                c.all.kappa.map_or("-".into(), |k| format!("{k:+.2}"))
            );
        }
    }
    println!("verdict: {}", r.summary.verdict);
    for d in &r.deviations {
        println!("deviation: {d}");
    }
    let t = &r.timing;
    println!(
        "time: {:.0} s (lower-layer cache {:.0}, eval preparation {:.0}, lr check {:.0}, training {:.0}, evaluation {:.0}, capture {:.0}); {:.0} s over {} invocation(s) on this directory",
        t.total_s,
        t.lower_cache_s,
        t.eval_prepare_s,
        t.lr_check_s,
        t.train_s,
        t.eval_s,
        t.capture_s,
        r.invocations.iter().map(|t| t.total_s).sum::<f64>(),
        r.invocations.len()
    );
}
