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
        /// Precision of the timed SVDs: f32 or f64.
        #[arg(long, default_value = "f32")]
        svd_precision: Precision,
        /// torch.linalg.svd timings to compare with (from benches/torch_svd.py).
        #[arg(long, default_value = "reproductions/bench/torch_svd.json")]
        torch: PathBuf,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/inspect.json")]
        out: PathBuf,
    },
    /// Training-step throughput and peak memory, LoRA and LoRA-Dash, on the default model (CPU).
    Train {
        /// Sequences per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// LoRA rank on q, k, v, up and down (LoRA-Dash: s = 8 directions).
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Timed steps per method and round (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Rounds: each runs LoRA and LoRA-Dash once, alternating which goes first.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// PyTorch + PEFT results to put beside (from benches/peft_train_step.py).
        #[arg(long, default_value = "reproductions/bench/peft_train_step.json")]
        torch: PathBuf,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/train.json")]
        out: PathBuf,
        /// Internal: measure one method in this process and print its JSON.
        #[arg(long, hide = true)]
        single: Option<String>,
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
            if layers == 0 || rank == 0 {
                return Err(super::input_error("--layers and --rank must be positive"));
            }
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
        Which::Train {
            batch,
            seq_len,
            rank,
            steps,
            rounds,
            torch,
            out,
            single,
        } => {
            if batch == 0 || seq_len < 2 || steps == 0 {
                return Err(super::input_error(
                    "--batch and --steps must be positive, --seq-len at least 2",
                ));
            }
            if let Some(m) = single {
                let r = tsd::bench::bench_train_step(&m, batch, seq_len, rank, steps)?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            if rounds == 0 {
                return Err(super::input_error("--rounds must be positive"));
            }
            // Each method in its own process, so that peak RSS is that method's alone; the
            // methods alternate (and swap order every round) so that drift in the machine's
            // speed falls on both alike.
            let mut runs = Vec::new();
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    ["lora", "lora-dash"]
                } else {
                    ["lora-dash", "lora"]
                };
                for m in order {
                    eprintln!(
                        "bench: round {}/{rounds}: {m}, batch {batch} x {seq_len} tokens, {steps} steps…",
                        round + 1
                    );
                    let o = std::process::Command::new(std::env::current_exe()?)
                        .args(["bench", "train", "--batch", &batch.to_string()])
                        .args([
                            "--seq-len",
                            &seq_len.to_string(),
                            "--rank",
                            &rank.to_string(),
                        ])
                        .args(["--steps", &steps.to_string(), "--single", m])
                        .output()?;
                    anyhow::ensure!(
                        o.status.success(),
                        "{m}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    runs.push(serde_json::from_slice::<tsd::bench::TrainBench>(&o.stdout)?);
                }
            }
            let torch_path = torch;
            let torch = torch_path
                .exists()
                .then(|| tsd::fsutil::read_json::<serde_json::Value>(&torch_path))
                .transpose()?;
            let rec = tsd::bench::TrainComparison::new(runs, torch);
            let text = tsd::output::to_json(&rec)? + "\n";
            tsd::fsutil::atomic_write(&out, text.as_bytes())?;
            print!("{text}");
            let gb = |b: u64| b as f64 / 1e9;
            eprintln!(
                "LoRA {:.0} tokens/s ({:.2} GB peak), LoRA-Dash {:.0} tokens/s ({:+.1}% per step, best steps {:+.1}%; rounds {})",
                rec.lora.tokens_per_s,
                gb(rec.lora.peak_rss_bytes),
                rec.lora_dash.tokens_per_s,
                100.0 * rec.dash_step_overhead_vs_lora,
                100.0 * rec.dash_best_step_overhead_vs_lora,
                rec.dash_step_overhead_per_round
                    .iter()
                    .map(|x| format!("{:+.1}%", 100.0 * x))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if let (Some(r), Some(m)) = (
                rec.tsd_lora_tokens_per_s_over_pytorch_peft,
                rec.pytorch_peft_peak_rss_over_tsd_lora,
            ) {
                eprintln!(
                    "vs PyTorch + PEFT ({}): {r:.2}x the tokens/s, {m:.2}x less peak memory",
                    torch_path.display()
                );
            }
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
