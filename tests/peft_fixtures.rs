//! `tsd inspect` against adapters written by the real Python PEFT library
//! (`scripts/make_peft_fixtures.py`; numbers in `tests/fixtures/expected.json` are numpy float64).

mod common;

use common::{close, expected, fixture, tsd};
use serde_json::Value;

fn inspect_json(adapter: &str, extra: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let mut args = vec![
        "inspect",
        adapter,
        "--json",
        "--spectrum",
        "--svd-precision",
        "f64",
        "-q",
    ];
    args.extend_from_slice(extra);
    let out = tsd(home.path())
        .current_dir(fixture(""))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn module<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == name)
        .unwrap_or_else(|| panic!("{name}"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Every module's shape, r, α, scaling, ‖ΔW‖, σ spectrum, change rates and top-8 match PEFT + numpy.
fn check_adapter(name: &str, extra: &[&str]) {
    let exp = expected();
    let e = &exp["adapters"][name];
    let report = inspect_json(name, extra);
    let modules = e["modules"].as_object().unwrap();
    assert_eq!(report["modules"].as_array().unwrap().len(), modules.len());
    for (mname, em) in modules {
        let m = module(&report, mname);
        assert_eq!(m["shape"], em["shape"], "{mname}");
        assert_eq!(m["r"], em["r"], "{mname}");
        assert!(close(
            m["alpha"].as_f64().unwrap(),
            em["alpha"].as_f64().unwrap(),
            1e-12,
            0.0
        ));
        assert!(
            close(
                m["scaling"].as_f64().unwrap(),
                em["scaling"].as_f64().unwrap(),
                1e-12,
                0.0
            ),
            "{mname} scaling"
        );
        let fro = m["delta_fro"].as_f64().unwrap();
        assert!(
            close(fro, em["lora_delta_fro"].as_f64().unwrap(), 1e-6, 0.0),
            "{mname} ‖ΔW‖"
        );
        if em["dora"] == false {
            // PEFT's own merge (f32) agrees with the factored ΔW to f32 precision.
            assert!(
                close(fro, em["delta_w_fro"].as_f64().unwrap(), 1e-5, 0.0),
                "{mname} merged ‖ΔW‖"
            );
            let sigma = f64s(&m["sigma"]);
            let esigma = f64s(&em["sigma"]);
            for (a, b) in sigma.iter().zip(&esigma) {
                assert!(
                    close(*a, *b, 1e-9, 1e-12 * esigma[0]),
                    "{mname} σ {a} vs {b}"
                );
            }
            let delta = f64s(&m["delta"]);
            let edelta = f64s(&em["delta"]);
            let scale = edelta.iter().cloned().fold(0.0, f64::max);
            for (i, (a, b)) in delta.iter().zip(&edelta).enumerate() {
                assert!(
                    close(*a, *b, 1e-5, 1e-7 * scale),
                    "{mname} δ[{i}] {a} vs {b}"
                );
            }
            let top: Vec<usize> = m["tsd"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["index"].as_u64().unwrap() as usize)
                .collect();
            assert_eq!(top, usizes(&em["top8"]), "{mname} top-8");
        }
    }
}

#[test]
fn plain_lora_matches_peft() {
    check_adapter("peft-lora", &[]);
}

#[test]
fn rslora_with_rank_and_alpha_patterns_matches_peft() {
    check_adapter("peft-rslora", &[]);
}

#[test]
fn dora_is_analysed_as_its_lora_part_and_warned_about() {
    check_adapter("peft-dora", &[]);
    let home = tempfile::tempdir().unwrap();
    let out = tsd(home.path())
        .current_dir(fixture(""))
        .args(["inspect", "peft-dora", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("DoRA magnitude vector present"));
}

#[test]
fn dense_reference_top8_matches_numpy() {
    let exp = expected();
    let e = &exp["adapters"]["tiny-llama-ft"]["modules"];
    let report = inspect_json("peft-lora", &["--reference", "tiny-llama-ft"]);
    for (mname, em) in e.as_object().unwrap() {
        let m = module(&report, mname);
        assert_eq!(
            usizes(&m["capture"]["reference_top"]),
            usizes(&em["top8"]),
            "{mname}"
        );
        let acc = m["capture"]["accuracy"]["value"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
}

#[test]
fn sharded_and_bf16_bases_give_the_same_analysis() {
    let a = inspect_json("peft-lora", &["--base", "tiny-llama"]);
    let b = inspect_json("peft-lora", &["--base", "tiny-llama-sharded"]);
    let c = inspect_json("peft-lora", &["--base", "tiny-llama-bf16"]);
    for (ma, (mb, mc)) in a["modules"].as_array().unwrap().iter().zip(
        b["modules"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["modules"].as_array().unwrap()),
    ) {
        assert_eq!(ma["sigma"], mb["sigma"]);
        assert_eq!(ma["delta"], mb["delta"]);
        // bf16 rounding of W changes σ by ~2^-8 relative
        let (sa, sc) = (f64s(&ma["sigma"]), f64s(&mc["sigma"]));
        assert!(close(sa[0], sc[0], 1e-2, 0.0));
    }
    assert_eq!(a["params"]["base"], b["params"]["base"]);
}

/// Regression: the inspect table was 155 columns wide. Off a terminal it fits 100 columns, with a
/// reference (three capture columns) included; the SVD line says what was computed and what came
/// from the cache.
#[test]
fn inspect_table_fits_100_columns_and_says_what_the_cache_gave() {
    let home = tempfile::tempdir().unwrap();
    let run = || {
        let out = tsd(home.path())
            .current_dir(fixture(""))
            .args(["inspect", "peft-lora", "--reference", "tiny-llama-ft", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let table: Vec<&str> = first
        .lines()
        .filter(|l| l.starts_with(['│', '┌', '└', '╞']))
        .collect();
    assert!(table.len() > 5, "{first}");
    // Regression (issue 20, point 7): the findings lead, the 10 module rows follow.
    let findings = first.find("\nfindings\n").expect("a findings section");
    let against_null = first.find("TSD capture against its rotation null").unwrap();
    let modules = first.find("│ module ").expect("the module table");
    assert!(findings < against_null && against_null < modules, "{first}");
    for l in &table {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    assert!(
        first.contains("recall@(8,4) and accuracy@(8,16)"),
        "{first}"
    );
    assert!(
        !table
            .iter()
            .any(|l| l.contains("dule") && !l.contains("module")),
        "a header wrapped: {first}"
    );
    let n = first.lines().find(|l| l.starts_with("base SVDs")).unwrap();
    assert!(
        n.contains(" computed (") && !n.contains("from the cache"),
        "{n}"
    );
    let second = run();
    let n = second.lines().find(|l| l.starts_with("base SVDs")).unwrap();
    assert!(
        n.contains("from the cache (") && !n.contains("computed"),
        "{n}"
    );
}
