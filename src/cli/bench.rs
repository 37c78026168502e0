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
    /// Training-step throughput and peak memory, LoRA and LoRA-Dash, on the default model (CPU).
    Train {
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Timed steps per method (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// PyTorch + PEFT results to put beside (from benches/peft_train_step.py).
        #[arg(long, default_value = "reproductions/bench/peft_train_step.json")]
        torch: PathBuf,
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
        Which::Train {
            batch,
            seq_len,
            rank,
            steps,
            torch,
            out,
            single,
        } => {
            anyhow::ensure!(
                batch > 0 && seq_len > 1 && steps > 0,
                "--batch, --seq-len and --steps must be positive"
            );
            if let Some(m) = single {
                let r = tsd::bench::bench_train_step(&m, batch, seq_len, rank, steps)?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            // Each method in its own process, so that peak RSS is that method's alone.
            let mut runs = Vec::new();
            for m in ["lora", "lora-dash"] {
                eprintln!("bench: {m}, batch {batch} x {seq_len} tokens, {steps} steps…");
                let o = std::process::Command::new(std::env::current_exe()?)
                    .args([
                        "bench",
                        "train",
                        "--batch",
                        &batch.to_string(),
                        "--seq-len",
                        &seq_len.to_string(),
                    ])
                    .args([
                        "--rank",
                        &rank.to_string(),
                        "--steps",
                        &steps.to_string(),
                        "--single",
                        m,
                    ])
                    .output()?;
                anyhow::ensure!(
                    o.status.success(),
                    "{m}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                runs.push(serde_json::from_slice::<tsd::bench::TrainBench>(&o.stdout)?);
            }
            let torch = torch
                .exists()
                .then(|| tsd::fsutil::read_json::<serde_json::Value>(&torch))
                .transpose()?;
            let dash_overhead = runs[1].median_step_seconds / runs[0].median_step_seconds - 1.0;
            let ratio = torch
                .as_ref()
                .and_then(|t| t["tokens_per_s"].as_f64())
                .map(|tt| runs[0].tokens_per_s / tt);
            let rec = serde_json::json!({
                "what": "training step (forward, backward, AdamW) on the default model, CPU f32",
                "cpu": tsd::bench::cpu_name(),
                "tsd": runs,
                "dash_step_overhead_vs_lora": dash_overhead,
                "pytorch_peft": torch,
                "tsd_lora_tokens_per_s_over_pytorch_peft": ratio,
            });
            let text = tsd::output::to_json(&rec)? + "\n";
            tsd::fsutil::atomic_write(&out, text.as_bytes())?;
            print!("{text}");
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
