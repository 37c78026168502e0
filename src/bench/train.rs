//! `tsd bench train`: training-step throughput and peak memory of LoRA and LoRA-Dash on the
//! default model, each method measured in its own process, over alternating rounds.

use super::{
    context_switches, cpu_name, median, minor_faults, process_cpu_seconds, DEFAULT_MODEL_NAME,
};
use crate::error::Result;
use crate::linalg::{Matrix, Precision};
use crate::svd_cache::SvdCache;
use serde::Serialize;
use std::time::Instant;

/// One training-step benchmark (a single method, measured in its own process for a clean peak RSS).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TrainBench {
    pub method: String,
    pub model: String,
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub targets: Vec<String>,
    pub threads: usize,
    pub warmup_steps: usize,
    pub step_seconds: Vec<f64>,
    /// CPU seconds of all the process's threads per timed step ([`super::process_cpu_seconds`]:
    /// the pool's spinning counts, another guest's steal does not); empty in older records.
    #[serde(default)]
    pub step_cpu_seconds: Vec<f64>,
    pub median_step_seconds: f64,
    pub tokens_per_s: f64,
    pub peak_rss_bytes: u64,
    /// Minor page faults of the process per timed step (memory the allocator gave back and
    /// took again).
    #[serde(default)]
    pub page_faults_per_step: u64,
    /// Voluntary and involuntary context switches of all threads per timed step.
    #[serde(default)]
    pub context_switches_per_step: u64,
    /// Model FLOPs of one step ([`train_step_flops`]; 0 in records from before it was counted).
    #[serde(default)]
    pub model_flops_per_step: f64,
    /// The frozen weights' products: f32, or bf16 ([`crate::nn::bf16`]).
    #[serde(default)]
    pub frozen_products: crate::nn::bf16::FrozenProducts,
    /// Whether the LM head's forward ran on its weight packed once (`Llama::use_packed_head`,
    /// as `tsd train` runs it; false in records from before it, and where the kernel is absent).
    #[serde(default)]
    pub packed_head: bool,
}

/// Model FLOPs of one LoRA training step, by part (see [`train_step_flops`]).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct StepFlops {
    /// Frozen linears of every layer (q, k, v, o, gate, up, down), forward.
    pub linears_forward: f64,
    /// The LM head, forward.
    pub lm_head_forward: f64,
    /// Attention's `QKᵀ` and `P·V`, forward.
    pub attention_forward: f64,
    /// LoRA's two thin products per adapted linear, forward.
    pub lora_forward: f64,
    /// LoRA-Dash's `s` directions, forward: they ride in LoRA's products (rank `r + s`,
    /// `src/nn/adapted.rs`), so they cost what `s` more LoRA ranks would; 0 for LoRA.
    #[serde(default)]
    pub dash_forward: f64,
    /// Backward: input gradients of the frozen linears and the head, attention's four products,
    /// LoRA's four.
    pub backward: f64,
    pub total: f64,
}

