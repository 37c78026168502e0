//! A linear layer with a frozen weight whose backward pass computes only the input gradient.
//!
//! candle's `matmul` backward computes a gradient for every operand, frozen weights included, which
//! makes a LoRA step cost nearly as much as full fine-tuning. Here a custom
//! op computes `y = x·Wᵀ` and its backward returns only `grad · W`. Its forward wraps the input's
//! storage (CPU or CUDA) in a graph-free tensor and runs candle's own matmul on it, so both devices
//! take the same path and the graph keeps nothing but the op's output.

use crate::nn::bf16::{self, PackedBf16};
use crate::nn::packed::{self, PackedF32};
use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Storage, Tensor};
use std::sync::Arc;

/// `y = x·Wᵀ` for `x: [.., in]`, `W: [out, in]` (PyTorch layout), `y: [.., out]`.
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    weight: Tensor,
    /// Opt-in bf16 products ([`FrozenLinear::with_bf16_products`]); `None` by default.
    bf16: Option<Arc<Bf16Products>>,
    /// Opt-in packed f32 forward ([`FrozenLinear::with_packed_products`]); `None` by default.
    packed: Option<Arc<PackedF32>>,
}

/// The weight packed for [`crate::nn::bf16::matmul`]: `W` for the forward `x·Wᵀ`, `Wᵀ` for the
/// input gradient `g·W`.
#[derive(Debug)]
struct Bf16Products {
    forward: PackedBf16,
    backward: PackedBf16,
}

/// `x: [.., k]` → `[.., n]` through `kernel(x, rows, y)` on `x`'s values (a CPU f32 `x`).
fn kernel_product(
    x: &Tensor,
    n: usize,
    kernel: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<()>,
) -> Result<Tensor> {
    let dims = x.dims();
    let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let mut y = vec![0f32; lead * n];
    crate::nn::fused::with_f32(x, |xs| kernel(xs, lead, &mut y))??;
    let mut out = dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = n;
    }
    Tensor::from_vec(y, out, x.device())
}

/// `x: [.., k] · Bᵀ` → `[.., n]` through the bf16 kernel, for a CPU f32 `x`.
fn bf16_product(x: &Tensor, p: &PackedBf16) -> Result<Tensor> {
    kernel_product(x, p.n(), |xs, rows, y| bf16::matmul(xs, rows, p, y))
}

/// `x·Wᵀ` (`[.., in]` → `[.., out]`): the bf16 kernel where opted in and `x` is CPU f32, else the
/// packed f32 kernel where opted in and `gemm` would take the path it reproduces, else candle's
/// matmul. The f32 paths give the same bits.
fn forward_product(
    x: &Tensor,
    weight: &Tensor,
    bf16: Option<&Bf16Products>,
    packed: Option<&PackedF32>,
) -> Result<Tensor> {
    if let Some(p) = bf16.filter(|_| bf16_input(x)) {
        return bf16_product(x, &p.forward);
    }
    if let Some(p) = packed.filter(|p| packed_input(x, p)) {
        return kernel_product(x, p.n(), |xs, rows, y| packed::matmul(xs, rows, p, y));
    }
    matmul_2d(x, &weight.t()?)
}

/// Whether `x` takes the packed f32 kernel: CPU f32, on `gemm`'s general path.
fn packed_input(x: &Tensor, p: &PackedF32) -> bool {
    let rows = x.elem_count() / p.k().max(1);
    bf16_input(x) && packed::takes_general_path(rows, p.n(), p.k())
}

