//! `tsd bench bf16`: the bf16 frozen-weight kernel ([`crate::nn::bf16`]) against tsd's f32 product
//! (candle's matmul through [`crate::nn::frozen::matmul_2d`]) on the default model's product
//! shapes, timed interleaved in one process; and, on the default model, the logits and loss of a
//! batch of natural text (LLM-Adapters commonsense test examples, [`super::accuracy`]) with bf16
//! products against f32 products, beside the control: PyTorch's `torch.autocast` bf16 against
//! PyTorch's f32 on the same GGUF and tokens (`benches/torch_bf16_accuracy.py`), and tsd's f32
//! against PyTorch's f32 (the floor: two f32 implementations).

use super::accuracy::{self, LogitComparison};
use crate::data::Example;
use crate::error::{Error, Result};
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
    /// Rows and tokens per row of the accuracy batch.
    pub batch: usize,
    pub seq_len: usize,
    /// The commonsense test sets the accuracy batch is cut from, or None for the pseudo-random
    /// batch.
    pub text: Option<TestSets>,
    /// The Python that runs the PyTorch peer ([`TORCH_SCRIPT`]); None skips it.
    pub torch_python: Option<String>,
}

/// Test sets read from a data directory ([`accuracy::commonsense_tests`]).
#[derive(Clone, Debug)]
pub struct TestSets {
    pub dir: std::path::PathBuf,
    /// `(task, examples)`, sorted by task.
    pub tasks: Vec<(String, Vec<Example>)>,
}

impl TestSets {
    /// Every `<task>/test.json` of `dir` (refused when there is none).
    pub fn read(dir: &std::path::Path) -> Result<Self> {
        Ok(TestSets {
            dir: dir.to_path_buf(),
            tasks: accuracy::commonsense_tests(dir)?,
        })
    }
}

/// The PyTorch peer of the accuracy comparison, compiled in and run with `python -`.
pub const TORCH_SCRIPT: &str = include_str!("../../benches/torch_bf16_accuracy.py");

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

/// How many test examples of one task the accuracy batch holds (the last may be cut).
#[derive(Clone, Debug, Serialize)]
pub struct TaskExamples {
    pub task: String,
    pub examples: usize,
}

/// The PyTorch peer's identity, or why it was skipped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AccuracyPeer {
    pub ran: bool,
    pub script: String,
    pub python: Option<String>,
    pub torch: Option<String>,
    pub transformers: Option<String>,
    pub gguf: Option<String>,
    pub threads: Option<usize>,
    pub cpu_capability: Option<String>,
    /// The dtype of the logits under autocast (bf16: the LM head returns bf16).
    pub bf16_logits_dtype: Option<String>,
    pub skipped_because: Option<String>,
}

