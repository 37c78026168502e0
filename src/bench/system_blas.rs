//! The system BLAS, opened at run time for `tsd bench roofline` only: Debian's OpenBLAS
//! (`libopenblas0-pthread`) and BLIS (`libblis4`), each through its `cblas_sgemm`. Nothing links
//! against them: where neither is installed tsd builds and runs the same, and the roofline says
//! which were not found and why.
//!
//! Every `unsafe` of this module is here: opening the library (its initialisers run), resolving
//! symbols with the C signatures their headers declare, and calling them. The safe wrappers check
//! slice lengths against the dimensions before a pointer crosses over.

use libloading::Library;
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

/// The libraries tried, in this order.
pub const KINDS: [BlasKind; 2] = [BlasKind::OpenBlas, BlasKind::Blis];

/// Which system BLAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlasKind {
    OpenBlas,
    Blis,
}

impl BlasKind {
    /// The name results are recorded under.
    /// The environment variable that overrides the kernels the library picks from CPUID, read
    /// when it is opened.
    pub fn kernels_env(self) -> &'static str {
        match self {
            BlasKind::OpenBlas => "OPENBLAS_CORETYPE",
            BlasKind::Blis => "BLIS_ARCH_TYPE",
        }
    }

    /// The prefix of the environment variables the library reads.
    pub fn env_prefix(self) -> &'static str {
        match self {
            BlasKind::OpenBlas => "OPENBLAS_",
            BlasKind::Blis => "BLIS_",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlasKind::OpenBlas => "OpenBLAS",
            BlasKind::Blis => "BLIS",
        }
    }

    /// The files tried, in order: the soname (the dynamic loader's search, Debian's
    /// `/etc/alternatives` link), then the multiarch directories the packages install into.
    pub fn candidates(self) -> &'static [&'static str] {
        match self {
            BlasKind::OpenBlas => &[
                "libopenblas.so.0",
                "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
                "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            ],
            BlasKind::Blis => &[
                "libblis.so.4",
                "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4",
                "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4",
                "/usr/lib/x86_64-linux-gnu/libblis.so.4",
            ],
        }
    }
}

/// What the roofline records of one opened library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlasInfo {
    /// `OpenBLAS` or `BLIS`.
    pub name: String,
    /// The file opened (the name given to the loader; see `resolved`).
    pub file: String,
    /// The file behind it, symbolic links followed, when it could be found.
    pub resolved: Option<String>,
    /// OpenBLAS: `openblas_get_config()`; BLIS: `bli_info_get_version_str()`.
    pub version: Option<String>,
    /// The kernel set picked at run time for this CPU: OpenBLAS `openblas_get_corename()`, BLIS
    /// `bli_arch_string(bli_arch_query_id())`.
    pub kernels: Option<String>,
    /// Threads as the library reports them after [`SystemBlas::set_threads`].
    pub threads: usize,
    /// How the library runs its threads (`pthreads`, `OpenMP`), when it says.
    pub threading: Option<String>,
    /// The environment variable that overrides the library's kernel choice, when it was set as
    /// the library was opened (`OPENBLAS_CORETYPE=SkylakeX`, `BLIS_ARCH_TYPE=…`).
    #[serde(default)]
    pub kernels_forced_by: Option<String>,
    /// Every `OPENBLAS_*` (OpenBLAS) or `BLIS_*` (BLIS) variable set in the environment as `NAME=value`:
    /// they can override the library's kernels, cache blocking and threads.
    #[serde(default)]
    pub environment: Vec<String>,
}

/// `cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)`, with
/// 32-bit integers (Debian's `libopenblas0` and `libblis4` both; checked for BLIS on opening).
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

/// How to set and read the library's thread count.
#[derive(Clone, Copy)]
enum Threads {
    /// `openblas_set_num_threads(int)`, `openblas_get_num_threads() -> int`.
    OpenBlas(unsafe extern "C" fn(c_int), unsafe extern "C" fn() -> c_int),
    /// `bli_thread_set_num_threads(dim_t)`, `bli_thread_get_num_threads() -> dim_t`; `dim_t` is
    /// BLIS's integer (64 bits in Debian's build, checked on opening).
    Blis(unsafe extern "C" fn(i64), unsafe extern "C" fn() -> i64),
}

/// One opened system BLAS. Opened once per process and never closed ([`open`] keeps it in a
/// static): unloading a library whose worker threads (OpenBLAS's pthreads, BLIS's OpenMP pool)
/// may still exist is unsafe.
pub struct SystemBlas {
    kind: BlasKind,
    file: String,
    // Keeps the code the pointers below point into mapped (never dropped: it lives in a static).
    _lib: Library,
    sgemm: Sgemm,
    threads: Threads,
    version: Option<String>,
    kernels: Option<String>,
    threading: Option<String>,
}

