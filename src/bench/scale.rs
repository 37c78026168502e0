//! `tsd bench scale`: LoRA-Dash training steps across the switch on a random model of any shape,
//! device and dtype.

use super::median;
use super::random::RandomLlama;
use crate::error::Result;
use crate::svd_cache::SvdCache;
use serde::Serialize;
use std::time::Instant;

/// Options of [`bench_scale_train`].
#[derive(Clone, Debug, Serialize)]
pub struct ScaleOptions {
    /// Built-in config name or config.json path; `layers` overrides its layer count.
    pub config: String,
    pub layers: Option<usize>,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub dash_s: usize,
    /// LoRA steps before the switch; `steps` in all.
    pub dash_t: usize,
    pub steps: usize,
}

/// `tsd bench scale`: LoRA-Dash training steps on a random model of a given shape on any device
/// and dtype, crossing the switch: step times before and after it, the switch's wall time.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleBench {
    pub what: &'static str,
    pub options: ScaleOptions,
    pub model: String,
    pub base_params: u64,
    pub trainable_params_lora: u64,
    pub load_seconds: f64,
    /// Every step's seconds (device synchronised), the switch not included.
    pub step_seconds: Vec<f64>,
    /// Median over LoRA steps after the first (warm-up) one.
    pub lora_median_step_seconds: f64,
    /// Median over the Dash steps after the first one.
    pub dash_median_step_seconds: f64,
    pub lora_tokens_per_s: f64,
    pub dash_tokens_per_s: f64,
    pub switch_seconds: f64,
    pub losses: Vec<f64>,
    pub peak_rss_bytes: u64,
    pub threads: usize,
}

/// Runs [`ScaleOptions::steps`] LoRA-Dash steps (switch after `dash_t`) on a [`RandomLlama`]:
/// LoRA (α = 2r) on q, k, v, up, down of every layer, dropout 0.05, AdamW lr 1e-4, a fixed
/// `[batch, seq_len]` batch with every position labelled.
pub fn bench_scale_train(o: &ScaleOptions) -> Result<ScaleBench> {
    use crate::model::Llama;
    use crate::train::optim::{AdamW, AdamWConfig};
    use crate::weights::WeightSource;
    let config = scale_config(o)?;
    if o.dash_t == 0 || o.dash_t + 2 > o.steps {
        return Err(crate::Error::InvalidArgument(format!(
            "--dash-t {} and --steps {}: need 1 ≤ dash-t ≤ steps − 2 (a warm-up and a timed step on each side of the switch)",
            o.dash_t, o.steps
        )));
    }
    let device = crate::device::device_for(&o.device)?;
    let dtype = crate::device::dtype_for(&o.dtype)?;
    let src = RandomLlama {
        config: config.clone(),
        seed: 1,
    };
    let t = Instant::now();
    let mut model = Llama::load(&src, config, &device, dtype)?;
    device.synchronize()?;
    let load_seconds = t.elapsed().as_secs_f64();
    let mut opt = AdamW::new(AdamWConfig::default());
    super::add_lora(&mut model, o.rank, &mut opt)?;
    let trainable: u64 = opt.slots.iter().map(|s| s.var.elem_count() as u64).sum();
    let n = o.batch * o.seq_len;
    let steps = run_steps(o, &mut model, &mut opt)?;
    let (times, losses, switch_seconds) = (steps.times, steps.losses, steps.switch_seconds);
    let lora_steps = if o.dash_t > 1 {
        &times[1..o.dash_t]
    } else {
        &times[..1]
    };
    let lora_med = median(lora_steps);
    let dash_med = median(&times[o.dash_t + 1..]);
    Ok(ScaleBench {
        what: "LoRA-Dash training steps on a random LLaMA-shaped model, across the switch",
        options: o.clone(),
        model: src.describe(),
        base_params: src.total_params(),
        trainable_params_lora: trainable,
        load_seconds,
        lora_median_step_seconds: lora_med,
        dash_median_step_seconds: dash_med,
        lora_tokens_per_s: n as f64 / lora_med,
        dash_tokens_per_s: n as f64 / dash_med,
        step_seconds: times,
        switch_seconds,
        losses,
        peak_rss_bytes: crate::train::trainer::peak_rss_bytes(),
        threads: rayon::current_num_threads(),
    })
}

