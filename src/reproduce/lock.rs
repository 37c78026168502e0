//! Advisory file locks under `OUT/locks/`: array tasks of one grid share an output directory, and
//! two processes must never train the same piece or write the same shared file at once.
//!
//! `flock(2)` through `fs2`: released when the file is closed, so a killed or cancelled task never
//! leaves a stale lock behind. Network file systems must support it (NFS does; Lustre needs the
//! `flock` mount option): where it is missing, tsd refuses rather than runs unlocked.

use crate::error::{Error, Result};
use fs2::FileExt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// `OUT/locks/<name>.lock`.
pub fn lock_path(out: &Path, name: &str) -> PathBuf {
    out.join("locks").join(format!("{name}.lock"))
}

fn open(path: &Path) -> Result<File> {
    let dir = crate::fsutil::parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn unsupported(path: &Path, e: std::io::Error) -> Error {
    Error::InvalidArgument(format!(
        "cannot lock {} ({e}): the output directory's file system must support flock",
        path.display()
    ))
}

/// Takes the lock if no other process holds it; `Ok(None)` when one does.
pub fn try_lock(out: &Path, name: &str) -> Result<Option<Lock>> {
    let path = lock_path(out, name);
    let file = open(&path)?;
    match file.try_lock_exclusive() {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(e) if e.kind() == fs2::lock_contended_error().kind() => Ok(None),
        Err(e) => Err(unsupported(&path, e)),
    }
}

/// Waits for the lock (for short critical sections: a shared cache, a read-modify-write).
pub fn lock(out: &Path, name: &str) -> Result<Lock> {
    let path = lock_path(out, name);
    let file = open(&path)?;
    file.lock_exclusive().map_err(|e| unsupported(&path, e))?;
    Ok(Lock { _file: file })
}

/// Whether another process holds the lock now (a piece being run elsewhere).
pub fn is_held(out: &Path, name: &str) -> Result<bool> {
    Ok(try_lock(out, name)?.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let first = try_lock(d.path(), "piece").unwrap().expect("free");
        // flock locks belong to the open file description: a second open in this process
        // contends like another process would.
        assert!(try_lock(d.path(), "piece").unwrap().is_none());
        assert!(is_held(d.path(), "piece").unwrap());
        drop(first);
        assert!(!is_held(d.path(), "piece").unwrap());
        assert!(try_lock(d.path(), "piece").unwrap().is_some());
        assert!(lock_path(d.path(), "piece").exists());
    }
}