/// Model FLOPs of one LoRA training step of `cfg` on `batch × seq_len` tokens, LoRA rank `rank` on
/// the linears named in `targets` (short names), counting a multiply-add as 2 FLOPs. With
/// `N = batch·seq_len` tokens, `L` layers, and for a linear `[out, in]`:
///
/// - forward, per linear: `2·N·in·out` — all seven per layer (`params touched` per token) and the
///   LM head `[vocab, hidden]` (tied or not, it is a product);
/// - forward attention per layer: `QKᵀ` and `P·V`, `2 · 2·batch·heads·seq_len²·head_dim`, counted
///   on the full `T×T` square, which tsd's fused attention computes (the causal mask is applied
///   after the product);
/// - forward LoRA per adapted linear: `2·N·r·(in + out)` (`x·Aᵀ` then `·Bᵀ`);
/// - backward: **1×** the forward of the frozen linears and the head — tsd computes only their
///   input gradients (`g·W`), never the frozen weights' gradients (which would be another 1×);
///   **2×** the forward of attention (`dP = dO·Vᵀ`, `dV = Pᵀ·dO`, `dQ = dS·K`, `dK = dSᵀ·Q`) and
///   of LoRA (`dB`, `d(xAᵀ)`, `dA`, `dx`);
/// - LoRA-Dash (`dash_s > 0`): its `s` directions as executed, `2·N·s·(in + out)` forward and 2×
///   that backward per adapted linear, since they share LoRA's products. (Of those 3× the
///   gradient of the constant `V̄ᵀ` is not needed, and `g·Ū` once would give both `Δσ`'s gradient
///   and the input's: 2× would do, at other bits.)
///
/// Not counted: the scores tsd recomputes in attention's backward instead of keeping them
/// (`QKᵀ` again: +1× the attention forward's half, hardware FLOPs, not model FLOPs), elementwise
/// ops (norms, SwiGLU, softmax, RoPE, the loss, AdamW), and the saving that the first layer's
/// q, k, v input gradients are not needed (the embeddings take no gradient) — 3 of 210 frozen
/// products on the default model. So this is the usual "model FLOPs" of a LoRA step: about
/// `4·N·params` of the frozen linears instead of full fine-tuning's `6·N·params`.
pub fn train_step_flops(
    cfg: &crate::model::LlamaConfig,
    batch: usize,
    seq_len: usize,
    rank: usize,
    dash_s: usize,
    targets: &[&str],
) -> StepFlops {
    const LINEARS: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let n = (batch * seq_len) as f64;
    let layers = cfg.num_hidden_layers as f64;
    let (mut lin, mut lora, mut dash) = (0.0, 0.0, 0.0);
    for m in LINEARS {
        let (out, inp) = cfg.linear_shape(m).expect("a known linear");
        lin += 2.0 * n * (out * inp) as f64;
        if targets.contains(&m) {
            lora += 2.0 * n * (rank * (out + inp)) as f64;
            dash += 2.0 * n * (dash_s * (out + inp)) as f64;
        }
    }
    let (linears_forward, lora_forward) = (layers * lin, layers * lora);
    let dash_forward = layers * dash;
    let lm_head_forward = 2.0 * n * (cfg.vocab_size * cfg.hidden_size) as f64;
    let t = seq_len as f64;
    let attention_forward = layers
        * 2.0
        * 2.0
        * batch as f64
        * cfg.num_attention_heads as f64
        * t
        * t
        * cfg.head_dim() as f64;
    let low_rank = lora_forward + dash_forward;
    let backward = linears_forward + lm_head_forward + 2.0 * (attention_forward + low_rank);
    StepFlops {
        total: linears_forward + lm_head_forward + attention_forward + low_rank + backward,
        linears_forward,
        lm_head_forward,
        attention_forward,
        lora_forward,
        dash_forward,
        backward,
    }
}

/// What a `tsd bench roofline` record says about the machine's limits, as `tsd bench train`
/// compares with them: the bf16 rate and peak for a run with bf16 frozen products where the record
/// has them, else the f32 ones.
#[derive(Clone, Debug, Serialize)]
pub struct RooflineLimits {
    /// The record's path.
    pub source: String,
    pub cpu: String,
    /// `f32` or `bf16`: which of the record's rates and peaks the fields below are.
    pub precision: String,
    /// Best measured product rate (median of a shape), FLOP/s.
    pub best_measured_product_flops_per_s: f64,
    /// Theoretical peak, FLOP/s, and its derivation.
    pub theoretical_peak_flops_per_s: f64,
    pub peak_derivation: String,
    /// Why the comparison is not in the run's own precision (a bf16 run against a record
    /// without bf16 rates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_mismatch: Option<String>,
}

impl RooflineLimits {
    /// The limits of `rec` (read from `source`) for a run whose frozen products are `products`.
    pub fn from_record(
        rec: &super::Roofline,
        source: &str,
        products: crate::nn::bf16::FrozenProducts,
    ) -> Self {
        let f32_limits = RooflineLimits {
            source: source.into(),
            cpu: rec.cpu.model_name.clone(),
            precision: "f32".into(),
            best_measured_product_flops_per_s: rec.best_measured_f32_gflops * 1e9,
            theoretical_peak_flops_per_s: rec.peak.f32_flops_per_s,
            peak_derivation: rec.peak.derivation.clone(),
            precision_mismatch: None,
        };
        if products.is_f32() {
            return f32_limits;
        }
        match (&rec.best_measured_bf16, &rec.bf16_peak) {
            (Some(best), Some(peak)) => RooflineLimits {
                precision: "bf16".into(),
                best_measured_product_flops_per_s: best.gflops * 1e9,
                theoretical_peak_flops_per_s: peak.flops_per_s,
                peak_derivation: peak.derivation.clone(),
                ..f32_limits
            },
            _ => RooflineLimits {
                precision_mismatch: Some(
                    "a bf16 run, but the roofline record has no bf16 rate and peak: compared \
                     with its f32 ones"
                        .into(),
                ),
                ..f32_limits
            },
        }
    }
}

