//! Machine concerns of a run: the candle device and dtype for the CLI's strings, and the
//! process's peak memory (Linux `/proc`).

use crate::error::{Error, Result};
use candle_core::{DType, Device};

/// Peak resident memory of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The candle device for a `--device` string.
pub fn device_for(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), |n| n.parse::<usize>())
                .map_err(|e| Error::InvalidArgument(format!("device `{s}`: {e}")))?;
            Device::new_cuda(ordinal).map_err(|e| {
                Error::InvalidArgument(format!(
                    "device `{s}`: {e} (build with `--features cuda` on a machine with nvcc)"
                ))
            })
        }
        o => Err(Error::InvalidArgument(format!(
            "device `{o}`: expected cpu, cuda or cuda:N"
        ))),
    }
}

/// The candle dtype for a `--dtype` string (f32 unless bf16 or f16).
pub fn dtype_for(s: &str) -> DType {
    match s {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    }
}
