//! LoRA-Dash's switch at scale (README, Definitions: LoRA-Dash): every adapted module needs the SVD of its
//! base weight before its TSDs can be picked. The SVDs run in parallel across modules on the
//! thread pool, through the shared on-disk SVD cache, a bounded number at a time so that a
//! LLaMA-7B (160 modules, up to 4096×11008) never holds more than a memory budget of host copies
//! and factors; Ū, V̄ and Δσ are then created on the model's device one module at a time (device
//! work stays on the calling thread).

use crate::error::Result;
use crate::linalg::{svd_working_bytes, Matrix, Precision, Svd};
use crate::nn::adapted::DashSwitch;
use crate::nn::AdaptedLinear;
use crate::svd_cache::SvdCache;
use candle_core::DType;
use rayon::prelude::*;

/// Default host-memory budget for the SVDs in flight: 8 GiB (the switch's batches come from
/// [`crate::budget::batches`], as inspect's modules do).
pub const DEFAULT_SVD_BUDGET: usize = crate::budget::DEFAULT_BUDGET;

/// How many SVDs of `[out, in]` run at once: as many as the pool has threads, as the budget
/// allows, at least one.
pub fn parallel_svds(out: usize, inp: usize, budget: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    crate::budget::batches(&vec![svd_working_bytes(out, inp); threads], budget, threads)[0].len()
}

/// Identifies the TSDs of every module in `linears` that carries LoRA and starts its Dash term
/// (top-`s` directions, Δσ = 0). Returns one [`DashSwitch`] per such module, in input order.
pub fn start_dash_all(
    linears: Vec<&mut AdaptedLinear>,
    s: usize,
    pick: crate::directions::DashPick,
    cache: &SvdCache,
    budget: usize,
) -> Result<Vec<DashSwitch>> {
    let mut todo: Vec<&mut AdaptedLinear> =
        linears.into_iter().filter(|l| l.lora.is_some()).collect();
    let mut logs = Vec::with_capacity(todo.len());
    let sizes = todo
        .iter()
        .map(|l| Ok(l.shape().map(|(out, inp)| svd_working_bytes(out, inp))?))
        .collect::<Result<Vec<_>>>()?;
    for batch in crate::budget::batches(&sizes, budget, rayon::current_num_threads()) {
        let chunk = &mut todo[batch];
        // Host copies (device reads stay on this thread), then the SVDs in parallel.
        let mats = chunk
            .iter()
            .map(|l| host_matrix(l))
            .collect::<Result<Vec<_>>>()?;
        let svds: Vec<Svd> = mats
            .par_iter()
            .map(|m| cache.get_or_compute(m, Precision::F32).map(|(d, _)| d))
            .collect::<Result<_>>()?;
        drop(mats);
        for (lin, svd) in chunk.iter_mut().zip(&svds) {
            logs.push(lin.start_dash(s, svd, pick)?);
        }
    }
    Ok(logs)
}

/// The base weight `[out, in]` as a host f32 matrix.
fn host_matrix(lin: &AdaptedLinear) -> Result<Matrix> {
    let w = lin.weight().to_dtype(DType::F32)?;
    let (r, c) = w.dims2()?;
    Matrix::new(r, c, w.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Deterministic pseudo-random values, so that every call builds the same module.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|k| ((k as f64 * 0.7548 + seed as f64 * 1.3).sin() * 43758.5453).fract() as f32)
            .collect()
    }

    fn module(i: u64, out: usize, inp: usize) -> AdaptedLinear {
        let w = Tensor::from_vec(values(out * inp, i), (out, inp), &Device::Cpu).unwrap();
        let mut l = AdaptedLinear::frozen(format!("m{i}"), w);
        l.add_lora(2, 4.0, false, i).unwrap();
        let b = Tensor::from_vec(values(out * 2, i + 100), (out, 2), &Device::Cpu).unwrap();
        l.lora.as_ref().unwrap().b.set(&b).unwrap();
        l
    }

    /// Chunked parallel identification picks what one-at-a-time identification picks, in order,
    /// whatever the budget (one SVD at a time, or all at once).
    #[test]
    fn parallel_switch_matches_one_module_at_a_time() -> Result<()> {
        let make = || -> Vec<AdaptedLinear> {
            (0..5)
                .map(|i| module(i, 12 + i as usize, 9))
                .chain([AdaptedLinear::frozen(
                    "frozen",
                    Tensor::zeros((3, 9), DType::F32, &Device::Cpu).unwrap(),
                )])
                .collect()
        };
        let cache = SvdCache::disabled();
        let mut want = Vec::new();
        let mut seq = make();
        for l in seq.iter_mut().filter(|l| l.lora.is_some()) {
            let svd = cache.get_or_compute(&host_matrix(l)?, Precision::F32)?.0;
            want.push(l.start_dash(3, &svd, crate::directions::DashPick::default())?);
        }
        for budget in [1, usize::MAX] {
            let mut par = make();
            let got = start_dash_all(
                par.iter_mut().collect(),
                3,
                crate::directions::DashPick::default(),
                &cache,
                budget,
            )?;
            assert_eq!(got.len(), 5, "the frozen module is skipped");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.module, w.module);
                let gi: Vec<usize> = g.tsd.iter().map(|t| t.index).collect();
                let wi: Vec<usize> = w.tsd.iter().map(|t| t.index).collect();
                assert_eq!(gi, wi);
            }
            assert!(par.iter().take(5).all(|l| l.dash.is_some()));
        }
        assert_eq!(parallel_svds(4096, 11008, 1), 1);
        Ok(())
    }
}
