use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsd::linalg::Precision;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Inspect time on LLaMA-7B-shaped modules, cold and with a warm SVD cache.
    Inspect {
        /// Layers to generate (5 matrices each).
        #[arg(long, default_value_t = 1)]
        layers: usize,
        /// Adapter rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        #[arg(long, default_value = "f32")]
        svd_precision: Precision,
        /// torch.linalg.svd timings to compare with (from benches/torch_svd.py).
        #[arg(long, default_value = "reproductions/bench/torch_svd.json")]
        torch: PathBuf,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/inspect.json")]
        out: PathBuf,
    },
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.which {
        Which::Inspect {
            layers,
            rank,
            svd_precision,
            torch,
            out,
        } => {
            anyhow::ensure!(
                layers > 0 && rank > 0,
                "--layers and --rank must be positive"
            );
            let torch = torch
                .exists()
                .then(|| tsd::fsutil::read_json(&torch))
                .transpose()?;
            eprintln!("bench: generating {layers} LLaMA-7B-shaped layer(s) and running inspect cold and warm…");
            let rec = tsd::bench::bench_inspect(layers, rank, svd_precision, torch)?;
            let text = tsd::output::to_json(&rec)? + "\n";
            tsd::fsutil::atomic_write(&out, text.as_bytes())?;
            print!("{text}");
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
