//! Machine concerns of a run: the candle device and dtype (validated in [`crate::device`]), and
//! the process's peak memory (Linux `/proc`).

/// Peak resident memory of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

pub use crate::device::{device_for, dtype_for};
