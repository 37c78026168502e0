//! Micro-timings of candle ops used by the model (a profiling aid).
use candle_core::{Device, Tensor, Var, D};
use std::time::Instant;

fn time<F: FnMut() -> candle_core::Result<()>>(name: &str, mut f: F) -> candle_core::Result<()> {
    f()?;
    let t = Instant::now();
    for _ in 0..5 {
        f()?;
    }
    println!("{name}: {:.2} ms", t.elapsed().as_secs_f64() * 200.0);
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (256, 576), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (1536, 576), &dev)?;
    let we = Tensor::randn(0f32, 1.0, (49152, 576), &dev)?;
    time("matmul 256x576 · (1536x576)ᵀ", || {
        x.matmul(&w.t()?).map(|_| ())
    })?;
    time("matmul 256x576 · (49152x576)ᵀ", || {
        x.matmul(&we.t()?).map(|_| ())
    })?;
    let g = Tensor::randn(0f32, 1.0, (256, 1536), &dev)?;
    time("matmul 256x1536 · 1536x576", || g.matmul(&w).map(|_| ()))?;
    let q = Tensor::randn(0f32, 1.0, (2, 9, 128, 64), &dev)?;
    time("attn q·kᵀ", || {
        q.matmul(&q.t()?.contiguous()?).map(|_| ())
    })?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 128, 576), &dev)?)?;
    time("silu fwd+bwd", || {
        let y = v.as_tensor().silu()?.sum_all()?;
        y.backward().map(|_| ())
    })?;
    time("rmsnorm fwd+bwd", || {
        let x = v.as_tensor();
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x.broadcast_div(&(ms + 1e-5)?.sqrt()?)?.sum_all()?;
        y.backward().map(|_| ())
    })?;
    let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 9, 128, 128), &dev)?)?;
    time("softmax fwd+bwd", || {
        let y = candle_nn::ops::softmax(a.as_tensor(), D::Minus1)?.sum_all()?;
        y.backward().map(|_| ())
    })?;
    let xv = Var::from_tensor(&x)?;
    time("matmul fwd+bwd 256x576·576x1536 (var lhs)", || {
        let y = xv.as_tensor().matmul(&w.t()?)?.sum_all()?;
        y.backward().map(|_| ())
    })?;
    Ok(())
}
