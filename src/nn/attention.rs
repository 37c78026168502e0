//! Causal self-attention with rotary embeddings and grouped-query heads, as one CPU op with a
//! hand-written backward pass.
//!
//! Composed from candle ops, a layer's attention is ~25 tensors forward (head split, RoPE halves,
//! key/value expansion, scores, mask, softmax, head merge) and ~40 in the backward pass, each a
//! full pass over memory on one thread. Here each (batch row, key/value head) is one unit of work
//! on rayon's pool: RoPE on the fly, `S = q·kᵀ/√d` by gemm, causal softmax in place, `O = P·v`.
//! Nothing but the output is kept; the backward pass recomputes `P` (cheap at training lengths).
//!
//! Layout: `q: [B, T, H·d]`, `k, v: [B, T, G·d]` exactly as the projections produce them (query
//! head `h` reads key/value head `h / (H/G)`, Hugging Face's `repeat_kv`), `cos, sin: [T, d]`,
//! output `[B, T, H·d]`. RoPE is Hugging Face's half-split form `x·cos + rotate_half(x)·sin`,
//! `rotate_half([x₁, x₂]) = [−x₂, x₁]`.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

/// A strided matrix inside a slice: element `(i, j)` is `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn new(
        data: &'a [f32],
        off: usize,
        (rows, cols): (usize, usize),
        (rs, cs): (usize, usize),
    ) -> Self {
        View {
            data,
            off,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Row-major contiguous `[rows, cols]`.
    fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, (rows, cols), (cols, 1))
    }

    fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst [m, n]` (row-major) `= (accumulate ? dst : 0) + scale · lhs [m, k] · rhs [k, n]`.
fn matmul(dst: &mut [f32], lhs: View, rhs: View, scale: f32, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions");
    assert_eq!(dst.len(), m * n, "destination size");
    for v in [&lhs, &rhs] {
        if v.rows > 0 && v.cols > 0 {
            assert!(v.off + (v.rows - 1) * v.rs + (v.cols - 1) * v.cs < v.data.len());
        }
    }
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every index gemm touches was bounds-checked above; `dst` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// RoPE of one head: row `i` of the head is `src[off + i·stride ..][..d]`; returns dense `[T, d]`
/// (`cos, sin`: dense `[T, d]`).
fn rope(
    src: &[f32],
    off: usize,
    stride: usize,
    cos: &[f32],
    sin: &[f32],
    t: usize,
    d: usize,
) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0f32; t * d];
    for i in 0..t {
        let x = &src[off + i * stride..][..d];
        let (c, s) = (&cos[i * d..][..d], &sin[i * d..][..d]);
        let o = &mut out[i * d..][..d];
        for j in 0..half {
            o[j] = x[j] * c[j] - x[j + half] * s[j];
            o[j + half] = x[j + half] * c[j + half] + x[j] * s[j + half];
        }
    }
    out
}

/// The adjoint of [`rope`]: `dx = dy·cos + rotate_halfᵀ(dy·sin)`, `rotate_halfᵀ([z₁, z₂]) = [z₂, −z₁]`,
/// for a dense `[T, d]` gradient; returns dense `[T, d]`.
fn rope_adjoint(dy: &[f32], cos: &[f32], sin: &[f32], t: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0f32; t * d];
    for i in 0..t {
        let g = &dy[i * d..][..d];
        let (c, s) = (&cos[i * d..][..d], &sin[i * d..][..d]);
        let o = &mut out[i * d..][..d];
        for j in 0..half {
            o[j] = g[j] * c[j] + g[j + half] * s[j + half];
            o[j + half] = g[j + half] * c[j + half] - g[j] * s[j];
        }
    }
    out
}

/// Row-wise causal softmax of the scores `[T, T]` in place (row `i` sees columns `0..=i`).
fn causal_softmax(p: &mut [f32], t: usize) {
    for i in 0..t {
        let row = &mut p[i * t..][..t];
        let m = row[..=i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        crate::nn::exp::exp_shifted_in_place(&mut row[..=i], m);
        let mut s = 0f32;
        for v in row[..=i].iter() {
            s += *v;
        }
        let inv = 1.0 / s;
        for v in row[..=i].iter_mut() {
            *v *= inv;
        }
        row[i + 1..].fill(0.0);
    }
}

/// One unit's gradients, dense `[T, d]`: dq of each of its query heads, dk and dv of its
/// key/value head.
type UnitGrads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);

#[derive(Clone)]
struct Causal {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

/// Dimensions of one call, checked against the op's settings.
struct Dims {
    b: usize,
    t: usize,
    d: usize,
    /// Query heads per key/value head.
    rep: usize,
    /// Row strides of q and of k/v.
    qs: usize,
    kvs: usize,
}

impl Causal {
    fn dims(&self, q: &Shape, k: &Shape, v: &Shape) -> Result<Dims> {
        let (b, t, qw) = q.dims3()?;
        let (d, h, g) = (self.head_dim, self.heads, self.kv_heads);
        if qw != h * d || k.dims() != [b, t, g * d] || v.dims() != [b, t, g * d] {
            candle_core::bail!(
                "attention: q {q:?}, k {k:?}, v {v:?} for {h} heads, {g} kv heads of {d}"
            )
        }
        if g == 0 || h % g != 0 || d % 2 != 0 || self.cos.len() != t * d || self.sin.len() != t * d
        {
            candle_core::bail!(
                "attention: {h} heads, {g} kv heads, head dim {d}, {} rotary rows",
                self.cos.len() / d.max(1)
            )
        }
        Ok(Dims {
            b,
            t,
            d,
            rep: h / g,
            qs: h * d,
            kvs: g * d,
        })
    }

    /// Scores → probabilities `P [T, T]` of query head `h` against rotated keys `kr [T, d]`;
    /// also returns the rotated queries.
    fn probs(&self, q: &[f32], kr: &[f32], z: &Dims, b: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
        let (t, d) = (z.t, z.d);
        let qr = rope(q, b * t * z.qs + h * d, z.qs, &self.cos, &self.sin, t, d);
        let mut p = vec![0f32; t * t];
        let scale = 1.0 / (d as f32).sqrt();
        matmul(
            &mut p,
            View::dense(&qr, t, d),
            View::dense(kr, t, d).t(),
            scale,
            false,
        );
        causal_softmax(&mut p, t);
        (p, qr)
    }
}

impl CustomOp3 for Causal {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let data = |s, l| crate::nn::fused::f32_slice(s, l, "attention");
        let (q, k, v) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let (t, d) = (z.t, z.d);
        let units: Vec<(usize, usize)> = (0..z.b)
            .flat_map(|b| (0..self.kv_heads).map(move |g| (b, g)))
            .collect();
        let blocks: Vec<Vec<Vec<f32>>> = units
            .par_iter()
            .map(|&(b, g)| {
                let kr = rope(k, b * t * z.kvs + g * d, z.kvs, &self.cos, &self.sin, t, d);
                let vg = View::new(v, b * t * z.kvs + g * d, (t, d), (z.kvs, 1));
                (0..z.rep)
                    .map(|r| {
                        let (p, _) = self.probs(q, &kr, &z, b, g * z.rep + r);
                        let mut o = vec![0f32; t * d];
                        matmul(&mut o, View::dense(&p, t, t), vg, 1.0, false);
                        o
                    })
                    .collect()
            })
            .collect();
        let mut out = vec![0f32; z.b * t * z.qs];
        for (&(b, g), heads) in units.iter().zip(&blocks) {
            for (r, o) in heads.iter().enumerate() {
                let h = g * z.rep + r;
                for i in 0..t {
                    out[b * t * z.qs + i * z.qs + h * d..][..d].copy_from_slice(&o[i * d..][..d]);
                }
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let z = self.dims(q.shape(), k.shape(), v.shape())?;
        let (t, d) = (z.t, z.d);
        let flat = |x: &Tensor| x.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (qv, kv, vv, gv) = (flat(q)?, flat(k)?, flat(v)?, flat(grad)?);
        let units: Vec<(usize, usize)> = (0..z.b)
            .flat_map(|b| (0..self.kv_heads).map(move |g| (b, g)))
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let blocks: Vec<UnitGrads> = units
            .par_iter()
            .map(|&(b, g)| {
                let base_kv = b * t * z.kvs + g * d;
                let kr = rope(&kv, base_kv, z.kvs, &self.cos, &self.sin, t, d);
                let vg = View::new(&vv, base_kv, (t, d), (z.kvs, 1));
                let mut dkr = vec![0f32; t * d];
                let mut dv = vec![0f32; t * d];
                let mut dqs = Vec::with_capacity(z.rep);
                for r in 0..z.rep {
                    let h = g * z.rep + r;
                    let (p, qr) = self.probs(&qv, &kr, &z, b, h);
                    let go = View::new(&gv, b * t * z.qs + h * d, (t, d), (z.qs, 1));
                    // dV += Pᵀ·dO; dP = dO·Vᵀ.
                    matmul(&mut dv, View::dense(&p, t, t).t(), go, 1.0, true);
                    let mut ds = vec![0f32; t * t];
                    matmul(&mut ds, go, vg.t(), 1.0, false);
                    // dS = P ∘ (dP − rowsum(P ∘ dP)) · scale (zero above the diagonal, as P is).
                    for i in 0..t {
                        let (pr, dr) = (&p[i * t..][..t], &mut ds[i * t..][..t]);
                        let dot: f32 = pr[..=i].iter().zip(&dr[..=i]).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dr.iter_mut().zip(pr) {
                            *x = pv * (*x - dot) * scale;
                        }
                    }
                    // dq_r = dS·k_r; dk_r += dSᵀ·q_r.
                    let mut dqr = vec![0f32; t * d];
                    matmul(
                        &mut dqr,
                        View::dense(&ds, t, t),
                        View::dense(&kr, t, d),
                        1.0,
                        false,
                    );
                    matmul(
                        &mut dkr,
                        View::dense(&ds, t, t).t(),
                        View::dense(&qr, t, d),
                        1.0,
                        true,
                    );
                    dqs.push(rope_adjoint(&dqr, &self.cos, &self.sin, t, d));
                }
                (dqs, rope_adjoint(&dkr, &self.cos, &self.sin, t, d), dv)
            })
            .collect();
        let mut dq = vec![0f32; z.b * t * z.qs];
        let mut dk = vec![0f32; z.b * t * z.kvs];
        let mut dv = vec![0f32; z.b * t * z.kvs];
        for (&(b, g), (dqs, dkg, dvg)) in units.iter().zip(&blocks) {
            for i in 0..t {
                let kv_at = b * t * z.kvs + i * z.kvs + g * d;
                dk[kv_at..][..d].copy_from_slice(&dkg[i * d..][..d]);
                dv[kv_at..][..d].copy_from_slice(&dvg[i * d..][..d]);
                for (r, dqh) in dqs.iter().enumerate() {
                    let at = b * t * z.qs + i * z.qs + (g * z.rep + r) * d;
                    dq[at..][..d].copy_from_slice(&dqh[i * d..][..d]);
                }
            }
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// The rotary tables `cos, sin: [positions, 2·inv_freq.len()]` for inverse frequencies
/// `inv_freq: [d/2]` (see `LlamaConfig::inv_freq`): row `p` is `cos(p·f)` / `sin(p·f)` over
/// `cat(f, f)`, transformers' `emb = cat(freqs, freqs)` (both halves of a head share frequencies).
/// Computed in f32 as transformers does, then cast to `dtype`.
pub fn rope_tables(
    inv_freq: &[f32],
    positions: usize,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let d = 2 * inv_freq.len();
    let mut cos = Vec::with_capacity(positions * d);
    let mut sin = Vec::with_capacity(positions * d);
    for p in 0..positions {
        for f in inv_freq.iter().chain(inv_freq) {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (positions, d), device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (positions, d), device)?.to_dtype(dtype)?,
    ))
}

/// Rotary embedding of `x: [B, heads, T, d]` with `cos, sin: [T, d]` (composed candle ops).
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// `[B, T, heads·d]` → `[B, heads, T, d]` (contiguous).
pub fn split_heads(y: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, w) = y.dims3()?;
    y.reshape((b, t, heads, w / heads.max(1)))?
        .transpose(1, 2)?
        .contiguous()
}

/// Hugging Face's `repeat_kv`: `[B, G, T, d]` → `[B, G·rep, T, d]`, head `g` repeated `rep` times
/// in place (query head `h` reads key/value head `h / rep`).
pub fn repeat_kv(z: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(z.clone());
    }
    let (b, g, t, d) = z.dims4()?;
    z.unsqueeze(2)?
        .broadcast_as((b, g, rep, t, d))?
        .contiguous()?
        .reshape((b, g * rep, t, d))
}

/// Causal attention of `q: [B, T, heads·d]` over `k, v: [B, T, kv_heads·d]` with RoPE tables
/// `cos, sin: [T, d]`; returns `[B, T, heads·d]`. One fused op on the CPU in f32 (see the module
/// docs); composed candle ops elsewhere ([`causal_attention_composed`]).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
) -> Result<Tensor> {
    if !crate::device::fused_cpu(q.device(), q.dtype()) {
        return causal_attention_composed(q, k, v, cos, sin, heads, kv_heads);
    }
    let head_dim = q.dim(D::Minus1)? / heads.max(1);
    let table = |x: &Tensor| -> Result<Arc<Vec<f32>>> {
        Ok(Arc::new(
            x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        ))
    };
    let op = Causal {
        heads,
        kv_heads,
        head_dim,
        cos: table(cos)?,
        sin: table(sin)?,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The same computation from candle ops (any device and dtype; the fused op's reference).
pub fn causal_attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
) -> Result<Tensor> {
    let (b, t, qw) = q.dims3()?;
    let hd = qw / heads.max(1);
    let q = rope_composed(&split_heads(q, heads)?, cos, sin)?;
    let k = rope_composed(&split_heads(k, kv_heads)?, cos, sin)?;
    let v = split_heads(v, kv_heads)?;
    let rep = heads / kv_heads.max(1);
    let (k, v) = (repeat_kv(&k, rep)?, repeat_kv(&v, rep)?);
    let mask: Vec<f32> = (0..t * t)
        .map(|x| {
            if x % t > x / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    let att = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
    let att = crate::nn::fused::softmax_last(&att)?;
    att.matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, heads * hd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::fused::tests::max_diff;
    use candle_core::Device;
    use candle_core::Var;

    fn tables(t: usize, d: usize) -> Result<(Tensor, Tensor)> {
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        rope_tables(&inv, t, &Device::Cpu, DType::F32)
    }

    /// Output and all three input gradients against the composed candle graph, with grouped
    /// heads (rep 3), plain multi-head (rep 1), an odd length and a batch of 2.
    #[test]
    fn fused_attention_matches_the_composed_graph_forward_and_backward() -> Result<()> {
        for &(b, t, h, g, d) in &[
            (2usize, 7usize, 6usize, 2usize, 8usize),
            (1, 5, 2, 2, 4),
            (2, 16, 3, 1, 6),
        ] {
            let dev = Device::Cpu;
            let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h * d), &dev)?)?;
            let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, g * d), &dev)?)?;
            let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, g * d), &dev)?)?;
            let (cos, sin) = tables(t, d)?;
            let probe = Tensor::randn(0f32, 1.0, (b, t, h * d), &dev)?;
            let fused = causal_attention(&q, &k, &v, &cos, &sin, h, g)?;
            let composed = causal_attention_composed(&q, &k, &v, &cos, &sin, h, g)?;
            assert!(
                max_diff(&fused, &composed) < 1e-5,
                "forward {}",
                max_diff(&fused, &composed)
            );
            let gf = (fused * &probe)?.sum_all()?.backward()?;
            let gc = (composed * &probe)?.sum_all()?.backward()?;
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, c) = (
                    gf.get(x.as_tensor()).unwrap(),
                    gc.get(x.as_tensor()).unwrap(),
                );
                let scale = c.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    max_diff(a, c) < 1e-4 * scale.max(1.0),
                    "d{name} differs by {}",
                    max_diff(a, c)
                );
            }
        }
        Ok(())
    }

    /// The future cannot leak: changing the last token's k and v leaves earlier outputs unchanged.
    #[test]
    fn later_tokens_do_not_change_earlier_outputs() -> Result<()> {
        let dev = Device::Cpu;
        let (t, d) = (6, 4);
        let (cos, sin) = tables(t, d)?;
        let q = Tensor::randn(0f32, 1.0, (1, t, 2 * d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, t, d), &dev)?;
        let a = causal_attention(&q, &k, &v, &cos, &sin, 2, 1)?;
        let bump = Tensor::cat(
            &[
                &Tensor::zeros((1, t - 1, d), DType::F32, &dev)?,
                &Tensor::ones((1, 1, d), DType::F32, &dev)?,
            ],
            1,
        )?;
        let b = causal_attention(&q, &(&k + &bump)?, &(&v + &bump)?, &cos, &sin, 2, 1)?;
        assert!(max_diff(&a.narrow(1, 0, t - 1)?, &b.narrow(1, 0, t - 1)?) < 1e-6);
        assert!(max_diff(&a.narrow(1, t - 1, 1)?, &b.narrow(1, t - 1, 1)?) > 1e-3);
        Ok(())
    }
}
