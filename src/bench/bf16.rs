//! `tsd bench bf16`: the bf16 frozen-weight kernel ([`crate::nn::bf16`]) against tsd's f32 product
//! (candle's matmul through [`crate::nn::frozen::matmul_2d`]) on the default model's product
//! shapes, timed interleaved in one process; and, on the default model, the logits and loss of a
//! fixed batch with bf16 products against f32 products.

use crate::error::Result;
use crate::nn::bf16::{self, PackedBf16};
use crate::nn::frozen::matmul_2d;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug)]
pub struct Bf16Options {
    /// Timed samples per path and shape (medians reported).
    pub runs: usize,
    /// Least milliseconds of one sample (calls are repeated to fill it).
    pub min_ms: f64,
    /// Rows of the training products.
    pub tokens: usize,
    /// Rows of the decode products (besides 1 row).
    pub decode_rows: usize,
    /// Also compare logits and loss on the default model.
    pub model: bool,
}

/// One product shape: `y[m, n] = x[m, k] · B` for a frozen linear's forward (`B = Wᵀ`) or input
/// gradient (`B = W`).
#[derive(Clone, Debug, Serialize)]
pub struct Bf16Shape {
    pub name: String,
    /// `forward` (`x·Wᵀ`) or `backward` (`g·W`).
    pub product: &'static str,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Median milliseconds per call.
    pub f32_ms: f64,
    pub bf16_ms: f64,
    pub f32_gflops: f64,
    pub bf16_gflops: f64,
    /// `bf16_gflops / f32_gflops`.
    pub speedup: f64,
}

/// The default model's logits and loss with bf16 products against f32 products.
#[derive(Clone, Debug, Serialize)]
pub struct Bf16Accuracy {
    pub model: String,
    pub batch: usize,
    pub seq_len: usize,
    pub max_abs_logit: f64,
    pub max_abs_logit_diff: f64,
    /// `max |Δlogit| / max |logit|`.
    pub relative_logit_diff: f64,
    /// RMS of `Δlogit` over every logit.
    pub rms_logit_diff: f64,
    /// Positions whose argmax agrees.
    pub argmax_agreement: f64,
    pub loss_f32: f64,
    pub loss_bf16: f64,
    pub loss_diff: f64,
    /// The fused training loss (LM head and cross-entropy, [`crate::model::Llama::head_loss`]).
    pub head_loss_f32: f64,
    pub head_loss_bf16: f64,
    /// Seconds of the eval forward of the batch (median of 3; these first, then the bf16 ones)
    /// with f32 products.
    pub forward_s_f32: f64,
    /// The same with bf16 products.
    pub forward_s_bf16: f64,
    /// Seconds of a LoRA training step (r = 8 on q,k,v,up,down; forward, fused head loss,
    /// backward, AdamW) on the batch, median of 3 after one warm-up, with f32 products (these
    /// after the bf16 ones).
    pub train_step_s_f32: f64,
    /// The same with bf16 products.
    pub train_step_s_bf16: f64,
    /// Whether a second bf16 forward gave the same logits, bit for bit.
    pub bf16_repeatable: bool,
}

/// The record of `tsd bench bf16`.
#[derive(Clone, Debug, Serialize)]
pub struct Bf16Bench {
    pub what: &'static str,
    pub cpu: String,
    pub kernel_available: bool,
    pub threads: usize,
    pub runs: usize,
    pub min_sample_ms: f64,
    pub loadavg_before: Vec<f64>,
    pub loadavg_after: Vec<f64>,
    pub shapes: Vec<Bf16Shape>,
    pub accuracy: Option<Bf16Accuracy>,
}

/// Seconds per call of `f`, over calls filling at least `min_s`.
fn sample(f: &mut dyn FnMut() -> Result<()>, reps: usize) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

/// The default model's product shapes `(name, product, m, k, n)`.
fn shapes(tokens: usize, decode: usize) -> Vec<(String, &'static str, usize, usize, usize)> {
    let (h, i, v, kv) = (576, 1536, 49152, 192);
    let fwd = [
        ("q,o", h, h),
        ("k,v", h, kv),
        ("gate,up", h, i),
        ("down", i, h),
        ("lm_head", h, v),
    ];
    let mut out = Vec::new();
    for &(name, k, n) in &fwd {
        out.push((name.to_string(), "forward", tokens, k, n));
    }
    for &(name, k, n) in &fwd {
        // The input gradient of a linear [n, k]: g [m, n] · W [n, k].
        out.push((name.to_string(), "backward", tokens, n, k));
    }
    // The fused head loss's 128-row blocks.
    out.push(("lm_head/128".into(), "forward", 128, h, v));
    out.push(("lm_head/128".into(), "backward", 128, v, h));
    for rows in [decode, 1] {
        for &(name, k, n) in &fwd {
            out.push((name.to_string(), "forward", rows, k, n));
        }
    }
    out
}