/// The default model's logits and loss with bf16 products against f32 products, and the control.
#[derive(Clone, Debug, Serialize)]
pub struct Bf16Accuracy {
    pub model: String,
    pub batch: usize,
    pub seq_len: usize,
    /// What the tokens are: `commonsense test examples: ARC-Challenge 3, …` or `pseudo-random
    /// token ids`.
    pub text: String,
    /// Where the test sets were read (portable), when they were.
    pub data: Option<String>,
    /// Test examples per task, in the round-robin's (sorted) order; empty for pseudo-random ids.
    pub tasks: Vec<TaskExamples>,
    /// sha256 of the [batch, seq_len] input ids as little-endian u32.
    pub input_ids_sha256: String,
    /// tsd with bf16 products against tsd with f32 products.
    pub tsd_bf16_vs_tsd_f32: LogitComparison,
    /// PyTorch under `torch.autocast("cpu", bfloat16)` against PyTorch in f32: the peer's bf16
    /// error, the control.
    pub torch_bf16_vs_torch_f32: Option<LogitComparison>,
    /// tsd in f32 against PyTorch in f32: the two implementations' difference before any bf16,
    /// the floor.
    pub tsd_f32_vs_torch_f32: Option<LogitComparison>,
    pub peer: AccuracyPeer,
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
        Some(model_accuracy(o, progress)?)
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

/// The accuracy batch: inputs [batch, seq_len], targets [batch · seq_len], and what it is.
struct AccuracyBatch {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    text: String,
    tasks: Vec<TaskExamples>,
}

/// Commonsense test examples through the default model's tokenizer (`o.text`), else the
/// pseudo-random ids of [`super::fixed_batch`], said so.
fn accuracy_batch(o: &Bf16Options, gguf: &std::path::Path, vocab: usize) -> Result<AccuracyBatch> {
    let Some(sets) = &o.text else {
        let (ids, targets) = super::fixed_batch(vocab as u32, o.batch, o.seq_len, &Device::Cpu)?;
        return Ok(AccuracyBatch {
            inputs: ids.flatten_all()?.to_vec1()?,
            targets,
            text: "pseudo-random token ids (no commonsense test sets: --data, $TSD_DATA or \
                   ../shared/data/commonsense)"
                .into(),
            tasks: Vec::new(),
        });
    };
    let tok = crate::model::tokenizer::load_tokenizer(gguf)?;
    let eos = crate::model::tokenizer::load_tokenizer_info(gguf)?.eos;
    text_batch(sets, &tok, eos, o.batch, o.seq_len)
}

/// `batch` rows of `seq_len` + 1 tokens of `sets`' examples ([`accuracy::round_robin_stream`]
/// encoded by `tok` as training encodes text, EOS between examples), and what they are.
fn text_batch(
    sets: &TestSets,
    tok: &crate::model::tokenizer::Tokenizer,
    eos: u32,
    batch: usize,
    seq_len: usize,
) -> Result<AccuracyBatch> {
    let encode = |t: &str| crate::model::tokenizer::encode(tok, t);
    let need = batch * (seq_len + 1);
    let (stream, counts) = accuracy::round_robin_stream(&sets.tasks, &encode, eos, need)?;
    let (inputs, targets) = accuracy::next_token_rows(&stream, batch, seq_len);
    let tasks: Vec<TaskExamples> = sets
        .tasks
        .iter()
        .zip(counts)
        .map(|((t, _), n)| TaskExamples {
            task: t.clone(),
            examples: n,
        })
        .collect();
    let list: Vec<String> = tasks
        .iter()
        .map(|t| format!("{} {}", t.task, t.examples))
        .collect();
    Ok(AccuracyBatch {
        inputs,
        targets,
        text: format!("commonsense test examples: {}", list.join(", ")),
        tasks,
    })
}

/// The default model's logits (eval forward of the accuracy batch) and losses with f32 products,
/// then with bf16 products (every frozen linear and the LM head); PyTorch's f32 and autocast-bf16
/// logits of the same ids when a Python is given; the three comparisons.
fn model_accuracy(o: &Bf16Options, progress: &dyn Fn(&str)) -> Result<Bf16Accuracy> {
    use crate::model::Llama;
    use crate::nn::ForwardCtx;
    let (batch, seq_len) = (o.batch, o.seq_len);
    let dev = Device::Cpu;
    let path = crate::provision::default_model(false)?;
    let src = crate::weights::GgufModel::open(&path)?;
    let mut model = Llama::from_source(&src, &dev, candle_core::DType::F32)?;
    // LoRA's B starts at zero: the logits are the base model's until a step.
    let mut opt = crate::train::optim::AdamW::new(Default::default());
    super::add_lora(&mut model, 8, &mut opt)?;
    let vocab = model.config.vocab_size;
    let ab = accuracy_batch(o, &path, vocab)?;
    progress(&format!(
        "bf16 accuracy: {batch}x{seq_len} tokens of {}",
        ab.text
    ));
    let ids = Tensor::from_vec(ab.inputs.clone(), (batch, seq_len), &dev)?;
    let targets = &ab.targets;
    let n = batch * seq_len;
    let run = |model: &Llama| -> Result<(Vec<f32>, f64)> {
        let logits = model
            .forward(&ids, &ForwardCtx::eval())?
            .reshape((n, vocab))?;
        let h = model.final_hidden(&model.embed(&ids)?, 0, &ForwardCtx::eval())?;
        let head = model
            .head_loss(&h.reshape((n, model.config.hidden_size))?, targets)?
            .to_scalar::<f32>()?;
        Ok((logits.flatten_all()?.to_vec1()?, f64::from(head)))
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
    let (a, head_a) = run(&model)?;
    let ta = time(&model)?;
    if !model.use_bf16_products()? {
        return Err(Error::InvalidArgument(
            "bench bf16: the model did not take bf16 products".into(),
        ));
    }
    let (b, head_b) = run(&model)?;
    let tb = time(&model)?;
    let repeatable = {
        let (b2, _) = run(&model)?;
        b.iter().zip(&b2).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    let mut steps = |model: &Llama| -> Result<f64> {
        let mut t = Vec::new();
        for step in 0..4 {
            let start = Instant::now();
            super::train_step(model, &ids, targets, &mut opt, step)?;
            t.push(start.elapsed().as_secs_f64());
        }
        Ok(super::median(&t[1..]))
    };
    let step_bf16 = steps(&model)?;
    model.drop_bf16_products();
    let step_f32 = steps(&model)?;
    drop(model);
    let tsd = accuracy::compare("tsd bf16", "tsd f32", &b, &a, vocab, targets)?;
    drop(b);
    let mut peer = AccuracyPeer {
        script: "benches/torch_bf16_accuracy.py (compiled into the binary, run with `python -`)"
            .into(),
        python: o.torch_python.as_deref().map(crate::fsutil::portable),
        ..Default::default()
    };
    let (mut torch_bf16, mut floor) = (None, None);
    match &o.torch_python {
        None => {
            peer.skipped_because =
                Some("no --torch-python and no $TSD_PYTHON: the PyTorch peer was not run".into())
        }
        Some(py) => {
            progress(&format!(
                "bf16 accuracy: PyTorch f32 and autocast-bf16 logits of the same ids ({py})…"
            ));
            let t = run_torch(py, &path, &ab.inputs, batch, seq_len, vocab)?;
            torch_bf16 = Some(accuracy::compare(
                "PyTorch bf16 autocast",
                "PyTorch f32",
                &t.bf16,
                &t.f32,
                vocab,
                targets,
            )?);
            floor = Some(accuracy::compare(
                "tsd f32",
                "PyTorch f32",
                &a,
                &t.f32,
                vocab,
                targets,
            )?);
            peer.ran = true;
            peer.torch = Some(t.info.torch);
            peer.transformers = Some(t.info.transformers);
            peer.gguf = t.info.gguf;
            peer.threads = Some(t.info.threads);
            peer.cpu_capability = t.info.cpu_capability;
            peer.bf16_logits_dtype = Some(t.info.bf16_logits_dtype);
        }
    }
    Ok(Bf16Accuracy {
        model: super::DEFAULT_MODEL_NAME.to_string(),
        batch,
        seq_len,
        text: ab.text,
        data: o
            .text
            .as_ref()
            .map(|t| crate::fsutil::portable(&t.dir.display().to_string())),
        tasks: ab.tasks,
        input_ids_sha256: accuracy::ids_sha256(&ab.inputs),
        tsd_bf16_vs_tsd_f32: tsd,
        torch_bf16_vs_torch_f32: torch_bf16,
        tsd_f32_vs_torch_f32: floor,
        peer,
        head_loss_f32: head_a,
        head_loss_bf16: head_b,
        forward_s_f32: super::median(&ta),
        forward_s_bf16: super::median(&tb),
        train_step_s_f32: step_f32,
        train_step_s_bf16: step_bf16,
        bf16_repeatable: repeatable,
    })
}

/// What the peer script prints on stdout.
#[derive(serde::Deserialize)]
struct PeerInfo {
    torch: String,
    transformers: String,
    gguf: Option<String>,
    threads: usize,
    cpu_capability: Option<String>,
    batch: usize,
    seq_len: usize,
    vocab: usize,
    bf16_logits_dtype: String,
}

/// The peer's logits: f32 and autocast bf16 (read back as f32), each [batch · seq_len, vocab].
struct PeerLogits {
    info: PeerInfo,
    f32: Vec<f32>,
    bf16: Vec<f32>,
}

/// The threads the peer runs on (`torch.set_num_threads`).
const PEER_THREADS: usize = 2;

/// Runs [`TORCH_SCRIPT`] with `python` (stdin carries the script) on the GGUF at `gguf` and the
/// ids `inputs` [batch, seq_len] (a JSON file in a temporary folder, where the script writes its
/// logits as raw little-endian f32).
fn run_torch(
    python: &str,
    gguf: &std::path::Path,
    inputs: &[u32],
    batch: usize,
    seq_len: usize,
    vocab: usize,
) -> Result<PeerLogits> {
    use std::io::Write;
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let rows: Vec<&[u32]> = inputs.chunks(seq_len).collect();
    let ids_path = dir.path().join("ids.json");
    let ids_json =
        serde_json::to_string(&rows).map_err(|e| Error::Internal(format!("accuracy ids: {e}")))?;
    std::fs::write(&ids_path, ids_json).map_err(|e| Error::io(&ids_path, e))?;
    let py = std::path::Path::new(python);
    let mut child = std::process::Command::new(python)
        .arg("-")
        .arg("--gguf")
        .arg(gguf)
        .arg("--ids")
        .arg(&ids_path)
        .arg("--out")
        .arg(dir.path())
        .args(["--threads", &PEER_THREADS.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(py, e))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(TORCH_SCRIPT.as_bytes())
        .map_err(|e| Error::io(py, e))?;
    let out = child.wait_with_output().map_err(|e| Error::io(py, e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "benches/torch_bf16_accuracy.py: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let info: PeerInfo = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Internal(format!("benches/torch_bf16_accuracy.py output: {e}")))?;
    if (info.batch, info.seq_len, info.vocab) != (batch, seq_len, vocab) {
        return Err(Error::Internal(format!(
            "benches/torch_bf16_accuracy.py: logits [{}, {}, {}], tsd's are [{batch}, {seq_len}, \
             {vocab}]",
            info.batch, info.seq_len, info.vocab
        )));
    }
    let read = |name: &str| -> Result<Vec<f32>> {
        let p = dir.path().join(name);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        if bytes.len() != batch * seq_len * vocab * 4 {
            return Err(Error::Internal(format!(
                "benches/torch_bf16_accuracy.py: {name} holds {} bytes, not [{}, {vocab}] f32",
                bytes.len(),
                batch * seq_len
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok(PeerLogits {
        f32: read("f32.bin")?,
        bf16: read("bf16.bin")?,
        info,
    })
}

/// The accuracy part of the table: the three comparisons side by side, then tsd's own checks.
fn accuracy_lines(a: &Bf16Accuracy) -> Vec<String> {
    let mut out = vec![
        format!(
            "{} on {}x{} tokens of {} (input ids sha256 {})",
            a.model,
            a.batch,
            a.seq_len,
            a.text,
            &a.input_ids_sha256[..16.min(a.input_ids_sha256.len())]
        ),
        format!(
            "{:<26} {:>18} {:>24} {:>20}",
            "", "tsd bf16 vs f32", "PyTorch autocast vs f32", "tsd f32 vs PyTorch"
        ),
    ];
    let cols = [
        Some(&a.tsd_bf16_vs_tsd_f32),
        a.torch_bf16_vs_torch_f32.as_ref(),
        a.tsd_f32_vs_torch_f32.as_ref(),
    ];
    type Metric = (&'static str, fn(&LogitComparison) -> String);
    let metrics: [Metric; 9] = [
        ("KL mean (nats)", |c| format!("{:.3e}", c.kl_mean)),
        ("KL max (nats)", |c| format!("{:.3e}", c.kl_max)),
        ("top-1 agreement", |c| format!("{:.4}", c.top1_agreement)),
        ("loss reference", |c| format!("{:.6}", c.loss_reference)),
        ("loss candidate", |c| format!("{:.6}", c.loss_candidate)),
        ("loss Δ", |c| format!("{:+.3e}", c.loss_diff)),
        ("RMS Δlogit", |c| format!("{:.3e}", c.rms_logit_diff)),
        ("max |Δlogit|", |c| format!("{:.3e}", c.max_abs_logit_diff)),
        ("max |logit| (reference)", |c| {
            format!("{:.3}", c.max_abs_logit_reference)
        }),
    ];
    for (name, f) in metrics {
        let v: Vec<String> = cols
            .iter()
            .map(|c| c.map_or_else(|| "-".to_string(), f))
            .collect();
        out.push(format!("{name:<26} {:>18} {:>24} {:>20}", v[0], v[1], v[2]));
    }
    if let Some(why) = &a.peer.skipped_because {
        out.push(format!("PyTorch peer: {why}"));
    } else {
        out.push(format!(
            "PyTorch peer: torch {}, transformers {}, {} threads, autocast logits {}",
            a.peer.torch.as_deref().unwrap_or("?"),
            a.peer.transformers.as_deref().unwrap_or("?"),
            a.peer.threads.unwrap_or(0),
            a.peer.bf16_logits_dtype.as_deref().unwrap_or("?")
        ));
    }
    out.push(format!(
        "tsd: fused head loss f32 {:.6} bf16 {:.6}; eval forward {:.3} s f32, {:.3} s bf16; LoRA \
         train step {:.3} s f32, {:.3} s bf16; bf16 logits repeatable: {}",
        a.head_loss_f32,
        a.head_loss_bf16,
        a.forward_s_f32,
        a.forward_s_bf16,
        a.train_step_s_f32,
        a.train_step_s_bf16,
        a.bf16_repeatable
    ));
    out
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
        out.extend(accuracy_lines(a));
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::{encode, load_tokenizer};
    use std::path::Path;

    /// The tiny fixture's tokenizer on two fixture test sets: rows of `seq_len` + 1 tokens cut
    /// from eval prompt + answer + EOS per example, round-robin in sorted task order.
    #[test]
    fn text_batch_of_fixture_test_sets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let tok = load_tokenizer(&root.join("tiny-llama")).unwrap();
        let load = |p: &str| crate::data::load_examples(&root.join(p)).unwrap();
        let sets = TestSets {
            dir: "data".into(),
            tasks: vec![
                (
                    "ARC-Easy".into(),
                    load("llm-adapters/ARC-Easy/train-head.json"),
                ),
                (
                    "social_i_qa".into(),
                    load("llm-adapters/social_i_qa/test-head.json"),
                ),
            ],
        };
        let eos = 2;
        let ids = |ex: &Example| {
            let mut v = encode(&tok, &accuracy::example_text(ex)).unwrap();
            v.push(eos);
            v
        };
        let stream: Vec<u32> = [
            &sets.tasks[0].1[0],
            &sets.tasks[1].1[0],
            &sets.tasks[0].1[1],
        ]
        .into_iter()
        .flat_map(ids)
        .collect();
        let first = ids(&sets.tasks[0].1[0]).len();
        // Two rows that need the second task's first example and part of the first's second.
        let seq_len = first;
        let b = text_batch(&sets, &tok, eos, 2, seq_len).unwrap();
        assert_eq!(b.inputs.len(), 2 * seq_len);
        assert_eq!(b.inputs[..seq_len], stream[..seq_len]);
        assert_eq!(b.targets[..seq_len], stream[1..=seq_len]);
        assert_eq!(b.inputs[seq_len..], stream[seq_len + 1..2 * seq_len + 1]);
        assert_eq!(b.targets[seq_len..], stream[seq_len + 2..2 * seq_len + 2]);
        // The first example ends with EOS, the last input of row 0.
        assert_eq!(b.inputs[seq_len - 1], eos);
        let counts: Vec<(&str, usize)> = b
            .tasks
            .iter()
            .map(|t| (t.task.as_str(), t.examples))
            .collect();
        assert_eq!(counts[0].0, "ARC-Easy");
        assert_eq!(counts[1], ("social_i_qa", 1));
        assert!(
            b.text.starts_with("commonsense test examples: ARC-Easy "),
            "{}",
            b.text
        );
        // More tokens than the fixtures hold is refused, not padded.
        assert!(text_batch(&sets, &tok, eos, 100, 128).is_err());
    }
}
