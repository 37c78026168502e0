//! Decoding stored tensors (safetensors views) to f32, with dtype and finiteness checks.
//! f16/bf16/f32 convert to f32 exactly; f64 is rounded to f32 (tsd accumulates in f64 afterwards).

use crate::error::{Error, Result};
use crate::linalg::Matrix;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;

/// The float dtypes tsd reads.
pub const SUPPORTED_FLOATS: &str = "F32, F16, BF16, F64";

/// Decodes a float tensor to f32 values (row-major, as stored). Rejects NaN/Inf.
pub fn decode_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let b = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
                supported: SUPPORTED_FLOATS,
            })
        }
    };
    check_finite(path, name, &data)?;
    Ok(data)
}

/// Decodes an integer tensor (I64/I32/U8…) to `i64` values, e.g. stored direction indices.
pub fn decode_i64(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Vec<i64>> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
            .collect(),
        Dtype::U8 => b.iter().map(|&x| x as i64).collect(),
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => decode_f32(path, name, view)?
            .into_iter()
            .map(|x| x.round() as i64)
            .collect(),
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
                supported: "I64, I32, U8 or a float dtype",
            })
        }
    })
}

/// Decodes a 2-D float tensor into a [`Matrix`] `[rows, cols]`; 1-D tensors are refused.
pub fn decode_matrix(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Matrix> {
    let shape = view.shape();
    if shape.len() != 2 {
        return Err(Error::shape(
            format!("{}: {name}", path.display()),
            format!("expected a 2-D matrix, found shape {shape:?}"),
        ));
    }
    let data = decode_f32(path, name, view)?;
    Matrix::new(shape[0], shape[1], data)
}

/// Errors with the count and first position of non-finite values, if any.
pub fn check_finite(path: &Path, name: &str, data: &[f32]) -> Result<()> {
    let mut count = 0;
    let mut first = usize::MAX;
    for (i, x) in data.iter().enumerate() {
        if !x.is_finite() {
            count += 1;
            first = first.min(i);
        }
    }
    if count > 0 {
        return Err(Error::NonFinite {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            count,
            first,
        });
    }
    Ok(())
}

/// Maps a safetensors parse error to ours, keeping the path.
pub fn st_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
