//! The system BLAS `tsd bench roofline` opens at run time (Debian's OpenBLAS and BLIS through
//! `cblas_sgemm`): its product equals tsd's (candle's matmul → gemm) on a small odd shape in both
//! of tsd's transpositions, and its thread count is what the roofline sets.
//!
//! Without the library the test fails under CI (scripts/test.sh installs libopenblas0-pthread and
//! libblis4) and otherwise says it skipped.

use candle_core::{Device, Tensor};
use std::sync::Mutex;
use tsd::bench::system_blas::{open, BlasKind, KINDS};

/// The libraries' thread counts are process-wide: the tests take turns.
static TURN: Mutex<()> = Mutex::new(());

/// `Some(library)`, or None after printing why it skipped; panics under CI.
fn opened(kind: BlasKind) -> Option<&'static tsd::bench::system_blas::SystemBlas> {
    match open(kind) {
        Ok(b) => Some(b),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but {} did not open: {why}", kind.name())
        }
        Err(why) => {
            eprintln!(
                "skipped: {} did not open ({why}); Debian: apt-get install libopenblas0-pthread libblis4",
                kind.name()
            );
            None
        }
    }
}

/// [37, 53] · [53, 29], the right operand given as [29, 53] read transposed (a linear's forward)
/// and as [53, 29] (its input gradient): each library's result against candle's within 1e-4 of
/// the largest magnitude of the result.
#[test]
fn system_blas_product_equals_tsds() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (m, k, n) = (37, 53, 29);
    let dev = Device::Cpu;
    for kind in KINDS {
        let Some(blas) = opened(kind) else { continue };
        blas.set_threads(2);
        for rhs_transposed in [true, false] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = if rhs_transposed {
                Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap()
            } else {
                Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap()
            };
            let rhs = if rhs_transposed {
                w.t().unwrap()
            } else {
                w.clone()
            };
            let want: Vec<f32> = x
                .matmul(&rhs)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let a: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            let mut got = vec![f32::NAN; m * n];
            blas.sgemm((m, k, n), &a, &b, rhs_transposed, &mut got);
            let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
            assert!(
                scale > 1.0,
                "a product of normal samples over k = {k} is not tiny"
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * scale,
                    "{} rhs_transposed={rhs_transposed}: element {i} ({}, {}): {g} vs tsd's {w}",
                    kind.name(),
                    i / n,
                    i % n
                );
            }
        }
        blas.set_threads(1);
        assert_eq!(blas.threads(), 1, "{}", kind.name());
    }
}

/// The roofline sets the library's threads to tsd's pool size and records what the library
/// reports.
#[test]
fn system_blas_threads_are_set() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let pool = rayon::current_num_threads();
    for kind in KINDS {
        let Some(blas) = opened(kind) else { continue };
        for n in [pool, 3, 1] {
            blas.set_threads(n);
            assert_eq!(blas.threads(), n, "{}: threads set to {n}", kind.name());
        }
        blas.set_threads(pool);
        let info = blas.info();
        assert_eq!(info.name, kind.name());
        assert_eq!(info.threads, pool);
        assert!(
            info.version.as_deref().is_some_and(|v| !v.is_empty()),
            "{}: a version is recorded: {info:?}",
            kind.name()
        );
        assert!(info.resolved.is_some(), "{info:?}");
        blas.set_threads(1);
    }
}
