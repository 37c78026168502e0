//! The benchmarks behind `tsd bench`, one module each; their records are data (serde), written
//! under `reproductions/bench/` and rendered by [`crate::render::bench`]. Here: what several of
//! them share (LLaMA-7B's adapted shapes, random matrices, process and machine readings).

pub mod accuracy;
pub mod bf16;
pub mod eval_batch;
pub mod inspect;
pub mod logits;
pub mod random;
pub mod roofline;
pub mod scale;
pub mod switch;
pub mod system_blas;
pub mod train;

pub use eval_batch::{bench_eval_batch, EvalBatchBench, EvalBatchPoint};
pub use inspect::{bench_inspect, InspectBench, SvdTiming};
pub use logits::{bench_logits, LogitsCheck};
pub use random::RandomLlama;
pub use roofline::{bench_roofline, Roofline, RooflineOptions};
pub use scale::{bench_scale_train, ScaleBench, ScaleOptions};
pub use switch::{bench_switch, SwitchBench};
pub use train::{
    bench_train_rounds, bench_train_step, train_step_flops, MethodSummary, RooflineLimits,
    StepFlops, TrainBench, TrainComparison, TrainOptions,
};

use crate::error::Result;
use crate::linalg::Matrix;
use crate::model::Llama;
use crate::nn::ForwardCtx;
use crate::train::optim::AdamW;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// LLaMA-7B's adapted shapes `[out, in]` per layer.
pub const LLAMA7B_MODULES: &[(&str, usize, usize)] = &[
    ("self_attn.q_proj", 4096, 4096),
    ("self_attn.k_proj", 4096, 4096),
    ("self_attn.v_proj", 4096, 4096),
    ("mlp.up_proj", 11008, 4096),
    ("mlp.down_proj", 4096, 11008),
];

fn random_matrix(rows: usize, cols: usize, std: f32, seed: u64) -> Matrix {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = Normal::new(0.0f32, std).expect("valid std");
    Matrix {
        rows,
        cols,
        data: (0..rows * cols).map(|_| d.sample(&mut rng)).collect(),
    }
}

/// `/proc/loadavg`'s 1, 5 and 15-minute averages (empty if unreadable).
fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| {
            l.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The CPU model name from /proc/cpuinfo (empty if unknown).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_string())
        })
        .unwrap_or_default()
}

/// Median of a non-empty list (the upper middle for an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds of all this process's threads so far (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond
/// resolution; NaN where it fails). On a KVM guest with steal-time accounting the time a vCPU was taken away is not counted,
/// so a step's CPU time is disturbed less by other guests than its wall time.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Minor page faults of this process so far (`/proc/self/stat` field 10; 0 off Linux).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after_comm = s.get(s.rfind(')')? + 2..)?.to_string();
            after_comm.split(' ').nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Context switches of all this process's threads so far (`/proc/self/task/*/status`).
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The default model's name in benchmark records.
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to f32)";

/// The 1-minute load average (`/proc/loadavg`; NaN if unreadable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The linears the training benchmarks adapt.
const TARGETS: [&str; 5] = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"];

/// Adds LoRA of rank `rank` (α = 2r) to every [`TARGETS`] linear of `model`, its factors to `opt`.
fn add_lora(model: &mut Llama, rank: usize, opt: &mut AdamW) -> Result<()> {
    for (i, lin) in model.linears_mut().enumerate() {
        if TARGETS.iter().any(|t| lin.module.ends_with(t)) {
            lin.add_lora(rank, 2.0 * rank as f64, false, i as u64)?;
            let l = lin.lora.as_ref().expect("added");
            opt.add(format!("{i}.a"), l.a.clone())?;
            opt.add(format!("{i}.b"), l.b.clone())?;
        }
    }
    Ok(())
}

/// A fixed `[batch, seq_len]` batch of token ids below `vocab` and a target for every position.
fn fixed_batch(
    vocab: u32,
    batch: usize,
    seq_len: usize,
    dev: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let n = batch * seq_len;
    let ids: Vec<u32> = (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761) % vocab)
        .collect();
    let targets: Vec<u32> = (0..n)
        .map(|i| ((i as u32 + 7).wrapping_mul(40503)) % vocab)
        .collect();
    Ok((Tensor::from_vec(ids, (batch, seq_len), dev)?, targets))
}

/// One training step (dropout 0.05 seeded by `step`, AdamW at lr 1e-4): forward, loss, backward,
/// update. Returns the loss.
fn train_step(
    model: &Llama,
    ids: &Tensor,
    targets: &[u32],
    opt: &mut AdamW,
    step: usize,
) -> Result<Tensor> {
    let ctx = ForwardCtx::train(0.05, step as u64);
    let h = model.final_hidden(&model.embed(ids)?, 0, &ctx)?;
    let loss = model.head_loss(
        &h.reshape((targets.len(), model.config.hidden_size))?,
        targets,
    )?;
    let grads = loss.backward()?;
    opt.step(&grads, 1e-4, 1.0)?;
    Ok(loss)
}
