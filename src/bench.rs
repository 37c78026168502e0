//! `tsd bench inspect`: inspect time on LLaMA-7B-shaped modules (q, k, v 4096×4096, up 11008×4096,
//! down 4096×11008), a random base generated on the fly, cold and with a warm SVD cache,
//! extrapolated to 32 layers. Results are data (serde) written under `reproductions/bench/`.

use crate::adapter::{Adapter, AdapterConfig, ModuleAdapter};
use crate::error::Result;
use crate::inspect::{inspect_within, InspectOptions};
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
    /// The memory budget inspect ran its modules under (`TSD_MEMORY_BUDGET`, else
    /// min(8 GiB, half of MemAvailable)).
    pub memory_budget_bytes: usize,
    /// `/proc/loadavg` (1, 5, 15 min) before the benchmark and after it: other work on the machine
    /// slows every figure here.
    pub loadavg_before: Vec<f64>,
    pub loadavg_after: Vec<f64>,
    /// torch.linalg.svd seconds for the same shapes, when `reproductions/bench/torch_svd.json` exists.
    pub torch_svd: Option<serde_json::Value>,
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

/// Runs the benchmark on `layers` layers with a rank-`rank` random adapter.
pub fn bench_inspect(
    layers: usize,
    rank: usize,
    precision: Precision,
    torch: Option<serde_json::Value>,
) -> Result<InspectBench> {
    let loadavg_before = loadavg();
    let memory_budget_bytes = crate::budget::memory_budget()?;
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
    // The base-SVD path alone: the null model's draws are timed by its own tests.
    let opts = InspectOptions {
        precision,
        null: crate::inspect::NullOptions {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let cold = inspect_within(
        &adapter,
        &base,
        None,
        &opts,
        &cache,
        memory_budget_bytes,
        &|_| {},
    )?;
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
    let warm = inspect_within(
        &adapter,
        &base,
        None,
        &opts,
        &cache,
        memory_budget_bytes,
        &|_| {},
    )?;
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
        memory_budget_bytes,
        loadavg_before,
        loadavg_after: loadavg(),
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
/// `device` and `dtype` are `--device` / `--dtype` strings (the record's figures are for CPU f32).
pub fn bench_train_step(
    method: &str,
    batch: usize,
    seq_len: usize,
    rank: usize,
    steps: usize,
    device: &str,
    dtype: &str,
) -> Result<TrainBench> {
    use crate::model::Llama;
    use crate::nn::ForwardCtx;
    use crate::train::optim::{AdamW, AdamWConfig};
    use candle_core::Tensor;
    let dev = crate::device::device_for(device)?;
    let dt = crate::device::dtype_for(dtype)?;
    let path = crate::assets::default_model(false)?;
    let src = crate::weights::GgufModel::open(&path)?;
    let mut model = Llama::from_source(&src, &dev, dt)?;
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
            let w = lin.weight().to_dtype(candle_core::DType::F32)?;
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
    let ids = Tensor::from_vec(ids, (batch, seq_len), &dev)?;
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
        dev.synchronize()?;
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

/// A LLaMA-shaped model with seeded random weights (uniform, std 0.02; norms 1), generated
/// tensor by tensor when the loader asks, in parallel blocks: a 7B shape needs no checkpoint and
/// never more than one tensor on the host.
pub struct RandomLlama {
    pub config: crate::model::LlamaConfig,
    pub seed: u64,
}

impl RandomLlama {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (h, v) = (c.hidden_size, c.vocab_size);
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => return Some(vec![v, h]),
            "model.norm.weight" => return Some(vec![h]),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        if layer.parse::<usize>().ok()? >= c.num_hidden_layers {
            return None;
        }
        if rest == "input_layernorm.weight" || rest == "post_attention_layernorm.weight" {
            return Some(vec![h]);
        }
        let module = crate::adapter::plan::LinearName::parse(name.strip_suffix(".weight")?)?;
        c.linear_shape(module.kind.as_str())
            .map(|(o, i)| vec![o, i])
    }
}

impl crate::weights::WeightSource for RandomLlama {
    fn describe(&self) -> String {
        format!(
            "random LLaMA ({} layers, {}/{}, seed {})",
            self.config.num_hidden_layers,
            self.config.hidden_size,
            self.config.intermediate_size,
            self.seed
        )
    }
    fn has(&self, name: &str) -> bool {
        self.shape_of(name).is_some()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shape_of(name)
    }
    fn matrix(&self, name: &str) -> Result<Matrix> {
        let (shape, data) = self.tensor(name)?;
        Matrix::new(shape[0], shape.get(1).copied().unwrap_or(1), data)
    }
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        use rand::Rng;
        use rayon::prelude::*;
        let shape = self
            .shape_of(name)
            .ok_or_else(|| crate::Error::MissingTensor {
                context: self.describe(),
                tensor: name.into(),
            })?;
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            return Ok((shape, vec![1.0; n]));
        }
        let seed = name
            .bytes()
            .fold(self.seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let a = 0.02f32 * 3f32.sqrt();
        let mut data = vec![0f32; n];
        data.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, block)| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(
                    seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                for x in block.iter_mut() {
                    *x = rng.random_range(-a..a);
                }
            });
        Ok((shape, data))
    }
    fn names(&self) -> Vec<String> {
        let mut v = vec!["model.embed_tokens.weight".to_string()];
        for l in 0..self.config.num_hidden_layers {
            for (g, m) in [
                ("self_attn", "q_proj"),
                ("self_attn", "k_proj"),
                ("self_attn", "v_proj"),
                ("self_attn", "o_proj"),
                ("mlp", "gate_proj"),
                ("mlp", "up_proj"),
                ("mlp", "down_proj"),
            ] {
                v.push(format!("model.layers.{l}.{g}.{m}.weight"));
            }
            v.push(format!("model.layers.{l}.input_layernorm.weight"));
            v.push(format!("model.layers.{l}.post_attention_layernorm.weight"));
        }
        v.push("model.norm.weight".into());
        v.push("lm_head.weight".into());
        v
    }
    fn total_params(&self) -> u64 {
        self.config.total_params()
    }
    fn config_json(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.config).ok()
    }
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks per second).
fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // fields after the parenthesised command name; utime and stime are the 12th and 13th
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// `tsd bench switch`: LoRA-Dash's switch (SVD of every adapted weight through a cold SVD cache,
/// TSD picks, Dash terms) on LLaMA-7B-shaped layers.
#[derive(Clone, Debug, Serialize)]
pub struct SwitchBench {
    pub what: &'static str,
    pub layers: usize,
    pub modules: usize,
    pub rank: usize,
    pub dash_s: usize,
    pub threads: usize,
    pub cpu: String,
    /// SVDs in flight at once per shape (threads, bounded by the memory budget).
    pub parallel_svds: Vec<(String, usize)>,
    pub svd_budget_bytes: usize,
    pub switch_seconds: f64,
    /// CPU seconds (user + system) this process spent in the switch: on a shared machine the
    /// wall time also counts other work's share of the cores.
    pub switch_cpu_seconds: f64,
    /// The 1-minute load average when the switch started (`/proc/loadavg`).
    pub load_average_at_start: f64,
    pub seconds_per_layer: f64,
    /// `seconds_per_layer × 32`: a linear extrapolation from the measured layers, not a measurement.
    pub extrapolated_32_layers_seconds: f64,
}

