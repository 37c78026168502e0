//! On-disk SVD cache. A frozen base weight's SVD never changes, so it is computed once and kept under
//! `$TSD_HOME/svd/<key>.safetensors`, where `key = xxh3-128(format, precision, shape, f32 bytes)`.
//!
//! Entry layout (safetensors, metadata `{"format":"pt", "tsd_svd":"2", "key", "payload_xxh3"}`):
//! `u` `[n, k]`, `s` `[k]`, `v` `[m, k]`, in F32 for f32-precision SVDs and F64 for f64 ones.
//! An entry is trusted only if it parses, its key and shapes match, every value is finite and the
//! payload checksum matches; anything else is recomputed and overwritten (atomically).
//!
//! Why xxh3 and not sha256: a warm LLaMA-7B inspect hashes ~18 GB of weights and ~28 GB of entries;
//! sha256 runs at ~0.4 GB/s here, xxh3 at ~10 GB/s. The key guards against accidents (another
//! weight, a changed file), not against someone who can write the cache directory: such a person
//! can plant any entry whatever the hash, and xxh3 collisions can be constructed on purpose.
//!
//! The cache is bounded (`TSD_SVD_CACHE_MAX`, default 32 GiB): a hit refreshes the entry's mtime,
//! and after each write the entries with the oldest mtimes are removed until the total fits.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::linalg::{svd, Basis, Matrix, Precision, Svd, SvdFactors};
use faer::Mat;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use xxhash_rust::xxh3::Xxh3;

const FORMAT: &str = "2";
/// The default size limit: one LLaMA-7B base at f32 (~29 GB) fits.
pub const DEFAULT_MAX_BYTES: u64 = 32 << 30;
/// Temporary files older than this in the cache directory belong to dead writers.
const STALE_TMP: Duration = Duration::from_secs(3600);

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

/// An SVD cache rooted at a directory (or disabled), with a size limit in bytes.
#[derive(Clone, Debug)]
pub struct SvdCache {
    dir: Option<PathBuf>,
    /// The size limit, or the reason `TSD_SVD_CACHE_MAX` could not be read (reported on first use).
    max_bytes: std::result::Result<u64, String>,
}

