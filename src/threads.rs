//! CPU threading: one pool for all the work.
//!
//! candle runs matmuls (gemm) on rayon's global pool but its elementwise ops on a second pool of
//! its own whose workers spin before they park. On a machine with few cores the two pools, plus
//! a main thread that blocks while rayon runs a matmul, keep more threads runnable than there are
//! cores: a LoRA training step of the default model on 2 cores measured ~3.6 s with 40–60k context
//! switches per step and a quarter of the CPU time in the kernel. [`configure`] turns candle's
//! second pool off (elementwise ops then run on the calling thread) and [`run`] executes the work
//! on a rayon worker, so a matmul called from it splits over the pool without a hand-over: with the
//! allocator in `main.rs` the same step measured ~2.8 s with ~3k context switches.

/// Stack of each rayon worker: candle's backward pass walks the graph recursively, and the
/// whole command runs on a worker (the main thread's 8 MiB; only touched pages are committed).
const WORKER_STACK_BYTES: usize = 64 << 20;

/// Sets the thread environment before any pool starts: candle's elementwise pool off
/// (`CANDLE_NUM_THREADS=1`) and `RAYON_NUM_THREADS` fixed to the available cores (candle otherwise
/// re-reads `/proc/cpuinfo` on every matmul to count them). Variables the user set are kept.
/// Call it first thing in `main`, while the process has one thread.
pub fn configure() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for (name, value) in [
        ("CANDLE_NUM_THREADS", "1".to_string()),
        ("RAYON_NUM_THREADS", cores.to_string()),
    ] {
        // Sound only while the process has one thread: see the doc comment.
        crate::env::set_default(name, &value);
    }
    let threads = crate::env::rayon_threads().unwrap_or(cores);
    // Fails only if a pool already exists, which then is the pool to use.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(WORKER_STACK_BYTES)
        .build_global();
}

/// Runs `f` on a worker of rayon's global pool (directly when already on one).
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_runs_on_a_pool_worker_and_returns_its_value() {
        assert!(
            rayon::current_thread_index().is_none(),
            "tests start off the pool"
        );
        let (on_worker, v) = super::run(|| (rayon::current_thread_index().is_some(), 41 + 1));
        assert!(on_worker);
        assert_eq!(v, 42);
        // nested: already on a worker, runs in place
        assert!(super::run(|| super::run(
            || rayon::current_thread_index().is_some()
        )));
    }
}
