//! `tsd bench inspect`: inspect time on LLaMA-7B-shaped modules (q, k, v 4096×4096, up 11008×4096,
//! down 4096×11008), a random base generated on the fly, cold and with a warm SVD cache,
//! extrapolated to 32 layers. Results are data (serde) written under `reproductions/bench/`.

use crate::adapter::{Adapter, AdapterConfig, ModuleAdapter};
use crate::error::Result;
use crate::inspect::{inspect, InspectOptions};
use crate::linalg::cache::SvdCache;
use crate::linalg::{svd, Matrix, Precision};
use crate::weights::memory::InMemoryModel;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use std::time::Instant;

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

/// One SVD timing.
#[derive(Clone, Debug, Serialize)]
pub struct SvdTiming {
    pub shape: [usize; 2],
    pub seconds: f64,
}

/// The benchmark record.
#[derive(Clone, Debug, Serialize)]
pub struct InspectBench {
    pub what: &'static str,
    pub layers: usize,
    pub rank: usize,
    pub precision: Precision,
    pub threads: usize,
    pub cpu: String,
    /// One SVD at a time (faer itself uses all threads), per distinct shape.
    pub svd_one_at_a_time: Vec<SvdTiming>,
    /// `tsd inspect` wall time with an empty SVD cache (modules run in parallel).
    pub inspect_cold_seconds: f64,
    /// Sum over modules of the SVD time measured inside the cold inspect.
    pub inspect_cold_svd_sum_seconds: f64,
    /// `tsd inspect` wall time with a warm cache.
    pub inspect_warm_seconds: f64,
    /// Peak RSS of the process after the cold inspect (the generated base included).
    pub peak_rss_bytes_after_cold: u64,
    /// Bytes of the random base held in memory (part of that peak).
    pub base_bytes: u64,
    /// Bytes the SVD cache holds after the cold run (read back by the warm run).
    pub svd_cache_bytes: u64,
    /// Seconds to compute the cache key of one 11008×4096 weight (xxh3-128, the key in use).
    pub key_seconds_xxh3_11008x4096: f64,
    /// The same weight's sha256 content hash (the key before).
    pub hash_seconds_sha256_11008x4096: f64,
    pub cold_seconds_per_layer: f64,
    pub warm_seconds_per_layer: f64,
    pub extrapolated_32_layers_cold_seconds: f64,
    pub extrapolated_32_layers_warm_seconds: f64,
    /// torch.linalg.svd seconds for the same shapes, when `reproductions/bench/torch_svd.json` exists.
    pub torch_svd: Option<serde_json::Value>,
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

/// Runs the benchmark on `layers` layers with a rank-`rank` random adapter.
pub fn bench_inspect(
    layers: usize,
    rank: usize,
    precision: Precision,
    torch: Option<serde_json::Value>,
) -> Result<InspectBench> {
    let mut base = InMemoryModel::default();
    let mut modules = Vec::new();
    for l in 0..layers {
        for (i, &(name, out, inp)) in LLAMA7B_MODULES.iter().enumerate() {
            let module = format!("model.layers.{l}.{name}");
            let seed = (l * 100 + i) as u64;
            base.tensors.insert(
                format!("{module}.weight"),
                random_matrix(out, inp, 0.02, seed),
            );
            modules.push(ModuleAdapter {
                module,
                r: rank,
                alpha: 2.0 * rank as f64,
                scaling: 2.0,
                a: random_matrix(rank, inp, 0.01, seed + 7_000),
                b: random_matrix(out, rank, 0.01, seed + 9_000),
                dora_magnitude: None,
                dash: None,
            });
        }
    }
    let adapter = Adapter {
        path: "generated".into(),
        config: AdapterConfig {
            r: rank,
            lora_alpha: 2.0 * rank as f64,
            ..Default::default()
        },
        modules,
        warnings: vec![],
        unmatched: vec![],
        metadata: Default::default(),
        extras: Default::default(),
    };
    let mut one_at_a_time = Vec::new();
    for &(_, out, inp) in LLAMA7B_MODULES.iter().skip(2) {
        let w = random_matrix(out, inp, 0.02, 424_242);
        let t = Instant::now();
        svd(&w, precision)?;
        one_at_a_time.push(SvdTiming {
            shape: [out, inp],
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    let big = random_matrix(11008, 4096, 0.02, 1);
    let t = Instant::now();
    std::hint::black_box(SvdCache::key(&big, precision));
    let key_seconds_xxh3_11008x4096 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    std::hint::black_box(big.content_hash());
    let hash_seconds_sha256_11008x4096 = t.elapsed().as_secs_f64();
    drop(big);
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let cache = SvdCache::new(dir.path());
    let opts = InspectOptions {
        precision,
        ..Default::default()
    };
    let cold = inspect(&adapter, &base, None, &opts, &cache, &|_| {})?;
    let peak_rss_bytes_after_cold = crate::train::trainer::peak_rss_bytes();
    let svd_cache_bytes = std::fs::read_dir(dir.path())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let base_bytes = base.tensors.values().map(|m| 4 * m.data.len() as u64).sum();
    let warm = inspect(&adapter, &base, None, &opts, &cache, &|_| {})?;
    let per = |x: f64| x / layers as f64;
    Ok(InspectBench {
        what: "tsd inspect on LLaMA-7B-shaped modules (q,k,v 4096x4096, up 11008x4096, down 4096x11008), random base and rank-r adapter",
        layers,
        rank,
        precision,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        svd_one_at_a_time: one_at_a_time,
        inspect_cold_seconds: cold.wall_seconds,
        inspect_cold_svd_sum_seconds: cold.svd_seconds_total,
        inspect_warm_seconds: warm.wall_seconds,
        peak_rss_bytes_after_cold,
        base_bytes,
        svd_cache_bytes,
        key_seconds_xxh3_11008x4096,
        hash_seconds_sha256_11008x4096,
        cold_seconds_per_layer: per(cold.wall_seconds),
        warm_seconds_per_layer: per(warm.wall_seconds),
        extrapolated_32_layers_cold_seconds: 32.0 * per(cold.wall_seconds),
        extrapolated_32_layers_warm_seconds: 32.0 * per(warm.wall_seconds),
        torch_svd: torch,
    })
}

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
}

/// Median of a non-empty list (the upper middle for an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    pub lora: MethodSummary,
    pub lora_dash: MethodSummary,
    /// Pooled median Dash step over pooled median LoRA step, minus one.
    pub dash_step_overhead_vs_lora: f64,
    /// The same ratio per round (each round runs both methods back to back).
    pub dash_step_overhead_per_round: Vec<f64>,
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
}

impl TrainComparison {
    /// Summarises `runs` (LoRA and LoRA-Dash processes of several rounds, in the order they ran).
    pub fn new(runs: Vec<TrainBench>, torch: Option<serde_json::Value>) -> Self {
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
        let per_round = runs
            .chunks(2)
            .filter_map(|pair| {
                let of = |m: &str| pair.iter().find(|r| r.method == m);
                Some(of("lora-dash")?.median_step_seconds / of("lora")?.median_step_seconds - 1.0)
            })
            .collect();
        let torch_f = |k: &str| torch.as_ref().and_then(|t| t[k].as_f64());
        let torch_best = torch.as_ref().and_then(|t| {
            t["step_seconds"]
                .as_array()?
                .iter()
                .filter_map(|x| x.as_f64())
                .reduce(f64::min)
        });
        TrainComparison {
            what: "training step (forward, backward, AdamW) on the default model, CPU f32",
            cpu: cpu_name(),
            dash_step_overhead_vs_lora: lora_dash.median_step_seconds / lora.median_step_seconds
                - 1.0,
            dash_step_overhead_per_round: per_round,
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

/// Times `steps` LoRA (or LoRA-Dash, switched before timing) training steps — forward, backward,
/// AdamW — on the default model with a fixed `[batch, seq_len]` batch, every position labelled.
pub fn bench_train_step(
    method: &str,
    batch: usize,
    seq_len: usize,
    rank: usize,
    steps: usize,
) -> Result<TrainBench> {
    use crate::model::Llama;
    use crate::nn::ForwardCtx;
    use crate::train::optim::{AdamW, AdamWConfig};
    use candle_core::{DType, Device, Tensor};
    let path = crate::assets::default_model(false)?;
    let src = crate::weights::GgufModel::open(&path)?;
    let mut model = Llama::from_source(&src, &Device::Cpu, DType::F32)?;
    let targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"];
    let mut opt = AdamW::new(AdamWConfig::default());
    for (i, lin) in model.linears_mut().enumerate() {
        if targets.iter().any(|t| lin.module.ends_with(t)) {
            lin.add_lora(rank, 2.0 * rank as f64, false, i as u64)?;
            let l = lin.lora.as_ref().expect("added");
            opt.add(format!("{i}.a"), l.a.clone())?;
            opt.add(format!("{i}.b"), l.b.clone())?;
        }
    }
    if method == "lora-dash" {
        let cache = SvdCache::disabled();
        for (i, lin) in model.linears_mut().enumerate() {
            if lin.lora.is_none() {
                continue;
            }
            let w = lin.weight();
            let (r, c) = w.dims2()?;
            let m = Matrix::new(r, c, w.flatten_all()?.to_vec1::<f32>()?)?;
            let (d, _) = cache.get_or_compute(&m, Precision::F32)?;
            lin.start_dash(8, &d, Default::default())?;
            opt.add(
                format!("{i}.ds"),
                lin.dash.as_ref().expect("started").delta_sigma.clone(),
            )?;
        }
    }
    let vocab = model.config.vocab_size as u32;
    let ids: Vec<u32> = (0..batch * seq_len)
        .map(|i| (i as u32).wrapping_mul(2654435761) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq_len), &Device::Cpu)?;
    let targets_t: Vec<u32> = (0..batch * seq_len)
        .map(|i| ((i as u32 + 7).wrapping_mul(40503)) % vocab)
        .collect();
    let warmup = 1;
    let mut times = Vec::new();
    let (mut faults0, mut switches0) = (minor_faults(), context_switches());
    for s in 0..warmup + steps {
        if s == warmup {
            (faults0, switches0) = (minor_faults(), context_switches());
        }
        let t = Instant::now();
        let ctx = ForwardCtx::train(0.05, s as u64);
        let h = model.final_hidden(&model.embed(&ids)?, 0, &ctx)?;
        let logits = model.logits(&h.reshape((batch * seq_len, model.config.hidden_size))?)?;
        let loss = crate::nn::loss::cross_entropy(&logits, &targets_t)?;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-4, 1.0)?;
        if s >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let median = median(&times);
    Ok(TrainBench {
        method: method.into(),
        model: DEFAULT_MODEL_NAME.into(),
        batch,
        seq_len,
        rank,
        targets: targets.map(String::from).to_vec(),
        threads: rayon::current_num_threads(),
        warmup_steps: warmup,
        step_seconds: times,
        median_step_seconds: median,
        tokens_per_s: (batch * seq_len) as f64 / median,
        peak_rss_bytes: crate::train::trainer::peak_rss_bytes(),
        page_faults_per_step: (minor_faults() - faults0) / steps as u64,
        context_switches_per_step: (context_switches() - switches0) / steps as u64,
    })
}

/// The default model's name in benchmark records.
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to f32)";

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
            median_step_seconds: median(steps),
            tokens_per_s: 100.0 / median(steps),
            peak_rss_bytes: rss,
            page_faults_per_step: 4,
            context_switches_per_step: 10,
        }
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
        let c = TrainComparison::new(runs, Some(torch));
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
        assert_eq!(c.lora.tokens_per_s, 50.0);
        assert_eq!(c.tsd_lora_tokens_per_s_over_pytorch_peft, Some(1.25));
        assert_eq!(c.lora.peak_rss_bytes, 100);
        assert_eq!(c.pytorch_peft_peak_rss_over_tsd_lora, Some(2.0));
        // best steps: LoRA 1.0, Dash 1.1, PyTorch 2.5
        assert!((c.dash_best_step_overhead_vs_lora - 0.1).abs() < 1e-12);
        assert_eq!(c.tsd_lora_best_step_speedup_over_pytorch_peft, Some(2.5));
    }
}
