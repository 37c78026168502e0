//! On-disk SVD cache. A frozen base weight's SVD never changes, so it is computed once and kept under
//! `$TSD_HOME/svd/<key>.safetensors`, where `key = sha256(weight shape + f32 bytes + precision + format)`.
//!
//! Entry layout (safetensors, metadata `{"format":"pt", "tsd_svd":"1", "key", "payload_sha256"}`):
//! `u` `[n, k]`, `s` `[k]`, `v` `[m, k]`, in F32 for f32-precision SVDs and F64 for f64 ones.
//! An entry is trusted only if it parses, its key and shapes match, every value is finite and the
//! payload hash matches; anything else is recomputed and overwritten (atomically).

use super::{hex, svd, Matrix, Precision, Svd};
use crate::error::{Error, Result};
use crate::fsutil;
use faer::Mat;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "1";

/// Where an SVD came from, for reporting cold/warm behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// An entry existed but failed validation and was recomputed.
    Corrupt,
    Disabled,
}

/// An SVD cache rooted at a directory (or disabled).
#[derive(Clone, Debug)]
pub struct SvdCache {
    dir: Option<PathBuf>,
}

impl SvdCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SvdCache {
            dir: Some(dir.into()),
        }
    }

    /// A cache that never reads or writes.
    pub fn disabled() -> Self {
        SvdCache { dir: None }
    }

    /// The cache under the tsd home directory (`$TSD_HOME/svd`).
    pub fn default_location() -> Self {
        SvdCache::new(crate::assets::tsd_home().join("svd"))
    }

    /// The cache key of a weight for a given precision.
    pub fn key(w: &Matrix, precision: Precision) -> String {
        let mut h = Sha256::new();
        h.update(b"tsd-svd:");
        h.update(FORMAT.as_bytes());
        h.update(precision.to_string().as_bytes());
        h.update(w.content_hash().as_bytes());
        hex(&h.finalize())
    }

    fn path_for(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{key}.safetensors")))
    }

    /// The SVD of `w`, from the cache when a valid entry exists, else computed and stored.
    pub fn get_or_compute(&self, w: &Matrix, precision: Precision) -> Result<(Svd, CacheOutcome)> {
        if self.dir.is_none() {
            return Ok((svd(w, precision)?, CacheOutcome::Disabled));
        }
        let key = Self::key(w, precision);
        let path = self.path_for(&key).expect("cache directory set");
        let mut outcome = CacheOutcome::Miss;
        if path.exists() {
            match load_entry(&path, &key, w.rows, w.cols) {
                Ok(d) => return Ok((d, CacheOutcome::Hit)),
                Err(_) => outcome = CacheOutcome::Corrupt,
            }
        }
        let d = svd(w, precision)?;
        // A cache that cannot be written (read-only home, full disk) must not fail the analysis.
        if let Err(e) = store_entry(&path, &key, &d, precision) {
            eprintln!(
                "warning: could not write SVD cache entry {}: {e}",
                path.display()
            );
        }
        Ok((d, outcome))
    }
}

