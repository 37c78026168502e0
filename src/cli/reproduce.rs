use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsd::reproduce::{default_out, reproduce, Preset};
use tsd::train::Method;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// LoRA vs LoRA-Dash across ranks on the LLM-Adapters commonsense tasks.
    Commonsense {
        /// `smoke` (minutes) or `cpu` (the documented 2-core scale-down).
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
    },
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    let Which::Commonsense {
        preset,
        out,
        data,
        model,
        seeds,
    } = a.which;
    let mut p = Preset::named(&preset)?;
    if let Some(m) = model {
        p.model = m;
    }
    if !seeds.is_empty() {
        p.seeds = seeds;
    }
    let data = data
        .or_else(|| std::env::var_os("TSD_DATA").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("../shared/data/commonsense")).filter(|d| d.exists()))
        .context("no data directory: pass --data DIR (LLM-Adapters layout) or set TSD_DATA")?;
    let out = out.unwrap_or_else(|| default_out(&preset));
    let r = reproduce(&p, &data, &out, &|m| eprintln!("reproduce: {m}"))?;
    let json = tsd::output::to_json(&r)? + "\n";
    tsd::fsutil::atomic_write(&out.join("results.json"), json.as_bytes())?;
    let mut csv = String::from("name,method,rank,seed,trainable_params,trainable_pct,average_loglik,generate_accuracy,unparseable_rate,final_loss,wall_s\n");
    for x in &r.runs {
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            x.name,
            if x.method == Method::Lora {
                "lora"
            } else {
                "lora-dash"
            },
            x.rank,
            x.seed,
            x.trainable_params,
            x.trainable_pct,
            x.average,
            x.generate_accuracy,
            x.unparseable_rate,
            x.final_loss,
            x.wall_s
        );
    }
    tsd::fsutil::atomic_write(&out.join("results.csv"), csv.as_bytes())?;
    let html = tsd::report::pages::reproduce_html(&r, &out.display().to_string())?;
    tsd::fsutil::atomic_write(&out.join("report.html"), html.as_bytes())?;
    println!("preset {} · model {} · {} runs (accuracy: loglik on ≤ {} examples per task; generate on ≤ {})", p.name, p.model, r.runs.len(), p.loglik_limit, p.generate_limit);
    println!(
        "{:<14} {:>6} {:>5} {:>12} {:>9} {:>10} {:>10} {:>12}",
        "run", "rank", "seed", "trainable", "avg %", "gen acc %", "unparse %", "final loss"
    );
    for x in &r.runs {
        println!(
            "{:<14} {:>6} {:>5} {:>12} {:>9.2} {:>10.1} {:>10.0} {:>12.3}",
            x.name,
            x.rank,
            x.seed,
            x.trainable_params,
            x.average,
            x.generate_accuracy,
            x.unparseable_rate,
            x.final_loss
        );
    }
    for e in &r.efficiency {
        println!(
            "parameter-efficiency, LoRA-Dash r={}: {} (paper: 8–16×)",
            e.dash_rank,
            e.ratio.map_or(
                "no LoRA rank in the grid reaches it".to_string(),
                |v| format!("{v:.1}× (LoRA r={})", e.lora_rank.unwrap_or(0))
            )
        );
    }
    println!("paper (LLaMA-7B, generate): LoRA-Dash r=4 75.7 % vs LoRA r=32 74.7 %, r=64 65.8 %");
    println!("verdict: {}", r.verdict);
    for d in &r.deviations {
        println!("deviation: {d}");
    }
    eprintln!(
        "wrote {}/results.json, results.csv, report.html",
        out.display()
    );
    Ok(())
}
