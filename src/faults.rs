//! Test-only pauses at named points, so a harness can SIGKILL `tsd` exactly there
//! (`tests/kill_resume.rs`). `TSD_TEST_PAUSE=checkpoint-write:300,dash-switch:300` sleeps that
//! many milliseconds at each point after printing `tsd-test-pause: POINT` to stderr. Unset (the
//! normal case) it does nothing. Points: `checkpoint-write` (adapter and optimizer state written
//! to the temporary directory, trainer state not yet), `dash-switch` (after the first module's
//! TSDs are picked, before the others), `evaluate` (`tsd reproduce`, before a model is evaluated),
//! `track-read` (`tsd track` / `report`: the run's checkpoints listed, none read yet).

/// Sleeps at `point` if `TSD_TEST_PAUSE` names it.
pub fn pause(point: &str) {
    let Some(spec) = crate::env::test_pause() else {
        return;
    };
    let ms = spec
        .split(',')
        .filter_map(|item| item.split_once(':'))
        .find(|(p, _)| *p == point)
        .and_then(|(_, ms)| ms.parse::<u64>().ok());
    if let Some(ms) = ms {
        eprintln!("tsd-test-pause: {point}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
