//! Every environment variable tsd reads, and the paths derived from them: the tsd cache
//! (`TSD_HOME`), the commonsense data directory (`TSD_DATA`), the Hugging Face cache, token,
//! endpoint and offline mode (`HF_*`, as huggingface_hub reads them), the size limits
//! (`TSD_MEMORY_BUDGET`, `TSD_SVD_CACHE_MAX`), the test switches (`TSD_COMPOSED`,
//! `TSD_TEST_PAUSE`), `TSD_PYTHON`, `COLUMNS` and the thread settings. Nothing else in the crate
//! calls `std::env::var`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A set, non-empty variable.
fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `$HOME` as a string, when set and valid UTF-8 (for writing paths portably).
pub fn home() -> Option<String> {
    std::env::var_os("HOME").and_then(|h| h.into_string().ok())
}

/// `$TSD_HOME`, else `$XDG_CACHE_HOME/tsd`, else `~/.cache/tsd`.
pub fn tsd_home() -> PathBuf {
    if let Some(h) = std::env::var_os("TSD_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tsd");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("tsd")
}

/// The provisioned data directory (LLM-Adapters layout): `$TSD_HOME/data/commonsense`.
pub fn data_home() -> PathBuf {
    tsd_home().join("data").join("commonsense")
}

/// The commonsense data directory a command reads (LLM-Adapters layout, `<task>/train.json` and
/// `<task>/test.json`): `explicit` (`--data`), else `$TSD_DATA`, else `../shared/data/commonsense`
/// when it exists (the layout of the machines this project was built on); None when none is given.
pub fn data_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("TSD_DATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| Some(PathBuf::from("../shared/data/commonsense")).filter(|d| d.exists()))
}

/// The interpreter that runs `pip download`: `$TSD_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("TSD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `$TSD_PYTHON` when set and non-empty (`tsd bench roofline`'s PyTorch peer; unset: no peer).
pub fn tsd_python() -> Option<String> {
    std::env::var("TSD_PYTHON").ok().filter(|v| !v.is_empty())
}

/// `$COLUMNS` when it is a positive number.
pub fn columns() -> Option<u16> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|&w| w > 0)
}

/// `$TSD_TEST_PAUSE`, the test-only pause points (see `faults`).
pub fn test_pause() -> Option<String> {
    std::env::var("TSD_TEST_PAUSE").ok()
}

/// Name of the environment variable that selects the composed ops on the CPU.
pub const COMPOSED_ENV: &str = "TSD_COMPOSED";

/// `$TSD_COMPOSED` as set (see `device::composed`).
pub fn composed() -> Option<String> {
    std::env::var(COMPOSED_ENV).ok()
}

/// Whether the mimalloc option variable `MIMALLOC_PURGE_DELAY` is set.
pub fn mimalloc_purge_delay_set() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
}

/// Sets `name` to `value` unless the user set it. Sound only while the process has one thread.
pub fn set_default(name: &str, value: &str) {
    if std::env::var_os(name).is_none() {
        std::env::set_var(name, value);
    }
}