/// The model shape: a built-in config or a config.json, with `layers` overriding its layer count.
fn scale_config(o: &ScaleOptions) -> Result<crate::model::LlamaConfig> {
    use crate::model::LlamaConfig;
    let mut config = match LlamaConfig::builtin(&o.config) {
        Some(c) => c,
        None => {
            let p = std::path::Path::new(&o.config);
            LlamaConfig::from_json(crate::fsutil::read_json(p)?, p)?
        }
    };
    if let Some(l) = o.layers {
        config.num_hidden_layers = l;
    }
    Ok(config)
}

/// What [`run_steps`] measured.
struct Steps {
    times: Vec<f64>,
    losses: Vec<f64>,
    switch_seconds: f64,
}

/// The timed steps, the switch to LoRA-Dash before step `dash_t` (its Δσ added to `opt`).
fn run_steps(
    o: &ScaleOptions,
    model: &mut crate::model::Llama,
    opt: &mut crate::train::optim::AdamW,
) -> Result<Steps> {
    use crate::train::switch::{start_dash_all, DEFAULT_SVD_BUDGET};
    let device = model.device().clone();
    let vocab = model.config.vocab_size as u32;
    let (ids, targets) = super::fixed_batch(vocab, o.batch, o.seq_len, &device)?;
    let (mut times, mut losses, mut switch_seconds) = (Vec::new(), Vec::new(), 0.0);
    for step in 0..o.steps {
        if step == o.dash_t {
            let t = Instant::now();
            start_dash_all(
                model.linears_mut().collect(),
                o.dash_s,
                Default::default(),
                &SvdCache::disabled(),
                DEFAULT_SVD_BUDGET,
            )?;
            for (i, lin) in model.linears().enumerate() {
                if let Some(d) = &lin.dash {
                    opt.add(format!("{i}.ds"), d.delta_sigma.clone())?;
                }
            }
            device.synchronize()?;
            switch_seconds = t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        let loss = super::train_step(model, &ids, &targets, opt, step)?;
        losses.push(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64);
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Steps {
        times,
        losses,
        switch_seconds,
    })
}

// The flags of `Which::Scale` (no doc comment here: the variant's is the subcommand's help).
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Shape: a built-in config (llama-7b, llama2-7b, llama3-8b) or a config.json path.
    #[arg(long, default_value = "llama-7b")]
    pub config: String,
    /// Override the config's layer count [default: the config's]
    #[arg(long)]
    pub layers: Option<usize>,
    #[command(flatten)]
    pub dev: crate::device::DeviceArgs,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// LoRA rank (α = 2r) on q, k, v, up, down.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Dash directions per module.
    #[arg(long, default_value_t = 8)]
    pub dash_s: usize,
    /// LoRA steps before the switch.
    #[arg(long, default_value_t = 4)]
    pub dash_t: usize,
    /// Steps in all (the switch falls between step dash-t and dash-t + 1).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Where to write the record.
    #[arg(long, default_value = "reproductions/bench/scale.json")]
    pub out: std::path::PathBuf,
}

impl ScaleArgs {
    /// The benchmark's options from the flags (the device and dtype checked).
    pub fn options(&self) -> Result<ScaleOptions> {
        let (device, dtype) = self.dev.names()?;
        Ok(ScaleOptions {
            config: self.config.clone(),
            layers: self.layers,
            device,
            dtype,
            batch: self.batch,
            seq_len: self.seq_len,
            rank: self.rank,
            dash_s: self.dash_s,
            dash_t: self.dash_t,
            steps: self.steps,
        })
    }
}
