//! `eˣ` over f32 slices, sixteen at a time on AVX-512F, with the same bits as the C library's
//! `expf` — so that softmax, SwiGLU and the cross-entropy move no bit when they call it.
//!
//! Why: glibc's `expf` is a scalar call per element; it took 4.4 % of a training step's samples
//! and 4 % of a batched beam search's (`reproductions/bench/profile/`, the training profile as
//! recorded before this module, in git history). The algorithm it runs
//! (glibc ≥ 2.27 on x86-64 with FMA, `sysdeps/ieee754/flt-32/e_expf.c`, from Arm's optimized
//! routines) is short and exact to reproduce in f64 lanes: `x·32/ln 2 = k + r` with `k` rounded
//! by adding `1.5·2⁵²`, `2^(k/32)` from a 32-entry table plus the exponent bits, and a cubic in
//! `r`, each step the same FMA or rounding the library's FMA build performs, then one rounding to
//! f32. Inputs outside the polynomial's range (`|x| ≥ 88`, NaN, ±∞: overflow, underflow and
//! `errno` handling) go to the library's `expf` itself, lane by lane.
//!
//! Tests compare the results with [`f32::exp`] (the library) bit for bit, NaNs included: on every
//! input below 88 (2.2·10⁹), on every 61st bit pattern past it and around each threshold, and on
//! the shifted and negated forms callers use. Where AVX-512F is absent the functions call
//! [`f32::exp`] per element (and the tests check only that).

/// `v[i] = exp(v[i] − shift)`, the subtraction rounded to f32 first, as `(v[i] − shift).exp()`.
pub fn exp_shifted_in_place(v: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        let p = v.as_mut_ptr();
        // SAFETY: AVX-512F was detected at run time; `p` is valid for `v.len()` reads and writes
        // (one pointer for both: the kernel reads each block before it writes it).
        unsafe { simd::exp_blocks(p, p, v.len(), false, shift) };
        return;
    }
    for x in v.iter_mut() {
        *x = (*x - shift).exp();
    }
}

/// `out[i] = exp(x[i] − shift)`, as `(x[i] − shift).exp()`.
///
/// Panics if the lengths differ.
pub fn exp_shifted(x: &[f32], shift: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "exp_shifted: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX-512F was detected at run time; both slices hold `x.len()` values.
        unsafe { simd::exp_blocks(x.as_ptr(), out.as_mut_ptr(), x.len(), false, shift) };
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - shift).exp();
    }
}

/// `out[i] = exp(−x[i])`, as `(−x[i]).exp()` (the logistic function's `e^(−x)`).
///
/// Panics if the lengths differ.
pub fn exp_negated(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "exp_negated: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX-512F was detected at run time; both slices hold `x.len()` values.
        unsafe { simd::exp_blocks(x.as_ptr(), out.as_mut_ptr(), x.len(), true, 0.0) };
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (-v).exp();
    }
}