/// One method's steps pooled over rounds.
#[derive(Clone, Debug, Serialize)]
pub struct MethodSummary {
    pub method: String,
    pub median_step_seconds: f64,
    /// The fastest step: interference from other work only ever slows a step, so on a shared
    /// machine this is the steadier estimate of what the step itself costs.
    pub best_step_seconds: f64,
    pub tokens_per_s: f64,
    /// Largest peak RSS over the method's processes.
    pub peak_rss_bytes: u64,
    pub page_faults_per_step: u64,
    pub context_switches_per_step: u64,
}

/// `tsd bench train`'s record: LoRA and LoRA-Dash over alternating rounds, beside PyTorch + PEFT.
#[derive(Clone, Debug, Serialize)]
pub struct TrainComparison {
    pub what: &'static str,
    pub cpu: String,
    /// The matrix-kernel path gemm takes on this host (the timed runs ran here too).
    pub kernel_path: crate::kernels::KernelPath,
    /// The frozen weights' products of the timed runs: f32, or bf16 ([`crate::nn::bf16`]).
    pub frozen_products: crate::nn::bf16::FrozenProducts,
    /// Whether the timed runs' LM head forward ran packed once (`Llama::use_packed_head`).
    pub packed_head: bool,
    pub lora: MethodSummary,
    pub lora_dash: MethodSummary,
    /// Pooled median Dash step over pooled median LoRA step, minus one.
    pub dash_step_overhead_vs_lora: f64,
    /// The same ratio per round (each round runs both methods back to back).
    pub dash_step_overhead_per_round: Vec<f64>,
    /// Median of the per-round overheads and its distribution-free 95 % interval
    /// ([`crate::stats::median_interval`]: `[lo, hi, coverage]`; none below 6 rounds). Rounds pair
    /// the methods back to back, so drift in the machine's speed cancels within a round.
    #[serde(default)]
    pub dash_step_overhead_per_round_median: Option<f64>,
    #[serde(default)]
    pub dash_step_overhead_per_round_ci95: Option<(f64, f64, f64)>,
    /// The per-round overhead in CPU time (median CPU seconds per step of each process): the
    /// same pairing, a measure that other guests' steal does not reach.
    #[serde(default)]
    pub dash_cpu_overhead_per_round: Vec<f64>,
    #[serde(default)]
    pub dash_cpu_overhead_per_round_median: Option<f64>,
    #[serde(default)]
    pub dash_cpu_overhead_per_round_ci95: Option<(f64, f64, f64)>,
    /// Best Dash step over best LoRA step, minus one.
    pub dash_best_step_overhead_vs_lora: f64,
    pub pytorch_peft: Option<serde_json::Value>,
    pub tsd_lora_tokens_per_s_over_pytorch_peft: Option<f64>,
    /// The same from the best steps of each.
    pub tsd_lora_best_step_speedup_over_pytorch_peft: Option<f64>,
    /// PyTorch + PEFT peak RSS over tsd LoRA's.
    pub pytorch_peft_peak_rss_over_tsd_lora: Option<f64>,
    /// Every process's measurement, in the order they ran.
    pub runs: Vec<TrainBench>,
    /// Model FLOPs of one LoRA step ([`train_step_flops`]), from the runs' records.
    #[serde(default)]
    pub model_flops_per_step: Option<f64>,
    /// LoRA-Dash's extra FLOPs over LoRA's, as a fraction: the overhead its arithmetic predicts at
    /// LoRA's rate (none in records from before Dash's FLOPs were counted).
    #[serde(default)]
    pub dash_arithmetic_overhead: Option<f64>,
    /// LoRA's model FLOPs over its median step, FLOP/s.
    #[serde(default)]
    pub lora_achieved_flops_per_s: Option<f64>,
    /// The same over its best step.
    #[serde(default)]
    pub lora_best_step_flops_per_s: Option<f64>,
    /// The machine's limits, from a `tsd bench roofline` record, when one was there.
    #[serde(default)]
    pub roofline: Option<RooflineLimits>,
    /// LoRA's achieved FLOP/s (median step) over the roofline's best measured product rate (bf16
    /// for a bf16 run where the record has one: [`RooflineLimits::precision`]).
    #[serde(default)]
    pub lora_fraction_of_best_measured_product_rate: Option<f64>,
    /// LoRA's achieved FLOP/s (median step) over the theoretical peak (f32, or bf16 as above).
    #[serde(default)]
    pub lora_fraction_of_theoretical_peak: Option<f64>,
}