/// `$RAYON_NUM_THREADS` when it is a positive number.
pub fn rayon_threads() -> Option<usize> {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// A size variable: None when unset, else its bytes, or the error message naming it.
fn size_var(name: &str) -> Option<std::result::Result<u64, String>> {
    let v = std::env::var(name).ok()?;
    Some(parse_size(&v).ok_or_else(|| {
        format!("{name}={v:?} is not a size (bytes, or a number with K, M, G or T, binary)")
    }))
}

/// `$TSD_MEMORY_BUDGET` in bytes, when set (see `budget::memory_budget`).
pub fn memory_budget() -> Option<std::result::Result<u64, String>> {
    size_var("TSD_MEMORY_BUDGET")
}

/// `$TSD_SVD_CACHE_MAX` in bytes, when set (see `svd_cache`).
pub fn svd_cache_max() -> Option<std::result::Result<u64, String>> {
    size_var("TSD_SVD_CACHE_MAX")
}

/// Parses `123`, `500M`, `32G`, `1.5T`, `64KiB` (binary multiples) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 1u64 << 10),
        'M' | 'm' => (&t[..t.len() - 1], 1 << 20),
        'G' | 'g' => (&t[..t.len() - 1], 1 << 30),
        'T' | 't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let x: f64 = num.trim().parse().ok()?;
    let bytes = x * mult as f64;
    (x.is_finite() && x >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// huggingface_hub's `_is_true`: 1, ON, YES, TRUE in any case; anything else is false.
fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

/// Whether the environment asks for offline mode: `HF_HUB_OFFLINE`, or `TRANSFORMERS_OFFLINE`
/// when the former is unset or empty (huggingface_hub reads `HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE`).
/// Why the network is not used for a lookup, when it is not: the variable that is set, `--offline`,
/// or `local_only` (a base an adapter or run declares is looked up in the cache only, never
/// downloaded). `None`: downloads are allowed.
pub fn offline_reason(offline_flag: bool, local_only: bool) -> Option<String> {
    if let Some(v) = non_empty("HF_HUB_OFFLINE") {
        if is_true(&v) {
            return Some(format!("offline mode is on (HF_HUB_OFFLINE={v})"));
        }
    } else if let Some(v) = non_empty("TRANSFORMERS_OFFLINE").filter(|v| is_true(v)) {
        return Some(format!("offline mode is on (TRANSFORMERS_OFFLINE={v})"));
    }
    if offline_flag {
        Some("offline mode is on (--offline)".into())
    } else if local_only {
        Some("a declared base is looked up in the cache only, never downloaded".into())
    } else {
        None
    }
}

/// Whether `HF_HUB_OFFLINE` (else `TRANSFORMERS_OFFLINE`) turns offline mode on.
pub fn hf_offline() -> bool {
    non_empty("HF_HUB_OFFLINE")
        .or_else(|| non_empty("TRANSFORMERS_OFFLINE"))
        .is_some_and(|v| is_true(&v))
}

/// `$VAR` / `${VAR}` expanded from the environment, unknown ones left as written (Python's
/// `os.path.expandvars`), after a leading `~` or `~/` became `$HOME` (`expanduser`).
fn expand(var: &str, value: &str) -> Result<PathBuf> {
    let home = || {
        std::env::var("HOME").map_err(|_| {
            Error::InvalidArgument(format!("{var}={value}: `~` needs HOME, which is not set"))
        })
    };
    let value = if value == "~" {
        home()?
    } else if let Some(rest) = value.strip_prefix("~/") {
        format!("{}/{rest}", home()?)
    } else if value.starts_with('~') {
        return Err(Error::InvalidArgument(format!(
            "{var}={value}: `~user` paths are not expanded; give the path itself"
        )));
    } else {
        value.to_string()
    };
    Ok(PathBuf::from(expand_vars(&value)))
}

/// `os.path.expandvars`: known `$VAR` / `${VAR}` replaced, the rest left as written.
fn expand_vars(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(j) => (&braced[..j], j + 2),
                None => ("", 0),
            }
        } else {
            let n = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..n], n)
        };
        match std::env::var(name) {
            Ok(v) if !name.is_empty() => out.push_str(&v),
            _ => out.push_str(&rest[i..i + 1 + len]),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// A set, non-empty environment variable as an expanded path.
fn env_path(var: &str) -> Result<Option<PathBuf>> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Some(expand(var, &v)?)),
        _ => Ok(None),
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> Result<PathBuf> {
    if let Some(p) = env_path("HF_HOME")? {
        return Ok(p);
    }
    let cache = match env_path("XDG_CACHE_HOME")? {
        Some(p) => p,
        None => expand("HOME", "~/.cache")?,
    };
    Ok(cache.join("huggingface"))
}

/// The cache root huggingface_hub uses in this environment: `$HF_HUB_CACHE`, else
/// `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub` (see `provision::hub`).
pub fn hf_cache_root() -> Result<PathBuf> {
    if let Some(p) = env_path("HF_HUB_CACHE")? {
        return Ok(p);
    }
    if let Some(p) = env_path("HUGGINGFACE_HUB_CACHE")? {
        return Ok(p);
    }
    Ok(hf_home()?.join("hub"))
}

/// The token huggingface_hub would send: `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`),
/// else the file at `HF_TOKEN_PATH` (default `$HF_HOME/token`).
pub fn hf_token() -> Result<Option<String>> {
    for k in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Ok(t) = std::env::var(k) {
            if !t.trim().is_empty() {
                return Ok(Some(t.trim().to_string()));
            }
        }
    }
    let path = match env_path("HF_TOKEN_PATH")? {
        Some(p) => p,
        None => hf_home()?.join("token"),
    };
    Ok(std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// `$HF_ENDPOINT` without a trailing `/`, else `https://huggingface.co`.
pub fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_expand_like_python() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            expand("X", "~/a").unwrap(),
            PathBuf::from(format!("{home}/a"))
        );
        assert_eq!(
            expand("X", "$HOME/b").unwrap(),
            PathBuf::from(format!("{home}/b"))
        );
        assert_eq!(
            expand("X", "${HOME}c").unwrap(),
            PathBuf::from(format!("{home}c"))
        );
        // Unknown variables stay as written, as os.path.expandvars leaves them.
        assert_eq!(
            expand("X", "/x/$TSD_SURELY_UNSET_VAR/y").unwrap(),
            PathBuf::from("/x/$TSD_SURELY_UNSET_VAR/y")
        );
        assert!(expand("X", "~root/x").is_err());
    }

    #[test]
    fn truth_values_are_huggingface_hubs() {
        for (v, t) in [("1", true), ("on", true), ("Yes", true), ("TRUE", true)] {
            assert_eq!(is_true(v), t);
        }
        for v in ["0", "false", "2", ""] {
            assert!(!is_true(v), "{v}");
        }
    }
}
