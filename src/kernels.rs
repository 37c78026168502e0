//! The matrix-kernel path this process runs: which of `gemm`'s f32 kernels candle's matmuls (and
//! faer's SVD products) use on this CPU, and the CPU features that decided it.
//!
//! `gemm` 0.19 picks its kernel once per process at run time (`gemm-common`'s `init_gemm_fn`):
//! with its `x86-v4` feature (Cargo.toml turns it on) the AVX-512F kernels when `avx512f` is
//! detected, else the AVX2+FMA kernels when `fma` is, else scalar code; on aarch64 NEON when `neon`
//! is detected. faer's own products (`private-gemm-x86`: AVX-512 when `avx512f`, AVX2 when `avx2`
//! and `fma`, else `gemm`) pick the same vector width on every x86 CPU that has AVX2 with its FMA.
//! Results are bit-identical on one path and may differ in the last bits across paths (README,
//! "Determinism"). This module only reports the choice; nothing here changes it.

use serde::{Deserialize, Serialize};

/// The kernel path, as records name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPath {
    /// `avx512f`, `avx2+fma`, `neon` or `scalar`.
    pub name: String,
    /// The CPU features `gemm`'s choice reads, each with whether this CPU has it, in the order it
    /// tests them (e.g. `["-avx512f", "+fma"]`; `+` present, `-` absent).
    pub features: Vec<String>,
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.features.join(" "))
    }
}

/// The path from the detected features, `gemm`'s rule on x86: `avx512f` first, then `fma`.
fn x86_path(avx512f: bool, fma: bool) -> KernelPath {
    let name = if avx512f {
        "avx512f"
    } else if fma {
        "avx2+fma"
    } else {
        "scalar"
    };
    let mark = |on: bool, f: &str| format!("{}{f}", if on { "+" } else { "-" });
    let mut features = vec![mark(avx512f, "avx512f")];
    // gemm stops at the first feature found; the ones after it do not decide anything.
    if !avx512f {
        features.push(mark(fma, "fma"));
    }
    KernelPath {
        name: name.into(),
        features,
    }
}

/// The kernel path `gemm` takes in this process (the same runtime detection it runs).
pub fn current() -> KernelPath {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        x86_path(
            std::arch::is_x86_feature_detected!("avx512f"),
            std::arch::is_x86_feature_detected!("fma"),
        )
    }
    #[cfg(target_arch = "aarch64")]
    {
        let neon = std::arch::is_aarch64_feature_detected!("neon");
        KernelPath {
            name: if neon { "neon" } else { "scalar" }.into(),
            features: vec![format!("{}neon", if neon { "+" } else { "-" })],
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        KernelPath {
            name: "scalar".into(),
            features: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_rule_is_gemms() {
        assert_eq!(x86_path(true, true).name, "avx512f");
        assert_eq!(x86_path(true, true).features, ["+avx512f"]);
        assert_eq!(x86_path(false, true).name, "avx2+fma");
        assert_eq!(x86_path(false, true).features, ["-avx512f", "+fma"]);
        assert_eq!(x86_path(false, false).name, "scalar");
    }

    #[test]
    fn current_path_is_stable_and_named() {
        let p = current();
        assert_eq!(p, current());
        assert!(["avx512f", "avx2+fma", "neon", "scalar"].contains(&p.name.as_str()));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert_eq!(p.name, "avx512f");
        }
    }
}