/// A C string a library returned (static storage in both libraries), as Rust text.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives the call.
unsafe fn c_text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    Some(
        unsafe { CStr::from_ptr(p) }
            .to_string_lossy()
            .trim()
            .to_string(),
    )
}

impl SystemBlas {
    /// Opens the first of `kind`'s candidate files that loads and exports what is needed;
    /// Err says, for each candidate, why not.
    fn load(kind: BlasKind) -> Result<SystemBlas, String> {
        let mut why = Vec::new();
        for file in kind.candidates() {
            match Self::load_file(kind, file) {
                Ok(b) => return Ok(b),
                Err(e) => why.push(format!("{file}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    fn load_file(kind: BlasKind, file: &str) -> Result<SystemBlas, String> {
        // SAFETY: loading runs the library's initialisers; OpenBLAS and BLIS only set up their
        // tables and (OpenBLAS) start sleeping worker threads.
        let lib = unsafe { Library::new(file) }.map_err(|e| e.to_string())?;
        // SAFETY (all `sym` calls): each type is the symbol's C prototype from the library's own
        // header (cblas.h, openblas_config.h, blis.h); the pointer is copied out and used only
        // while `lib` is loaded, which is for the rest of the process.
        fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
            unsafe { lib.get::<T>(name) }
                .map(|s| *s)
                .map_err(|e| format!("{name}: {e}"))
        }
        let sgemm: Sgemm = sym(&lib, "cblas_sgemm")?;
        let (threads, version, kernels, threading) = match kind {
            BlasKind::OpenBlas => {
                let set = sym::<unsafe extern "C" fn(c_int)>(&lib, "openblas_set_num_threads")?;
                let get = sym::<unsafe extern "C" fn() -> c_int>(&lib, "openblas_get_num_threads")?;
                let text = |name: &str| {
                    sym::<unsafe extern "C" fn() -> *const c_char>(&lib, name)
                        .ok()
                        // SAFETY: both return a pointer to a static NUL-terminated string.
                        .and_then(|f| unsafe { c_text(f()) })
                };
                let parallel =
                    sym::<unsafe extern "C" fn() -> c_int>(&lib, "openblas_get_parallel")
                        .ok()
                        // SAFETY: no arguments; returns 0 sequential, 1 pthreads, 2 OpenMP.
                        .map(|f| unsafe { f() });
                let threading = parallel.map(|p| {
                    match p {
                        0 => "sequential",
                        1 => "pthreads",
                        2 => "OpenMP",
                        _ => "unknown",
                    }
                    .to_string()
                });
                (
                    Threads::OpenBlas(set, get),
                    text("openblas_get_config"),
                    text("openblas_get_corename"),
                    threading,
                )
            }
            BlasKind::Blis => {
                // The low 32 bits of the return register hold the size whatever gint_t's width.
                let size = |name: &str| {
                    sym::<unsafe extern "C" fn() -> c_int>(&lib, name)
                        // SAFETY: no arguments; returns 32 or 64.
                        .map(|f| unsafe { f() })
                };
                let (int, blas_int) = (
                    size("bli_info_get_int_type_size")?,
                    size("bli_info_get_blas_int_type_size")?,
                );
                if int != 64 || blas_int != 32 {
                    return Err(format!(
                        "BLIS built with {int}-bit dim_t and {blas_int}-bit BLAS integers; \
                         tsd calls it with 64 and 32"
                    ));
                }
                let set = sym::<unsafe extern "C" fn(i64)>(&lib, "bli_thread_set_num_threads")?;
                let get = sym::<unsafe extern "C" fn() -> i64>(&lib, "bli_thread_get_num_threads")?;
                let version = sym::<unsafe extern "C" fn() -> *const c_char>(
                    &lib,
                    "bli_info_get_version_str",
                )
                .ok()
                // SAFETY: returns a static NUL-terminated string.
                .and_then(|f| unsafe { c_text(f()) });
                let kernels = match (
                    sym::<unsafe extern "C" fn() -> c_int>(&lib, "bli_arch_query_id"),
                    sym::<unsafe extern "C" fn(c_int) -> *const c_char>(&lib, "bli_arch_string"),
                ) {
                    // SAFETY: arch_t is a C enum (int); the string is static.
                    (Ok(id), Ok(name)) => unsafe { c_text(name(id())) },
                    _ => None,
                };
                let flag = |name: &str| {
                    sym::<unsafe extern "C" fn() -> c_int>(&lib, name)
                        .ok()
                        // SAFETY: no arguments; returns a C boolean.
                        .map(|f| unsafe { f() } != 0)
                };
                let threading = match (
                    flag("bli_info_get_enable_openmp"),
                    flag("bli_info_get_enable_pthreads"),
                ) {
                    (Some(true), _) => Some("OpenMP".to_string()),
                    (_, Some(true)) => Some("pthreads".to_string()),
                    (Some(false), Some(false)) => Some("sequential".to_string()),
                    _ => None,
                };
                (Threads::Blis(set, get), version, kernels, threading)
            }
        };
        Ok(SystemBlas {
            kind,
            file: file.to_string(),
            _lib: lib,
            sgemm,
            threads,
            version,
            kernels,
            threading,
        })
    }

    pub fn kind(&self) -> BlasKind {
        self.kind
    }

    /// Sets the library's threads (its own pool: OpenBLAS's pthreads, BLIS's OpenMP or pthreads).
    pub fn set_threads(&self, n: usize) {
        let n = n.max(1);
        match self.threads {
            // SAFETY: plain setters of the library's global thread count.
            Threads::OpenBlas(set, _) => unsafe { set(n.min(c_int::MAX as usize) as c_int) },
            Threads::Blis(set, _) => unsafe { set(n as i64) },
        }
    }

    /// The library's thread count as it reports it.
    pub fn threads(&self) -> usize {
        match self.threads {
            // SAFETY: plain getters.
            Threads::OpenBlas(_, get) => unsafe { get() }.max(0) as usize,
            Threads::Blis(_, get) => unsafe { get() }.max(0) as usize,
        }
    }

    /// What the roofline records of this library.
    pub fn info(&self) -> BlasInfo {
        BlasInfo {
            name: self.kind.name().to_string(),
            file: self.file.clone(),
            resolved: resolve(self.sgemm),
            version: self.version.clone(),
            kernels: self.kernels.clone(),
            threads: self.threads(),
            threading: self.threading.clone(),
            kernels_forced_by: std::env::var(self.kind.kernels_env())
                .ok()
                .map(|v| format!("{}={v}", self.kind.kernels_env())),
            environment: std::env::vars()
                .filter(|(k, _)| k.starts_with(self.kind.env_prefix()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        }
    }

    /// `c [m, n] = a [m, k] · b`, all row-major f32: `b` is `[n, k]` read as its transpose when
    /// `rhs_transposed` (`x·Wᵀ`, a linear's forward), else `[k, n]` — tsd's product
    /// ([`super::roofline::ProductShape`]). Panics when a slice's length is not its shape's.
    pub fn sgemm(
        &self,
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        rhs_transposed: bool,
        c: &mut [f32],
    ) {
        assert_eq!(a.len(), m * k, "lhs is [m, k]");
        assert_eq!(b.len(), k * n, "rhs is [k, n] or [n, k]");
        assert_eq!(c.len(), m * n, "out is [m, n]");
        let int = |x: usize| c_int::try_from(x).expect("BLAS dimensions fit a C int");
        let (trans_b, ldb) = if rhs_transposed {
            (CBLAS_TRANS, k)
        } else {
            (CBLAS_NO_TRANS, n)
        };
        if m == 0 || n == 0 {
            return;
        }
        // SAFETY: the lengths were checked above against m, k, n and the leading dimensions
        // (lda = k, ldb = k or n, ldc = n) of row-major storage; `c` is exclusively borrowed.
        unsafe {
            (self.sgemm)(
                CBLAS_ROW_MAJOR,
                CBLAS_NO_TRANS,
                trans_b,
                int(m),
                int(n),
                int(k),
                1.0,
                a.as_ptr(),
                int(k.max(1)),
                b.as_ptr(),
                int(ldb.max(1)),
                0.0,
                c.as_mut_ptr(),
                int(n),
            )
        }
    }
}

/// The file `f` (a symbol of the library) was loaded from, links followed: what the loader's
/// search found for a bare soname.
fn resolve(f: Sgemm) -> Option<String> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: `dladdr` fills `info` for an address inside a loaded object and returns non-zero;
    // `dli_fname` then points to the loader's own NUL-terminated path.
    let name = unsafe {
        if libc::dladdr(f as *const libc::c_void, info.as_mut_ptr()) == 0 {
            return None;
        }
        c_text(info.assume_init().dli_fname)?
    };
    Some(
        std::fs::canonicalize(&name)
            .map(|p| p.display().to_string())
            .unwrap_or(name),
    )
}

/// `kind` opened once for the process (never closed), or why it could not be.
pub fn open(kind: BlasKind) -> Result<&'static SystemBlas, String> {
    static OPENBLAS: OnceLock<Result<SystemBlas, String>> = OnceLock::new();
    static BLIS: OnceLock<Result<SystemBlas, String>> = OnceLock::new();
    let cell = match kind {
        BlasKind::OpenBlas => &OPENBLAS,
        BlasKind::Blis => &BLIS,
    };
    cell.get_or_init(|| SystemBlas::load(kind))
        .as_ref()
        .map_err(Clone::clone)
}
