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
        #[command(flatten)]
        dev: super::DeviceArgs,
    },
    /// LoRA-Dash's switch (SVDs in parallel through a cold SVD cache, TSD picks) on
    /// LLaMA-7B-shaped layers, extrapolated linearly to 32 layers.
    Switch {
        /// LLaMA-7B-shaped layers (q, k, v, up, down each).
        #[arg(long, default_value_t = 1)]
        layers: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Dash directions per module.
        #[arg(long, default_value_t = 8)]
        dash_s: usize,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/switch.json")]
        out: PathBuf,
    },
    /// LoRA-Dash steps across the switch on a random model of a given shape, on any device and
    /// dtype (the GPU check runs it on LLaMA-7B's shape in bf16).
    Scale {
        /// Shape: a built-in config (llama-7b, llama2-7b, llama3-8b) or a config.json path.
        #[arg(long, default_value = "llama-7b")]
        config: String,
        /// Override the config's layer count [default: the config's]
        #[arg(long)]
        layers: Option<usize>,
        #[command(flatten)]
        dev: super::DeviceArgs,
        /// Sequences per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        /// LoRA rank (α = 2r) on q, k, v, up, down.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Dash directions per module.
        #[arg(long, default_value_t = 8)]
        dash_s: usize,
        /// LoRA steps before the switch.
        #[arg(long, default_value_t = 4)]
        dash_t: usize,
        /// Steps in all (the switch falls between step dash-t and dash-t + 1).
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/scale.json")]
        out: PathBuf,
    },
    /// `generate` evaluation seconds per example (4 beams, ≤ 32 new tokens) at several batch sizes.
    EvalBatch {
        /// Model: `default`, a path, or a Hugging Face id.
        #[arg(long, default_value = "default")]
        model: String,
        /// Data directory in LLM-Adapters layout [default: $TSD_DATA, else ../shared/data/commonsense].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Tasks whose first --limit test examples are generated.
        #[arg(long, value_delimiter = ',', default_value = "boolq,ARC-Easy,piqa")]
        tasks: Vec<String>,
        /// Examples per task.
        #[arg(long, default_value_t = 16)]
        limit: usize,
        /// Batch sizes to time, in this order.
        #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
        batches: Vec<usize>,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/eval_batch.json")]
        out: PathBuf,
    },
    /// A model's logits on --device/--dtype against the CPU in f32.
    Logits {
        /// Model: `default`, a path, or a Hugging Face id.
        #[arg(long, default_value = "default")]
        model: String,
        #[command(flatten)]
        dev: super::DeviceArgs,
        /// Where to write the record.
        #[arg(long, default_value = "reproductions/bench/logits.json")]
        out: PathBuf,
    },
}

/// Writes a benchmark record as JSON (atomically) and prints it.
fn emit<T: serde::Serialize>(rec: &T, out: &std::path::Path) -> Result<()> {
    let text = tsd::render::to_json(rec)? + "\n";
    tsd::fsutil::atomic_write(out, text.as_bytes())?;
    print!("{text}");
    eprintln!("wrote {}", out.display());
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.which {
        Which::Switch {
            layers,
            rank,
            dash_s,
            out,
        } => {
            anyhow::ensure!(
                layers > 0 && rank > 0 && dash_s > 0,
                "--layers, --rank and --dash-s must be positive"
            );
            eprintln!(
                "bench: LoRA-Dash switch on {layers} LLaMA-7B-shaped layer(s), cold SVD cache…"
            );
            let rec = tsd::bench::bench_switch(layers, rank, dash_s)?;
            emit(&rec, &out)?;
            eprintln!(
                "switch: {:.1} s ({:.1} CPU s, load {:.1}) for {layers} layer(s), {:.1} s per layer → ~{:.0} min for 32 layers (extrapolated)",
                rec.switch_seconds,
                rec.switch_cpu_seconds,
                rec.load_average_at_start,
                rec.seconds_per_layer,
                rec.extrapolated_32_layers_seconds / 60.0
            );
            Ok(())
        }
        Which::Scale {
            config,
            layers,
            dev,
            batch,
            seq_len,
            rank,
            dash_s,
            dash_t,
            steps,
            out,
        } => {
            anyhow::ensure!(
                batch > 0 && seq_len > 0 && rank > 0 && dash_s > 0,
                "--batch, --seq-len, --rank and --dash-s must be positive"
            );
            dev.resolve()?;
            let o = tsd::bench::ScaleOptions {
                config,
                layers,
                device: dev
                    .device
                    .unwrap_or(tsd::device::DeviceSpec::Cpu)
                    .to_string(),
                dtype: dev
                    .dtype
                    .unwrap_or(tsd::device::WeightDtype::F32)
                    .to_string(),
                batch,
                seq_len,
                rank,
                dash_s,
                dash_t,
                steps,
            };
            let rec = tsd::bench::bench_scale_train(&o)?;
            emit(&rec, &out)?;
            eprintln!(
                "LoRA {:.0} tokens/s, LoRA-Dash {:.0} tokens/s, switch {:.1} s, load {:.1} s",
                rec.lora_tokens_per_s, rec.dash_tokens_per_s, rec.switch_seconds, rec.load_seconds
            );
            Ok(())
        }
        Which::EvalBatch {
            model,
            data,
            tasks,
            limit,
            batches,
            out,
        } => {
            let data = tsd::env::data_dir(data.as_deref()).ok_or_else(|| {
                tsd::Error::InvalidArgument(
                    "bench eval-batch: no data directory (--data, TSD_DATA)".into(),
                )
            })?;
            let rec = tsd::bench::bench_eval_batch(&model, &data, &tasks, limit, &batches)?;
            emit(&rec, &out)?;
            for p in &rec.points {
                eprintln!(
                    "batch {:>3}: {:.2} s/example ({:.0} CPU s, load {:.1} → {:.1}){}",
                    p.batch,
                    p.seconds_per_example,
                    p.cpu_seconds,
                    p.load_average_before,
                    p.load_average_after,
                    if p.same_outputs_as_first {
                        ""
                    } else {
                        " OUTPUTS DIFFER"
                    }
                );
            }
            Ok(())
        }
        Which::Logits { model, dev, out } => {
            dev.resolve()?;
            let rec = tsd::bench::bench_logits(
                &model,
                &dev.device
                    .unwrap_or(tsd::device::DeviceSpec::Cpu)
                    .to_string(),
                &dev.dtype
                    .unwrap_or(tsd::device::WeightDtype::F32)
                    .to_string(),
            )?;
            emit(&rec, &out)
        }
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
            let text = tsd::render::to_json(&rec)? + "\n";
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
            dev,
        } => {
            dev.resolve()?;
            let device = dev
                .device
                .unwrap_or(tsd::device::DeviceSpec::Cpu)
                .to_string();
            let dtype = dev
                .dtype
                .unwrap_or(tsd::device::WeightDtype::F32)
                .to_string();
            if batch == 0 || seq_len < 2 || steps == 0 {
                return Err(super::input_error(
                    "--batch and --steps must be positive, --seq-len at least 2",
                ));
            }
            if let Some(m) = single {
                let r =
                    tsd::bench::bench_train_step(&m, batch, seq_len, rank, steps, &device, &dtype)?;
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
                        .args(["--device", &device, "--dtype", &dtype])
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
            let text = tsd::render::to_json(&rec)? + "\n";
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
