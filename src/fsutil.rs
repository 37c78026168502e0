//! Files: atomic writes (a reader never sees a half-written checkpoint, cache entry or report),
//! JSON read and write, sha256 digests, and paths written portably for shared records.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// On failure (a full disk, say) the previous content of `path`, if any, is untouched. The file
/// gets the mode any new file gets (0666 less the umask: 0644 usually), not tempfile's 0600.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tsd-tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Passed to open(2) with O_CREAT, where the kernel applies the umask.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads a whole file, with the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Reads and parses a JSON file, with the path in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes `value` as pretty JSON (serde_json's two-space layout) and a trailing newline,
/// atomically ([`atomic_write`]): every JSON record, result and report tsd saves.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_pretty(path, value, "\n")
}

/// [`write_json`] without the trailing newline, for the files tsd has always written that way
/// (run and checkpoint configs, records, trainer state, PEFT configs, caches, provisioned data):
/// their bytes stay what they were.
pub fn write_json_unterminated<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_pretty(path, value, "")
}

fn write_pretty<T: serde::Serialize + ?Sized>(path: &Path, value: &T, end: &str) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    atomic_write(path, (text + end).as_bytes())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.bin");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// Regression: reports and exports came out 0600 (tempfile's mode).
    #[cfg(target_os = "linux")]
    #[test]
    fn atomic_write_gives_the_umask_mode() {
        use std::os::unix::fs::PermissionsExt;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .expect("Umask in /proc/self/status");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.html");
        atomic_write(&p, b"x").unwrap();
        let mode = p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "mode {mode:o}, umask {umask:o}");
        assert_ne!(mode, 0o600, "tempfile's private mode leaked through");
    }
}

/// `text` with this machine's tsd cache and home directory written as `$TSD_HOME` and `~`, for
/// records that are committed or shared (a base model named by where this machine keeps it means
/// nothing elsewhere; error messages keep the full path).
pub fn portable(text: &str) -> String {
    let mut out = text.to_string();
    let home = crate::env::tsd_home();
    if let Some(h) = home.to_str().filter(|h| h.len() > 1) {
        out = out.replace(h, "$TSD_HOME");
    }
    if let Some(h) = crate::env::home() {
        if h.len() > 1 {
            out = out.replace(&h, "~");
        }
    }
    out
}

#[cfg(test)]
mod portable_tests {
    #[test]
    fn machine_paths_become_portable() {
        let home = crate::env::tsd_home();
        let s = format!("GGUF model {}/models/m.gguf", home.display());
        assert_eq!(super::portable(&s), "GGUF model $TSD_HOME/models/m.gguf");
        assert_eq!(super::portable("tiny/model"), "tiny/model");
    }
}