/// Times the switch on `layers` LLaMA-7B-shaped layers (q, k, v, up, down) with rank-`rank` LoRA
/// (B random, so that ΔW ≠ 0), `s` directions per module, a cold SVD cache in a temporary dir.
pub fn bench_switch(layers: usize, rank: usize, s: usize) -> Result<SwitchBench> {
    use crate::nn::AdaptedLinear;
    use crate::train::switch::{parallel_svds, start_dash_all, DEFAULT_SVD_BUDGET};
    use candle_core::{Device, Tensor};
    let mut lins = Vec::new();
    for l in 0..layers {
        for (i, &(name, out, inp)) in LLAMA7B_MODULES.iter().enumerate() {
            let seed = (l * 16 + i) as u64;
            let w = random_matrix(out, inp, 0.02, seed);
            let w = Tensor::from_vec(w.data, (out, inp), &Device::Cpu)?;
            let mut lin = AdaptedLinear::frozen(format!("model.layers.{l}.{name}"), w);
            lin.add_lora(rank, 2.0 * rank as f64, false, seed)?;
            let b = random_matrix(out, rank, 0.01, seed ^ 0xB);
            lin.lora.as_ref().expect("added").b.set(&Tensor::from_vec(
                b.data,
                (out, rank),
                &Device::Cpu,
            )?)?;
            lins.push(lin);
        }
    }
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let cache = SvdCache::new(dir.path());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let (t, cpu0) = (Instant::now(), process_cpu_seconds());
    start_dash_all(
        lins.iter_mut().collect(),
        s,
        Default::default(),
        &cache,
        DEFAULT_SVD_BUDGET,
    )?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let per_layer = secs / layers as f64;
    Ok(SwitchBench {
        what: "LoRA-Dash switch (TSD identification) on LLaMA-7B-shaped layers, cold SVD cache",
        layers,
        modules: lins.len(),
        rank,
        dash_s: s,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        parallel_svds: LLAMA7B_MODULES
            .iter()
            .map(|&(n, o, i)| (n.to_string(), parallel_svds(o, i, DEFAULT_SVD_BUDGET)))
            .collect(),
        svd_budget_bytes: DEFAULT_SVD_BUDGET,
        switch_seconds: secs,
        switch_cpu_seconds: cpu,
        load_average_at_start: load,
        seconds_per_layer: per_layer,
        extrapolated_32_layers_seconds: per_layer * 32.0,
    })
}