/// Whether the vectorized path runs on this CPU (else every element calls the library).
pub fn vectorized() -> bool {
    #[cfg(target_arch = "x86_64")]
    return simd::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// `2^(i/32)` as f64 bits less `i << 47` (glibc's `__exp2f_data.tab`), so that adding
    /// `k << 47` for `k ≡ i (mod 32)` gives `2^(k/32)`.
    static TABLE: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// `32 / ln 2`.
    const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
    /// `1.5·2⁵²`: adding it rounds to an integer held in the low mantissa bits.
    const ROUNDER: f64 = f64::from_bits(0x4338000000000000);
    /// The cubic's coefficients, scaled for `r` in units of `ln 2 / 32`.
    const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
    const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
    const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);
    /// `(bits >> 20) & 0x7ff` at or above this (`|x| ≥ 88`, NaN, ±∞) takes the library's path.
    const SPECIAL_TOP12: i32 = 0x42b;

    /// Whether this CPU has AVX-512F (decided once).
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }

    /// `exp` of eight f32 in f64 lanes, the library's operations in its order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp8(x: __m256) -> __m256 {
        let xd = _mm512_cvtps_pd(x);
        let kd = _mm512_fmadd_pd(_mm512_set1_pd(INV_LN2_N), xd, _mm512_set1_pd(ROUNDER));
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, _mm512_set1_pd(ROUNDER));
        let r = _mm512_fmsub_pd(_mm512_set1_pd(INV_LN2_N), xd, kd);
        // SAFETY: TABLE holds 32 values; each load reads 8 of them.
        let part = |i: usize| unsafe { _mm512_loadu_si512(TABLE.as_ptr().add(i).cast()) };
        let low = _mm512_permutex2var_epi64(part(0), ki, part(8));
        let high = _mm512_permutex2var_epi64(part(16), ki, part(24));
        let in_high = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
        let t = _mm512_mask_blend_epi64(in_high, low, high);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let p = _mm512_fmadd_pd(r, _mm512_set1_pd(C0), _mm512_set1_pd(C1));
        let r2 = _mm512_mul_pd(r, r);
        let q = _mm512_fmadd_pd(r, _mm512_set1_pd(C2), _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(p, r2, q);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    }

    /// `exp` of sixteen f32: two halves of eight through [`exp8`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let low = exp8(_mm512_castps512_ps256(x));
        let high = exp8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(x),
        )));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(low)),
            _mm256_castps_pd(high),
        ))
    }

    /// The lanes of `x` (among `mask`) the polynomial does not cover: `|x| ≥ 88`, NaN, ±∞.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn special_lanes(x: __m512, mask: __mmask16) -> __mmask16 {
        let top = _mm512_and_si512(
            _mm512_srli_epi32::<20>(_mm512_castps_si512(x)),
            _mm512_set1_epi32(0x7ff),
        );
        _mm512_mask_cmpge_epi32_mask(mask, top, _mm512_set1_epi32(SPECIAL_TOP12))
    }

    /// `dst[i] = exp(±src[i] − shift)` for `n` values, 16 at a time (a masked last block): the
    /// sign flipped (`negate`, its bit alone, as scalar `−x` does, NaN included) and the
    /// difference rounded to f32 before `exp`, as scalar code computes them; lanes outside the
    /// polynomial's range are recomputed by the library. `src` may equal `dst`.
    ///
    /// # Safety
    /// AVX-512F must be available; `src` must be valid for `n` reads and `dst` for `n` writes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_blocks(src: *const f32, dst: *mut f32, n: usize, negate: bool, shift: f32) {
        let sign = _mm512_set1_epi32(if negate { i32::MIN } else { 0 });
        let shift = _mm512_set1_ps(shift);
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(16);
            let mask = (u32::MAX >> (32 - lanes)) as __mmask16;
            // SAFETY: the mask covers only the `lanes` values left from `i`.
            let v = unsafe { _mm512_maskz_loadu_ps(mask, src.add(i)) };
            let flipped = _mm512_xor_si512(_mm512_castps_si512(v), sign);
            let x = _mm512_sub_ps(_mm512_castsi512_ps(flipped), shift);
            // SAFETY: as the load.
            unsafe { _mm512_mask_storeu_ps(dst.add(i), mask, exp16(x)) };
            let special = special_lanes(x, mask);
            if special != 0 {
                let mut xs = [0f32; 16];
                // SAFETY: `xs` holds 16 values.
                unsafe { _mm512_storeu_ps(xs.as_mut_ptr(), x) };
                for (l, v) in xs.iter().enumerate().take(lanes) {
                    if special & (1 << l) != 0 {
                        // SAFETY: lane `l` < `lanes` is inside `dst`.
                        unsafe { *dst.add(i + l) = v.exp() };
                    }
                }
            }
            i += lanes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bits, NaNs too (sign and payload: the library returns `x + x` for a NaN, and the
    /// vectorized path hands NaN lanes to it).
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
    }

    /// Says which path the tests check: without AVX-512F only the library against itself.
    fn path() {
        if !vectorized() {
            eprintln!("nn::exp: no AVX-512F here; the tests check only the scalar fallback");
        }
    }

    /// The first bit pattern (of `|x|`) on the library's own path: top 12 bits `0x42b`.
    const SPECIAL_BITS: u32 = 0x42b << 20;

    fn check(xs: &[f32]) {
        path();
        let mut got = xs.to_vec();
        exp_shifted_in_place(&mut got, 0.0);
        let mut neg = vec![0f32; xs.len()];
        exp_negated(xs, &mut neg);
        for (i, &x) in xs.iter().enumerate() {
            assert!(
                same(got[i], x.exp()),
                "exp({x:e}) = {:e}, libm {:e}",
                got[i],
                x.exp()
            );
            let want = (-x).exp();
            assert!(
                same(neg[i], want),
                "exp(-{x:e}) = {:e}, libm {want:e}",
                neg[i]
            );
        }
    }

    /// The library's own path (`|x| ≥ 88`, NaN, ±∞), which lanes hand back to it: every 61st
    /// bit pattern there (NaNs of either sign among them), every pattern within 4096 of each
    /// threshold (88, overflow, underflow) and of ±1e-8, and ±0.
    #[test]
    fn bits_equal_the_library_past_the_polynomial_range_and_at_every_edge() {
        let first = (SPECIAL_BITS..=u32::MAX >> 1).step_by(61);
        let spread: Vec<f32> = first
            .flat_map(|b| [f32::from_bits(b), f32::from_bits(b | (1 << 31))])
            .collect();
        check(&spread);
        let mut edges = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fa0_0001),
            f32::from_bits(0xffc0_1234),
        ];
        for c in [
            88.0f32,
            -88.0,
            88.72284,
            -103.972_08,
            -103.278_93,
            1e-8,
            -1e-8,
        ] {
            let b = c.to_bits();
            edges.extend((b - 4096..b + 4096).map(f32::from_bits));
        }
        check(&edges);
    }

    #[test]
    fn shift_and_tails_match_scalar_code() {
        // Lengths around the 16-lane width, so that masked tails and special lanes mix.
        for n in [0, 1, 15, 16, 17, 33, 100] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 7.3).sin() * 120.0).collect();
            let mut got = x.clone();
            exp_shifted_in_place(&mut got, 3.25);
            let mut out = vec![0f32; n];
            exp_shifted(&x, 3.25, &mut out);
            for ((g, o), &v) in got.iter().zip(&out).zip(&x) {
                assert!(same(*g, (v - 3.25).exp()), "n = {n}: exp({v} − 3.25)");
                assert!(same(*o, *g), "n = {n}: out of place, exp({v} − 3.25)");
            }
        }
    }

    /// Every f32 the polynomial computes (`|x| < 88`: 2.2·10⁹ inputs, ~3 s on 2 cores in
    /// release), against the library. A sample would not do: computing `r` without its FMA moves
    /// 2 of the 2³² results.
    #[test]
    fn bits_equal_the_library_on_every_input_below_88() {
        use rayon::prelude::*;
        path();
        const CHUNK: u32 = 1 << 16;
        let bad: usize = (0..2 * SPECIAL_BITS / CHUNK)
            .into_par_iter()
            .map_init(
                || (vec![0f32; CHUNK as usize], vec![0f32; CHUNK as usize]),
                |(xs, got), c| {
                    // Chunks alternate signs: bit 31 from the chunk's parity.
                    let base = ((c / 2) * CHUNK) | ((c % 2) << 31);
                    for (i, x) in xs.iter_mut().enumerate() {
                        *x = f32::from_bits(base + i as u32);
                    }
                    got.copy_from_slice(xs);
                    exp_shifted_in_place(got, 0.0);
                    xs.iter()
                        .zip(got.iter())
                        .filter(|(x, g)| !same(**g, x.exp()))
                        .count()
                },
            )
            .sum();
        assert_eq!(
            bad, 0,
            "{bad} inputs below 88 differ from the library's expf"
        );
    }
}