/// Whether `x` takes the bf16 path when the weight has packed products.
fn bf16_input(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The custom op: forward `x·Wᵀ` `[.., out]`, backward `grad · W` `[.., in]`.
struct InputGradOnly {
    weight: Tensor,
    bf16: Option<Arc<Bf16Products>>,
    packed: Option<Arc<PackedF32>>,
}

impl InputGradOnly {
    /// `x·Wᵀ` for the op's (contiguous, offset-0) input storage, as a contiguous storage.
    fn product(&self, x: Storage, layout: &Layout) -> Result<(Storage, Shape)> {
        if !(layout.is_contiguous() && layout.start_offset() == 0) {
            candle_core::bail!("frozen linear: non-contiguous input (call .contiguous() first)")
        }
        let x = Tensor::from_storage(x, layout.shape().clone(), BackpropOp::none(), false);
        let y = forward_product(
            &x,
            &self.weight,
            self.bf16.as_deref(),
            self.packed.as_deref(),
        )?
        .contiguous()?;
        let (st, l) = y.storage_and_layout();
        match l.contiguous_offsets() {
            Some((0, _)) => Ok((st.try_clone(l)?, y.shape().clone())),
            _ => candle_core::bail!("frozen linear: unexpected product layout"),
        }
    }
}

impl CustomOp1 for InputGradOnly {
    fn name(&self) -> &'static str {
        "frozen-linear-input-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match self.product(Storage::Cpu(storage.try_clone(layout)?), layout)? {
            (Storage::Cpu(c), shape) => Ok((c, shape)),
            _ => candle_core::bail!("frozen linear: product left the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.product(Storage::Cuda(storage.try_clone(layout)?), layout)? {
            (Storage::Cuda(c), shape) => Ok((c, shape)),
            _ => candle_core::bail!("frozen linear: product left the GPU"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if let Some(p) = self.bf16.as_ref().filter(|_| bf16_input(grad_res)) {
            return Ok(Some(bf16_product(grad_res, &p.backward)?));
        }
        let w = self.weight.to_dtype(grad_res.dtype())?;
        Ok(Some(matmul_2d(grad_res, &w)?))
    }
}

impl FrozenLinear {
    /// Wraps a `[out, in]` weight; it is detached so no gradient can reach it. On the CPU a
    /// weight with more inputs than outputs is stored as its contiguous transpose (see
    /// [`stores_transposed`]); [`Self::weight`] is then a strided `[out, in]` view of it.
    pub fn new(weight: Tensor) -> Self {
        let weight = weight.detach();
        let weight = if stores_transposed(&weight) {
            match weight.t().and_then(|t| t.contiguous()).and_then(|t| t.t()) {
                Ok(view) => view,
                Err(_) => weight,
            }
        } else {
            weight
        };
        FrozenLinear {
            weight,
            bf16: None,
            packed: None,
        }
    }

    /// Opt-in: from now on, CPU f32 inputs take bf16 products ([`crate::nn::bf16`]: the weight and
    /// the input rounded to bf16, sums in f32) in the forward `x·Wᵀ`, its input gradient `g·W`
    /// and [`Self::product`] / [`Self::input_grad`]. Packs `W` and `Wᵀ` once (each half the f32
    /// weight's bytes). Returns false, changing nothing, where the CPU
    /// lacks AVX512-BF16 or the weight is not a CPU f32 tensor. Clones share the packed weights.
    pub fn with_bf16_products(&mut self) -> Result<bool> {
        if self.bf16.is_some() {
            return Ok(true);
        }
        if !(bf16::available() && bf16_input(&self.weight)) {
            return Ok(false);
        }
        let (out, inp) = self.weight.dims2()?;
        let w: Vec<f32> = self.weight.flatten_all()?.to_vec1()?;
        self.bf16 = Some(Arc::new(Bf16Products {
            forward: PackedBf16::pack(&w, out, inp)?,
            backward: PackedBf16::pack_transposed(&w, out, inp)?,
        }));
        Ok(true)
    }

    /// Back to f32 products (drops this linear's share of the packed weights).
    pub fn without_bf16_products(&mut self) {
        self.bf16 = None;
    }

    /// Whether [`Self::with_bf16_products`] took effect.
    pub fn uses_bf16_products(&self) -> bool {
        self.bf16.is_some()
    }

    /// Opt-in: from now on the f32 forward `x·Wᵀ` of CPU f32 inputs runs on `W` packed once
    /// ([`crate::nn::packed`]), the same bits as candle's matmul, where `gemm` would take the path
    /// it reproduces (else candle's matmul). Keeps `W` (the input gradient, one-row products and
    /// other devices read it): the packed copy adds the weight's bytes. Returns false, changing
    /// nothing, where `gemm` does not run its AVX-512F kernels or the weight is not a CPU f32
    /// tensor. Clones share the packed weight.
    pub fn with_packed_products(&mut self) -> Result<bool> {
        if self.packed.is_some() {
            return Ok(true);
        }
        if !(packed::available() && bf16_input(&self.weight)) {
            return Ok(false);
        }
        let (out, inp) = self.weight.dims2()?;
        // Packed from the stored values in place (`W`, or the transpose `down_proj` is kept as).
        let packed = if self.weight.is_contiguous() {
            crate::nn::fused::with_f32(&self.weight, |w| PackedF32::pack(w, out, inp))??
        } else {
            let wt = self.weight.t()?;
            crate::nn::fused::with_f32(&wt, |wt| PackedF32::pack_transposed(wt, out, inp))??
        };
        self.packed = Some(Arc::new(packed));
        Ok(true)
    }

    /// Bytes [`Self::with_packed_products`] would add (or has added).
    pub fn packed_bytes(&self) -> usize {
        let (out, inp) = self.weight.dims2().unwrap_or((0, 0));
        PackedF32::bytes_for(out, inp)
    }

    /// `x·Wᵀ` outside any graph (`x: [.., in]` → `[.., out]`): the bf16 kernel where opted in and
    /// `x` is CPU f32, else the packed f32 kernel where opted in and it applies, else
    /// `matmul_2d(x, Wᵀ)`.
    pub fn product(&self, x: &Tensor) -> Result<Tensor> {
        forward_product(
            x,
            &self.weight,
            self.bf16.as_deref(),
            self.packed.as_deref(),
        )
    }

    /// `g·W` outside any graph (`g: [.., out]` → `[.., in]`): the input gradient of
    /// [`Self::product`], by the same rule.
    pub fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        match &self.bf16 {
            Some(p) if bf16_input(g) => bf16_product(g, &p.backward),
            _ => matmul_2d(g, &self.weight),
        }
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// Whether a CPU weight `[out, in]` is better stored as its contiguous transpose `[in, out]`: when
/// `in > out` (a LLaMA `down_proj`), `gemm` packs `Wᵀ` read from `W` slowly along the long inner
/// dimension. Measured on the default model's `down_proj` (`[576, 1536]`, AMD Zen 5, 2 threads):
/// forward `x·Wᵀ` 2.58 → 1.93 ms at 512 rows and 0.57 → 0.28 ms at 64 (decode), input gradient
/// `g·W` 1.88 → 1.99 ms read from the transpose; the same bits either way (`tsd bench roofline`
/// had the 512-row forward at 370 GFLOP/s against ~490 for the other shapes). Square and wide
/// weights gain nothing (their input gradient would lose), and a GPU's BLAS reads either layout.
fn stores_transposed(w: &Tensor) -> bool {
    w.device().is_cpu() && w.is_contiguous() && w.dims2().is_ok_and(|(out, inp)| inp > out)
}

/// `x: [.., k] · m: [k, n]` → `[.., n]` as one 2-D matmul. (`broadcast_matmul` would broadcast `m`
/// over the leading dims, which candle materialises: a copy of the weight per batch element.)
pub fn matmul_2d(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = *dims.last().unwrap_or(&0);
    let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let x2 = x.reshape((lead, k))?;
    let y = if split_columns(&x2, m) {
        matmul_column_split(&x2, m)?
    } else {
        x2.matmul(m)?
    };
    let mut out = dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = m.dim(1)?;
    }
    y.reshape(out)
}

/// Rows at most this many (a decode step: beams × batch) with at least [`SPLIT_MIN_COLUMNS`]
/// output columns run as one product per thread over column blocks: on such short products the
/// `gemm` crate keeps to one thread (`tsd bench roofline`: 64-row q/o and down products at about
/// half PyTorch's rate on 2 cores).
const SPLIT_MAX_ROWS: usize = 256;
const SPLIT_MIN_COLUMNS: usize = 256;

fn split_columns(x: &Tensor, m: &Tensor) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1
        && x.device().is_cpu()
        && x.dim(0).is_ok_and(|r| r <= SPLIT_MAX_ROWS)
        && m.dim(1)
            .is_ok_and(|n| n >= SPLIT_MIN_COLUMNS * threads.min(2))
}

/// `x·m` as one product per thread over contiguous column blocks of `m`, joined. Each output
/// element is the same dot product over `k` as in one product, only on another thread.
fn matmul_column_split(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let n = m.dim(1)?;
    let parts = rayon::current_num_threads()
        .min(n / SPLIT_MIN_COLUMNS)
        .max(1);
    let step = n.div_ceil(parts);
    let blocks: Vec<(usize, usize)> = (0..n).step_by(step).map(|s| (s, step.min(n - s))).collect();
    let outs = blocks
        .par_iter()
        .map(|&(s, len)| x.matmul(&m.narrow(1, s, len)?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outs, 1)
}

impl Module for FrozenLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() {
            return self.product(x);
        }
        let x = if x.is_contiguous() && x.layout().start_offset() == 0 {
            x.clone()
        } else {
            // `contiguous()` keeps a contiguous view's offset; the op needs offset 0.
            x.affine(1.0, 0.0)?
        };
        // Tensor clones share storage: this does not copy the weight.
        x.apply_op1(InputGradOnly {
            weight: self.weight.clone(),
            bf16: self.bf16.clone(),
            packed: self.packed.clone(),
        })
    }
}

