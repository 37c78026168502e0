//! The short fuzzing run for CI (issue 13, part 1): every target gets its seeds and a few thousand
//! mutated inputs, and every input that once crashed, hung or over-allocated
//! (`tests/fixtures/fuzz-regressions/<target>/`) is replayed. The long run is `scripts/fuzz.sh`.

mod fuzz_harness;

use fuzz_harness as harness;
use std::time::Duration;

#[global_allocator]
static ALLOC: harness::LimitedAlloc = harness::LimitedAlloc;

fn crash_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")
}

#[test]
fn every_target_survives_a_short_fuzzing_run() {
    harness::quiet_panics();
    harness::start_watchdog(Duration::from_secs(30));
    let mut report = Vec::new();
    for t in harness::targets() {
        let (s, f) = harness::fuzz(&t, 13, 1500, Duration::from_secs(60), &crash_dir());
        assert!(s.inputs >= 100, "{}: only {} inputs ran", t.name, s.inputs);
        report.extend(
            f.into_iter()
                .map(|x| format!("{}: {}: {}", x.target, x.kind, x.message)),
        );
    }
    assert!(report.is_empty(), "findings:\n{}", report.join("\n"));
}

#[test]
fn every_saved_crash_is_replayed_and_handled() {
    harness::quiet_panics();
    harness::start_watchdog(Duration::from_secs(30));
    let root = harness::fixture("fuzz-regressions");
    let targets = harness::targets();
    let mut replayed = 0;
    let mut report = Vec::new();
    for e in std::fs::read_dir(&root).expect("tests/fixtures/fuzz-regressions exists") {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let t = targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("fuzz-regressions/{name}: no such target"));
        let dir = tempfile::tempdir().unwrap();
        (t.setup)(dir.path());
        for f in std::fs::read_dir(e.path()).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "md") {
                continue;
            }
            let input = std::fs::read(&f).unwrap();
            if let Some(x) = harness::run_one(t, dir.path(), &input, &crash_dir()) {
                report.push(format!("{}: {}: {}", f.display(), x.kind, x.message));
            }
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no saved crash inputs found under {}",
        root.display()
    );
    assert!(report.is_empty(), "regressions:\n{}", report.join("\n"));
}
