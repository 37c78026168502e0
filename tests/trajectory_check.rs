//! tsd's trainer against transformers `Trainer` + PEFT + `tsd.LoraDash`, step by step (README,
//! Training: tsd against PEFT). `scripts/compare_trainer_trajectory.py` runs both loops on the
//! tiny LLaMA and commits its result as `reproductions/trajectory/compare.json`; this test holds
//! that record to the bar (≥ 20 steps, ≥ 10 after the switch, per-step losses and the
//! final ΔW within 1e-4 relative, the same picks), so a re-run that drifts cannot be committed
//! unnoticed. `python/tests/test_dash.py` re-runs the comparison itself where Python is set up.

use std::path::Path;

#[test]
fn committed_trajectory_comparison_passes() {
    check("compare.json");
}

/// The same with `max_grad_norm` 0.05: clipping at every step (torch scales by max/(norm + 1e-6),
/// tsd by max/norm).
#[test]
fn committed_clipped_trajectory_comparison_passes() {
    let r = check("compare-clipped.json");
    assert_eq!(r["clipped_steps"], r["steps"]);
}

fn check(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reproductions/trajectory")
        .join(name);
    let text = std::fs::read_to_string(&path).expect(name);
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["schema_version"], 1);
    let steps = r["steps"].as_u64().unwrap();
    let after = r["steps_after_switch"].as_u64().unwrap();
    assert!(
        steps >= 20 && after >= 10,
        "{steps} steps, {after} after the switch"
    );
    let (peft, tsd) = (
        r["peft_loss"].as_array().unwrap(),
        r["tsd_loss"].as_array().unwrap(),
    );
    assert_eq!(peft.len() as u64, steps);
    assert_eq!(tsd.len() as u64, steps);
    for (k, (p, t)) in peft.iter().zip(tsd).enumerate() {
        let (p, t) = (p.as_f64().unwrap(), t.as_f64().unwrap());
        assert!(
            (p - t).abs() / t.abs() < 1e-4,
            "step {}: PEFT {p}, tsd {t}",
            k + 1
        );
    }
    let dw = r["delta_w_rel_diff"].as_object().unwrap();
    assert!(!dw.is_empty());
    for (m, d) in dw {
        assert!(
            d.as_f64().unwrap() < 1e-4,
            "{m}: ΔW relative difference {d}"
        );
    }
    for part in ["max_lora_part_rel_diff", "max_dash_part_rel_diff"] {
        let d = r[part].as_f64().unwrap();
        assert!(d < 1e-4, "{part}: {d}");
    }
    assert_eq!(r["same_picks"], true);
    assert_eq!(r["tsd_inspect_reads_trainer_checkpoint"], true);
    assert!(
        r["max_abs_delta_sigma"].as_f64().unwrap() > 0.0,
        "Δσ never moved"
    );
    assert_eq!(r["pass"], true);
    r
}
