//! A bf16 dot-product matrix product for frozen weights: `Y[m, n] = X[m, k] · Bᵀ` with `B [n, k]`
//! a constant matrix packed once into bf16 ([`PackedBf16`]), `X` f32 row-major (rounded to bf16
//! while it is packed, per call), the sums in f32 and `Y` f32 row-major.
//!
//! Why: on CPUs with AVX512-BF16 one `vdpbf16ps` does 32 multiply-adds per 512-bit register (pairs
//! of bf16 products added into 16 f32 lanes), twice an f32 FMA's 16, and the packed weight is half
//! the f32 weight's bytes. Only the operands are rounded (to bf16's 8 significant bits, round to
//! nearest even as `vcvtne2ps2bf16`); every sum is kept in f32.
//!
//! Layout: `B` is stored in panels of [`NR`] output columns; within a panel, for each pair of inner
//! indices `(2p, 2p+1)`, `NR` 32-bit words, each the two bf16 `B[j, 2p]` (low half) and `B[j, 2p+1]`
//! (high half) — what `vdpbf16ps` multiplies against a broadcast pair of `X`. `k` is padded to even
//! and `n` to a multiple of [`NR`] with zeros. A call packs `X` to bf16 pairs (`[m, k/2]` words),
//! then runs an `MR`-row × `NR`-column register-blocked kernel over blocks of rows, column panels
//! and inner pairs, in parallel over (row block, column group) tasks on rayon's global pool.
//!
//! Every output element is one sequence of `vdpbf16ps` steps over its inner pairs in order, in the
//! same inner-dimension blocks whatever the pool's size: results are the same bits on 1 or many
//! threads.
//!
//! Only on x86-64 with AVX512-BF16, AVX512F, AVX512BW and AVX512VL, detected at run time
//! ([`available`]); elsewhere [`matmul`] returns an error and callers keep their f32 path.

use candle_core::{bail, Result};
use rayon::prelude::*;

/// Output columns per packed panel: three 16-lane registers.
pub const NR: usize = 48;
/// 16-lane registers per panel row.
const NV: usize = NR / 16;
/// Rows per register block of the kernel (`MR × NV` accumulators: 24 of 32 registers).
const MR: usize = 8;
/// Most inner pairs per block (k ≤ 768 in one block: the 576- and 192-wide products write `Y`
/// once). A panel's block (`KC_PAIRS × NR × 4` bytes = 72 KiB) stays in L2 beside the rows'
/// block while the kernel walks the rows; per pair step the kernel loads 224 bytes for 24
/// `vdpbf16ps` (12 cycles at two a cycle), well inside L2's bandwidth. Measured on the 2-core
/// Zen 5 host (`tsd bench bf16`, loaded): 384 beat 256 on the LM head's forward (one pass over
/// its 100 MB output instead of two); other shapes within the noise.
const KC_PAIRS: usize = 384;
/// Most rows per block: the packed rows of one inner block (`MC × KC_PAIRS × 4` bytes = 384 KiB)
/// stay in L2 (1 MiB a core on Zen 5) while the kernel walks the column panels.
const MC: usize = 256;

/// One cache line of packed words (16 × 32 bits): panels start on 64-byte boundaries.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
struct Line([u32; 16]);

/// A constant `B [n, k]` packed into bf16 pairs for [`matmul`] (see the module's doc for the
/// layout). Pack `W` for `x·Wᵀ` (a linear's forward, `W [out, in]`) and `Wᵀ`
/// ([`PackedBf16::pack_transposed`]) for `g·W` (its input gradient).
#[derive(Clone)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// Inner pairs, `ceil(k / 2)`.
    kp: usize,
    /// `ceil(n / NR)` panels of `kp × NV` lines each.
    data: Vec<Line>,
}

/// `x` rounded to bf16 (its bits), as `vcvtne2ps2bf16` does: round to nearest even, NaN kept
/// quiet with its sign, denormal inputs flushed to a zero of their sign (the instruction's
/// implied DAZ; tested against it).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 and back to f32 (exact).
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// The precision of the frozen weights' products on the CPU (`tsd train --frozen-products`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FrozenProducts {
    /// f32 products (candle → `gemm`): the default.
    #[default]
    F32,
    /// This module's kernel: weights and activations rounded to bf16, sums in f32 (AVX512-BF16).
    Bf16,
}

