//! `tsd bench`: the flags → a benchmark of [`tsd::bench`] → its record written and printed
//! ([`tsd::render::bench`]).

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
    Inspect(InspectArgs),
    /// Training-step throughput and peak memory, LoRA and LoRA-Dash, on the default model (CPU).
    Train(tsd::bench::train::TrainArgs),
    /// LoRA-Dash's switch (SVDs in parallel through a cold SVD cache, TSD picks) on
    /// LLaMA-7B-shaped layers, extrapolated linearly to 32 layers.
    Switch(SwitchArgs),
    /// LoRA-Dash steps across the switch on a random model of a given shape, on any device and
    /// dtype (the GPU check runs it on LLaMA-7B's shape in bf16).
    Scale(tsd::bench::scale::ScaleArgs),
    /// `generate` evaluation seconds per example (4 beams, ≤ 32 new tokens) at several batch sizes.
    EvalBatch(EvalBatchArgs),
    /// A model's logits on --device/--dtype against the CPU in f32.
    Logits(LogitsArgs),
    /// This machine's limits: CPU identity, theoretical f32 FMA peak (derived), f32 matrix-product
    /// rates of tsd's kernel path beside PyTorch's and the system BLAS's (OpenBLAS, BLIS: opened at
    /// run time when installed) on the default model's shapes, memory bandwidth.
    Roofline(RooflineArgs),
    /// The bf16 frozen-weight kernel (AVX512-BF16) against tsd's f32 products on the default
    /// model's shapes, interleaved; and the default model's logits and loss on commonsense test
    /// examples with bf16 products against f32, beside PyTorch's bf16 autocast against its f32.
    Bf16(Bf16Args),
}

// The flags of `Which::Bf16` (no doc comment here: the variant's is the subcommand's help).
#[derive(Args, Debug)]
struct Bf16Args {
    /// Timed samples per path and shape (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Least milliseconds of one sample (calls repeat to fill it).
    #[arg(long, default_value_t = 10.0)]
    min_ms: f64,
    /// Rows of the training products (batch × sequence length).
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Rows of the decode products besides 1 (beams × batch).
    #[arg(long, default_value_t = 64)]
    decode_rows: usize,
    /// Skip the default model's logits and loss comparison.
    #[arg(long)]
    no_model: bool,
    /// Rows of the accuracy batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row of the accuracy batch.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Data directory in LLM-Adapters layout whose `<task>/test.json` examples make the accuracy
    /// batch [default: $TSD_DATA, else ../shared/data/commonsense; none there: pseudo-random
    /// token ids, said so in the record]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Python with torch and transformers for the PyTorch peer (benches/torch_bf16_accuracy.py)
    /// [default: $TSD_PYTHON, else the peer is skipped and the record says so]
    #[arg(long, value_name = "PATH")]
    torch_python: Option<String>,
    /// Print the record's JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Where to write the record.
    #[arg(long, default_value = "reproductions/bench/bf16.json")]
    out: PathBuf,
}

// The flags of `Which::Roofline` (no doc comment here: the variant's is the subcommand's help).
#[derive(Args, Debug)]
struct RooflineArgs {
    /// Timed samples per product shape (the median is reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Rows of the training products (batch × sequence length).
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Rows of the decode products (beams × batch).
    #[arg(long, default_value_t = 64)]
    decode_rows: usize,
    /// MiB of the three STREAM arrays together (keep it far above the L3).
    #[arg(long, default_value_t = 768)]
    stream_mib: u64,
    /// STREAM runs (the best is reported).
    #[arg(long, default_value_t = 10)]
    stream_runs: usize,
    /// Python with torch for the PyTorch peer (benches/torch_matmul.py) [default: $TSD_PYTHON,
    /// else the peer is skipped and the record says so]
    #[arg(long, value_name = "PATH")]
    torch_python: Option<String>,
    /// Print the record's JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Where to write the record.
    #[arg(long, default_value = "reproductions/bench/roofline.json")]
    out: PathBuf,
}

// The flags of `Which::Inspect` (no doc comment here: the variant's is the subcommand's help).
#[derive(Args, Debug)]
struct InspectArgs {
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
}

// The flags of `Which::Switch` (no doc comment here: the variant's is the subcommand's help).
#[derive(Args, Debug)]
struct SwitchArgs {
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
}