impl SvdCache {
    /// A cache in `dir` (created on first write) with the default size limit.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SvdCache {
            dir: Some(dir.into()),
            max_bytes: Ok(DEFAULT_MAX_BYTES),
        }
    }

    /// The same cache with another size limit.
    pub fn with_max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = Ok(max);
        self
    }

    /// A cache that never reads or writes.
    pub fn disabled() -> Self {
        SvdCache {
            dir: None,
            max_bytes: Ok(0),
        }
    }

    /// The cache under the tsd home directory (`$TSD_HOME/svd`), limited by `TSD_SVD_CACHE_MAX`.
    pub fn default_location() -> Self {
        let max_bytes = crate::env::svd_cache_max().unwrap_or(Ok(DEFAULT_MAX_BYTES));
        SvdCache {
            dir: Some(crate::env::tsd_home().join("svd")),
            max_bytes,
        }
    }

    /// The size limit in bytes (an invalid `TSD_SVD_CACHE_MAX` is a user error, exit 2).
    pub fn max_bytes(&self) -> Result<u64> {
        self.max_bytes.clone().map_err(Error::InvalidArgument)
    }

    /// The cache key of a weight for a given precision (32 hex digits).
    pub fn key(w: &Matrix, precision: Precision) -> String {
        let mut h = Xxh3::new();
        h.update(b"tsd-svd:");
        h.update(FORMAT.as_bytes());
        h.update(precision.to_string().as_bytes());
        h.update(&(w.rows as u64).to_le_bytes());
        h.update(&(w.cols as u64).to_le_bytes());
        #[cfg(target_endian = "little")]
        {
            // SAFETY: f32 has no padding and every byte pattern is a valid u8; on a little-endian
            // host these are exactly the little-endian bytes, hashed in place without a copy.
            let bytes = unsafe {
                std::slice::from_raw_parts(w.data.as_ptr().cast::<u8>(), 4 * w.data.len())
            };
            h.update(bytes);
        }
        #[cfg(not(target_endian = "little"))]
        {
            let mut buf = Vec::with_capacity(1 << 18);
            for chunk in w.data.chunks(1 << 16) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                h.update(&buf);
            }
        }
        format!("{:032x}", h.digest128())
    }

    fn path_for(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{key}.safetensors")))
    }

    /// The SVD of `w`, from the cache when a valid entry exists, else computed and stored.
    pub fn get_or_compute(&self, w: &Matrix, precision: Precision) -> Result<(Svd, CacheOutcome)> {
        Ok(match self.lookup(w, precision)? {
            Found::Entry(f) => (f.to_svd(), CacheOutcome::Hit),
            Found::Computed(d, outcome) => (d, outcome),
        })
    }

    /// The SVD of `w` as [`SvdFactors`]: a valid entry's U and V are read in place from the
    /// memory-mapped file (no f64 copy); a computed SVD is stored and handed out in its precision,
    /// so both give the same values.
    pub fn factors(&self, w: &Matrix, precision: Precision) -> Result<(SvdFactors, CacheOutcome)> {
        Ok(match self.lookup(w, precision)? {
            Found::Entry(f) => (f, CacheOutcome::Hit),
            Found::Computed(d, outcome) => (SvdFactors::from_svd(&d, precision), outcome),
        })
    }

    fn lookup(&self, w: &Matrix, precision: Precision) -> Result<Found> {
        let Some(path) = self.path_for("") else {
            return Ok(Found::Computed(svd(w, precision)?, CacheOutcome::Disabled));
        };
        let max = self.max_bytes()?;
        let dir = fsutil::parent_dir(&path);
        let key = Self::key(w, precision);
        let path = dir.join(format!("{key}.safetensors"));
        let mut outcome = CacheOutcome::Miss;
        if path.exists() {
            match load_entry(&path, &key, w.rows, w.cols) {
                Ok(f) => {
                    touch(&path);
                    return Ok(Found::Entry(f));
                }
                Err(_) => outcome = CacheOutcome::Corrupt,
            }
        }
        let d = svd(w, precision)?;
        // A cache that cannot be written (read-only home, full disk) must not fail the analysis.
        let stored = entry_bytes(&path, &key, &d, precision).and_then(|bytes| {
            if bytes.len() as u64 > max {
                return Ok(());
            }
            fsutil::atomic_write(&path, &bytes)?;
            evict(&dir, max, &path)
        });
        if let Err(e) = stored {
            eprintln!(
                "warning: could not write SVD cache entry {}: {e}",
                path.display()
            );
        }
        Ok(Found::Computed(d, outcome))
    }
}

/// What a lookup found: a valid entry, or an SVD it computed (and how it came to compute it).
enum Found {
    Entry(SvdFactors),
    Computed(Svd, CacheOutcome),
}