/// `tsd bench bf16`.
pub fn bench_bf16(o: &Bf16Options, progress: &dyn Fn(&str)) -> Result<Bf16Bench> {
    let loadavg_before = super::loadavg();
    let available = bf16::available();
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    if available {
        for (name, product, m, k, n) in shapes(o.tokens, o.decode_rows) {
            // The weight as the linear holds it: [out, in].
            let (out_f, in_f) = if product == "forward" { (n, k) } else { (k, n) };
            let w = Tensor::randn(0f32, 0.05, (out_f, in_f), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
            let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let packed = if product == "forward" {
                PackedBf16::pack(&wv, n, k)?
            } else {
                PackedBf16::pack_transposed(&wv, out_f, in_f)?
            };
            let b = if product == "forward" {
                w.t()?
            } else {
                w.clone()
            };
            let mut f32_path = || -> Result<()> {
                std::hint::black_box(matmul_2d(&x, &b)?);
                Ok(())
            };
            let mut bf16_path = || -> Result<()> {
                let mut y = vec![0f32; m * n];
                bf16::matmul(&xv, m, &packed, &mut y)?;
                std::hint::black_box(Tensor::from_vec(y, (m, n), &dev)?);
                Ok(())
            };
            let min_s = o.min_ms / 1e3;
            let reps = |f: &mut dyn FnMut() -> Result<()>| -> Result<usize> {
                let t = sample(f, 1)?;
                Ok(((min_s / t.max(1e-9)).ceil() as usize).max(1))
            };
            let (rf, rb) = (reps(&mut f32_path)?, reps(&mut bf16_path)?);
            let (mut tf, mut tb) = (Vec::new(), Vec::new());
            for s in 0..o.runs {
                // Alternate which path goes first.
                if s % 2 == 0 {
                    tf.push(sample(&mut f32_path, rf)?);
                    tb.push(sample(&mut bf16_path, rb)?);
                } else {
                    tb.push(sample(&mut bf16_path, rb)?);
                    tf.push(sample(&mut f32_path, rf)?);
                }
            }
            let (mf, mb) = (super::median(&tf), super::median(&tb));
            let flops = 2.0 * (m * k * n) as f64;
            let r = Bf16Shape {
                name,
                product,
                m,
                k,
                n,
                f32_ms: mf * 1e3,
                bf16_ms: mb * 1e3,
                f32_gflops: flops / mf / 1e9,
                bf16_gflops: flops / mb / 1e9,
                speedup: mf / mb,
            };
            progress(&format!(
                "{:<12} {:<8} {:>4}x{:>5}x{:>5}  f32 {:>7.1}  bf16 {:>7.1} GFLOP/s  x{:.2}",
                r.name, r.product, m, k, n, r.f32_gflops, r.bf16_gflops, r.speedup
            ));
            rows.push(r);
        }
    } else {
        progress("bf16: this CPU lacks AVX512-BF16; nothing to time");
    }
    let accuracy = if o.model && available {
        Some(model_accuracy()?)
    } else {
        None
    };
    Ok(Bf16Bench {
        what: "bf16 frozen-weight products (AVX512-BF16 vdpbf16ps, f32 sums) vs tsd's f32 \
               products (candle/gemm), interleaved; medians",
        cpu: super::cpu_name(),
        kernel_available: available,
        threads: rayon::current_num_threads(),
        runs: o.runs,
        min_sample_ms: o.min_ms,
        loadavg_before,
        loadavg_after: super::loadavg(),
        shapes: rows,
        accuracy,
    })
}

/// The default model's logits (eval forward of a fixed 4 × 128 batch) and mean cross-entropy
/// with f32 products, then with bf16 products (every frozen linear and the LM head).
fn model_accuracy() -> Result<Bf16Accuracy> {
    use crate::model::Llama;
    use crate::nn::ForwardCtx;
    let (batch, seq_len) = (4, 128);
    let dev = Device::Cpu;
    let path = crate::provision::default_model(false)?;
    let src = crate::weights::GgufModel::open(&path)?;
    let mut model = Llama::from_source(&src, &dev, candle_core::DType::F32)?;
    // LoRA's B starts at zero: the logits are the base model's until a step.
    let mut opt = crate::train::optim::AdamW::new(Default::default());
    super::add_lora(&mut model, 8, &mut opt)?;
    let vocab = model.config.vocab_size;
    let (ids, targets) = super::fixed_batch(vocab as u32, batch, seq_len, &dev)?;
    let n = batch * seq_len;
    let run = |model: &Llama| -> Result<(Vec<f32>, f64, f64)> {
        let logits = model
            .forward(&ids, &ForwardCtx::eval())?
            .reshape((n, vocab))?;
        let loss = crate::nn::loss::cross_entropy(&logits, &targets)?.to_scalar::<f32>()?;
        let h = model.final_hidden(&model.embed(&ids)?, 0, &ForwardCtx::eval())?;
        let head = model
            .head_loss(&h.reshape((n, model.config.hidden_size))?, &targets)?
            .to_scalar::<f32>()?;
        Ok((
            logits.flatten_all()?.to_vec1()?,
            f64::from(loss),
            f64::from(head),
        ))
    };
    let time = |m: &Llama| -> Result<Vec<f64>> {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(m.forward(&ids, &ForwardCtx::eval())?);
                Ok(t.elapsed().as_secs_f64())
            })
            .collect()
    };
    let (a, loss_a, head_a) = run(&model)?;
    let ta = time(&model)?;
    if !model.use_bf16_products()? {
        return Err(crate::Error::InvalidArgument(
            "bench bf16: the model did not take bf16 products".into(),
        ));
    }
    let (b, loss_b, head_b) = run(&model)?;
    let tb = time(&model)?;
    let (b2, _, _) = run(&model)?;
    let repeatable = b.iter().zip(&b2).all(|(x, y)| x.to_bits() == y.to_bits());
    let mut steps = |model: &Llama| -> Result<f64> {
        let mut t = Vec::new();
        for step in 0..4 {
            let start = Instant::now();
            super::train_step(model, &ids, &targets, &mut opt, step)?;
            t.push(start.elapsed().as_secs_f64());
        }
        Ok(super::median(&t[1..]))
    };
    let step_bf16 = steps(&model)?;
    model.drop_bf16_products();
    let step_f32 = steps(&model)?;
    let max_abs = a.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let (mut max_d, mut sq) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(&b) {
        let d = f64::from(x - y).abs();
        max_d = max_d.max(d);
        sq += d * d;
    }
    let argmax = |v: &[f32]| -> usize {
        v.iter()
            .enumerate()
            .max_by(|p, q| p.1.total_cmp(q.1))
            .map_or(0, |p| p.0)
    };
    let agree = a
        .chunks(vocab)
        .zip(b.chunks(vocab))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    Ok(Bf16Accuracy {
        model: super::DEFAULT_MODEL_NAME.to_string(),
        batch,
        seq_len,
        max_abs_logit: max_abs,
        max_abs_logit_diff: max_d,
        relative_logit_diff: max_d / max_abs.max(f64::MIN_POSITIVE),
        rms_logit_diff: (sq / a.len() as f64).sqrt(),
        argmax_agreement: agree as f64 / n as f64,
        loss_f32: loss_a,
        loss_bf16: loss_b,
        loss_diff: loss_b - loss_a,
        head_loss_f32: head_a,
        head_loss_bf16: head_b,
        forward_s_f32: super::median(&ta),
        forward_s_bf16: super::median(&tb),
        train_step_s_f32: step_f32,
        train_step_s_bf16: step_bf16,
        bf16_repeatable: repeatable,
    })
}