// The flags of `Which::EvalBatch` (no doc comment here: the variant's is the subcommand's help).
#[derive(Args, Debug)]
struct EvalBatchArgs {
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
}

// The flags of `Which::Logits` (no doc comment here: the variant's is the subcommand's help).
#[derive(Args, Debug)]
struct LogitsArgs {
    /// Model: `default`, a path, or a Hugging Face id.
    #[arg(long, default_value = "default")]
    model: String,
    #[command(flatten)]
    dev: tsd::device::DeviceArgs,
    /// Where to write the record.
    #[arg(long, default_value = "reproductions/bench/logits.json")]
    out: PathBuf,
}

/// Writes a benchmark record's JSON (atomically) and prints it.
fn save(text: &str, out: &std::path::Path) -> Result<()> {
    tsd::fsutil::atomic_write(out, text.as_bytes())?;
    print!("{text}");
    Ok(())
}

/// Writes a benchmark record as JSON (atomically), prints it and says where it went.
fn emit<T: serde::Serialize>(rec: &T, out: &std::path::Path) -> Result<()> {
    save(&tsd::render::bench::json(rec)?, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// A JSON file of figures to compare with, when it exists.
fn read_if_there(path: &std::path::Path) -> Result<Option<serde_json::Value>> {
    Ok(path
        .exists()
        .then(|| tsd::fsutil::read_json(path))
        .transpose()?)
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.which {
        Which::Switch(x) => switch(x),
        Which::Scale(x) => scale(x),
        Which::EvalBatch(x) => eval_batch(x),
        Which::Logits(x) => {
            let (device, dtype) = x.dev.names()?;
            emit(
                &tsd::bench::bench_logits(&x.model, &device, &dtype)?,
                &x.out,
            )
        }
        Which::Inspect(x) => inspect(x),
        Which::Roofline(x) => roofline(x),
        Which::Bf16(x) => bf16(x),
        Which::Train(x) => train(x.options()?, x.single, &x.torch, &x.roofline, &x.out),
    }
}

/// `tsd bench switch`.
fn switch(x: SwitchArgs) -> Result<()> {
    let SwitchArgs {
        layers,
        rank,
        dash_s,
        out,
    } = x;
    anyhow::ensure!(
        layers > 0 && rank > 0 && dash_s > 0,
        "--layers, --rank and --dash-s must be positive"
    );
    eprintln!("bench: LoRA-Dash switch on {layers} LLaMA-7B-shaped layer(s), cold SVD cache…");
    let rec = tsd::bench::bench_switch(layers, rank, dash_s)?;
    emit(&rec, &out)?;
    eprintln!("{}", tsd::render::bench::switch_summary(&rec));
    Ok(())
}

/// `tsd bench scale`.
fn scale(x: tsd::bench::scale::ScaleArgs) -> Result<()> {
    anyhow::ensure!(
        x.batch > 0 && x.seq_len > 0 && x.rank > 0 && x.dash_s > 0,
        "--batch, --seq-len, --rank and --dash-s must be positive"
    );
    let rec = tsd::bench::bench_scale_train(&x.options()?)?;
    emit(&rec, &x.out)?;
    eprintln!("{}", tsd::render::bench::scale_summary(&rec));
    Ok(())
}

/// `tsd bench eval-batch`.
fn eval_batch(x: EvalBatchArgs) -> Result<()> {
    let data = tsd::env::data_dir(x.data.as_deref()).ok_or_else(|| {
        tsd::Error::InvalidArgument("bench eval-batch: no data directory (--data, TSD_DATA)".into())
    })?;
    let rec = tsd::bench::bench_eval_batch(&x.model, &data, &x.tasks, x.limit, &x.batches)?;
    emit(&rec, &x.out)?;
    for line in tsd::render::bench::eval_batch_lines(&rec) {
        eprintln!("{line}");
    }
    Ok(())
}

/// `tsd bench roofline`.
fn roofline(x: RooflineArgs) -> Result<()> {
    if x.runs == 0 || x.tokens == 0 || x.decode_rows == 0 || x.stream_runs == 0 || x.stream_mib == 0
    {
        return Err(super::input_error(
            "--runs, --tokens, --decode-rows, --stream-mib and --stream-runs must be positive",
        ));
    }
    let o = tsd::bench::RooflineOptions {
        runs: x.runs,
        tokens: x.tokens,
        decode_rows: x.decode_rows,
        stream_bytes: x.stream_mib << 20,
        stream_runs: x.stream_runs,
        torch_python: x.torch_python.or_else(tsd::env::tsd_python),
    };
    let rec = tsd::bench::bench_roofline(&o, &|m| eprintln!("{m}"))?;
    let json = tsd::render::bench::json(&rec)?;
    tsd::fsutil::atomic_write(&x.out, json.as_bytes())?;
    if x.json {
        print!("{json}");
    } else {
        print!("{}", tsd::render::bench::roofline_table(&rec));
    }
    eprintln!("wrote {}", x.out.display());
    Ok(())
}

/// `tsd bench bf16`.
fn bf16(x: Bf16Args) -> Result<()> {
    if x.runs == 0
        || x.tokens == 0
        || x.decode_rows == 0
        || x.batch == 0
        || x.seq_len == 0
        || x.min_ms.is_nan()
        || x.min_ms <= 0.0
    {
        return Err(super::input_error(
            "--runs, --min-ms, --tokens, --decode-rows, --batch and --seq-len must be positive",
        ));
    }
    // A data directory named (or found at the default place) must hold test sets: refused before
    // anything runs; none at all is the pseudo-random batch.
    let text = tsd::env::data_dir(x.data.as_deref())
        .map(|d| tsd::bench::bf16::TestSets::read(&d))
        .transpose()?;
    let o = tsd::bench::bf16::Bf16Options {
        runs: x.runs,
        min_ms: x.min_ms,
        tokens: x.tokens,
        decode_rows: x.decode_rows,
        model: !x.no_model,
        batch: x.batch,
        seq_len: x.seq_len,
        text,
        torch_python: x.torch_python.or_else(tsd::env::tsd_python),
    };
    let rec = tsd::bench::bf16::bench_bf16(&o, &|m| eprintln!("{m}"))?;
    let json = tsd::render::bench::json(&rec)?;
    tsd::fsutil::atomic_write(&x.out, json.as_bytes())?;
    if x.json {
        print!("{json}");
    } else {
        print!("{}", tsd::bench::bf16::table(&rec));
    }
    eprintln!("wrote {}", x.out.display());
    Ok(())
}

/// `tsd bench inspect`.
fn inspect(x: InspectArgs) -> Result<()> {
    let (layers, rank) = (x.layers, x.rank);
    if layers == 0 || rank == 0 {
        return Err(super::input_error("--layers and --rank must be positive"));
    }
    let torch = read_if_there(&x.torch)?;
    eprintln!(
        "bench: generating {layers} LLaMA-7B-shaped layer(s) and running inspect cold and warm…"
    );
    let rec = tsd::bench::bench_inspect(layers, rank, x.svd_precision, torch)?;
    emit(&rec, &x.out)
}

/// `tsd bench train`: one method in this process (`--single`), else every round in child
/// processes and the comparison.
fn train(
    o: tsd::bench::TrainOptions,
    single: Option<String>,
    torch_path: &std::path::Path,
    roofline_path: &std::path::Path,
    out: &std::path::Path,
) -> Result<()> {
    if o.batch == 0 || o.seq_len < 2 || o.steps == 0 {
        return Err(super::input_error(
            "--batch and --steps must be positive, --seq-len at least 2",
        ));
    }
    if let Some(m) = single {
        let r = tsd::bench::bench_train_step(&m, &o)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if o.rounds == 0 {
        return Err(super::input_error("--rounds must be positive"));
    }
    let runs =
        tsd::bench::bench_train_rounds(&std::env::current_exe()?, &o, &|m| eprintln!("{m}"))?;
    let roofline = match read_if_there(roofline_path)? {
        Some(v) => Some(tsd::bench::RooflineLimits::from_record(
            &serde_json::from_value(v).map_err(|e| {
                anyhow::anyhow!("{}: not a roofline record: {e}", roofline_path.display())
            })?,
            &roofline_path.display().to_string(),
            o.frozen_products,
        )),
        None => None,
    };
    let rec = tsd::bench::TrainComparison::new(runs, read_if_there(torch_path)?, roofline);
    save(&tsd::render::bench::json(&rec)?, out)?;
    for line in tsd::render::bench::train_summary(&rec, torch_path) {
        eprintln!("{line}");
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}
