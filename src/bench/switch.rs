//! `tsd bench switch`: LoRA-Dash's switch on LLaMA-7B-shaped layers, cold SVD cache.

use super::{cpu_name, load_average, process_cpu_seconds, random_matrix, LLAMA7B_MODULES};
use crate::error::Result;
use crate::svd_cache::SvdCache;
use serde::Serialize;
use std::time::Instant;

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
    let load = load_average();
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
