//! Memory admission for work run in parallel (the SVDs of LoRA-Dash's switch, the modules of
//! `tsd inspect`): items run in batches, one batch after another; a batch holds as many items as
//! the pool has threads and as fit the budget together by their estimated working sets, and at
//! least one (an item larger than the whole budget runs alone).

use crate::error::{Error, Result};
use std::ops::Range;

/// The default budget's ceiling: 8 GiB.
pub const DEFAULT_BUDGET: usize = 8 << 30;

/// Consecutive batches of `sizes` (bytes per item, in order): each at most `threads` items whose
/// sizes sum to at most `budget`, or a single item.
pub fn batches(sizes: &[usize], budget: usize, threads: usize) -> Vec<Range<usize>> {
    let threads = threads.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start + 1;
        let mut used = sizes[start];
        while end < sizes.len() && end - start < threads {
            match used.checked_add(sizes[end]) {
                Some(u) if u <= budget => used = u,
                _ => break,
            }
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// The budget for `tsd inspect`'s modules in flight: `TSD_MEMORY_BUDGET` (bytes, or a number with
/// K, M, G or T, binary) when set, else min(8 GiB, half of the kernel's MemAvailable).
pub fn memory_budget() -> Result<usize> {
    match crate::env::memory_budget() {
        Some(b) => b
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
            .map_err(Error::InvalidArgument),
        None => Ok(default_budget(mem_available())),
    }
}

/// min(8 GiB, half of `available`); 8 GiB when the available memory is unknown.
fn default_budget(available: Option<u64>) -> usize {
    available.map_or(DEFAULT_BUDGET, |a| {
        DEFAULT_BUDGET.min(usize::try_from(a / 2).unwrap_or(usize::MAX))
    })
}

/// Whether `bytes` are at most `1/share` of the kernel's `MemAvailable` (true where it cannot be
/// read: nothing to go by).
pub fn fits_in_available(bytes: usize, share: u64) -> bool {
    mem_available().is_none_or(|a| (bytes as u64).saturating_mul(share.max(1)) <= a)
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux), if readable.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_threads_budget_and_always_progress() {
        assert_eq!(batches(&[3, 3, 3, 3], 100, 2), vec![0..2, 2..4]);
        assert_eq!(batches(&[3, 3, 3, 3], 6, 8), vec![0..2, 2..4]);
        assert_eq!(batches(&[3, 3, 3], 1, 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(batches(&[10, 1, 1, 10], 12, 8), vec![0..3, 3..4]);
        assert_eq!(batches(&[usize::MAX, 1], usize::MAX, 8), vec![0..1, 1..2]);
        assert!(batches(&[], 1, 1).is_empty());
    }

    #[test]
    fn default_budget_is_half_the_available_memory_at_most_8_gib() {
        assert_eq!(default_budget(Some(4 << 30)), 2 << 30);
        assert_eq!(default_budget(Some(64 << 30)), DEFAULT_BUDGET);
        assert_eq!(default_budget(None), DEFAULT_BUDGET);
    }
}
