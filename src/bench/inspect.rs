//! `tsd bench inspect`: inspect time on LLaMA-7B-shaped modules (q, k, v 4096×4096, up 11008×4096,
//! down 4096×11008), a random base generated on the fly, cold and with a warm SVD cache,
//! extrapolated to 32 layers.

use super::{cpu_name, loadavg, random_matrix, LLAMA7B_MODULES};
use crate::adapter::{Adapter, AdapterConfig, ModuleAdapter};
use crate::error::Result;
use crate::inspect::{inspect_within, InspectOptions};
use crate::linalg::{svd, Precision};
use crate::svd_cache::SvdCache;
use crate::weights::memory::InMemoryModel;
use serde::Serialize;
use std::time::Instant;

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

/// Runs the benchmark on `layers` layers with a rank-`rank` random adapter.
pub fn bench_inspect(
    layers: usize,
    rank: usize,
    precision: Precision,
    torch: Option<serde_json::Value>,
) -> Result<InspectBench> {
    let loadavg_before = loadavg();
    let memory_budget_bytes = crate::budget::memory_budget()?;
    let (base, adapter) = llama7b_base_and_adapter(layers, rank);
    let one_at_a_time = time_svds(precision)?;
    let (key_seconds_xxh3_11008x4096, hash_seconds_sha256_11008x4096) = time_keys(precision);
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
    let svd_cache_bytes = dir_bytes(dir.path());
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

/// A random LLaMA-7B-shaped base of `layers` layers and a random rank-`rank` adapter on every
/// module of [`LLAMA7B_MODULES`].
fn llama7b_base_and_adapter(layers: usize, rank: usize) -> (InMemoryModel, Adapter) {
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
    (base, adapter)
}

/// One SVD at a time of each distinct shape (q, k and v share one).
fn time_svds(precision: Precision) -> Result<Vec<SvdTiming>> {
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
    Ok(one_at_a_time)
}

/// Seconds to compute the SVD cache key (xxh3-128) and the sha256 content hash of one
/// 11008×4096 weight.
fn time_keys(precision: Precision) -> (f64, f64) {
    let big = random_matrix(11008, 4096, 0.02, 1);
    let t = Instant::now();
    std::hint::black_box(SvdCache::key(&big, precision));
    let key_seconds_xxh3_11008x4096 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    std::hint::black_box(big.content_hash());
    let hash_seconds_sha256_11008x4096 = t.elapsed().as_secs_f64();
    (key_seconds_xxh3_11008x4096, hash_seconds_sha256_11008x4096)
}

/// Bytes of the files in `dir` (0 if unreadable).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