/// Options of [`bench_scale_train`].
#[derive(Clone, Debug, Serialize)]
pub struct ScaleOptions {
    /// Built-in config name or config.json path; `layers` overrides its layer count.
    pub config: String,
    pub layers: Option<usize>,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub dash_s: usize,
    /// LoRA steps before the switch; `steps` in all.
    pub dash_t: usize,
    pub steps: usize,
}

/// `tsd bench scale`: LoRA-Dash training steps on a random model of a given shape on any device
/// and dtype, crossing the switch: step times before and after it, the switch's wall time.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleBench {
    pub what: &'static str,
    pub options: ScaleOptions,
    pub model: String,
    pub base_params: u64,
    pub trainable_params_lora: u64,
    pub load_seconds: f64,
    /// Every step's seconds (device synchronised), the switch not included.
    pub step_seconds: Vec<f64>,
    /// Median over LoRA steps after the first (warm-up) one.
    pub lora_median_step_seconds: f64,
    /// Median over the Dash steps after the first one.
    pub dash_median_step_seconds: f64,
    pub lora_tokens_per_s: f64,
    pub dash_tokens_per_s: f64,
    pub switch_seconds: f64,
    pub losses: Vec<f64>,
    pub peak_rss_bytes: u64,
    pub threads: usize,
}