impl TrainComparison {
    /// Summarises `runs` (LoRA and LoRA-Dash processes of several rounds, in the order they ran),
    /// beside PyTorch + PEFT's record and a roofline's limits when given.
    pub fn new(
        runs: Vec<TrainBench>,
        torch: Option<serde_json::Value>,
        roofline: Option<RooflineLimits>,
    ) -> Self {
        let summary = |m: &str| {
            let mine: Vec<&TrainBench> = runs.iter().filter(|r| r.method == m).collect();
            let steps: Vec<f64> = mine.iter().flat_map(|r| r.step_seconds.clone()).collect();
            let med = if steps.is_empty() {
                f64::NAN
            } else {
                median(&steps)
            };
            let tokens = mine.first().map_or(0, |r| r.batch * r.seq_len) as f64;
            let per_step = |f: fn(&TrainBench) -> u64| {
                mine.iter().map(|r| f(r)).sum::<u64>() / mine.len().max(1) as u64
            };
            MethodSummary {
                method: m.into(),
                median_step_seconds: med,
                best_step_seconds: steps.iter().cloned().fold(f64::INFINITY, f64::min),
                tokens_per_s: tokens / med,
                peak_rss_bytes: mine.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0),
                page_faults_per_step: per_step(|r| r.page_faults_per_step),
                context_switches_per_step: per_step(|r| r.context_switches_per_step),
            }
        };
        let (lora, lora_dash) = (summary("lora"), summary("lora-dash"));
        let per_round = per_round_overhead(&runs, |r| Some(r.median_step_seconds));
        let per_round_median = (!per_round.is_empty()).then(|| median(&per_round));
        let per_round_ci = crate::stats::median_interval(&per_round, 0.95);
        let cpu_round = per_round_overhead(&runs, |r| {
            (!r.step_cpu_seconds.is_empty()).then(|| median(&r.step_cpu_seconds))
        });
        let torch_f = |k: &str| torch.as_ref().and_then(|t| t[k].as_f64());
        let torch_best = torch.as_ref().and_then(|t| {
            t["step_seconds"]
                .as_array()?
                .iter()
                .filter_map(|x| x.as_f64())
                .reduce(f64::min)
        });
        let flops_of = |m: &str| {
            runs.iter()
                .filter(|r| r.method == m)
                .map(|r| r.model_flops_per_step)
                .find(|&f| f > 0.0)
        };
        let flops = flops_of("lora");
        let dash_flops = flops_of("lora-dash");
        let achieved = flops.map(|f| f / lora.median_step_seconds);
        let frac = |limit: fn(&RooflineLimits) -> f64| Some(achieved? / limit(roofline.as_ref()?));
        TrainComparison {
            what: "training step (forward, backward, AdamW) on the default model, CPU f32",
            model_flops_per_step: flops,
            dash_arithmetic_overhead: dash_flops
                .zip(flops)
                .map(|(d, l)| d / l - 1.0)
                .filter(|x| *x > 0.0),
            lora_achieved_flops_per_s: achieved,
            lora_best_step_flops_per_s: flops.map(|f| f / lora.best_step_seconds),
            lora_fraction_of_best_measured_product_rate: frac(|r| {
                r.best_measured_product_flops_per_s
            }),
            lora_fraction_of_theoretical_peak: frac(|r| r.theoretical_peak_flops_per_s),
            roofline,
            cpu: cpu_name(),
            kernel_path: crate::kernels::current(),
            frozen_products: runs.first().map(|r| r.frozen_products).unwrap_or_default(),
            packed_head: runs.iter().all(|r| r.packed_head) && !runs.is_empty(),
            dash_step_overhead_vs_lora: lora_dash.median_step_seconds / lora.median_step_seconds
                - 1.0,
            dash_step_overhead_per_round: per_round,
            dash_step_overhead_per_round_median: per_round_median,
            dash_step_overhead_per_round_ci95: per_round_ci,
            dash_cpu_overhead_per_round_median: (!cpu_round.is_empty()).then(|| median(&cpu_round)),
            dash_cpu_overhead_per_round_ci95: crate::stats::median_interval(&cpu_round, 0.95),
            dash_cpu_overhead_per_round: cpu_round,
            dash_best_step_overhead_vs_lora: lora_dash.best_step_seconds / lora.best_step_seconds
                - 1.0,
            tsd_lora_tokens_per_s_over_pytorch_peft: torch_f("tokens_per_s")
                .map(|t| lora.tokens_per_s / t),
            tsd_lora_best_step_speedup_over_pytorch_peft: torch_best
                .map(|t| t / lora.best_step_seconds),
            pytorch_peft_peak_rss_over_tsd_lora: torch_f("peak_rss_bytes")
                .map(|t| t / lora.peak_rss_bytes as f64),
            pytorch_peft: torch,
            lora,
            lora_dash,
            runs,
        }
    }
}

