//! The capture test's calibration and power (README, Definitions: the null of direction
//! metrics), through the library on real bases:
//! - two unrelated random LoRA updates (each tensor of a real adapter replaced by Gaussian noise
//!   with the same Frobenius norm, two seeds) give `P(p ≤ α) ≤ α + 3 SE` over seeds and modules
//!   (untestable modules counted apart, and not all of them untestable);
//! - a related pair (the first update plus 30 % noise energy) is above null in most testable
//!   modules.
//!
//! On the default model (SmolLM2-135M, the top 10 layers of `data/adapters/smollm2-arc-lora`) and
//! on the tiny LLaMA fixture (`tests/fixtures/peft-lora`).

mod common;

use std::path::Path;
use tsd::adapter::{load_adapter, Adapter, ModuleAdapter};
use tsd::directions::null::Verdict;
use tsd::inspect::{inspect, InspectOptions, InspectReport, NullOptions, Reference};
use tsd::linalg::Matrix;
use tsd::svd_cache::SvdCache;
use tsd::weights::WeightSource;

const ALPHA: f64 = 0.05;

fn randomised(ad: &Adapter, seed: u64) -> Adapter {
    tsd::adapter::control::randomised(ad, seed)
}

/// `ΔW + N` with `‖N‖² = share·‖ΔW‖²` per module, as a LoRA of rank 2r (factors stacked).
fn related(ad: &Adapter, noise: &Adapter, share: f64) -> Adapter {
    let mut out = ad.clone();
    for (m, n) in out.modules.iter_mut().zip(&noise.modules) {
        let c = (share * m.update().frobenius().powi(2)).sqrt() / n.update().frobenius();
        let stack_cols = |x: &Matrix, y: &Matrix, k: f32| {
            let cols = x.cols + y.cols;
            let data = (0..x.rows)
                .flat_map(|i| {
                    (0..cols).map(move |j| {
                        if j < x.cols {
                            x.at(i, j)
                        } else {
                            k * y.at(i, j - x.cols)
                        }
                    })
                })
                .collect();
            Matrix::new(x.rows, cols, data).unwrap()
        };
        // B' = [s·B | c·s_n·B_n], A' = [A ; A_n], scaling 1.
        let b = stack_cols(&scaled(&m.b, m.scaling), &n.b, (c * n.scaling) as f32);
        let a = m.a.transpose();
        let a = stack_cols(&a, &n.a.transpose(), 1.0).transpose();
        *m = ModuleAdapter {
            r: 2 * m.r,
            alpha: (2 * m.r) as f64,
            scaling: 1.0,
            a,
            b,
            ..m.clone()
        };
    }
    out
}

fn scaled(m: &Matrix, k: f64) -> Matrix {
    Matrix::new(
        m.rows,
        m.cols,
        m.data.iter().map(|x| x * k as f32).collect(),
    )
    .unwrap()
}

fn run(
    ad: &Adapter,
    reference: &Adapter,
    base: &dyn WeightSource,
    cache: &SvdCache,
    seed: u64,
) -> InspectReport {
    let opts = InspectOptions {
        seed,
        null: NullOptions {
            capture_draws: Some(2000),
            enrichment_draws: 200,
            ..Default::default()
        },
        ..Default::default()
    };
    inspect(
        ad,
        base,
        Some((&Reference::Adapter(reference), "reference".into())),
        &opts,
        cache,
        &|_| {},
    )
    .unwrap()
}

/// (p ≤ α count, testable count, untestable count) over the modules' primary tests.
fn tally(rep: &InspectReport) -> (usize, usize, usize) {
    let tests: Vec<_> = rep
        .modules
        .iter()
        .filter_map(|m| m.capture.as_ref()?.primary().null.clone())
        .collect();
    let testable: Vec<_> = tests.iter().filter(|t| t.testable).collect();
    (
        testable.iter().filter(|t| t.p_value <= ALPHA).count(),
        testable.len(),
        tests.len() - testable.len(),
    )
}

fn calibration(ad: &Adapter, base: &dyn WeightSource, pairs: u64, power_pairs: u64) {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SvdCache::new(cache_dir.path());
    let (mut hits, mut n, mut untestable) = (0, 0, 0);
    for pair in 0..pairs {
        let (x, y) = (randomised(ad, 2 * pair + 1), randomised(ad, 2 * pair + 2));
        let (h, t, u) = tally(&run(&x, &y, base, &cache, pair));
        hits += h;
        n += t;
        untestable += u;
    }
    assert!(n > 0, "every module was untestable");
    let rate = hits as f64 / n as f64;
    let se = (ALPHA * (1.0 - ALPHA) / n as f64).sqrt();
    eprintln!("unrelated: P(p ≤ {ALPHA}) = {rate:.4} over {n} testable module tests ({untestable} untestable); bound {:.4}", ALPHA + 3.0 * se);
    assert!(
        rate <= ALPHA + 3.0 * se,
        "false-positive rate {rate} over {n} tests"
    );

    // Power: the first update against itself plus 30 % noise energy.
    let (mut above, mut testable) = (0, 0);
    for pair in 0..power_pairs {
        let x = randomised(ad, 1001 + 2 * pair);
        let y = related(&x, &randomised(ad, 1002 + 2 * pair), 0.3);
        let rep = run(&x, &y, base, &cache, 7 + pair);
        for m in &rep.modules {
            let t = m.capture.as_ref().unwrap().primary().null.clone().unwrap();
            eprintln!(
                "  {} acc {:.3} null {:.3} p {:.4} q {:?} {:?}",
                m.module,
                m.capture.as_ref().unwrap().primary().value,
                t.null_mean,
                t.p_value,
                t.q_value,
                t.verdict
            );
            testable += usize::from(t.testable);
            above += usize::from(t.verdict == Verdict::AboveNull);
            assert_eq!(t.above_null, t.verdict == Verdict::AboveNull);
        }
    }
    eprintln!("related: {above} of {testable} testable modules above null (BH at {ALPHA})");
    assert!(testable > 0);
    assert!(above * 2 > testable, "{above} of {testable} above null");
}

#[test]
fn unrelated_updates_are_calibrated_and_related_ones_detected_on_the_tiny_model() {
    let ad = load_adapter(&common::fixture("peft-lora")).unwrap();
    let base = tsd::weights::open_path(&common::fixture("tiny-llama")).unwrap();
    calibration(&ad, base.as_ref(), 60, 10);
}

#[test]
fn unrelated_updates_are_calibrated_and_related_ones_detected_on_the_default_model() {
    let model = tsd::env::tsd_home()
        .join("models")
        .join(tsd::provision::DEFAULT_MODEL_FILE);
    assert!(
        model.exists(),
        "the default model is not provisioned at {}: run scripts/test.sh (or `tsd fetch`) first",
        model.display()
    );
    let base = tsd::weights::open_path(&model).unwrap();
    let mut ad = load_adapter(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/adapters/smollm2-arc-lora"
    )))
    .unwrap();
    // The top 10 of 30 layers: 50 modules a pair.
    ad.modules
        .retain(|m| tsd::names::layer_of(&m.module).is_some_and(|l| l >= 20));
    calibration(&ad, base.as_ref(), 6, 1);
}