/// Runs [`ScaleOptions::steps`] LoRA-Dash steps (switch after `dash_t`) on a [`RandomLlama`]:
/// LoRA (α = 2r) on q, k, v, up, down of every layer, dropout 0.05, AdamW lr 1e-4, a fixed
/// `[batch, seq_len]` batch with every position labelled.
pub fn bench_scale_train(o: &ScaleOptions) -> Result<ScaleBench> {
    use crate::model::{Llama, LlamaConfig};
    use crate::nn::ForwardCtx;
    use crate::train::optim::{AdamW, AdamWConfig};
    use crate::train::switch::{start_dash_all, DEFAULT_SVD_BUDGET};
    use crate::weights::WeightSource;
    use candle_core::Tensor;
    let mut config = match LlamaConfig::builtin(&o.config) {
        Some(c) => c,
        None => {
            let p = std::path::Path::new(&o.config);
            LlamaConfig::from_json(crate::fsutil::read_json(p)?, p)?
        }
    };
    if let Some(l) = o.layers {
        config.num_hidden_layers = l;
    }
    if o.dash_t == 0 || o.dash_t + 2 > o.steps {
        return Err(crate::Error::InvalidArgument(format!(
            "--dash-t {} and --steps {}: need 1 ≤ dash-t ≤ steps − 2 (a warm-up and a timed step on each side of the switch)",
            o.dash_t, o.steps
        )));
    }
    let device = crate::device::device_for(&o.device)?;
    let dtype = crate::device::dtype_for(&o.dtype)?;
    let src = RandomLlama {
        config: config.clone(),
        seed: 1,
    };
    let t = Instant::now();
    let mut model = Llama::load(&src, config, &device, dtype)?;
    device.synchronize()?;
    let load_seconds = t.elapsed().as_secs_f64();
    let targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"];
    let mut opt = AdamW::new(AdamWConfig::default());
    for (i, lin) in model.linears_mut().enumerate() {
        if targets.iter().any(|t| lin.module.ends_with(t)) {
            lin.add_lora(o.rank, 2.0 * o.rank as f64, false, i as u64)?;
            let l = lin.lora.as_ref().expect("added");
            opt.add(format!("{i}.a"), l.a.clone())?;
            opt.add(format!("{i}.b"), l.b.clone())?;
        }
    }
    let trainable: u64 = opt.slots.iter().map(|s| s.var.elem_count() as u64).sum();
    let vocab = model.config.vocab_size as u32;
    let n = o.batch * o.seq_len;
    let ids: Vec<u32> = (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (o.batch, o.seq_len), &device)?;
    let targets_t: Vec<u32> = (0..n)
        .map(|i| ((i as u32 + 7).wrapping_mul(40503)) % vocab)
        .collect();
    let (mut times, mut losses, mut switch_seconds) = (Vec::new(), Vec::new(), 0.0);
    for step in 0..o.steps {
        if step == o.dash_t {
            let t = Instant::now();
            start_dash_all(
                model.linears_mut().collect(),
                o.dash_s,
                Default::default(),
                &SvdCache::disabled(),
                DEFAULT_SVD_BUDGET,
            )?;
            for (i, lin) in model.linears().enumerate() {
                if let Some(d) = &lin.dash {
                    opt.add(format!("{i}.ds"), d.delta_sigma.clone())?;
                }
            }
            device.synchronize()?;
            switch_seconds = t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        let ctx = ForwardCtx::train(0.05, step as u64);
        let h = model.final_hidden(&model.embed(&ids)?, 0, &ctx)?;
        let logits = model.logits(&h.reshape((n, model.config.hidden_size))?)?;
        let loss = crate::nn::loss::cross_entropy(&logits, &targets_t)?;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-4, 1.0)?;
        losses.push(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64);
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let lora_steps = if o.dash_t > 1 {
        &times[1..o.dash_t]
    } else {
        &times[..1]
    };
    let lora_med = median(lora_steps);
    let dash_med = median(&times[o.dash_t + 1..]);
    Ok(ScaleBench {
        what: "LoRA-Dash training steps on a random LLaMA-shaped model, across the switch",
        options: o.clone(),
        model: src.describe(),
        base_params: src.total_params(),
        trainable_params_lora: trainable,
        load_seconds,
        lora_median_step_seconds: lora_med,
        dash_median_step_seconds: dash_med,
        lora_tokens_per_s: n as f64 / lora_med,
        dash_tokens_per_s: n as f64 / dash_med,
        step_seconds: times,
        switch_seconds,
        losses,
        peak_rss_bytes: crate::train::trainer::peak_rss_bytes(),
        threads: rayon::current_num_threads(),
    })
}

/// `tsd bench logits`: a model's logits on a device and dtype against the CPU in f32.
#[derive(Clone, Debug, Serialize)]
pub struct LogitsCheck {
    pub what: &'static str,
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub tokens: usize,
    pub max_abs_logit: f64,
    pub max_abs_diff: f64,
    /// Positions whose argmax agrees with the CPU's.
    pub argmax_agreement: f64,
}

/// Logits of `model` (`default`, a path or a hub id) for a fixed 64-token sequence on
/// `device`/`dtype` vs CPU f32.
pub fn bench_logits(model: &str, device: &str, dtype: &str) -> Result<LogitsCheck> {
    use crate::model::Llama;
    use crate::nn::ForwardCtx;
    use candle_core::{DType, Device, Tensor};
    let path = crate::weights::resolve_path(&crate::weights::ModelSpec::new(model))?;
    let src = crate::weights::open_path(&path)?;
    let src = src.as_ref();
    let dev = crate::device::device_for(device)?;
    let dt = crate::device::dtype_for(dtype)?;
    let run = |d: &Device, t: DType, ids: &[u32]| -> Result<Vec<Vec<f32>>> {
        let m = Llama::from_source(src, d, t)?;
        let x = Tensor::new(vec![ids.to_vec()], d)?;
        Ok(m.forward(&x, &ForwardCtx::eval())?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    };
    let vocab = src
        .shape("model.embed_tokens.weight")
        .and_then(|s| s.first().copied())
        .unwrap_or(1) as u32;
    let ids: Vec<u32> = (0..64u32)
        .map(|i| i.wrapping_mul(2654435761).wrapping_add(i) % vocab)
        .collect();
    let want = run(&Device::Cpu, DType::F32, &ids)?;
    let got = run(&dev, dt, &ids)?;
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b]));
    let (mut scale, mut diff, mut agree) = (0f64, 0f64, 0usize);
    for (a, b) in got.iter().zip(&want) {
        for (x, y) in a.iter().zip(b) {
            scale = scale.max(y.abs() as f64);
            diff = diff.max((x - y).abs() as f64);
        }
        agree += (argmax(a) == argmax(b)) as usize;
    }
    Ok(LogitsCheck {
        what: "logits on DEVICE/DTYPE against the CPU in f32",
        model: src.describe(),
        device: device.into(),
        dtype: dtype.into(),
        tokens: ids.len(),
        max_abs_logit: scale,
        max_abs_diff: diff,
        argmax_agreement: agree as f64 / want.len().max(1) as f64,
    })
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

