//! The long fuzzing command: `cargo run --release --example fuzz -- [--seconds N] [--inputs N]
//! [--seed S] [--crashes DIR] [--json FILE] [TARGET…]` (all targets by default; `scripts/fuzz.sh`
//! wraps it). Prints one line per target and writes the statistics as JSON; exits 1 on a finding.

#[path = "../tests/fuzz_harness/mod.rs"]
mod harness;

use std::time::Duration;

#[global_allocator]
static ALLOC: harness::LimitedAlloc = harness::LimitedAlloc;

fn main() {
    let mut seconds = 60.0f64;
    let mut inputs = u64::MAX;
    let mut seed = 1u64;
    let mut crashes = std::path::PathBuf::from("target/fuzz-crashes");
    let mut json = None;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next().unwrap_or_else(|| {
                eprintln!("fuzz: {a} needs a value");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--seconds" => seconds = parse(&val()),
            "--inputs" => inputs = parse(&val()),
            "--seed" => seed = parse(&val()),
            "--crashes" => crashes = val().into(),
            "--json" => json = Some(std::path::PathBuf::from(val())),
            "--replay" => {
                // Runs one saved input of the first target named, uncaught, for a backtrace.
                let file = val();
                let name = args.next();
                let t = harness::targets()
                    .into_iter()
                    .find(|t| Some(t.name) == name.as_deref())
                    .unwrap_or_else(|| {
                        eprintln!("fuzz: --replay FILE TARGET");
                        std::process::exit(2)
                    });
                let dir = tempfile::tempdir().unwrap();
                (t.setup)(dir.path());
                (t.run)(dir.path(), &std::fs::read(&file).unwrap());
                println!("{file}: no panic");
                return;
            }
            "-h" | "--help" => {
                println!("usage: fuzz [--seconds N per target, default 60] [--inputs N per target, default unbounded] [--seed S, default 1] [--crashes DIR, default target/fuzz-crashes] [--json FILE] [TARGET...] | --replay FILE TARGET");
                println!(
                    "targets: {}",
                    harness::targets()
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                return;
            }
            t => names.push(t.to_string()),
        }
    }
    let all = harness::targets();
    for n in &names {
        if !all.iter().any(|t| t.name == n) {
            eprintln!("fuzz: unknown target `{n}`");
            std::process::exit(2);
        }
    }
    harness::quiet_panics();
    harness::start_watchdog(Duration::from_secs(10));
    let mut stats = Vec::new();
    let mut found = 0;
    for t in all
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
    {
        let (s, f) = harness::fuzz(t, seed, inputs, Duration::from_secs_f64(seconds), &crashes);
        println!(
            "{:<22} {:>9} inputs {:>7.1} s {:>8.0}/s  {} finding(s)",
            s.target,
            s.inputs,
            s.seconds,
            s.inputs as f64 / s.seconds.max(1e-9),
            s.findings
        );
        for x in f.iter().take(5) {
            println!("    {}: {}", x.kind, x.message);
        }
        found += f.len();
        stats.push(s);
    }
    let total: u64 = stats.iter().map(|s| s.inputs).sum();
    println!("total: {total} inputs, {found} finding(s)");
    if let Some(p) = json {
        let v = serde_json::json!({ "seed": seed, "seconds_per_target": seconds, "total_inputs": total, "findings": found, "targets": stats });
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
    if found > 0 {
        std::process::exit(1);
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("fuzz: `{s}` is not a number");
        std::process::exit(2)
    })
}
