//! Stop requests by signal: SIGINT (Ctrl-C) and SIGTERM (`kill`, Slurm's time limit and its
//! `--signal` warning) both ask a long command to stop at its next safe point — for `tsd train`,
//! after the current step, with a checkpoint saved — and the process then exits with the shell's
//! code for that signal (128 + its number: 130, 143), so that a scheduler or script sees that the
//! run did not finish.
//!
//! The handler only records the first signal's number and writes a fixed line to stderr (both
//! async-signal-safe); the work polls [`stop_flag`]. A second signal while stopping says so and
//! changes nothing: the checkpoint being written is finished first.
//!
//! Work with no safe point to stop at (`tsd reproduce`'s evaluation and capture, which write
//! their results atomically and only at the end) installs with [`install_exiting`]: there a stop
//! signal ends the process at once with the same code, losing only the unfinished piece's work in
//! memory, except inside a [`defer`] section (training), where it is recorded and polled as above.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Whether a stop signal ends the process at once (outside a [`defer`] section).
static EXIT_AT_ONCE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    let first = SIGNAL
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    STOP.store(true, Ordering::SeqCst);
    if EXIT_AT_ONCE.load(Ordering::SeqCst) {
        let msg: &[u8] = if sig == libc::SIGTERM {
            b"\ntsd: SIGTERM received: exiting now (143); finished work is kept, a re-run redoes the unfinished part\n"
        } else {
            b"\ntsd: SIGINT received: exiting now (130); finished work is kept, a re-run redoes the unfinished part\n"
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static byte string.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
    }
    let msg: &[u8] = match (first, sig) {
        (true, libc::SIGTERM) => {
            b"\ntsd: SIGTERM received: stopping after this step and saving a checkpoint\n"
        }
        (true, _) => b"\ntsd: SIGINT received: stopping after this step and saving a checkpoint\n",
        (false, _) => b"\ntsd: already stopping; the checkpoint is being written\n",
    };
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte string.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

/// Routes SIGINT and SIGTERM to the stop flag (instead of ending the process).
pub fn install() -> crate::Result<()> {
    EXIT_AT_ONCE.store(false, Ordering::SeqCst);
    install_handler()
}

/// Installs the handler so that SIGINT and SIGTERM end the process at once with 130 / 143,
/// except inside a [`defer`] section, where they set the stop flag as with [`install`].
pub fn install_exiting() -> crate::Result<()> {
    EXIT_AT_ONCE.store(true, Ordering::SeqCst);
    install_handler()
}

/// While the returned guard lives, a stop signal sets the stop flag (the work stops at its next
/// safe point) even after [`install_exiting`]. On drop the previous behaviour returns; a signal
/// recorded meanwhile stays in [`received`] for the caller to act on.
pub fn defer() -> Deferred {
    Deferred {
        exit_at_once: EXIT_AT_ONCE.swap(false, Ordering::SeqCst),
    }
}

/// See [`defer`].
#[must_use = "the section ends when the guard is dropped"]
#[derive(Debug)]
pub struct Deferred {
    exit_at_once: bool,
}

impl Drop for Deferred {
    fn drop(&mut self) {
        EXIT_AT_ONCE.store(self.exit_at_once, Ordering::SeqCst);
    }
}

fn install_handler() -> crate::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid value; the handler only touches atomics and
        // write(2), which are async-signal-safe.
        let ok = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut()) == 0
        };
        if !ok {
            return Err(crate::Error::Internal(format!(
                "installing the handler of signal {sig}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Set once SIGINT or SIGTERM has arrived (after [`install`]).
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// The first stop signal received, if any.
pub fn received() -> Option<Signal> {
    match SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => Some(Signal::Int),
        libc::SIGTERM => Some(Signal::Term),
        _ => None,
    }
}

/// A stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl Signal {
    /// `SIGINT` / `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// The shell's exit code for a process ended by this signal: 128 + its number.
    pub fn exit_code(self) -> i32 {
        128 + match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
        }
    }
}