/// Marks an entry as recently used (its mtime drives eviction). A read-only cache keeps working.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes least-recently-used entries until the cache holds at most `max` bytes, never `keep`
/// (the entry just written), and temporary files of writers that died more than an hour ago.
/// Entries another process removes meanwhile are skipped; one that is being read stays readable
/// (the reader holds it open).
fn evict(dir: &Path, max: u64, keep: &Path) -> Result<()> {
    let now = SystemTime::now();
    let mut entries = Vec::new();
    let mut total = 0u64;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let Ok(e) = e else { continue };
        let Ok(meta) = e.metadata() else { continue };
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let mtime = meta.modified().unwrap_or(now);
        if name.starts_with(".tsd-tmp-") {
            if now.duration_since(mtime).unwrap_or_default() > STALE_TMP {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if !meta.is_file() || !name.ends_with(".safetensors") {
            continue;
        }
        total += meta.len();
        if path != keep {
            entries.push((mtime, name, meta.len(), path));
        }
    }
    entries.sort();
    for (_, _, len, path) in entries {
        if total <= max {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => total -= len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(())
}

fn payload_hash(tensors: &[(&str, &[u8])]) -> String {
    let mut h = Xxh3::new();
    for (name, bytes) in tensors {
        h.update(name.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    format!("{:032x}", h.digest128())
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

/// The bytes of an entry: a safetensors file with sorted metadata (deterministic).
fn entry_bytes(path: &Path, key: &str, d: &Svd, precision: Precision) -> Result<Vec<u8>> {
    let mut s_bytes = Vec::new();
    for &x in &d.s {
        push(&mut s_bytes, x, precision);
    }
    let tensors = [
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
    let slices: Vec<(&str, &[u8])> = tensors.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let metadata: BTreeMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("tsd_svd".to_string(), FORMAT.to_string()),
        ("key".to_string(), key.to_string()),
        ("payload_xxh3".to_string(), payload_hash(&slices)),
    ]
    .into();
    let st_err = |e: String| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e,
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, bytes)| {
            let view = safetensors::tensor::TensorView::new(dtype, shapes[name].clone(), bytes)
                .map_err(|e| st_err(e.to_string()))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<_>>()?;
    crate::weights::serialize::serialize_sorted(views, metadata).map_err(st_err)
}

/// Reads and validates an entry for an `n×m` weight. The file is memory-mapped and U, V are read
/// in place: a warm run passes over each payload once to check it, and once per product.
fn load_entry(path: &Path, key: &str, n: usize, m: usize) -> Result<SvdFactors> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: entries are only ever replaced by rename, never modified in place, so the mapped
    // file does not change under us; a truncated or garbled file is caught by the checks below.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    factors_from_map(Arc::new(map), key, n, m).map_err(|r| Error::Safetensors {
        path: path.to_path_buf(),
        reason: r,
    })
}

/// Validates an entry's bytes (any bytes: this is fuzzed) for an `n×m` weight; the factors are
/// read from a copy of them.
pub fn parse_entry(
    bytes: &[u8],
    key: &str,
    n: usize,
    m: usize,
) -> std::result::Result<SvdFactors, String> {
    let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| e.to_string())?;
    map[..bytes.len()].copy_from_slice(bytes);
    let map = map.make_read_only().map_err(|e| e.to_string())?;
    factors_from_map(Arc::new(map), key, n, m)
}

/// Byte ranges (within the file) and dtypes of an entry's tensors, after every check but
/// finiteness.
struct Layout {
    /// `(range, is_f64)` of `s`, `u`, `v`.
    tensors: [(Range<usize>, bool); 3],
}

fn check_entry(bytes: &[u8], key: &str, n: usize, m: usize) -> std::result::Result<Layout, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("tsd_svd").map(String::as_str) != Some(FORMAT)
        || meta.get("key").map(String::as_str) != Some(key)
    {
        return Err("cache entry has another key or format".into());
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let k = n.min(m);
    let mut raw: Vec<(&str, &[u8])> = Vec::new();
    let mut tensors = Vec::new();
    for (name, shape) in [("s", vec![k]), ("u", vec![n, k]), ("v", vec![m, k])] {
        let t = st.tensor(name).map_err(|e| e.to_string())?;
        if t.shape() != shape.as_slice() {
            return Err("cache entry has the wrong shape".into());
        }
        if !matches!(t.dtype(), Dtype::F32 | Dtype::F64) {
            return Err("cache entry has an unexpected dtype".into());
        }
        let start = t.data().as_ptr() as usize - bytes.as_ptr() as usize;
        tensors.push((start..start + t.data().len(), t.dtype() == Dtype::F64));
        raw.push((name, t.data()));
    }
    if meta.get("payload_xxh3") != Some(&payload_hash(&raw)) {
        return Err("cache entry payload checksum mismatch".into());
    }
    let tensors = tensors
        .try_into()
        .map_err(|_| "three tensors".to_string())?;
    Ok(Layout { tensors })
}

fn factors_from_map(
    map: Arc<memmap2::Mmap>,
    key: &str,
    n: usize,
    m: usize,
) -> std::result::Result<SvdFactors, String> {
    let layout = check_entry(&map, key, n, m)?;
    let k = n.min(m);
    let [(s_at, s64), (u_at, u64), (v_at, v64)] = layout.tensors;
    let sb = &map[s_at];
    let s: Vec<f64> = if s64 {
        sb.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    } else {
        sb.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect()
    };
    let wrong = || "cache entry tensor has the wrong size".to_string();
    let u = Basis::mapped(&map, u_at, u64, n, k).ok_or_else(wrong)?;
    let v = Basis::mapped(&map, v_at, v64, m, k).ok_or_else(wrong)?;
    if !s.iter().all(|x| x.is_finite()) || !u.all_finite() || !v.all_finite() {
        return Err("cache entry holds non-finite values".into());
    }
    Ok(SvdFactors { s, u, v })
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

    fn weight_seeded(seed: usize) -> Matrix {
        let data = (0..12 * 7)
            .map(|i| (((i + seed) * 37 % 11) as f32 - 5.0) / 3.0 + seed as f32)
            .collect();
        Matrix::new(12, 7, data).unwrap()
    }

    fn present(cache: &SvdCache, w: &Matrix) -> bool {
        cache
            .path_for(&SvdCache::key(w, Precision::F32))
            .unwrap()
            .exists()
    }

    #[test]
    fn least_recently_used_entries_are_evicted_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (w1, w2, w3) = (weight_seeded(1), weight_seeded(2), weight_seeded(3));
        let probe = SvdCache::new(dir.path());
        probe.get_or_compute(&w1, Precision::F32).unwrap();
        let entry = std::fs::metadata(probe.path_for(&SvdCache::key(&w1, Precision::F32)).unwrap())
            .unwrap()
            .len();
        // Room for two entries, not three.
        let cache = SvdCache::new(dir.path()).with_max_bytes(2 * entry + entry / 2);
        let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
        pause();
        cache.get_or_compute(&w2, Precision::F32).unwrap();
        pause();
        // w1 is used again: now w2 is the least recently used.
        assert_eq!(
            cache.get_or_compute(&w1, Precision::F32).unwrap().1,
            CacheOutcome::Hit
        );
        pause();
        cache.get_or_compute(&w3, Precision::F32).unwrap();
        assert!(present(&cache, &w1) && present(&cache, &w3));
        assert!(!present(&cache, &w2));
        // An entry larger than the whole limit is computed but not kept.
        let tiny = SvdCache::new(dir.path()).with_max_bytes(entry / 2);
        let w4 = weight_seeded(4);
        assert_eq!(
            tiny.get_or_compute(&w4, Precision::F32).unwrap().1,
            CacheOutcome::Miss
        );
        assert!(!present(&tiny, &w4));
    }

    #[test]
    fn stale_temporary_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".tsd-tmp-dead");
        let fresh = dir.path().join(".tsd-tmp-alive");
        std::fs::write(&stale, b"partial").unwrap();
        std::fs::write(&fresh, b"partial").unwrap();
        let old = SystemTime::now() - 2 * STALE_TMP;
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        SvdCache::new(dir.path())
            .get_or_compute(&weight(), Precision::F32)
            .unwrap();
        assert!(!stale.exists());
        assert!(
            fresh.exists(),
            "a writer that may still be alive keeps its file"
        );
    }

    #[test]
    fn sizes_parse_with_binary_suffixes_and_garbage_is_refused() {
        assert_eq!(crate::env::parse_size("123"), Some(123));
        assert_eq!(crate::env::parse_size("32G"), Some(32 << 30));
        assert_eq!(crate::env::parse_size("500MiB"), Some(500 << 20));
        assert_eq!(crate::env::parse_size("1.5K"), Some(1536));
        assert_eq!(crate::env::parse_size("2TB"), Some(2 << 40));
        for bad in ["", "G", "-1G", "lots", "1e400", "NaN"] {
            assert_eq!(crate::env::parse_size(bad), None, "{bad:?}");
        }
        let c = SvdCache {
            dir: Some("x".into()),
            max_bytes: Err("TSD_SVD_CACHE_MAX=\"lots\" is not a size".into()),
        };
        let e = c.get_or_compute(&weight(), Precision::F32).unwrap_err();
        assert!(
            e.is_user_input() && e.to_string().contains("TSD_SVD_CACHE_MAX"),
            "{e}"
        );
    }

    #[test]
    fn the_key_depends_on_shape_bytes_and_precision() {
        let w = weight();
        let k = SvdCache::key(&w, Precision::F32);
        assert_eq!(k.len(), 32);
        assert_ne!(k, SvdCache::key(&w, Precision::F64));
        let t = Matrix::new(7, 12, w.data.clone()).unwrap();
        assert_ne!(k, SvdCache::key(&t, Precision::F32));
        let mut w2 = w.clone();
        w2.data[40] = f32::from_bits(w2.data[40].to_bits() ^ 1);
        assert_ne!(k, SvdCache::key(&w2, Precision::F32));
        assert_eq!(k, SvdCache::key(&weight(), Precision::F32));
    }
}
