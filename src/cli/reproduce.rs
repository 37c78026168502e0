use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsd::reproduce::{default_out, reproduce, Options, Preset, Reproduction};
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
    /// paper's protocol, for CUDA machines or a cluster: see --emit-jobs).
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// Output directory (default reproductions/commonsense/<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data in LLM-Adapters layout (default $TSD_DATA, else ../shared/data/commonsense).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override the preset's base model.
    #[arg(long)]
    model: Option<String>,
    /// Override the preset's seeds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    #[command(flatten)]
    dev: super::DeviceArgs,
    /// Override the preset's loss placement: whole sequence (true) or response only (false).
    #[arg(long)]
    train_on_inputs: Option<bool>,
    /// Write one command per grid piece plus Slurm scripts under OUT/jobs/ and stop.
    #[arg(long, conflicts_with_all = ["only", "collect"])]
    emit_jobs: bool,
    /// Run only this piece (lr-check, base, full-ref-sN, or a cell such as lora-r4-s1).
    #[arg(long, conflicts_with = "collect")]
    only: Option<String>,
    /// Train nothing: gather the finished pieces into results.json, results.csv and report.html.
    #[arg(long)]
    collect: bool,
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    let Which::Commonsense(a) = a.which;
    let mut p = Preset::named(&a.preset)?;
    if let Some(m) = &a.model {
        p.model = m.clone();
    }
    if !a.seeds.is_empty() {
        p.seeds = a.seeds.clone();
    }
    tsd::device::check_composed_env()?;
    if let Some(d) = a.dev.device {
        p.device = d.to_string();
    }
    if let Some(d) = a.dev.dtype {
        p.dtype = d.to_string();
    }
    if let Some(t) = a.train_on_inputs {
        p.train_on_inputs = t;
    }
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.preset));
    let data = a
        .data
        .clone()
        .or_else(|| std::env::var_os("TSD_DATA").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("../shared/data/commonsense")).filter(|d| d.exists()))
        .context("no data directory: pass --data DIR (LLM-Adapters layout with <task>/train.json and <task>/test.json) or set TSD_DATA")?;
    if a.emit_jobs {
        let mut args: Vec<String> = vec![
            "tsd".into(),
            "reproduce".into(),
            "commonsense".into(),
            "--preset".into(),
            a.preset.clone(),
            "--out".into(),
            out.display().to_string(),
            "--data".into(),
            data.display().to_string(),
        ];
        if let Some(m) = &a.model {
            args.extend(["--model".into(), m.clone()]);
        }
        if !a.seeds.is_empty() {
            let s: Vec<String> = a.seeds.iter().map(u64::to_string).collect();
            args.extend(["--seeds".into(), s.join(",")]);
        }
        if let Some(d) = a.dev.device {
            args.extend(["--device".into(), d.to_string()]);
        }
        if let Some(d) = a.dev.dtype {
            args.extend(["--dtype".into(), d.to_string()]);
        }
        if let Some(t) = a.train_on_inputs {
            args.extend(["--train-on-inputs".into(), t.to_string()]);
        }
        let (dir, n) = tsd::reproduce::jobs::emit_jobs(&p, &args, &out)?;
        println!(
            "wrote {n} jobs to {0}/jobs.txt, a Slurm array ({0}/array.sbatch) and {0}/submit.sh; afterwards: tsd reproduce commonsense --preset {1} --out {2} --collect",
            dir.display(),
            a.preset,
            out.display()
        );
        return Ok(());
    }
    let opts = Options {
        only: a.only.clone(),
        collect: a.collect,
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

fn write_outputs(r: &Reproduction, out: &std::path::Path) -> Result<()> {
    let json = tsd::output::to_json(r)? + "\n";
    tsd::fsutil::atomic_write(&out.join("results.json"), json.as_bytes())?;
    let tasks: Vec<String> = r
        .runs
        .first()
        .map(|x| x.scores.tasks.iter().map(|t| t.task.clone()).collect())
        .unwrap_or_default();
    let mut csv = String::from("name,method,rank,seed,lr,trainable_params,trainable_pct");
    for t in &tasks {
        csv += &format!(",{t}_loglik,{t}_generate");
    }
    csv += ",average,loglik_avg,generate_avg,unparseable_rate,final_loss,val_loss,wall_s,tokens_per_s,dash_mean_sigma_ratio,dash_max_delta_sigma\n";
    for x in &r.runs {
        csv += &format!(
            "{},{},{},{},{},{},{}",
            x.name,
            method_name(x.method),
            x.rank,
            x.seed,
            x.lr,
            x.trainable_params,
            x.trainable_pct
        );
        for t in &x.scores.tasks {
            csv += &format!(",{},{}", opt(t.loglik, 2), opt(t.generate, 2));
        }
        csv += &format!(
            ",{:.3},{},{},{},{:.4},{},{:.1},{:.1},{},{}\n",
            x.scores.average,
            opt(x.scores.loglik_avg, 3),
            opt(x.scores.generate_avg, 3),
            opt(x.scores.unparseable_rate, 1),
            x.final_loss,
            opt(x.val_loss, 4),
            x.wall_s,
            x.tokens_per_s,
            opt(x.dash_mean_sigma_ratio, 4),
            x.dash_max_delta_sigma
                .map_or(String::new(), |v| format!("{v:.3e}"))
        );
    }
    tsd::fsutil::atomic_write(&out.join("results.csv"), csv.as_bytes())?;
    let html = tsd::report::pages::reproduce_html(r, &out.display().to_string())?;
    tsd::fsutil::atomic_write(&out.join("report.html"), html.as_bytes())?;
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
    for e in &r.efficiency {
        println!(
            "parameter-efficiency, LoRA-Dash r={} ({:.2} ± {:.2} %): {} (paper: 8–16×)",
            e.dash_rank,
            e.dash_mean,
            e.dash_spread,
            e.ratio.map_or(
                "no LoRA rank in the grid reaches it".to_string(),
                |v| format!("{v:.1}× (LoRA r={})", e.lora_rank.unwrap_or(0))
            )
        );
    }
    println!("paper (LLaMA-7B, generate): LoRA-Dash r=4 75.7 % vs LoRA r=32 74.7 %, r=64 65.8 %");
    if let Some(rf) = &r.reference {
        println!(
            "TSD capture accuracy@(8,16) against {rf} (paper: ~0.75–0.82 throughout training):"
        );
        for s in &r.capture {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{}: {}", p.step, opt(p.accuracy, 2)))
                .collect();
            println!("  {:<14} {}", s.run, pts.join("  "));
        }
    }
    println!("verdict: {}", r.verdict);
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
