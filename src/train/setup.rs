//! Setting a run up: the model with its adapters on the target modules, the data tokenized and
//! split, the schedule's length and the empty record. Fails before anything is written.

use super::data::{self, Batcher, Tokenized};
use super::device::{device_for, dtype_for};
use super::optim::{AdamW, AdamWConfig};
use super::prepare::{prepare, DataPlan, ModelTokenizer};
use super::trainer::Trainer;
use crate::adapter::config::{LayerIndexes, TargetModules};
use crate::adapter::plan::AdapterPlan;
use crate::adapter::AdapterConfig;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::names::LinearName;
use crate::names::Method;
use crate::run::record::{DataRecord, RunStart};
use crate::run::RunRecord;
use crate::run::TrainConfig;
use crate::svd_cache::SvdCache;
use crate::weights::{self, ModelSpec};
use std::path::Path;

/// FNV-1a of a module name: each module's LoRA init seed is `seed ^ fnv(module)`.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The PEFT config of a run on a model with `layers` layers: its targets in its top layers (all
/// layers without `top_layers`), its rank and alpha. The adapter plan is made from it and every
/// checkpoint is written with it, so that PEFT loads exactly the modules tsd trained.
pub(super) fn adapter_config(config: &TrainConfig, layers: usize) -> AdapterConfig {
    let from_layer = layers - config.top_layers.unwrap_or(layers).min(layers);
    AdapterConfig {
        r: config.rank,
        lora_alpha: config.alpha(),
        use_rslora: config.use_rslora,
        lora_dropout: config.dropout as f64,
        base_model_name_or_path: Some(config.model.clone()),
        revision: config.revision.clone(),
        target_modules: Some(TargetModules::List(config.targets.clone())),
        layers_to_transform: config
            .top_layers
            .map(|_| LayerIndexes::List((from_layer..layers).collect())),
        ..Default::default()
    }
}

/// `--init-adapter`: A and B of every adapted module from a PEFT LoRA adapter, which must hold
/// exactly the run's modules with the same ranks and scaling (no LoRA-Dash, no DoRA).
fn init_from_adapter(model: &mut Llama, dir: &Path) -> Result<()> {
    let adapter = crate::adapter::read_adapter(dir, None)?;
    let bad = |m: String| {
        Err(Error::InvalidArgument(format!(
            "--init-adapter {}: {m}",
            dir.display()
        )))
    };
    if adapter.has_dash() || adapter.modules.iter().any(|m| m.dora_magnitude.is_some()) {
        return bad("a plain LoRA adapter is needed (no LoRA-Dash, no DoRA)".into());
    }
    let mut used = 0;
    for lin in model.linears_mut() {
        let Some(l) = &lin.lora else { continue };
        let Some(m) = adapter.modules.iter().find(|m| m.module == lin.module) else {
            return bad(format!("no LoRA for {}", lin.module));
        };
        if m.r != l.r || (m.scaling - l.scaling).abs() > 1e-12 * l.scaling.abs().max(1.0) {
            return bad(format!(
                "{}: r {} scaling {} in the adapter, r {} scaling {} in the run",
                lin.module, m.r, m.scaling, l.r, l.scaling
            ));
        }
        lin.load_module_adapter(m)?;
        used += 1;
    }
    if used != adapter.modules.len() {
        return bad(format!(
            "{} module(s) in the adapter, {used} adapted in the run",
            adapter.modules.len()
        ));
    }
    Ok(())
}

/// Refuses a length cut beyond the model's positions or its sliding window.
fn check_context(model: &Llama, max_length: usize) -> Result<()> {
    let max_pos = model.max_positions();
    if max_length > max_pos {
        return Err(Error::InvalidArgument(format!(
            "cutoff_len {max_length} exceeds the model's {max_pos} positions (max_position_embeddings); lower --cutoff-len"
        )));
    }
    if let Some(w) = model.config.sliding_window.filter(|&w| max_length > w) {
        return Err(Error::InvalidArgument(format!(
            "cutoff_len {max_length} exceeds the model's sliding_window of {w}, which tsd does not implement; lower --cutoff-len"
        )));
    }
    Ok(())
}

/// The training examples of `config.data` (each file cut at `max_examples`), read and tokenized
/// for the model's tokenizer ([`super::prepare`]), then split into validation and training sets:
/// `(train, val, data record)`. Examples TRL would drop (no label left after the cut) are left out
/// before the split.
fn tokenized_split(
    config: &TrainConfig,
    mt: &ModelTokenizer,
) -> Result<(Vec<Tokenized>, Vec<Tokenized>, DataRecord)> {
    let plan = DataPlan {
        data: &config.data,
        max_examples: config.max_examples,
        cutoff_len: config.cutoff_len,
        loss_on: config.loss_on,
        train_on_inputs: config.train_on_inputs,
        template_file: config.template_file.as_deref().map(Path::new),
    };
    let prepared = prepare(&plan, mt)?;
    let examples = prepared.kept();
    if examples.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no training example has a token with loss after the cut to {} tokens (--cutoff-len)",
            prepared.data.max_length
        )));
    }
    let val_size = config.val_size_for(examples.len())?;
    let (tr_idx, val_idx) = data::split_validation(
        examples.len(),
        val_size,
        config.split_seed.unwrap_or(config.seed),
    )?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| examples[i].clone()).collect();
    Ok((pick(&tr_idx), pick(&val_idx), prepared.data))
}