/// One batch size of [`bench_eval_batch`].
#[derive(Clone, Debug, Serialize)]
pub struct EvalBatchPoint {
    pub batch: usize,
    pub examples: usize,
    pub seconds: f64,
    pub seconds_per_example: f64,
    /// CPU seconds (user + system) of this process for the batch size.
    pub cpu_seconds: f64,
    /// The 1-minute load averages (`/proc/loadavg`) before and after: the machine is shared.
    pub load_average_before: f64,
    pub load_average_after: f64,
    /// Whether every generated text equals the first batch size's (batching must not change them).
    pub same_outputs_as_first: bool,
}

/// `tsd bench eval-batch`: `generate` evaluation time per example at several batch sizes.
#[derive(Clone, Debug, Serialize)]
pub struct EvalBatchBench {
    pub what: &'static str,
    pub model: String,
    pub tasks: Vec<String>,
    pub limit: usize,
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub threads: usize,
    pub cpu: String,
    pub points: Vec<EvalBatchPoint>,
    /// The batch size with the fewest wall seconds per example.
    pub best_batch: usize,
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Times the `generate` protocol (4 beams, ≤ 32 new tokens) on the first `limit` test examples of
/// each of `tasks` from `data`, once per batch size in `batches`.
pub fn bench_eval_batch(
    model: &str,
    data: &std::path::Path,
    tasks: &[String],
    limit: usize,
    batches: &[usize],
) -> Result<EvalBatchBench> {
    use crate::data::Protocol;
    use crate::eval::{EvalSettings, Evaluator};
    use crate::model::Llama;
    use candle_core::{DType, Device};
    if batches.is_empty() || batches.contains(&0) || limit == 0 {
        return Err(crate::Error::InvalidArgument(
            "bench eval-batch: batch sizes and --limit must be positive".into(),
        ));
    }
    let path = crate::weights::resolve_path(&crate::weights::ModelSpec::new(model))?;
    let src = crate::weights::open_path(&path)?;
    let m = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32)?;
    let tok = crate::model::tokenizer::load_tokenizer(&path)?;
    let eos = crate::model::tokenizer::load_tokenizer_info(&path)?.eos;
    let sets = crate::eval::plan::load_test_sets(data, &crate::data::tasks_named(tasks)?)?;
    let settings = EvalSettings::one(Protocol::Generate, Some(limit));
    let beams = settings.beams;
    let mut points: Vec<EvalBatchPoint> = Vec::new();
    let mut first: Option<Vec<Option<String>>> = None;
    for &batch in batches {
        let load_before = load_average();
        let (t0, cpu0) = (Instant::now(), process_cpu_seconds());
        let settings = EvalSettings {
            batch_size: batch,
            ..settings.clone()
        };
        let mut eval = Evaluator::new(sets.clone(), tok.clone(), eos, settings);
        let outputs: Vec<Option<String>> = eval
            .evaluate(&m, &())?
            .results
            .into_iter()
            .flat_map(|r| r.predictions.into_iter().map(|p| p.output))
            .collect();
        let seconds = t0.elapsed().as_secs_f64();
        let n = outputs.len();
        let same = first.get_or_insert_with(|| outputs.clone()) == &outputs;
        points.push(EvalBatchPoint {
            batch,
            examples: n,
            seconds,
            seconds_per_example: seconds / n.max(1) as f64,
            cpu_seconds: process_cpu_seconds() - cpu0,
            load_average_before: load_before,
            load_average_after: load_average(),
            same_outputs_as_first: same,
        });
    }
    let best_batch = points
        .iter()
        .min_by(|a, b| a.seconds_per_example.total_cmp(&b.seconds_per_example))
        .map_or(batches[0], |p| p.batch);
    Ok(EvalBatchBench {
        what:
            "tsd eval --protocol generate (4 beams, at most 32 new tokens) per batch size, CPU f32",
        model: model.to_string(),
        tasks: tasks.to_vec(),
        limit,
        num_beams: beams.num_beams,
        max_new_tokens: beams.max_new_tokens,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        points,
        best_batch,
    })
}
