//! The `tsd` command line: parse arguments, validate them into a plan, call the library, print.

mod cli;

use clap::Parser;

/// mimalloc, told to keep freed memory: a training step frees and reallocates gigabytes of
/// activation and gradient buffers, and an allocator that returns them to the OS pays a page fault
/// and a page clear per 4 KiB (or 2 MiB) on the next step. Measured on the default model's LoRA
/// step (2 cores): glibc malloc 170k–290k faults per step, mimalloc with purging off ~10–20.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the bundled mimalloc's `mimalloc.h` (v3; the Rust binding names
/// the neighbours, `eager_commit_delay` = 14 and `use_numa_nodes` = 16, not this one). `-1` turns
/// purging off. A test checks the index by the option's default; `tsd bench train` records page
/// faults per step, which shows whether it took.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    keep_freed_memory();
    tsd::threads::configure();
    let args = cli::Cli::parse();
    if let Err(e) = tsd::threads::run(|| cli::run(args)) {
        // One line of cause for the user; exit 2 for bad input, 1 for internal failures.
        let e: &(dyn std::error::Error + 'static) = e.as_ref();
        eprintln!("error: {}", tsd::error::one_line(e));
        std::process::exit(tsd::error::exit_code(e));
    }
}

#[cfg(test)]
mod tests {
    /// The hard-coded option index must name `purge_delay`: bundled mimalloc v3 defaults it to
    /// 1000 ms, unlike its neighbours (deprecated `eager_commit_delay`, `use_numa_nodes`: 0 or 1).
    #[test]
    fn the_option_index_names_the_purge_delay() {
        assert!(
            !tsd::env::mimalloc_purge_delay_set(),
            "MIMALLOC_PURGE_DELAY is set: it changes the default this test identifies the option by"
        );
        // SAFETY: reads an integer option.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(get(super::MI_OPTION_PURGE_DELAY), 1000);
        assert_ne!(get(super::MI_OPTION_PURGE_DELAY - 1), 1000);
        assert_ne!(get(super::MI_OPTION_PURGE_DELAY + 1), 1000);
    }
}