impl FrozenProducts {
    /// Whether this is the default (f32), for `skip_serializing_if`.
    pub fn is_f32(&self) -> bool {
        *self == FrozenProducts::F32
    }
}

impl std::fmt::Display for FrozenProducts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrozenProducts::F32 => "f32",
            FrozenProducts::Bf16 => "bf16",
        })
    }
}

/// Whether this CPU runs the kernel (AVX512-BF16 with AVX512F/BW/VL; detected once per call, the
/// standard library caches the CPUID reading).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Shape and size only (the packed words would be megabytes of noise).
impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedBf16")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PackedBf16 {
    /// Packs `b: [n, k]` (row-major).
    pub fn pack(b: &[f32], n: usize, k: usize) -> Result<Self> {
        if b.len() != n * k {
            bail!("bf16 pack: {} values for [{n}, {k}]", b.len())
        }
        Ok(Self::pack_with(n, k, |j, i| b[j * k + i]))
    }

    /// Packs `B = wᵀ` for `w: [rows, cols]` (row-major): `B` is `[cols, rows]`, so [`matmul`] gives
    /// `x·w` for `x: [m, rows]`.
    pub fn pack_transposed(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if w.len() != rows * cols {
            bail!("bf16 pack: {} values for [{rows}, {cols}]", w.len())
        }
        Ok(Self::pack_with(cols, rows, |j, i| w[i * cols + j]))
    }

    /// Packs `B[j, i] = at(j, i)` for `j < n`, `i < k`.
    fn pack_with(n: usize, k: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![Line::default(); panels * kp * NV];
        if kp > 0 {
            data.par_chunks_mut(kp * NV)
                .enumerate()
                .for_each(|(panel, lines)| {
                    for (p, row) in lines.chunks_mut(NV).enumerate() {
                        for c in 0..NR {
                            let j = panel * NR + c;
                            if j >= n {
                                break;
                            }
                            let lo = bf16_bits(at(j, 2 * p));
                            let hi = if 2 * p + 1 < k {
                                bf16_bits(at(j, 2 * p + 1))
                            } else {
                                0
                            };
                            row[c / 16].0[c % 16] = u32::from(lo) | (u32::from(hi) << 16);
                        }
                    }
                });
        }
        PackedBf16 { n, k, kp, data }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inner dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of the packed matrix.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<Line>()
    }
}

/// `y = x · Bᵀ` for `x: [m, k]` and `y: [m, n]` (both row-major f32; `y` is overwritten), `B` =
/// `p`. Errors on sizes that do not match `p` and where [`available`] is false.
pub fn matmul(x: &[f32], m: usize, p: &PackedBf16, y: &mut [f32]) -> Result<()> {
    let (n, k) = (p.n, p.k);
    if x.len() != m * k || y.len() != m * n {
        bail!(
            "bf16 matmul: x has {} values for [{m}, {k}], y {} for [{m}, {n}]",
            x.len(),
            y.len()
        )
    }
    if !available() {
        bail!("bf16 matmul: this CPU lacks AVX512-BF16")
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    x86::matmul(x, m, p, y);
    Ok(())
}

/// `(start, len)` of `parts` near-equal consecutive ranges covering `0..total`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn split(total: usize, parts: usize) -> impl Iterator<Item = (usize, usize)> {
    let parts = parts.clamp(1, total.max(1));
    let (base, extra) = (total / parts, total % parts);
    (0..parts).scan(0, move |start, i| {
        let len = base + usize::from(i < extra);
        let r = (*start, len);
        *start += len;
        Some(r)
    })
}

