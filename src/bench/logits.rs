//! `tsd bench logits`: a model's logits on a device and dtype against the CPU in f32.

use crate::error::Result;
use serde::Serialize;

/// `tsd bench logits`: a model's logits on a device and dtype against the CPU in f32.
#[derive(Clone, Debug, Serialize)]
pub struct LogitsCheck {
    pub what: &'static str,
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub tokens: usize,
    pub max_abs_logit: f64,
    pub max_abs_diff: f64,
    /// Positions whose argmax agrees with the CPU's.
    pub argmax_agreement: f64,
}

/// Logits of `model` (`default`, a path or a hub id) for a fixed 64-token sequence on
/// `device`/`dtype` vs CPU f32.
pub fn bench_logits(model: &str, device: &str, dtype: &str) -> Result<LogitsCheck> {
    use crate::model::Llama;
    use crate::nn::ForwardCtx;
    use candle_core::{DType, Device, Tensor};
    let path = crate::provision::resolve_path(&crate::weights::ModelSpec::new(model))?;
    let src = crate::weights::open_path(&path)?;
    let src = src.as_ref();
    let dev = crate::device::device_for(device)?;
    let dt = crate::device::dtype_for(dtype)?;
    let run = |d: &Device, t: DType, ids: &[u32]| -> Result<Vec<Vec<f32>>> {
        let m = Llama::from_source(src, d, t)?;
        let x = Tensor::new(vec![ids.to_vec()], d)?;
        Ok(m.forward(&x, &ForwardCtx::eval())?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    };
    let vocab = src
        .shape("model.embed_tokens.weight")
        .and_then(|s| s.first().copied())
        .unwrap_or(1) as u32;
    let ids: Vec<u32> = (0..64u32)
        .map(|i| i.wrapping_mul(2654435761).wrapping_add(i) % vocab)
        .collect();
    let want = run(&Device::Cpu, DType::F32, &ids)?;
    let got = run(&dev, dt, &ids)?;
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b]));
    let (mut scale, mut diff, mut agree) = (0f64, 0f64, 0usize);
    for (a, b) in got.iter().zip(&want) {
        for (x, y) in a.iter().zip(b) {
            scale = scale.max(y.abs() as f64);
            diff = diff.max((x - y).abs() as f64);
        }
        agree += (argmax(a) == argmax(b)) as usize;
    }
    Ok(LogitsCheck {
        what: "logits on DEVICE/DTYPE against the CPU in f32",
        model: src.describe(),
        device: device.into(),
        dtype: dtype.into(),
        tokens: ids.len(),
        max_abs_logit: scale,
        max_abs_diff: diff,
        argmax_agreement: agree as f64 / want.len().max(1) as f64,
    })
}