/// LoRA-Dash's directions per adapted linear in the benchmark.
const DASH_S: usize = 8;

/// Dash over LoRA minus one, per round (`runs` in pairs as [`bench_train_rounds`] ran them), of
/// the per-process figure `of` gives; rounds where a figure is missing are left out.
fn per_round_overhead(runs: &[TrainBench], of: fn(&TrainBench) -> Option<f64>) -> Vec<f64> {
    runs.chunks(2)
        .filter_map(|pair| {
            let get = |m: &str| pair.iter().find(|r| r.method == m).and_then(of);
            Some(get("lora-dash")? / get("lora")? - 1.0)
        })
        .collect()
}

/// Times `steps` LoRA (or LoRA-Dash, switched before timing) training steps — forward, backward,
/// AdamW — on the default model with a fixed `[batch, seq_len]` batch, every position labelled.
/// `o.device` and `o.dtype` are `--device` / `--dtype` strings; `o.rounds` is not used here.
pub fn bench_train_step(method: &str, o: &TrainOptions) -> Result<TrainBench> {
    use crate::model::Llama;
    use crate::train::optim::{AdamW, AdamWConfig};
    let (batch, seq_len, rank, steps) = (o.batch, o.seq_len, o.rank, o.steps);
    let frozen_products = o.frozen_products;
    let dev = crate::device::device_for(&o.device)?;
    let dt = crate::device::dtype_for(&o.dtype)?;
    let path = crate::provision::default_model(false)?;
    let src = crate::weights::GgufModel::open(&path)?;
    let mut model = Llama::from_source(&src, &dev, dt)?;
    if !frozen_products.is_f32() && !model.use_bf16_products()? {
        return Err(crate::Error::InvalidArgument(
            "--frozen-products bf16 needs a CPU with AVX512-BF16 and --device cpu --dtype f32"
                .into(),
        ));
    }
    // As `tsd train` runs (`train::setup`).
    let packed_head = frozen_products.is_f32() && model.use_packed_head()?;
    let mut opt = AdamW::new(AdamWConfig::default());
    super::add_lora(&mut model, rank, &mut opt)?;
    if method == "lora-dash" {
        let cache = SvdCache::disabled();
        for (i, lin) in model.linears_mut().enumerate() {
            if lin.lora.is_none() {
                continue;
            }
            let w = lin.weight().to_dtype(candle_core::DType::F32)?;
            let (r, c) = w.dims2()?;
            let m = Matrix::new(r, c, w.flatten_all()?.to_vec1::<f32>()?)?;
            let (d, _) = cache.get_or_compute(&m, Precision::F32)?;
            lin.start_dash(DASH_S, &d, Default::default())?;
            opt.add(
                format!("{i}.ds"),
                lin.dash.as_ref().expect("started").delta_sigma.clone(),
            )?;
        }
    }
    let dash_s = if method == "lora-dash" { DASH_S } else { 0 };
    let flops =
        train_step_flops(&model.config, batch, seq_len, rank, dash_s, &super::TARGETS).total;
    let vocab = model.config.vocab_size as u32;
    let (ids, targets_t) = super::fixed_batch(vocab, batch, seq_len, &dev)?;
    let warmup = 1;
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    let (mut faults0, mut switches0) = (minor_faults(), context_switches());
    for s in 0..warmup + steps {
        if s == warmup {
            (faults0, switches0) = (minor_faults(), context_switches());
        }
        let (t, c) = (Instant::now(), process_cpu_seconds());
        super::train_step(&model, &ids, &targets_t, &mut opt, s)?;
        dev.synchronize()?;
        if s >= warmup {
            times.push(t.elapsed().as_secs_f64());
            cpu.push(process_cpu_seconds() - c);
        }
    }
    let median = median(&times);
    Ok(TrainBench {
        method: method.into(),
        model: DEFAULT_MODEL_NAME.into(),
        batch,
        seq_len,
        rank,
        targets: super::TARGETS.map(String::from).to_vec(),
        threads: rayon::current_num_threads(),
        warmup_steps: warmup,
        step_seconds: times,
        step_cpu_seconds: cpu,
        median_step_seconds: median,
        tokens_per_s: (batch * seq_len) as f64 / median,
        peak_rss_bytes: crate::train::trainer::peak_rss_bytes(),
        page_faults_per_step: (minor_faults() - faults0) / steps as u64,
        context_switches_per_step: (context_switches() - switches0) / steps as u64,
        model_flops_per_step: flops,
        frozen_products,
        packed_head,
    })
}