// The AVX-512 intrinsics are stable since Rust 1.89, the crate's `rust-version`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{split, Line, PackedBf16, KC_PAIRS, MC, MR, NR, NV};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// `y`'s base pointer shared by the tasks, each writing its own rectangle of `y`.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the tasks of one `matmul` write disjoint rectangles (row block × column group) of
    // the `y` it borrows mutably for the whole parallel section; nothing reads what another writes.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}
    impl Out {
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    pub(super) fn matmul(x: &[f32], m: usize, p: &PackedBf16, y: &mut [f32]) {
        let (n, k, kp) = (p.n, p.k, p.kp);
        // X as bf16 pairs, row-major [m, kp] (a pair's low half is the even index).
        let mut xa = vec![0u32; m * kp];
        let rows_per = (4096 / kp).max(1);
        xa.par_chunks_mut(kp * rows_per)
            .zip(x.par_chunks(k * rows_per))
            .for_each(|(d, s)| {
                for (dr, sr) in d.chunks_mut(kp).zip(s.chunks(k)) {
                    // SAFETY: `matmul` runs only where `available()` saw these features; `dr`
                    // holds `ceil(sr.len() / 2)` words, what `pack_row` writes.
                    unsafe { pack_row(sr, dr) }
                }
            });
        let threads = rayon::current_num_threads();
        let panels = n.div_ceil(NR);
        let row_blocks = m.div_ceil(MR);
        let target = if threads > 1 { 4 * threads } else { 1 };
        let groups = panels.min(target);
        let chunks = target.div_ceil(groups).min(row_blocks);
        let tasks: Vec<((usize, usize), (usize, usize))> = split(row_blocks, chunks)
            .flat_map(|r| split(panels, groups).map(move |c| (r, c)))
            .collect();
        let out = Out(y.as_mut_ptr());
        let xa = &xa;
        let run = |&((rb, rl), (pb, pl)): &((usize, usize), (usize, usize))| {
            let rows = (rb * MR, ((rb + rl) * MR).min(m));
            // SAFETY: features as above; the task writes rows `rows` × the columns of panels
            // `pb..pb + pl` of `y` (`[m, n]`), disjoint from every other task's; `xa` is
            // `[m, kp]` and `p.data` holds `ceil(n / NR) × kp × NV` lines, the ranges read.
            unsafe { block(xa, kp, rows, (pb, pb + pl), p, out.get(), n) }
        };
        if tasks.len() == 1 {
            run(&tasks[0]);
        } else {
            tasks.par_iter().for_each(run);
        }
    }

    /// Rows `rows.0..rows.1` × panels `panels.0..panels.1` of `y = xa · Bᵀ`.
    ///
    /// # Safety
    /// The CPU has the features of [`super::available`]; `xa` is `[m, kp]` with `rows.1 ≤ m`;
    /// `y` points to `[m, n]` f32 that no one else touches in the written rectangle.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    unsafe fn block(
        xa: &[u32],
        kp: usize,
        rows: (usize, usize),
        panels: (usize, usize),
        p: &PackedBf16,
        y: *mut f32,
        n: usize,
    ) {
        let kblocks = kp.div_ceil(KC_PAIRS);
        for ic in (rows.0..rows.1).step_by(MC) {
            let ie = (ic + MC).min(rows.1);
            for (bi, (pc, kc)) in split(kp, kblocks).enumerate() {
                for j in panels.0..panels.1 {
                    let b = p.data.as_ptr().add((j * kp + pc) * NV);
                    let cols = NR.min(n - j * NR);
                    for i in (ic..ie).step_by(MR) {
                        let a = xa.as_ptr().add(i * kp + pc);
                        let c = y.add(i * n + j * NR);
                        let acc = bi > 0;
                        match ie - i {
                            1 => micro::<1>(kc, a, kp, b, c, n, cols, acc),
                            2 => micro::<2>(kc, a, kp, b, c, n, cols, acc),
                            3 => micro::<3>(kc, a, kp, b, c, n, cols, acc),
                            4 => micro::<4>(kc, a, kp, b, c, n, cols, acc),
                            5 => micro::<5>(kc, a, kp, b, c, n, cols, acc),
                            6 => micro::<6>(kc, a, kp, b, c, n, cols, acc),
                            7 => micro::<7>(kc, a, kp, b, c, n, cols, acc),
                            _ => micro::<MR>(kc, a, kp, b, c, n, cols, acc),
                        }
                    }
                }
            }
        }
    }

    /// `R` rows × `NR` columns: `c[r, ..cols] (+)= Σ_p a[r·lda + p] ⊙ b[p]` over `kc` pairs, the
    /// accumulators (`R × NV` registers) in f32. `accumulate`: add to `c` instead of overwriting.
    ///
    /// # Safety
    /// The CPU has the features of [`super::available`]; `a` has `R` rows of `kc` words at stride
    /// `lda`; `b` has `kc × NV` lines; `c` has `R` rows of `cols ≤ NR` f32 at stride `ldc`.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn micro<const R: usize>(
        kc: usize,
        a: *const u32,
        lda: usize,
        b: *const Line,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for p in 0..kc {
            let bp = b.add(p * NV) as *const __m512i;
            let bv: [__m512bh; NV] =
                std::array::from_fn(|v| std::mem::transmute(_mm512_load_si512(bp.add(v))));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                for v in 0..NV {
                    acc_r[v] = _mm512_dpbf16_ps(acc_r[v], xv, bv[v]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let row = c.add(r * ldc);
            for (v, &o) in acc_r.iter().enumerate() {
                let col = v * 16;
                if col >= cols {
                    break;
                }
                let mask: __mmask16 = if cols - col >= 16 {
                    0xffff
                } else {
                    (1u16 << (cols - col)) - 1
                };
                let o = if accumulate {
                    _mm512_add_ps(o, _mm512_maskz_loadu_ps(mask, row.add(col)))
                } else {
                    o
                };
                _mm512_mask_storeu_ps(row.add(col), mask, o);
            }
        }
    }

    /// One row `src` (`k` f32) as bf16 pairs into `dst` (`ceil(k / 2)` words; an odd `k`'s last
    /// pair has a zero high half), rounded by `vcvtne2ps2bf16`.
    ///
    /// # Safety
    /// The CPU has the features of [`super::available`]; `dst.len() == src.len().div_ceil(2)`.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn pack_row(src: &[f32], dst: &mut [u32]) {
        let k = src.len();
        debug_assert_eq!(dst.len(), k.div_ceil(2));
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 32 <= k {
            let lo = _mm512_loadu_ps(s.add(i));
            let hi = _mm512_loadu_ps(s.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.add(i / 2) as *mut __m512i, v);
            i += 32;
        }
        if i < k {
            let rem = k - i;
            let mask = |r: usize| -> __mmask16 {
                if r >= 16 {
                    0xffff
                } else {
                    (1u16 << r) - 1
                }
            };
            let lo = _mm512_maskz_loadu_ps(mask(rem), s.add(i));
            let hi = _mm512_maskz_loadu_ps(mask(rem.saturating_sub(16)), s.add(i + 16.min(rem)));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(d.add(i / 2) as *mut i32, mask(rem.div_ceil(2)), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn skip() -> bool {
        if !available() {
            println!("skipped: this CPU lacks AVX512-BF16 (bf16 kernel not available)");
            return true;
        }
        false
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// `x·bᵀ` in f64 of the given (already rounded or not) values, and `Σ|x||b|` per element.
    fn reference(x: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; m * n];
        let mut s = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let (u, v) = (x[i * k + l] as f64, b[j * k + l] as f64);
                    y[i * n + j] += u * v;
                    s[i * n + j] += (u * v).abs();
                }
            }
        }
        (y, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rounding_matches_the_instruction() {
        if skip() {
            return;
        }
        let mut vals: Vec<f32> = random(4000, 1).iter().map(|v| v * 1e3).collect();
        vals.extend([
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            f32::from_bits(1),
            f32::from_bits(0x3f80_8000), // a tie: 1 + 2^-8 → 1 (even)
            f32::from_bits(0x3f81_8000), // a tie → up (even)
            f32::from_bits(0x3f80_8001),
        ]);
        for len in [vals.len(), 1, 31, 33, 47] {
            let src = &vals[..len];
            let mut dst = vec![0u32; len.div_ceil(2)];
            // SAFETY: the features are there (checked above); dst has ceil(len / 2) words.
            unsafe { x86::pack_row(src, &mut dst) };
            for (i, &v) in src.iter().enumerate() {
                let hw = (dst[i / 2] >> (16 * (i % 2))) as u16;
                assert_eq!(hw, bf16_bits(v), "{v:e} ({:#x})", v.to_bits());
            }
            if len % 2 == 1 {
                assert_eq!(dst[len / 2] >> 16, 0);
            }
        }
    }

    #[test]
    fn matches_an_f64_product_of_the_rounded_inputs_on_odd_shapes() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let mut worst_rel = 0f64;
        let mut worst_unrounded = 0f64;
        for &m in &[1usize, 3, 37, 64, 130] {
            for &k in &[1usize, 7, 64, 577] {
                for &n in &[1usize, 15, 16, 33, 100] {
                    let seed = (m * 1_000_000 + k * 1000 + n) as u64;
                    let x = random(m * k, seed);
                    let b = random(n * k, seed + 1);
                    let p = PackedBf16::pack(&b, n, k)?;
                    let mut y = vec![f32::NAN; m * n];
                    matmul(&x, m, &p, &mut y)?;
                    let xr: Vec<f32> = x.iter().map(|&v| round_bf16(v)).collect();
                    let br: Vec<f32> = b.iter().map(|&v| round_bf16(v)).collect();
                    let (want, scale) = reference(&xr, &br, m, n, k);
                    let (exact, _) = reference(&x, &b, m, n, k);
                    for i in 0..m * n {
                        let d = (y[i] as f64 - want[i]).abs();
                        assert!(
                            d <= 1e-5 * scale[i] + 1e-30,
                            "[{m}x{k}x{n}] element {i}: {} vs {} (Σ|xb| {})",
                            y[i],
                            want[i],
                            scale[i]
                        );
                        worst_rel = worst_rel.max(d / scale[i].max(1e-30));
                        // Against the unrounded product: each operand's relative rounding is at
                        // most bf16's unit roundoff 2^-8, so each product's at most ~2^-7.
                        let e = (y[i] as f64 - exact[i]).abs();
                        assert!(e <= 2f64.powi(-7) * 1.01 * scale[i] + 1e-6);
                        worst_unrounded = worst_unrounded.max(e / scale[i].max(1e-30));
                    }
                }
            }
        }
        println!(
            "bf16 kernel: worst |y - ref(rounded)| / Σ|x||b| = {worst_rel:.2e}; \
             worst |y - ref(unrounded f64)| / Σ|x||b| = {worst_unrounded:.2e} (bound 2^-7 = 7.8e-3)"
        );
        Ok(())
    }

    #[test]
    fn transposed_packing_gives_x_times_w() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let (m, rows, cols) = (9, 67, 50);
        let x = random(m * rows, 5);
        let w = random(rows * cols, 6);
        let p = PackedBf16::pack_transposed(&w, rows, cols)?;
        assert_eq!((p.n(), p.k()), (cols, rows));
        let mut y = vec![0f32; m * cols];
        matmul(&x, m, &p, &mut y)?;
        // The same product through `pack` of the explicit transpose: the same bits.
        let wt: Vec<f32> = (0..cols * rows)
            .map(|t| w[(t % rows) * cols + t / rows])
            .collect();
        let q = PackedBf16::pack(&wt, cols, rows)?;
        let mut z = vec![0f32; m * cols];
        matmul(&x, m, &q, &mut z)?;
        assert_eq!(y, z);
        Ok(())
    }

    #[test]
    fn the_same_bits_on_one_and_two_threads() -> Result<()> {
        if skip() {
            return Ok(());
        }
        // Long enough inner dimension for several inner blocks, enough rows for several tasks.
        for &(m, k, n) in &[(512, 576, 192), (130, 1537, 100), (1, 600, 1000)] {
            let x = random(m * k, 11);
            let b = random(n * k, 12);
            let p = PackedBf16::pack(&b, n, k)?;
            let run = |threads: usize| -> Result<Vec<f32>> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(candle_core::Error::wrap)?;
                pool.install(|| {
                    let mut y = vec![0f32; m * n];
                    matmul(&x, m, &p, &mut y)?;
                    Ok(y)
                })
            };
            let (one, two) = (run(1)?, run(2)?);
            assert!(one
                .iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        Ok(())
    }

    #[test]
    fn sizes_are_checked() -> Result<()> {
        let p = PackedBf16::pack(&[1.0; 6], 2, 3)?;
        assert!(PackedBf16::pack(&[1.0; 5], 2, 3).is_err());
        let mut y = vec![0f32; 4];
        assert!(matmul(&[1.0; 5], 2, &p, &mut y).is_err());
        assert!(matmul(&[1.0; 6], 2, &p, &mut y[..3]).is_err());
        if available() {
            matmul(&[1.0; 6], 2, &p, &mut y)?;
            assert_eq!(y, vec![3.0; 4]);
        }
        Ok(())
    }
}