/// Adapters (or full weights) on the modules `plan` names, registered with a new optimizer.
fn attach_adapters(model: &mut Llama, plan: &AdapterPlan, config: &TrainConfig) -> Result<AdamW> {
    let mut opt = AdamW::new(AdamWConfig {
        weight_decay: config.weight_decay,
        ..Default::default()
    });
    for (layer, block) in model.layers.iter_mut().enumerate() {
        for (kind, lin) in block.linears_mut() {
            let Some(a) = plan.get(LinearName { layer, kind }) else {
                continue;
            };
            match a.method {
                Method::Full => {
                    lin.make_full()?;
                    opt.add(
                        format!("{}.weight", lin.module),
                        lin.full.clone().expect("just made"),
                    )?;
                }
                Method::Lora | Method::LoraDash => {
                    lin.add_lora(
                        a.r,
                        a.alpha,
                        config.use_rslora,
                        config.seed ^ fnv(&lin.module),
                    )?;
                    let l = lin.lora.as_ref().expect("just added");
                    opt.add(format!("{}.lora_A", lin.module), l.a.clone())?;
                    opt.add(format!("{}.lora_B", lin.module), l.b.clone())?;
                }
            }
        }
    }
    Ok(opt)
}

impl Trainer {
    /// Everything a run needs before its first step; writes nothing.
    pub(super) fn build(config: TrainConfig, run_dir: &Path) -> Result<Self> {
        let device = device_for(&config.device)?;
        let dtype = dtype_for(&config.dtype)?;
        let path = crate::provision::resolve_path(&ModelSpec {
            spec: config.model.clone(),
            revision: config.revision.clone(),
            offline: false,
            local_only: false,
        })?;
        let src = weights::open_path(&path)?;
        let mut model = Llama::from_source(src.as_ref(), &device, dtype)?;
        if !config.frozen_products.is_f32() && !model.use_bf16_products()? {
            return Err(Error::InvalidArgument(
                "frozen_products bf16 needs a CPU with AVX512-BF16 (this one has none)".into(),
            ));
        }
        if config.frozen_products.is_f32() {
            // The fused head loss's forward on the head packed once where the kernel applies
            // (the same bits either way, so a run need not record which).
            model.use_packed_head()?;
        }
        let mt = ModelTokenizer::load(&path, config.template_file.as_deref().map(Path::new))?;
        let pad_id = mt.info.pad.unwrap_or(mt.info.eos);
        let (train, val, data) = tokenized_split(&config, &mt)?;
        check_context(&model, data.max_length)?;
        let lengths = train.iter().map(|t| t.input_ids.len()).collect();
        let batcher = match &config.data_order {
            None => Batcher::new(lengths, config.micro_batch_size, config.seed)?,
            Some(f) => Batcher::with_order(
                lengths,
                config.micro_batch_size,
                crate::fsutil::read_json::<Vec<Vec<usize>>>(Path::new(f))?,
            )?,
        };
        let accum = config.accumulation();
        let steps_per_epoch = (batcher.batches_per_epoch() / accum).max(1);
        let total_steps = config
            .max_steps
            .unwrap_or(((config.epochs * steps_per_epoch as f64).ceil() as usize).max(1));

        // Adapters on the modules the plan names (the target modules of the adapted layers).
        let layers = model.layers.len();
        let from_layer = layers - config.top_layers.unwrap_or(layers).min(layers);
        let plan = AdapterPlan::new(adapter_config(&config, layers), config.method, layers)?;
        let opt = attach_adapters(&mut model, &plan, &config)?;
        if let Some(dir) = &config.init_adapter {
            init_from_adapter(&mut model, Path::new(dir))?;
        }
        let trainable = super::trainer::trainable_params(&model, &config);
        let record = RunRecord::start(RunStart {
            config: config.clone(),
            data,
            base_files: crate::run::record::base_files(&path)?,
            base_params: src.total_params(),
            trainable_params: trainable,
            total_steps,
            train_examples: train.len(),
            val_examples: val.len(),
        });
        Ok(Trainer {
            config,
            run_dir: run_dir.to_path_buf(),
            model,
            lower_cache: None,
            train,
            val,
            batcher,
            pad_id,
            opt,
            step: 0,
            total_steps,
            steps_per_epoch,
            from_layer,
            record,
            cache: SvdCache::default_location(),
            dash_active: false,
            elapsed_before: 0.0,
        })
    }
}