/// `tsd bench train`'s settings.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub steps: usize,
    pub rounds: usize,
    /// The frozen weights' products.
    pub frozen_products: crate::nn::bf16::FrozenProducts,
    /// `--device` / `--dtype` strings.
    pub device: String,
    pub dtype: String,
}

/// Runs `rounds` rounds of LoRA and LoRA-Dash, each method in its own process (`exe bench train
/// --single METHOD`), so that peak RSS is that method's alone; the methods alternate (and swap
/// order every round) so that drift in the machine's speed falls on both alike. `log` hears of
/// each process as it starts.
pub fn bench_train_rounds(
    exe: &std::path::Path,
    o: &TrainOptions,
    log: &dyn Fn(&str),
) -> Result<Vec<TrainBench>> {
    let mut runs = Vec::new();
    for round in 0..o.rounds {
        let order = if round % 2 == 0 {
            ["lora", "lora-dash"]
        } else {
            ["lora-dash", "lora"]
        };
        for m in order {
            log(&format!(
                "bench: round {}/{}: {m}, batch {} x {} tokens, {} steps…",
                round + 1,
                o.rounds,
                o.batch,
                o.seq_len,
                o.steps
            ));
            runs.push(train_in_process(exe, o, m)?);
        }
    }
    Ok(runs)
}