#[cfg(test)]
mod tests {

    /// The decode-sized product split over column blocks gives the one product's bits exactly
    /// (each element is the same dot product over k), whatever the pool's size.
    #[test]
    fn column_split_product_is_bit_identical() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (64, 576), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (1536, 576), &dev)?;
        let m = w.t()?;
        assert!(rayon::current_num_threads() < 2 || split_columns(&x, &m));
        let split: Vec<f32> = matmul_column_split(&x, &m)?.flatten_all()?.to_vec1()?;
        let one: Vec<f32> = x.matmul(&m)?.flatten_all()?.to_vec1()?;
        assert!(split
            .iter()
            .zip(&one)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(matmul_2d(&x, &m)?.dims(), &[64, 1536]);
        // Training-sized products stay one product.
        let big = Tensor::randn(0f32, 1.0, (512, 576), &dev)?;
        assert!(!split_columns(&big, &m));
        Ok(())
    }

    use super::*;
    use candle_core::{Device, Var};

    /// The opt-in bf16 products: forward and input gradient within bf16's rounding of the f32
    /// ones, and exactly the kernel's products; off by default.
    #[test]
    fn bf16_products_are_opt_in_and_close_to_f32() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 70), &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 70), &dev)?)?;
        let plain = FrozenLinear::new(w.clone());
        assert!(!plain.uses_bf16_products());
        let mut lin = FrozenLinear::new(w.clone());
        if !lin.with_bf16_products()? {
            println!("skipped: this CPU lacks AVX512-BF16 (bf16 kernel not available)");
            assert!(!lin.uses_bf16_products());
            return Ok(());
        }
        let (y, want) = (lin.forward(x.as_tensor())?, plain.forward(x.as_tensor())?);
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let d = a.sub(b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(d / b.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(rel(&y, &want)? < 2e-2, "forward {}", rel(&y, &want)?);
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let xv: Vec<f32> = x.as_tensor().flatten_all()?.to_vec1()?;
        let mut direct = vec![0f32; 10 * 40];
        bf16::matmul(&xv, 10, &PackedBf16::pack(&wv, 40, 70)?, &mut direct)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, direct);
        assert_eq!(
            lin.product(x.as_tensor())?
                .flatten_all()?
                .to_vec1::<f32>()?,
            direct
        );
        let g = lin.forward(x.as_tensor())?.sqr()?.sum_all()?.backward()?;
        let gp = plain.forward(x.as_tensor())?.sqr()?.sum_all()?.backward()?;
        let (a, b) = (
            g.get(x.as_tensor()).expect("grad"),
            gp.get(x.as_tensor()).expect("grad"),
        );
        assert!(rel(a, b)? < 3e-2, "input gradient {}", rel(a, b)?);
        // A clone shares the packed weights; dropping them gives the f32 path's bits again.
        assert!(lin.clone().uses_bf16_products());
        lin.without_bf16_products();
        assert_eq!(
            lin.forward(x.as_tensor())?
                .flatten_all()?
                .to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn strided_and_offset_inputs_are_handled() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev)?;
        let big = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 4), &dev)?)?;
        let lin = FrozenLinear::new(w.clone());
        for x in [
            big.as_tensor().narrow(0, 2, 3)?.narrow(1, 0, 3)?,
            big.as_tensor().t()?.narrow(0, 1, 3)?.t()?,
        ] {
            let y = lin.forward(&x)?;
            let want = x.matmul(&w.t()?)?;
            assert!(y.sub(&want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
            let g = y.sum_all()?.backward()?;
            assert!(g.get(big.as_tensor()).is_some());
        }
        Ok(())
    }

    #[test]
    fn output_and_input_gradient_match_plain_matmul_without_weight_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 3), &dev)?)?;
        let lin = FrozenLinear::new(w.clone());
        let y = lin.forward(x.as_tensor())?;
        let want = x.as_tensor().broadcast_matmul(&w.t()?)?;
        assert!(y.sub(&want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        // d/dx sum(y²) = 2y·W
        let grads = y.sqr()?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let want_gx = (want * 2.0)?.broadcast_matmul(&w)?;
        assert!(gx.sub(&want_gx)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        assert!(
            grads.get(lin.weight()).is_none(),
            "a frozen weight must not get a gradient"
        );
        Ok(())
    }

    /// A weight with more inputs than outputs is stored transposed (on the CPU), yet reads back
    /// as the same `[out, in]` values, and its products and input gradient keep their bits.
    #[test]
    fn a_wide_input_weight_is_stored_transposed_with_the_same_bits() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 300), &dev)?;
        let lin = FrozenLinear::new(w.clone());
        assert!(!lin.weight().is_contiguous() && lin.weight().dims() == [48, 300]);
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|f| f.to_bits())
                .collect())
        };
        assert_eq!(bits(lin.weight())?, bits(&w)?);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (70, 300), &dev)?)?;
        let y = lin.forward(x.as_tensor())?;
        assert_eq!(bits(&y)?, bits(&x.as_tensor().matmul(&w.t()?)?)?);
        let g = Tensor::randn(0f32, 1.0, (70, 48), &dev)?;
        let gx = (y * &g)?.sum_all()?.backward()?;
        let gx = gx.get(x.as_tensor()).expect("input gradient");
        assert_eq!(bits(gx)?, bits(&g.matmul(&w)?)?);
        // Square and tall weights stay as given.
        assert!(FrozenLinear::new(w.t()?.contiguous()?)
            .weight()
            .is_contiguous());
        Ok(())
    }
}