/// The terminal table of a record.
pub fn table(rec: &Bf16Bench) -> String {
    let mut out = vec![format!(
        "CPU: {}, tsd pool {} threads, bf16 kernel {}; load {:?} -> {:?}",
        rec.cpu,
        rec.threads,
        if rec.kernel_available {
            "available"
        } else {
            "unavailable"
        },
        rec.loadavg_before,
        rec.loadavg_after
    )];
    out.push(format!(
        "{:<12} {:<8} {:>17}  {:>9} {:>9}  {:>6}",
        "shape", "product", "m x k x n", "f32 GF/s", "bf16 GF/s", "ratio"
    ));
    for r in &rec.shapes {
        out.push(format!(
            "{:<12} {:<8} {:>17}  {:>9.1} {:>9.1}  {:>6.2}",
            r.name,
            r.product,
            format!("{}x{}x{}", r.m, r.k, r.n),
            r.f32_gflops,
            r.bf16_gflops,
            r.speedup
        ));
    }
    if let Some(a) = &rec.accuracy {
        out.push(format!(
            "{} ({}x{} tokens): max |logit| {:.3}, max |Δlogit| {:.4e} ({:.2e} relative), RMS \
             Δlogit {:.3e}, argmax agreement {:.4}; loss f32 {:.6} bf16 {:.6} (Δ {:+.3e}); fused \
             head loss f32 {:.6} bf16 {:.6}; eval forward {:.3} s f32, {:.3} s bf16; LoRA train step {:.3} s f32, {:.3} s bf16; bf16 logits repeatable: {}",
            a.model,
            a.batch,
            a.seq_len,
            a.max_abs_logit,
            a.max_abs_logit_diff,
            a.relative_logit_diff,
            a.rms_logit_diff,
            a.argmax_agreement,
            a.loss_f32,
            a.loss_bf16,
            a.loss_diff,
            a.head_loss_f32,
            a.head_loss_bf16,
            a.forward_s_f32,
            a.forward_s_bf16,
            a.train_step_s_f32,
            a.train_step_s_bf16,
            a.bf16_repeatable
        ));
    }
    out.join("\n") + "\n"
}