/// One method's [`bench_train_step`] in a child process of `exe`.
fn train_in_process(exe: &std::path::Path, o: &TrainOptions, method: &str) -> Result<TrainBench> {
    let out = std::process::Command::new(exe)
        .args(["bench", "train", "--batch", &o.batch.to_string()])
        .args([
            "--seq-len",
            &o.seq_len.to_string(),
            "--rank",
            &o.rank.to_string(),
        ])
        .args(["--steps", &o.steps.to_string(), "--single", method])
        .args(["--device", &o.device, "--dtype", &o.dtype])
        .args(["--frozen-products", &o.frozen_products.to_string()])
        .output()
        .map_err(|e| crate::Error::io(exe, e))?;
    if !out.status.success() {
        return Err(crate::Error::Internal(format!(
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| crate::Error::Internal(format!("{method}: bench train --single: {e}")))
}

// The flags of `Which::Train` (no doc comment here: the variant's is the subcommand's help).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// LoRA rank on q, k, v, up and down (LoRA-Dash: s = 8 directions).
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Timed steps per method and round (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Rounds: each runs LoRA and LoRA-Dash once, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// PyTorch + PEFT results to put beside (from benches/peft_train_step.py).
    #[arg(long, default_value = "reproductions/bench/peft_train_step.json")]
    pub torch: std::path::PathBuf,
    /// Where to write the record.
    #[arg(long, default_value = "reproductions/bench/train.json")]
    pub out: std::path::PathBuf,
    /// A `tsd bench roofline` record whose limits the step's FLOP/s is compared with (skipped
    /// when the file is not there).
    #[arg(long, default_value = "reproductions/bench/roofline.json")]
    pub roofline: std::path::PathBuf,
    /// Frozen weights' products: f32, or bf16 (weights and activations rounded to bf16, sums in
    /// f32; AVX512-BF16 only). Compare bf16 with PyTorch's bf16 autocast
    /// (`benches/peft_train_step.py --autocast-bf16`), not with f32.
    #[arg(long, value_enum, default_value_t = crate::nn::bf16::FrozenProducts::F32)]
    pub frozen_products: crate::nn::bf16::FrozenProducts,
    /// Internal: measure one method in this process and print its JSON.
    #[arg(long, hide = true)]
    pub single: Option<String>,
    #[command(flatten)]
    pub dev: crate::device::DeviceArgs,
}

impl TrainArgs {
    /// The benchmark's options from the flags (the device and dtype checked).
    pub fn options(&self) -> Result<TrainOptions> {
        let (device, dtype) = self.dev.names()?;
        Ok(TrainOptions {
            batch: self.batch,
            seq_len: self.seq_len,
            rank: self.rank,
            steps: self.steps,
            rounds: self.rounds,
            frozen_products: self.frozen_products,
            device,
            dtype,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, steps: &[f64], rss: u64) -> TrainBench {
        TrainBench {
            method: method.into(),
            model: "m".into(),
            batch: 2,
            seq_len: 50,
            rank: 8,
            targets: vec![],
            threads: 2,
            warmup_steps: 1,
            step_seconds: steps.to_vec(),
            // CPU time: twice the wall time (two busy threads)
            step_cpu_seconds: steps.iter().map(|s| 2.0 * s).collect(),
            median_step_seconds: median(steps),
            tokens_per_s: 100.0 / median(steps),
            peak_rss_bytes: rss,
            page_faults_per_step: 4,
            context_switches_per_step: 10,
            model_flops_per_step: 300.0,
            frozen_products: Default::default(),
            packed_head: false,
        }
    }

    #[test]
    fn step_flops_of_the_default_model() {
        // SmolLM2-135M's shape: 30 layers, hidden 576, FFN 1536, 9 heads and 3 KV heads of 64
        let cfg = crate::model::LlamaConfig::from_json(
            serde_json::json!({"model_type": "llama", "hidden_size": 576,
                "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": true}),
            std::path::Path::new("smollm2"),
        )
        .unwrap();
        let f = train_step_flops(&cfg, 4, 128, 8, 0, &super::super::TARGETS);
        let n = 512.0;
        // per layer: q, o 576², k, v 576·192, gate, up, down 576·1536
        let per_layer = 2.0 * 576.0 * 576.0 + 2.0 * 576.0 * 192.0 + 3.0 * 576.0 * 1536.0;
        assert_eq!(f.linears_forward, 30.0 * 2.0 * n * per_layer);
        assert_eq!(f.lm_head_forward, 2.0 * n * 576.0 * 49152.0);
        assert_eq!(
            f.attention_forward,
            30.0 * 4.0 * 4.0 * 9.0 * 128.0 * 128.0 * 64.0
        );
        // LoRA r = 8 on q (576+576), k, v (576+192 each), up, down (576+1536 each)
        let lora_in_out = 1152.0 + 2.0 * 768.0 + 2.0 * 2112.0;
        assert_eq!(f.lora_forward, 30.0 * 2.0 * n * 8.0 * lora_in_out);
        let fwd = f.linears_forward + f.lm_head_forward + f.attention_forward + f.lora_forward;
        assert_eq!(
            f.backward,
            f.linears_forward + f.lm_head_forward + 2.0 * (f.attention_forward + f.lora_forward)
        );
        assert_eq!(f.total, fwd + f.backward);
        // ≈ 294 GFLOP per step
        assert!((f.total / 1e9 - 294.0).abs() < 1.0, "{}", f.total / 1e9);
        assert_eq!(f.dash_forward, 0.0);
        // LoRA-Dash s = 8: the low-rank products at rank 16, 3× their forward in all
        let d = train_step_flops(&cfg, 4, 128, 8, 8, &super::super::TARGETS);
        assert_eq!(d.dash_forward, f.lora_forward);
        assert_eq!(d.total - f.total, 3.0 * f.lora_forward);
        // ≈ 5.1 GFLOP more: 1.7 % of the LoRA step
        let extra = (d.total - f.total) / f.total;
        assert!((extra - 0.0173).abs() < 0.0005, "{extra}");
    }

    #[test]
    fn fractions_of_the_roofline_come_from_the_records() {
        let mut dash = run("lora-dash", &[2.0], 100);
        dash.model_flops_per_step = 306.0;
        let runs = vec![run("lora", &[2.0, 3.0, 1.0], 100), dash];
        let limits = RooflineLimits {
            source: "r.json".into(),
            cpu: "c".into(),
            precision: "f32".into(),
            best_measured_product_flops_per_s: 600.0,
            theoretical_peak_flops_per_s: 1000.0,
            peak_derivation: String::new(),
            precision_mismatch: None,
        };
        let c = TrainComparison::new(runs.clone(), None, Some(limits));
        // 300 FLOPs per step, median step 2 s (best 1 s)
        assert_eq!(c.model_flops_per_step, Some(300.0));
        // Dash's 306 FLOPs per step: 2 % more arithmetic, not mistaken for LoRA's count
        assert!((c.dash_arithmetic_overhead.unwrap() - 0.02).abs() < 1e-12);
        assert_eq!(c.lora_achieved_flops_per_s, Some(150.0));
        assert_eq!(c.lora_best_step_flops_per_s, Some(300.0));
        assert_eq!(c.lora_fraction_of_best_measured_product_rate, Some(0.25));
        assert_eq!(c.lora_fraction_of_theoretical_peak, Some(0.15));
        let none = TrainComparison::new(runs, None, None);
        assert_eq!(none.lora_fraction_of_theoretical_peak, None);
        assert_eq!(none.lora_achieved_flops_per_s, Some(150.0));
    }

    /// A bf16 run compares with the record's bf16 rate and peak where it has them, else with the
    /// f32 ones and says so; an f32 run always with the f32 ones.
    #[test]
    fn a_bf16_run_compares_with_the_bf16_limits() {
        use crate::bench::roofline::{BestBf16, Bf16Peak};
        use crate::nn::bf16::FrozenProducts;
        let mut rec: super::super::Roofline =
            serde_json::from_str(include_str!("../../reproductions/bench/roofline.json")).unwrap();
        rec.best_measured_f32_gflops = 400.0;
        rec.best_measured_bf16 = None;
        rec.bf16_peak = None;
        let old = RooflineLimits::from_record(&rec, "r.json", FrozenProducts::Bf16);
        assert_eq!(old.precision, "f32");
        assert_eq!(old.best_measured_product_flops_per_s, 400e9);
        assert!(old.precision_mismatch.is_some());
        rec.best_measured_bf16 = Some(BestBf16 {
            gflops: 900.0,
            shape: "gate,up fwd".into(),
            path: "tsd".into(),
            over_peak: Some(0.9),
        });
        rec.bf16_peak = Some(Bf16Peak {
            flops_per_s: 1000e9,
            derivation: "d".into(),
            assumption: "a".into(),
        });
        let bf = RooflineLimits::from_record(&rec, "r.json", FrozenProducts::Bf16);
        assert_eq!(bf.precision, "bf16");
        assert_eq!(bf.best_measured_product_flops_per_s, 900e9);
        assert_eq!(bf.theoretical_peak_flops_per_s, 1000e9);
        assert!(bf.precision_mismatch.is_none());
        let f = RooflineLimits::from_record(&rec, "r.json", FrozenProducts::F32);
        assert_eq!(f.precision, "f32");
        assert_eq!(f.best_measured_product_flops_per_s, 400e9);
        assert_eq!(f.theoretical_peak_flops_per_s, rec.peak.f32_flops_per_s);
    }

    #[test]
    fn comparison_pools_steps_per_method_and_pairs_rounds() {
        let runs = vec![
            run("lora", &[1.0, 1.2, 1.1], 100),
            run("lora-dash", &[1.3, 1.1, 1.2], 120),
            run("lora-dash", &[2.2, 2.4, 2.3], 110),
            run("lora", &[2.0, 2.1, 2.2], 90),
        ];
        let torch = serde_json::json!({"tokens_per_s": 40.0, "peak_rss_bytes": 200.0,
            "step_seconds": [3.0, 2.5, 2.8]});
        let c = TrainComparison::new(runs, Some(torch), None);
        // pooled LoRA steps 1.0 1.1 1.2 2.0 2.1 2.2 → upper median 2.0; Dash → 2.2
        assert_eq!(c.lora.median_step_seconds, 2.0);
        assert_eq!(c.lora_dash.median_step_seconds, 2.2);
        assert!((c.dash_step_overhead_vs_lora - 0.1).abs() < 1e-12);
        // per round: 1.2/1.1 − 1 and 2.3/2.1 − 1
        let want = [1.2 / 1.1 - 1.0, 2.3 / 2.1 - 1.0];
        assert_eq!(c.dash_step_overhead_per_round.len(), 2);
        for (got, want) in c.dash_step_overhead_per_round.iter().zip(want) {
            assert!((got - want).abs() < 1e-12);
        }
        // the CPU-time pairing, from each process's median CPU seconds (twice its wall time here)
        assert_eq!(c.dash_cpu_overhead_per_round.len(), 2);
        for (got, want) in c.dash_cpu_overhead_per_round.iter().zip(want) {
            assert!((got - want).abs() < 1e-12);
        }
        // an older record without CPU times pairs nothing
        let mut old = vec![run("lora", &[1.0], 1), run("lora-dash", &[1.1], 1)];
        old.iter_mut().for_each(|r| r.step_cpu_seconds.clear());
        let c_old = TrainComparison::new(old, None, None);
        assert!(c_old.dash_cpu_overhead_per_round.is_empty());
        assert_eq!(c_old.dash_cpu_overhead_per_round_median, None);
        assert_eq!(c.lora.tokens_per_s, 50.0);
        assert_eq!(c.tsd_lora_tokens_per_s_over_pytorch_peft, Some(1.25));
        assert_eq!(c.lora.peak_rss_bytes, 100);
        assert_eq!(c.pytorch_peft_peak_rss_over_tsd_lora, Some(2.0));
        // best steps: LoRA 1.0, Dash 1.1, PyTorch 2.5
        assert!((c.dash_best_step_overhead_vs_lora - 0.1).abs() < 1e-12);
        assert_eq!(c.tsd_lora_best_step_speedup_over_pytorch_peft, Some(2.5));
    }
}