fn payload_hash(tensors: &[(&str, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in tensors {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    hex(&h.finalize())
}

fn mat_bytes(m: &Mat<f64>, precision: Precision) -> Vec<u8> {
    // Row-major, as safetensors expects.
    let mut out = Vec::new();
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            push(&mut out, m[(i, j)], precision);
        }
    }
    out
}

fn push(out: &mut Vec<u8>, x: f64, precision: Precision) {
    match precision {
        Precision::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
        Precision::F64 => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn store_entry(path: &Path, key: &str, d: &Svd, precision: Precision) -> Result<()> {
    let mut s_bytes = Vec::new();
    for &x in &d.s {
        push(&mut s_bytes, x, precision);
    }
    let tensors = vec![
        ("s", s_bytes),
        ("u", mat_bytes(&d.u, precision)),
        ("v", mat_bytes(&d.v, precision)),
    ];
    let dtype = match precision {
        Precision::F32 => Dtype::F32,
        Precision::F64 => Dtype::F64,
    };
    let k = d.s.len();
    let shapes: HashMap<&str, Vec<usize>> = [
        ("s", vec![k]),
        ("u", vec![d.u.nrows(), k]),
        ("v", vec![d.v.nrows(), k]),
    ]
    .into();
    let metadata: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("tsd_svd".to_string(), FORMAT.to_string()),
        ("key".to_string(), key.to_string()),
        ("payload_sha256".to_string(), payload_hash(&tensors)),
    ]
    .into();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, bytes)| {
            let view = safetensors::tensor::TensorView::new(dtype, shapes[name].clone(), bytes)
                .map_err(|e| Error::Safetensors {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    fsutil::atomic_write(path, &bytes)
}

fn load_entry(path: &Path, key: &str, n: usize, m: usize) -> Result<Svd> {
    let bad = |reason: &str| Error::Safetensors {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let bytes = fsutil::read(path)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("tsd_svd").map(String::as_str) != Some(FORMAT)
        || meta.get("key").map(String::as_str) != Some(key)
    {
        return Err(bad("cache entry has another key or format"));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&e.to_string()))?;
    let k = n.min(m);
    let mut raw = Vec::new();
    let mut vals: HashMap<&str, Vec<f64>> = HashMap::new();
    for (name, shape) in [("s", vec![k]), ("u", vec![n, k]), ("v", vec![m, k])] {
        let t = st.tensor(name).map_err(|e| bad(&e.to_string()))?;
        if t.shape() != shape.as_slice() {
            return Err(bad("cache entry has the wrong shape"));
        }
        let v: Vec<f64> = match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
            _ => return Err(bad("cache entry has an unexpected dtype")),
        };
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad("cache entry holds non-finite values"));
        }
        raw.push((name, t.data().to_vec()));
        vals.insert(name, v);
    }
    if meta.get("payload_sha256") != Some(&payload_hash(&raw)) {
        return Err(bad("cache entry payload hash mismatch"));
    }
    let u = &vals["u"];
    let v = &vals["v"];
    Ok(Svd {
        u: Mat::from_fn(n, k, |i, j| u[i * k + j]),
        s: vals["s"].clone(),
        v: Mat::from_fn(m, k, |i, j| v[i * k + j]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight() -> Matrix {
        let data = (0..12 * 7)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        Matrix::new(12, 7, data).unwrap()
    }

    #[test]
    fn second_lookup_hits_and_returns_the_same_svd() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SvdCache::new(dir.path());
        let w = weight();
        let (a, o1) = cache.get_or_compute(&w, Precision::F64).unwrap();
        let (b, o2) = cache.get_or_compute(&w, Precision::F64).unwrap();
        assert_eq!((o1, o2), (CacheOutcome::Miss, CacheOutcome::Hit));
        assert_eq!(a.s, b.s);
        assert_eq!(a.u, b.u);
        // f32 and f64 entries are distinct
        let (_, o3) = cache.get_or_compute(&w, Precision::F32).unwrap();
        assert_eq!(o3, CacheOutcome::Miss);
    }

    #[test]
    fn corrupt_entries_are_recomputed_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SvdCache::new(dir.path());
        let w = weight();
        let (good, _) = cache.get_or_compute(&w, Precision::F32).unwrap();
        let path = cache.path_for(&SvdCache::key(&w, Precision::F32)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // 1. a flipped payload byte (still a valid safetensors file)
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let (d, o) = cache.get_or_compute(&w, Precision::F32).unwrap();
        assert_eq!(o, CacheOutcome::Corrupt);
        assert_eq!(d.s, good.s);
        // 2. a truncated file
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (_, o) = cache.get_or_compute(&w, Precision::F32).unwrap();
        assert_eq!(o, CacheOutcome::Corrupt);
        // and the rewritten entry is valid again
        let (_, o) = cache.get_or_compute(&w, Precision::F32).unwrap();
        assert_eq!(o, CacheOutcome::Hit);
    }
}
