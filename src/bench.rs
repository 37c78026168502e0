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
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let cache = SvdCache::new(dir.path());
    let opts = InspectOptions {
        precision,
        ..Default::default()
    };
    let cold = inspect(&adapter, &base, None, &opts, &cache, &|_| {})?;
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
        cold_seconds_per_layer: per(cold.wall_seconds),
        warm_seconds_per_layer: per(warm.wall_seconds),
        extrapolated_32_layers_cold_seconds: 32.0 * per(cold.wall_seconds),
        extrapolated_32_layers_warm_seconds: 32.0 * per(warm.wall_seconds),
        torch_svd: torch,
    })
}
