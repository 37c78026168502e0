//! Where tensors live and in which precision the base weights are held: the `--device` and
//! `--dtype` values parsed once into validated enums (an unknown value is refused, never mapped
//! to a default), and the switch that makes the CPU run the composed candle ops CUDA runs.

use crate::error::{Error, Result};
use candle_core::{DType, Device};
use std::fmt;
use std::str::FromStr;

/// `cpu`, `cuda` (ordinal 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(Error::InvalidArgument(format!(
                    "device `{s}`: expected cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(0) => write!(f, "cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The candle device; CUDA needs a build with `--features cuda` and a driver.
    pub fn device(&self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::new_cuda(*n).map_err(|e| {
                Error::InvalidArgument(format!(
                    "device `{self}`: {e} (CUDA needs `cargo build --release --features cuda` and an NVIDIA driver)"
                ))
            }),
        }
    }
}

/// Precision of the frozen base weights. Adapter parameters (A, B, Δσ) and optimizer state are
/// f32 whatever this is (PEFT's mixed precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
    F16,
}

impl FromStr for WeightDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "bf16" => Ok(WeightDtype::Bf16),
            "f16" => Ok(WeightDtype::F16),
            _ => Err(Error::InvalidArgument(format!(
                "dtype `{s}`: expected f32, bf16 or f16"
            ))),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
        })
    }
}

impl WeightDtype {
    pub fn dtype(&self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::Bf16 => DType::BF16,
            WeightDtype::F16 => DType::F16,
        }
    }
}

/// The candle device for a `--device` string (configs and presets store the string).
pub fn device_for(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.device()
}

/// The candle dtype for a `--dtype` string; an unknown string is an error.
pub fn dtype_for(spec: &str) -> Result<DType> {
    Ok(spec.parse::<WeightDtype>()?.dtype())
}

use crate::env::COMPOSED_ENV;

thread_local! {
    static COMPOSED_HERE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the CPU runs the composed candle ops that CUDA runs (attention, RMSNorm, softmax,
/// SwiGLU, dropout, cross-entropy) instead of the fused CPU kernels, so that CUDA's code path is
/// tested on the CPU: `TSD_COMPOSED=1` (read once per process), or [`with_composed`] on this
/// thread. The choice is made when an op enters the graph, on the thread building it.
pub fn composed() -> bool {
    static COMPOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    COMPOSED_HERE.with(|c| c.get()).unwrap_or_else(|| {
        *COMPOSED.get_or_init(|| crate::env::composed().is_some_and(|v| v == "1"))
    })
}

/// Runs `f` with the composed (`true`) or fused (`false`) ops on this thread, whatever
/// `TSD_COMPOSED` says (tests run both paths in one process).
pub fn with_composed<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED_HERE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPOSED_HERE.with(|c| c.replace(Some(on))));
    f()
}

/// Refuses a `TSD_COMPOSED` value other than unset, `0` or `1`.
pub fn check_composed_env() -> Result<()> {
    match crate::env::composed() {
        None => Ok(()),
        Some(v) if v == "0" || v == "1" || v.is_empty() => Ok(()),
        Some(v) => Err(Error::InvalidArgument(format!(
            "{COMPOSED_ENV}=`{v}`: expected 0 or 1"
        ))),
    }
}

/// Whether the fused CPU kernels may run on a tensor on `device` with `dtype`.
pub fn fused_cpu(device: &Device, dtype: DType) -> bool {
    matches!(device, Device::Cpu) && dtype == DType::F32 && !composed()
}

/// Where to compute and the base weights' precision, shared by `train`, `eval`, `reproduce` and
/// `bench`. Unknown values are refused (exit 2).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`); for train the
    /// --config file's, for reproduce the preset's when not given [default: cpu]
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Dtype of the frozen base weights: f32, bf16 or f16; adapter parameters, their optimizer
    /// state and the adapter's arithmetic stay f32; for train the --config file's, for reproduce
    /// the preset's when not given [default: f32]
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<WeightDtype>,
}

impl DeviceArgs {
    /// The candle device and dtype, `cpu`/`f32` where not given; refuses a bad `TSD_COMPOSED`.
    pub fn resolve(&self) -> Result<(Device, DType)> {
        check_composed_env()?;
        Ok((
            self.device.unwrap_or(DeviceSpec::Cpu).device()?,
            self.dtype.unwrap_or(WeightDtype::F32).dtype(),
        ))
    }

    /// The device and dtype names (`cpu`, `f32` where not given), checked as [`Self::resolve`].
    pub fn names(&self) -> Result<(String, String)> {
        self.resolve()?;
        Ok((
            self.device.unwrap_or(DeviceSpec::Cpu).to_string(),
            self.dtype.unwrap_or(WeightDtype::F32).to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_strings_round_trip_and_unknown_ones_are_refused() {
        for s in ["cpu", "cuda", "cuda:3"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("cuda:0".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for s in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(s.parse::<DeviceSpec>().is_err(), "{s}");
        }
        for s in ["f32", "bf16", "f16"] {
            assert_eq!(s.parse::<WeightDtype>().unwrap().to_string(), s);
        }
        assert_eq!(dtype_for("bf16").unwrap(), DType::BF16);
        for s in ["fp32", "bfloat16", "f64", ""] {
            assert!(dtype_for(s).is_err(), "{s}");
        }
    }
}
