//! `tsd inspect`: per-module TSD analysis of an adapter against its base model.
//!
//! load (adapter, base, reference) → for each module in parallel: W, SVD (cached), change rates,
//! TSDs, amplification, Dash coefficients, capture against the reference → [`InspectReport`].
//! Nothing here prints or renders; the report is plain data (serde) for the table/JSON/CSV/HTML layers.

use crate::adapter::{Adapter, DashNaming, DashState, ModuleAdapter};
use crate::directions::null::{
    capture_test, enrichment_null, CaptureStatistic, EnrichmentNull, NullDraws, NullTest,
    RotationNull, Verdict,
};
use crate::directions::{
    amplification, capture, change_rates_on, subspace_similarity, top_k, Amplification, Capture,
    Ranking, SigmaFloor, Tsd, Update,
};
use crate::error::{Error, Result};
use crate::linalg::{Matrix, Precision, SvdFactors};
use crate::names::{LinearKind, LinearName};
use crate::run::base::{open_reference_with, DeclaredBase, RefSource};
use crate::svd_cache::{CacheOutcome, SvdCache};
use crate::weights::{ModelSpec, WeightSource};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Analysis settings (defaults follow README, Definitions).
#[derive(Clone, Debug, Serialize)]
pub struct InspectOptions {
    /// Number of TSDs to report per module (s = 8).
    pub top_s: usize,
    pub floor: SigmaFloor,
    pub precision: Precision,
    /// r for the amplification factor (None: each module's LoRA rank, as LoRA §7).
    pub amp_rank: Option<usize>,
    /// Seed of the random orthonormal reference basis.
    pub seed: u64,
    /// (k_pred, k_ref) for recall; the paper's recall@(8,4).
    pub recall_k: (usize, usize),
    /// (k_pred, k_ref) for accuracy; the paper's accuracy@(8,16).
    pub accuracy_k: (usize, usize),
    /// Keep σ and δ for every direction (needed for spectrum plots; large for big models).
    pub keep_spectrum: bool,
    /// How TSDs are picked and captures counted (default: the paper's change rate).
    #[serde(default)]
    pub tsd_by: Ranking,
    /// The null model's settings.
    pub null: NullOptions,
}

/// The null model's flags, shared by `inspect` and `track` (README, Definitions: the null of
/// direction metrics).
#[derive(clap::Args, Debug, Clone)]
pub struct NullArgs {
    /// How TSDs are picked and captures counted: the paper's change rate |uᵀΔWv|/σ, or
    /// enrichment |uᵀΔWv| against its null (spectrum-free)
    #[arg(long, value_enum, default_value = "change-rate")]
    pub tsd_by: crate::directions::TsdBy,
    /// Level of the capture tests (false-discovery rate across modules) and of the enrichment
    /// threshold (family-wise within a module)
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Most Monte-Carlo draws per capture p-value [default: ⌈20·modules/alpha⌉ within 1000–20000]
    #[arg(long)]
    pub null_draws: Option<usize>,
    /// Draws per module for the enrichment threshold
    #[arg(long, default_value_t = 1000)]
    pub enrichment_draws: usize,
    /// Skip the null model (faster; no figure then stands beside its null)
    #[arg(long)]
    pub no_null: bool,
}

impl NullArgs {
    /// The null's options as given (unvalidated: [`InspectOptions::validate`]).
    pub fn options(&self) -> NullOptions {
        NullOptions {
            enabled: !self.no_null,
            alpha: self.alpha,
            capture_draws: self.null_draws,
            enrichment_draws: self.enrichment_draws,
        }
    }
}

/// Settings of the rotation null (README, Definitions: the null of direction metrics).
#[derive(Clone, Debug, Serialize)]
pub struct NullOptions {
    /// Off: no null is drawn (every figure then stands without its control).
    pub enabled: bool,
    /// Level of the capture tests (false-discovery rate across modules) and of the enrichment
    /// threshold (family-wise within a module).
    pub alpha: f64,
    /// Most draws of a capture p-value; none: `⌈20·M/α⌉` for M modules with a reference, clamped
    /// to [1000, 20000] (the report records the number used).
    pub capture_draws: Option<usize>,
    /// Draws of each module's enrichment threshold.
    pub enrichment_draws: usize,
}

impl Default for NullOptions {
    fn default() -> Self {
        NullOptions {
            enabled: true,
            alpha: 0.05,
            capture_draws: None,
            enrichment_draws: 1000,
        }
    }
}

impl NullOptions {
    /// Refuses settings no test can run with (exit 2): `alpha` outside (0, 1), zero draws.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::InvalidArgument("--alpha must be in (0, 1)".into()));
        }
        if self.capture_draws == Some(0) || self.enrichment_draws == 0 {
            return Err(Error::InvalidArgument(
                "--null-draws and --enrichment-draws must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The capture test's draws for `tests` modules.
    pub fn draws(&self, tests: usize, seed: u64) -> NullDraws {
        let mut d = NullDraws::for_tests(tests, self.alpha, seed);
        d.max = match self.capture_draws {
            Some(n) => n.max(1),
            None => d.max.clamp(1000, 20_000),
        };
        d.min = d.min.min(d.max);
        d
    }
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            top_s: 8,
            floor: SigmaFloor::default(),
            precision: Precision::F32,
            amp_rank: None,
            seed: 0,
            recall_k: (8, 4),
            accuracy_k: (8, 16),
            keep_spectrum: false,
            tsd_by: Ranking::default(),
            null: NullOptions::default(),
        }
    }
}

/// What the capture metrics compare against.
pub enum Reference<'a> {
    /// Another adapter on the same base (e.g. a longer or higher-rank run).
    Adapter(&'a Adapter),
    /// A fine-tuned model: ΔW* = W* − W, dense.
    Model(&'a dyn WeightSource),
}

impl InspectOptions {
    /// Refuses settings no analysis can run with (exit 2): s = 0, a floor outside [0, 1), then
    /// the null's ([`NullOptions::validate`]).
    pub fn validate(&self) -> Result<()> {
        if self.top_s == 0 {
            return Err(Error::InvalidArgument("--top-s must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.floor.relative) {
            return Err(Error::InvalidArgument(
                "--sigma-floor must be in [0, 1)".into(),
            ));
        }
        self.null.validate()
    }
}

/// `tsd inspect`, validated: which adapter, against which base and reference, with which settings.
pub struct InspectPlan {
    pub adapter: PathBuf,
    /// Which adapter of the directory (`default` or a PEFT subfolder; none: the only one).
    pub adapter_name: Option<String>,
    /// The base as given (`--base`); none: the adapter's declared base, where it resolves locally.
    pub base: Option<ModelSpec>,
    /// Refuse a given base that cannot be shown to be the declared one (else a warning).
    pub strict_base: bool,
    /// Never touch the network (the declared base and a model reference included).
    pub offline: bool,
    /// An adapter, a run directory (its newest checkpoint) or a model ([`open_reference_with`]).
    pub reference: Option<String>,
    pub opts: InspectOptions,
    /// Read and write the SVD cache ($TSD_HOME/svd).
    pub use_cache: bool,
}

/// An inspection's inputs, opened: [`OpenedInspection::run`] analyses them.
pub struct OpenedInspection {
    pub adapter: Adapter,
    pub base: Box<dyn WeightSource>,
    pub reference: Option<(RefSource, String)>,
    pub cache: SvdCache,
}

impl InspectPlan {
    /// Reads the adapter, opens the base (`warn` sees the declared-base warning, if any) and the
    /// reference.
    pub fn open(&self, warn: &dyn Fn(&str)) -> Result<OpenedInspection> {
        let adapter = crate::adapter::read_adapter(&self.adapter, self.adapter_name.as_deref())?;
        let opened = crate::run::base::open_base(
            self.base.as_ref(),
            "--base",
            &adapter.path.display().to_string(),
            DeclaredBase::of_adapter(&adapter.path, &adapter.config).as_ref(),
            self.strict_base,
            self.offline,
        )?;
        if let Some(w) = &opened.warning {
            warn(w);
        }
        let reference = self
            .reference
            .as_deref()
            .map(|r| open_reference_with(r, self.offline))
            .transpose()?;
        let cache = if self.use_cache {
            SvdCache::default_location()
        } else {
            SvdCache::disabled()
        };
        Ok(OpenedInspection {
            adapter,
            base: opened.source,
            reference,
            cache,
        })
    }
}

impl OpenedInspection {
    /// [`inspect`] of the opened inputs; `progress` sees each finished module.
    pub fn run(
        &self,
        opts: &InspectOptions,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<InspectReport> {
        let reference = self
            .reference
            .as_ref()
            .map(|(r, n)| (Reference::from(r), n.clone()));
        inspect(
            &self.adapter,
            self.base.as_ref(),
            reference.as_ref().map(|(r, n)| (r, n.clone())),
            opts,
            &self.cache,
            progress,
        )
    }
}

impl<'a> From<&'a crate::run::base::RefSource> for Reference<'a> {
    fn from(src: &'a crate::run::base::RefSource) -> Self {
        match src {
            crate::run::base::RefSource::Adapter(a) => Reference::Adapter(a),
            crate::run::base::RefSource::Model(m) => Reference::Model(m.as_ref()),
        }
    }
}

/// Dash coefficients of one module and how they move the TSDs.
#[derive(Clone, Debug, Serialize)]
pub struct DashReport {
    pub s: usize,
    pub naming: DashNaming,
    /// Indices into W's σ; recovered from Ū for official checkpoints.
    pub indices: Vec<Option<usize>>,
    pub indices_recovered: bool,
    pub delta_sigma: Vec<f32>,
    pub delta_sigma_max_abs: f64,
    /// σ_i / σ_1 of each picked direction.
    pub sigma_ratio: Vec<Option<f64>>,
    /// `|u_iᵀ (scaling·BA) v_i| / σ_i` on each Dash direction: LoRA's own change rate.
    pub lora_rate: Vec<Option<f64>>,
    /// `|u_iᵀ ΔW_all v_i| / σ_i` with the Dash term: how much Dash amplifies the TSD.
    pub total_rate: Vec<Option<f64>>,
}

/// One capture statistic and, where it can be tested, its null.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureStat {
    #[serde(flatten)]
    pub capture: Capture,
    /// The statistic against the rotation null of the tested update (absent where the test
    /// would be circular: a LoRA-Dash module's whole update).
    #[serde(flatten)]
    pub null: Option<NullTest>,
}

impl std::ops::Deref for CaptureStat {
    type Target = Capture;
    fn deref(&self) -> &Capture {
        &self.capture
    }
}

/// The LoRA part `B·A` of a LoRA-Dash module, tested against its null (the Dash term lies on W's
/// core directions by construction, so the whole update is not its own evidence).
#[derive(Clone, Debug, Serialize)]
pub struct CapturePart {
    pub recall: CaptureStat,
    pub accuracy: CaptureStat,
}

/// Capture of the reference's TSDs by this module's update.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    pub recall: CaptureStat,
    pub accuracy: CaptureStat,
    /// Top-`top_s` indices of the reference's change rates.
    pub reference_top: Vec<usize>,
    /// φ between the right singular subspaces of the two updates, `i = j = min(rank, amp r)`.
    pub subspace_similarity: f64,
    /// LoRA-Dash modules: the LoRA part's capture with its null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_part: Option<CapturePart>,
}

impl CaptureReport {
    /// The test behind the module's verdict: accuracy, of the LoRA part for LoRA-Dash.
    pub fn primary(&self) -> &CaptureStat {
        self.lora_part
            .as_ref()
            .map_or(&self.accuracy, |p| &p.accuracy)
    }

    fn primary_mut(&mut self) -> &mut CaptureStat {
        match &mut self.lora_part {
            Some(p) => &mut p.accuracy,
            None => &mut self.accuracy,
        }
    }
}

/// One module's enrichment: its coordinates in units of their null standard deviation.
#[derive(Clone, Debug, Serialize)]
pub struct EnrichmentReport {
    /// `update` or, for LoRA-Dash, `lora_part`.
    pub tested: &'static str,
    pub null: EnrichmentNull,
    /// Directions with `|z| > threshold`, largest |z| first (at most 32 listed).
    pub enriched: Vec<usize>,
    /// How many directions are above the threshold.
    pub enriched_count: usize,
    /// The largest |z| of the module.
    pub max_abs_z: f64,
}

/// Everything measured for one adapted module.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleReport {
    pub module: String,
    /// Short name (`q_proj`).
    pub module_type: String,
    pub layer: Option<usize>,
    /// `[out, in]`.
    pub shape: [usize; 2],
    pub r: usize,
    pub alpha: f64,
    pub scaling: f64,
    pub delta_fro: f64,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub tsd: Vec<Tsd>,
    pub near_null_picks: usize,
    pub amplification: Amplification,
    pub dash: Option<DashReport>,
    pub capture: Option<CaptureReport>,
    /// Enrichment against the rotation null (absent with the null off or a zero update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<EnrichmentReport>,
    pub svd_cache: CacheOutcome,
    pub svd_seconds: f64,
    pub trainable_params: u64,
    pub frozen_stored_params: u64,
    /// σ for every direction (with `keep_spectrum`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<Vec<f64>>,
    /// δ for every direction (with `keep_spectrum`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Vec<f64>>,
}

/// Aggregates over a group of modules (a module type or a layer).
#[derive(Clone, Debug, Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub modules: usize,
    pub mean_top_delta: f64,
    pub max_top_delta: f64,
    pub mean_amplification: f64,
    /// Means of the amplification's projections ‖UᵀWV‖F over the group (ΔW's basis, W's, random).
    pub mean_proj_delta_basis: f64,
    pub mean_proj_w_basis: f64,
    pub mean_proj_random: f64,
    pub mean_delta_fro: f64,
    pub near_null_picks: usize,
    pub mean_accuracy: Option<f64>,
}

/// Capture verdicts of a group of modules (a module type, or `all`).
#[derive(Clone, Debug, Serialize)]
pub struct CaptureVerdicts {
    pub group: String,
    /// Modules with a reference counterpart.
    pub modules: usize,
    pub above_null: usize,
    pub not_above_null: usize,
    pub untestable: usize,
    /// Mean observed accuracy and its null mean (the tested update's).
    pub mean_accuracy: f64,
    pub mean_null_accuracy: f64,
    /// Mean κ over the modules where it is defined.
    pub mean_kappa: Option<f64>,
    /// One test for the whole group: the summed hits against the summed null hits, draw by draw.
    pub aggregate_p: Option<f64>,
}

/// Enrichment of a group of modules.
#[derive(Clone, Debug, Serialize)]
pub struct EnrichmentGroup {
    pub group: String,
    pub modules: usize,
    /// Modules with at least one enriched direction.
    pub enriched_modules: usize,
    pub enriched_directions: usize,
    /// Expected enriched directions under the null, summed over the group's modules.
    pub expected_false: f64,
}

/// The null model's conclusions for one inspection.
#[derive(Clone, Debug, Serialize)]
pub struct NullModelReport {
    pub alpha: f64,
    pub ranking: Ranking,
    /// How the module verdicts control false discoveries.
    pub procedure: String,
    /// Most draws per capture p-value, and draws per enrichment threshold.
    pub capture_draws: usize,
    pub enrichment_draws: usize,
    /// By module type, then `all` (empty without a reference).
    pub capture: Vec<CaptureVerdicts>,
    /// By module type, then `all`.
    pub enrichment: Vec<EnrichmentGroup>,
}

/// Parameter counts of an adapter against its base.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterParams {
    pub trainable: u64,
    pub frozen_stored: u64,
    pub stored: u64,
    pub base: u64,
    pub trainable_pct_of_base: f64,
}

/// The whole inspection.
/// A tensor the adapter holds beyond the analysed modules' factors: counted in the parameters,
/// applied by `tsd eval`, not analysed for TSDs.
#[derive(Clone, Debug, Serialize)]
pub struct OtherTensorReport {
    /// The base tensor it replaces (`lm_head.weight`) or the module it belongs to.
    pub tensor: String,
    /// `modules_to_save`, `trained_bias`, `saved` (a frozen base tensor), `lora_bias` or
    /// `embedding_lora`.
    pub kind: String,
    pub shape: Vec<usize>,
    pub params: u64,
    pub trainable: bool,
    pub analysed: bool,
}

/// The adapter's tensors outside its analysed modules, in a stable order.
pub fn other_tensors(adapter: &Adapter) -> Vec<OtherTensorReport> {
    let ex = &adapter.extras;
    let mut out: Vec<OtherTensorReport> = ex
        .base_tensors
        .iter()
        .map(|t| OtherTensorReport {
            tensor: t.name.clone(),
            kind: serde_json::to_value(t.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            shape: t.shape.clone(),
            params: t.numel(),
            trainable: t.trainable(),
            analysed: false,
        })
        .collect();
    out.extend(ex.lora_biases.iter().map(|(m, b)| OtherTensorReport {
        tensor: format!("{m}.lora_B.bias"),
        kind: "lora_bias".into(),
        shape: vec![b.len()],
        params: b.len() as u64,
        trainable: true,
        analysed: false,
    }));
    out.extend(ex.embeddings.iter().map(|e| OtherTensorReport {
        tensor: e.module.clone(),
        kind: "embedding_lora".into(),
        shape: vec![e.shape().0, e.shape().1],
        params: e.trainable_params(),
        trainable: true,
        analysed: false,
    }));
    out
}

/// The version of `tsd inspect --json`'s layout; raised when a field changes meaning or goes away
/// (new fields may appear without it). Readers (the Python layer, `python/tsd/`) check it.
pub const INSPECT_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    /// [`INSPECT_SCHEMA_VERSION`].
    pub schema_version: u32,
    pub tsd_version: &'static str,
    /// Versions of the numerical dependencies and of rustc this binary was built with.
    pub build: &'static str,
    pub adapter: String,
    pub base: String,
    pub reference: Option<String>,
    pub options: InspectOptions,
    pub use_rslora: bool,
    pub has_dash: bool,
    pub modules: Vec<ModuleReport>,
    pub by_type: Vec<GroupSummary>,
    pub by_layer: Vec<GroupSummary>,
    /// Every direction metric against its null (absent with the null off).
    pub null_model: Option<NullModelReport>,
    pub params: AdapterParams,
    /// The adapter's name in its directory (`default` = the root).
    pub adapter_name: Option<String>,
    /// Tensors beyond the analysed modules (modules_to_save copies, biases, embedding LoRA).
    pub other_tensors: Vec<OtherTensorReport>,
    pub warnings: Vec<String>,
    pub wall_seconds: f64,
    pub svd_seconds_total: f64,
    pub cache_hits: usize,
}

/// Loads the base weight of a module as `[out, in]` and checks it against the adapter's shapes.
fn base_weight(base: &dyn WeightSource, m: &ModuleAdapter, fan_in_fan_out: bool) -> Result<Matrix> {
    let name = format!("{}.weight", m.module);
    if !base.has(&name) {
        return Err(Error::MissingTensor {
            context: format!(
                "base model ({}) for adapter module {}",
                base.describe(),
                m.module
            ),
            tensor: name,
        });
    }
    let mut w = base.matrix(&name)?;
    if fan_in_fan_out {
        w = w.transpose();
    }
    let (out, inp) = m.shape();
    if (w.rows, w.cols) != (out, inp) {
        return Err(Error::shape(
            &m.module,
            format!(
                "base weight is {}x{} (out x in) but the adapter implies {out}x{inp} (lora_B {}x{}, lora_A {}x{}): is this the right base model?",
                w.rows, w.cols, m.b.rows, m.b.cols, m.a.rows, m.a.cols
            ),
        ));
    }
    Ok(w)
}

/// Recovers Dash indices by matching each column of Ū to W's left singular vectors (|cos| > 0.99).
fn recover_indices(svd: &SvdFactors, u_bar: &Matrix) -> Vec<Option<usize>> {
    let ub = u_bar.to_f64();
    let g = svd.u.rows_ref().t_mul(ub.as_ref()); // [k, s]
    (0..ub.ncols())
        .map(|j| {
            let best =
                (0..g.nrows()).max_by(|&a, &b| g[(a, j)].abs().total_cmp(&g[(b, j)].abs()))?;
            (g[(best, j)].abs() > 0.99).then_some(best)
        })
        .collect()
}

struct ModuleInputs<'a> {
    m: &'a ModuleAdapter,
    w: Matrix,
    reference: Option<Update>,
}

fn analyse_module(
    inp: ModuleInputs<'_>,
    opts: &InspectOptions,
    draws: NullDraws,
    cache: &SvdCache,
) -> Result<ModuleReport> {
    let m = inp.m;
    let t0 = Instant::now();
    let (svd, outcome) = cache.factors(&inp.w, opts.precision)?;
    let svd_seconds = t0.elapsed().as_secs_f64();
    let update = m.update();
    let (coords, rates) = change_rates_on(&update, &svd, opts.floor);
    let scores = opts.tsd_by.scores(&coords, &svd.s, opts.floor);
    let mut tsd = Tsd::select_by(&coords, &rates, &scores, &svd.s, opts.top_s);
    let amp_r = opts.amp_rank.unwrap_or(m.r);
    let amp = amplification(inp.w.rows_ref(), &svd.s, &update, amp_r, opts.seed)?;
    // The update the null tests: for LoRA-Dash the LoRA part (the Dash term is circular).
    let lora = m.dash.is_some().then(|| m.lora_update());
    let (lora_coords, lora_rates) = match &lora {
        Some(l) => {
            let (c, r) = change_rates_on(l, &svd, opts.floor);
            (Some(c), Some(r))
        }
        None => (None, None),
    };
    let tested = lora.as_ref().unwrap_or(&update);
    let tested_coords = lora_coords.as_deref().unwrap_or(&coords);
    let (n, mm) = m.shape();
    let seed = opts.seed ^ xxhash_rust::xxh3::xxh3_64(m.module.as_bytes());
    let null = if opts.null.enabled {
        Some(RotationNull::new(n, mm, &tested.svd()?.s))
    } else {
        None
    };
    let enrichment = null.as_ref().and_then(|null| {
        let e = enrichment_null(null, opts.null.enrichment_draws, seed ^ 0x5eed)?;
        Some(enrichment_report(e, tested_coords, lora.is_some()))
    });
    if let Some(e) = &enrichment {
        for t in &mut tsd {
            let z = tested_coords[t.index] / e.null.coordinate_sd;
            t.z = Some(z);
            t.enriched = Some(z.abs() > e.null.threshold);
        }
    }

    let dash = m
        .dash
        .as_ref()
        .map(|d| dash_report(d, &svd, &rates, lora_rates.as_deref().unwrap_or(&rates)));
    let basis = CaptureBasis {
        svd: &svd,
        update: &update,
        scores: &scores,
        tested_coords,
        lora: lora.is_some(),
        amp_r,
        null: null.as_ref(),
        draws: NullDraws { seed, ..draws },
    };
    let capture_report = match &inp.reference {
        None => None,
        Some(r) => Some(basis.capture(r, opts)?),
    };

    Ok(ModuleReport {
        module: m.module.clone(),
        module_type: crate::names::module_type(&m.module),
        layer: LinearName::parse(&m.module)
            .map(|n| n.layer)
            .or_else(|| crate::names::layer_of(&m.module)),
        shape: [n, mm],
        r: m.r,
        alpha: m.alpha,
        scaling: m.scaling,
        delta_fro: amp.delta_fro,
        sigma_max: svd.s[0],
        sigma_min: *svd.s.last().unwrap_or(&0.0),
        near_null_picks: tsd.iter().filter(|t| t.near_null).count(),
        tsd,
        amplification: amp,
        dash,
        capture: capture_report,
        enrichment,
        svd_cache: outcome,
        svd_seconds,
        trainable_params: m.trainable_params(),
        frozen_stored_params: m.frozen_stored_params(),
        sigma: opts.keep_spectrum.then(|| svd.s.clone()),
        delta: opts.keep_spectrum.then_some(rates),
    })
}

/// How a LoRA-Dash module's Dash directions sit in W's spectrum and how they moved: `rates` of
/// the whole update, `lora_rates` of its LoRA part.
fn dash_report(d: &DashState, svd: &SvdFactors, rates: &[f64], lora_rates: &[f64]) -> DashReport {
    let (indices, recovered) = match &d.indices {
        Some(i) => (i.iter().map(|&x| Some(x)).collect::<Vec<_>>(), false),
        None => (recover_indices(svd, &d.u), true),
    };
    let s1 = svd.s[0];
    DashReport {
        s: d.s(),
        naming: d.naming,
        sigma_ratio: indices.iter().map(|i| i.map(|i| svd.s[i] / s1)).collect(),
        lora_rate: indices.iter().map(|i| i.map(|i| lora_rates[i])).collect(),
        total_rate: indices.iter().map(|i| i.map(|i| rates[i])).collect(),
        indices,
        indices_recovered: recovered,
        delta_sigma_max_abs: d
            .delta_sigma
            .iter()
            .fold(0.0f64, |a, &x| a.max(x.abs() as f64)),
        delta_sigma: d.delta_sigma.clone(),
    }
}

/// What a module's capture of a reference is measured from.
struct CaptureBasis<'a> {
    svd: &'a SvdFactors,
    update: &'a Update,
    /// The whole update's scores on W's directions.
    scores: &'a [f64],
    /// Coordinates of the update the null tests (a LoRA-Dash module's LoRA part).
    tested_coords: &'a [f64],
    /// Whether the module is LoRA-Dash (the whole update is then reported untested).
    lora: bool,
    amp_r: usize,
    null: Option<&'a RotationNull>,
    /// The module's draws (its own seed).
    draws: NullDraws,
}

impl CaptureBasis<'_> {
    /// Recall, accuracy (tested against the null where they can be) and subspace similarity
    /// against the reference update `r`.
    fn capture(&self, r: &Update, opts: &InspectOptions) -> Result<CaptureReport> {
        let svd = self.svd;
        let (ref_coords, _) = change_rates_on(r, svd, opts.floor);
        let ref_scores = opts.tsd_by.scores(&ref_coords, &svd.s, opts.floor);
        let k = self
            .update
            .factor_rank()
            .min(r.factor_rank())
            .min(self.amp_r.max(1));
        let (pred_svd, ref_svd) = (self.update.svd()?, r.svd()?);
        let weights = opts.tsd_by.weights(&svd.s, opts.floor);
        let tested_scores = opts.tsd_by.scores(self.tested_coords, &svd.s, opts.floor);
        let test = CaptureInputs {
            null: self.null,
            weights: &weights,
            reference: &ref_scores,
            opts,
            draws: self.draws,
        };
        let (recall, accuracy) = if self.lora {
            (
                test.untested(self.scores, opts.recall_k),
                test.untested(self.scores, opts.accuracy_k),
            )
        } else {
            test.pair(&tested_scores)
        };
        let lora_part = self.lora.then(|| {
            let (recall, accuracy) = test.pair(&tested_scores);
            CapturePart { recall, accuracy }
        });
        Ok(CaptureReport {
            recall,
            accuracy,
            reference_top: top_k(&ref_scores, opts.top_s),
            subspace_similarity: subspace_similarity(pred_svd.v.as_ref(), ref_svd.v.as_ref(), k, k),
            lora_part,
        })
    }
}

/// What one module's capture tests share.
struct CaptureInputs<'a> {
    null: Option<&'a RotationNull>,
    /// Ranking weights of the directions (`1/σ_i` for change rates).
    weights: &'a [f64],
    /// The reference's scores under the same ranking.
    reference: &'a [f64],
    opts: &'a InspectOptions,
    draws: NullDraws,
}

impl CaptureInputs<'_> {
    /// Capture by `scores` at `(k_pred, k_ref)`, with no null.
    fn untested(&self, scores: &[f64], k: (usize, usize)) -> CaptureStat {
        CaptureStat {
            capture: capture(scores, self.reference, k.0, k.1),
            null: None,
        }
    }

    /// Recall and accuracy of `scores`, each against the null (accuracy is the primary test).
    fn pair(&self, scores: &[f64]) -> (CaptureStat, CaptureStat) {
        let (o, refs) = (self.opts, self.reference);
        let acc = capture(scores, refs, o.accuracy_k.0, o.accuracy_k.1);
        let rec = capture(scores, refs, o.recall_k.0, o.recall_k.1);
        let (acc_top, rec_top) = (top_k(refs, o.accuracy_k.1), top_k(refs, o.recall_k.1));
        let stats = [
            CaptureStatistic {
                reference_top: &acc_top,
                k_pred: o.accuracy_k.0,
                observed_hits: acc.hits,
            },
            CaptureStatistic {
                reference_top: &rec_top,
                k_pred: o.recall_k.0,
                observed_hits: rec.hits,
            },
        ];
        let tests = self
            .null
            .and_then(|null| capture_test(null, self.weights, &stats, self.draws, o.null.alpha));
        let (acc_null, rec_null) = match tests {
            Some(mut t) if t.len() == 2 => {
                let r = t.pop();
                (t.pop(), r)
            }
            _ => (None, None),
        };
        (
            CaptureStat {
                capture: rec,
                null: rec_null,
            },
            CaptureStat {
                capture: acc,
                null: acc_null,
            },
        )
    }
}

/// The module's enrichment from its null and the tested update's coordinates.
fn enrichment_report(null: EnrichmentNull, coords: &[f64], lora_part: bool) -> EnrichmentReport {
    let z: Vec<f64> = coords
        .iter()
        .map(|c| c.abs() / null.coordinate_sd)
        .collect();
    let above: Vec<usize> = top_k(&z, z.len())
        .into_iter()
        .take_while(|&i| z[i] > null.threshold)
        .collect();
    EnrichmentReport {
        tested: if lora_part { "lora_part" } else { "update" },
        max_abs_z: z.iter().cloned().fold(0.0, f64::max),
        enriched_count: above.len(),
        enriched: above.into_iter().take(32).collect(),
        null,
    }
}

fn reference_update(
    reference: &Reference<'_>,
    m: &ModuleAdapter,
    w: &Matrix,
    fan: bool,
) -> Result<Option<Update>> {
    Ok(match reference {
        Reference::Adapter(a) => match a.modules.iter().find(|x| x.module == m.module) {
            None => None,
            Some(x) => {
                if x.shape() != m.shape() {
                    return Err(Error::shape(
                        &m.module,
                        format!(
                            "reference adapter's module is {:?}, this adapter's is {:?}",
                            x.shape(),
                            m.shape()
                        ),
                    ));
                }
                Some(x.update())
            }
        },
        Reference::Model(src) => {
            let name = format!("{}.weight", m.module);
            if !src.has(&name) {
                None
            } else {
                let mut ws = src.matrix(&name)?;
                if fan {
                    ws = ws.transpose();
                }
                if (ws.rows, ws.cols) != (w.rows, w.cols) {
                    return Err(Error::shape(
                        &m.module,
                        format!(
                            "reference model weight is {}x{}, base is {}x{}",
                            ws.rows, ws.cols, w.rows, w.cols
                        ),
                    ));
                }
                let d = faer::Mat::from_fn(w.rows, w.cols, |i, j| {
                    ws.at(i, j) as f64 - w.at(i, j) as f64
                });
                Some(Update::Dense(d))
            }
        }
    })
}

fn summarise(
    modules: &[ModuleReport],
    key: impl Fn(&ModuleReport) -> Option<String>,
) -> Vec<GroupSummary> {
    let mut groups: BTreeMap<String, Vec<&ModuleReport>> = BTreeMap::new();
    for m in modules {
        if let Some(k) = key(m) {
            groups.entry(k).or_default().push(m);
        }
    }
    let mean = |xs: &[f64]| crate::stats::mean(xs).unwrap_or(0.0);
    groups
        .into_iter()
        .map(|(group, ms)| {
            let top: Vec<f64> = ms
                .iter()
                .map(|m| m.tsd.first().map_or(0.0, |t| t.delta))
                .collect();
            let amps: Vec<f64> = ms
                .iter()
                .map(|m| m.amplification.factor)
                .filter(|x| x.is_finite())
                .collect();
            let fro: Vec<f64> = ms.iter().map(|m| m.delta_fro).collect();
            let mean_of = |f: &dyn Fn(&crate::directions::Amplification) -> f64| {
                mean(&ms.iter().map(|m| f(&m.amplification)).collect::<Vec<_>>())
            };
            let acc: Vec<f64> = ms
                .iter()
                .filter_map(|m| m.capture.as_ref().map(|c| c.accuracy.value))
                .collect();
            GroupSummary {
                group,
                modules: ms.len(),
                mean_top_delta: mean(&top),
                max_top_delta: top.iter().cloned().fold(0.0, f64::max),
                mean_amplification: mean(&amps),
                mean_proj_delta_basis: mean_of(&|a| a.proj_delta_basis),
                mean_proj_w_basis: mean_of(&|a| a.proj_w_basis),
                mean_proj_random: mean_of(&|a| a.proj_random),
                mean_delta_fro: mean(&fro),
                near_null_picks: ms.iter().map(|m| m.near_null_picks).sum(),
                mean_accuracy: (!acc.is_empty()).then(|| mean(&acc)),
            }
        })
        .collect()
}

/// Benjamini–Hochberg across the testable modules' primary capture tests (and, apart, their
/// recall tests): q-values and verdicts at level `alpha`. Untestable modules are left out of M
/// (their exclusion depends on the null alone, not on the data).
fn apply_fdr(modules: &mut [ModuleReport], alpha: f64) {
    type Pick = fn(&mut CaptureReport) -> &mut CaptureStat;
    let picks: [Pick; 2] = [CaptureReport::primary_mut, |c| match &mut c.lora_part {
        Some(p) => &mut p.recall,
        None => &mut c.recall,
    }];
    for pick in picks {
        let mut tests: Vec<&mut NullTest> = modules
            .iter_mut()
            .filter_map(|m| m.capture.as_mut())
            .filter_map(|c| pick(c).null.as_mut())
            .filter(|t| t.testable)
            .collect();
        let p: Vec<f64> = tests.iter().map(|t| t.p_value).collect();
        for (t, q) in tests.iter_mut().zip(crate::stats::bh_qvalues(&p)) {
            t.q_value = Some(q);
            t.verdict = if q <= alpha {
                Verdict::AboveNull
            } else {
                Verdict::NotAboveNull
            };
            t.above_null = t.verdict == Verdict::AboveNull;
        }
    }
}

/// Verdict counts, means and aggregate tests by module type and overall.
fn null_model_report(
    modules: &[ModuleReport],
    opts: &InspectOptions,
    draws: usize,
) -> NullModelReport {
    let mut types: Vec<String> = Vec::new();
    for m in modules {
        if !types.contains(&m.module_type) {
            types.push(m.module_type.clone());
        }
    }
    let groups: Vec<(String, Vec<&ModuleReport>)> = types
        .iter()
        .map(|t| {
            (
                t.clone(),
                modules.iter().filter(|m| &m.module_type == t).collect(),
            )
        })
        .chain(std::iter::once((
            "all".to_string(),
            modules.iter().collect(),
        )))
        .collect();
    let capture = if modules.iter().any(|m| m.capture.is_some()) {
        groups
            .iter()
            .map(|(g, ms)| capture_verdicts(g, ms))
            .collect()
    } else {
        Vec::new()
    };
    let enrichment = groups
        .iter()
        .map(|(g, ms)| {
            let es: Vec<&EnrichmentReport> =
                ms.iter().filter_map(|m| m.enrichment.as_ref()).collect();
            EnrichmentGroup {
                group: g.clone(),
                modules: es.len(),
                enriched_modules: es.iter().filter(|e| e.enriched_count > 0).count(),
                enriched_directions: es.iter().map(|e| e.enriched_count).sum(),
                expected_false: es.iter().map(|e| e.null.expected_false).sum(),
            }
        })
        .collect();
    NullModelReport {
        alpha: opts.null.alpha,
        ranking: opts.tsd_by,
        procedure: format!(
            "per module: accuracy@({},{}) against the rotation null of the tested update (LoRA-Dash: its LoRA part), Monte-Carlo p-value; across modules: Benjamini–Hochberg at {} over the testable ones",
            opts.accuracy_k.0, opts.accuracy_k.1, opts.null.alpha
        ),
        capture_draws: draws,
        enrichment_draws: opts.null.enrichment_draws,
        capture,
        enrichment,
    }
}

fn capture_verdicts(group: &str, ms: &[&ModuleReport]) -> CaptureVerdicts {
    let stats: Vec<&CaptureStat> = ms
        .iter()
        .filter_map(|m| m.capture.as_ref().map(CaptureReport::primary))
        .collect();
    let tests: Vec<&NullTest> = stats.iter().filter_map(|s| s.null.as_ref()).collect();
    let count = |v: Verdict| tests.iter().filter(|t| t.verdict == v).count();
    let values: Vec<f64> = stats.iter().map(|s| s.value).collect();
    let nulls: Vec<f64> = tests.iter().map(|t| t.null_mean).collect();
    let kappas: Vec<f64> = tests.iter().filter_map(|t| t.kappa).collect();
    let observed: Vec<usize> = stats
        .iter()
        .filter(|s| s.null.is_some())
        .map(|s| s.hits)
        .collect();
    let samples: Vec<&[u8]> = tests.iter().map(|t| t.null_hits.as_slice()).collect();
    CaptureVerdicts {
        group: group.to_string(),
        modules: stats.len(),
        above_null: count(Verdict::AboveNull),
        not_above_null: count(Verdict::NotAboveNull),
        untestable: count(Verdict::Untestable),
        mean_accuracy: crate::stats::mean(&values).unwrap_or(0.0),
        mean_null_accuracy: crate::stats::mean(&nulls).unwrap_or(0.0),
        mean_kappa: crate::stats::mean(&kappas),
        aggregate_p: crate::directions::null::aggregate_p(&observed, &samples),
    }
}

/// Host bytes one module's analysis holds at its peak, for an `[out, in]` weight with
/// `k = min(out, in)`: a cold SVD's working set ([`crate::linalg::svd_working_bytes`]: the f32 W,
/// faer's copy and workspace, f64 U and V) plus U and V stored again in f32 (`4·(out + in)·k`);
/// with a reference model, its weight and the dense f64 ΔW* (`12·out·in`).
pub fn working_bytes(m: &ModuleAdapter, with_reference: bool) -> usize {
    let (out, inp) = m.shape();
    let k = out.min(inp);
    let reference = if with_reference { 12 * out * inp } else { 0 };
    crate::linalg::svd_working_bytes(out, inp) + 4 * (out + inp) * k + reference
}

/// Inspects `adapter` against `base`. `progress` is called once per finished module. Modules run
/// in parallel within the memory budget of [`crate::budget::memory_budget`] (`TSD_MEMORY_BUDGET`).
pub fn inspect(
    adapter: &Adapter,
    base: &dyn WeightSource,
    reference: Option<(&Reference<'_>, String)>,
    opts: &InspectOptions,
    cache: &SvdCache,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<InspectReport> {
    let budget = crate::budget::memory_budget()?;
    inspect_within(adapter, base, reference, opts, cache, budget, progress)
}

/// [`inspect`] with an explicit memory budget in bytes for the modules in flight (at least one
/// module runs at a time, whatever the budget).
pub fn inspect_within(
    adapter: &Adapter,
    base: &dyn WeightSource,
    reference: Option<(&Reference<'_>, String)>,
    opts: &InspectOptions,
    cache: &SvdCache,
    budget: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<InspectReport> {
    let t0 = Instant::now();
    check_base_shapes(adapter, base)?;
    let draws = opts.null.draws(
        if reference.is_some() {
            adapter.modules.len()
        } else {
            0
        },
        opts.seed,
    );
    let mut opts = opts.clone();
    opts.null.capture_draws = Some(draws.max);
    let opts = &opts;
    let analysis = Analysis {
        base,
        reference: reference.as_ref().map(|(r, _)| *r),
        opts,
        draws,
        cache,
    };
    let mut modules = analysis.modules(adapter, budget, progress)?;
    sort_in_model_order(&mut modules);
    let others = other_tensors(adapter);
    let warnings = report_warnings(
        adapter,
        &modules,
        &others,
        reference.as_ref().map(|(_, n)| n.as_str()),
    );
    let null_model = opts.null.enabled.then(|| {
        apply_fdr(&mut modules, opts.null.alpha);
        null_model_report(&modules, opts, draws.max)
    });
    let by_type = summarise(&modules, |m| Some(m.module_type.clone()));
    let by_layer = summarise(&modules, |m| m.layer.map(|l| format!("{l:03}")));
    Ok(InspectReport {
        schema_version: INSPECT_SCHEMA_VERSION,
        tsd_version: env!("CARGO_PKG_VERSION"),
        build: env!("TSD_BUILD_VERSIONS"),
        adapter: adapter.path.display().to_string(),
        base: base.describe(),
        reference: reference.map(|(_, n)| n),
        options: opts.clone(),
        use_rslora: adapter.config.use_rslora,
        has_dash: adapter.has_dash(),
        svd_seconds_total: modules.iter().map(|m| m.svd_seconds).sum(),
        cache_hits: modules
            .iter()
            .filter(|m| m.svd_cache == CacheOutcome::Hit)
            .count(),
        modules,
        by_type,
        by_layer,
        null_model,
        params: adapter_params(adapter, base),
        adapter_name: adapter.extras.name.clone(),
        other_tensors: others,
        warnings,
        wall_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Validates every module's base weight before the expensive part, so bad input fails fast.
fn check_base_shapes(adapter: &Adapter, base: &dyn WeightSource) -> Result<()> {
    let fan = adapter.config.fan_in_fan_out;
    for m in &adapter.modules {
        let name = format!("{}.weight", m.module);
        let shape = base.shape(&name).ok_or_else(|| Error::MissingTensor {
            context: format!(
                "base model ({}) for adapter module {}",
                base.describe(),
                m.module
            ),
            tensor: name.clone(),
        })?;
        let want = if fan {
            [m.a.cols, m.b.rows]
        } else {
            [m.b.rows, m.a.cols]
        };
        if shape != want {
            return Err(Error::shape(
            &m.module,
            format!(
                "base weight `{name}` has shape {shape:?} but the adapter's lora_B {}x{} and lora_A {}x{} imply {want:?}",
                m.b.rows, m.b.cols, m.a.rows, m.a.cols
            ),
        ));
        }
    }
    Ok(())
}

/// What analysing each module needs besides the module.
struct Analysis<'a> {
    base: &'a dyn WeightSource,
    reference: Option<&'a Reference<'a>>,
    opts: &'a InspectOptions,
    draws: NullDraws,
    cache: &'a SvdCache,
}

impl Analysis<'_> {
    /// Every module of `adapter`, in parallel in batches whose estimated working sets fit
    /// `budget`; `progress` sees each finished module.
    fn modules(
        &self,
        adapter: &Adapter,
        budget: usize,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<ModuleReport>> {
        let fan = adapter.config.fan_in_fan_out;
        let sizes: Vec<usize> = adapter
            .modules
            .iter()
            .map(|m| working_bytes(m, self.reference.is_some()))
            .collect();
        let mut modules: Vec<ModuleReport> = Vec::with_capacity(adapter.modules.len());
        for batch in crate::budget::batches(&sizes, budget, rayon::current_num_threads()) {
            let results: Vec<Result<ModuleReport>> = adapter.modules[batch]
                .par_iter()
                .map(|m| {
                    let w = base_weight(self.base, m, fan)?;
                    let r = match self.reference {
                        Some(r) => reference_update(r, m, &w, fan)?,
                        None => None,
                    };
                    let inputs = ModuleInputs { m, w, reference: r };
                    let rep = analyse_module(inputs, self.opts, self.draws, self.cache)?;
                    progress(&m.module);
                    Ok(rep)
                })
                .collect();
            for r in results {
                modules.push(r?);
            }
        }
        Ok(modules)
    }
}

/// Model order: by layer number, then the module's position in a LLaMA layer.
fn sort_in_model_order(modules: &mut [ModuleReport]) {
    let rank = |t: &str| t.parse::<LinearKind>().map_or(usize::MAX, |k| k as usize);
    modules.sort_by(|a, b| {
        (
            a.layer.unwrap_or(usize::MAX),
            rank(&a.module_type),
            &a.module,
        )
            .cmp(&(
                b.layer.unwrap_or(usize::MAX),
                rank(&b.module_type),
                &b.module,
            ))
    });
}

/// The report's warnings: the adapter's, tensors not analysed, near-null picks, Dash directions
/// that match no singular vector, modules without a counterpart in the reference (`reference`).
fn report_warnings(
    adapter: &Adapter,
    modules: &[ModuleReport],
    others: &[OtherTensorReport],
    reference: Option<&str>,
) -> Vec<String> {
    let mut warnings = adapter.warnings.clone();
    if !others.is_empty() {
        let list: Vec<String> = others
            .iter()
            .map(|t| format!("{} ({}, {:?})", t.tensor, t.kind, t.shape))
            .collect();
        warnings.push(format!(
        "not analysed for TSDs (counted in the parameters; tsd eval applies them where the base has the tensor they change, and refuses a LoRA or trained bias on a linear without a bias, as PEFT refuses to merge it): {}",
        list.join(", ")
    ));
    }
    let near: usize = modules.iter().map(|m| m.near_null_picks).sum();
    if near > 0 {
        let which: Vec<String> = modules
            .iter()
            .filter(|m| m.near_null_picks > 0)
            .map(|m| format!("{} ({})", m.module, m.near_null_picks))
            .collect();
        warnings.push(format!(
        "{near} picked TSD(s) have σ/σ₁ < {:.0e}: near-null directions whose change rate is dominated by the division by σ (README, Definitions: near-null directions and scale); consider --sigma-floor. In: {}",
        crate::directions::NEAR_NULL_RATIO,
        which.join(", ")
    ));
    }
    for m in modules {
        if let Some(d) = &m.dash {
            if d.indices_recovered && d.indices.iter().any(Option::is_none) {
                warnings.push(format!(
                "module {}: some Dash directions Ū do not match any singular vector of this base W (is it the right base?)",
                m.module
            ));
            }
        }
    }
    if let Some(name) = reference {
        let missing: Vec<&str> = modules
            .iter()
            .filter(|m| m.capture.is_none())
            .map(|m| m.module.as_str())
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "{} module(s) have no counterpart in the reference {name}: {}",
                missing.len(),
                missing.join(", ")
            ));
        }
    }
    warnings
}

/// Parameter counts of the adapter against the base.
fn adapter_params(adapter: &Adapter, base: &dyn WeightSource) -> AdapterParams {
    let base_params = base.total_params();
    let trainable = adapter.trainable_params();
    let frozen = adapter.frozen_stored_params();
    AdapterParams {
        trainable,
        frozen_stored: frozen,
        stored: trainable + frozen,
        base: base_params,
        trainable_pct_of_base: if base_params > 0 {
            100.0 * trainable as f64 / base_params as f64
        } else {
            0.0
        },
    }
}

/// `tsd inspect`'s flags that describe the analysis.
#[derive(clap::Args, Debug)]
pub struct InspectFlags {
    /// Adapter directory (adapter_config.json + adapter_model.safetensors).
    pub adapter: PathBuf,
    /// Which adapter of the directory: `default` (its root) or a PEFT subfolder name [default:
    /// the only one there is]
    #[arg(long)]
    pub adapter_name: Option<String>,
    /// Base model: a directory, .safetensors, .gguf, a Hugging Face id, or `default` [default: the
    /// adapter's base_model_name_or_path, when it resolves locally]
    #[arg(long, alias = "model")]
    pub base: Option<String>,
    /// Refuse (exit 2) a --base that cannot be shown to be the adapter's declared base (by name
    /// or path, or a tsd run record's sha256) instead of warning
    #[arg(long, requires = "base")]
    pub strict_base: bool,
    /// Capture metrics against another adapter (same base), a run directory of any layout (its
    /// newest checkpoint) or a fine-tuned model (ΔW* = W* − W) [default: none]
    #[arg(long)]
    pub reference: Option<String>,
    /// TSDs per module (the top-s by --tsd-by).
    #[arg(long, default_value_t = 8)]
    pub top_s: usize,
    /// Relative floor f on σ in δ = |uᵀΔWv| / max(σ, f·σ₁) (0 = the official code's choice).
    #[arg(long, default_value_t = 0.0)]
    pub sigma_floor: f64,
    /// Precision of the base SVD (f32 like the official code, or f64).
    #[arg(long, default_value = "f32")]
    pub svd_precision: crate::linalg::Precision,
    /// r of the amplification factor [default: each module's LoRA rank]
    #[arg(long)]
    pub amp_rank: Option<usize>,
    /// Seed of the random reference basis.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// (k_pred,k_ref) of the recall metric.
    #[arg(long, default_value = "8,4", value_parser = parse_pair)]
    pub recall_k: (usize, usize),
    /// (k_pred,k_ref) of the accuracy metric.
    #[arg(long, default_value = "8,16", value_parser = parse_pair)]
    pub accuracy_k: (usize, usize),
    /// Include σ and δ of every direction in the JSON output.
    #[arg(long)]
    pub spectrum: bool,
}

impl InspectFlags {
    pub fn plan(
        &self,
        html: bool,
        no_cache: bool,
        null: &NullArgs,
        model: &crate::weights::ModelArgs,
    ) -> Result<InspectPlan> {
        let opts = InspectOptions {
            top_s: self.top_s,
            floor: crate::directions::SigmaFloor {
                relative: self.sigma_floor,
            },
            precision: self.svd_precision,
            amp_rank: self.amp_rank,
            seed: self.seed,
            recall_k: self.recall_k,
            accuracy_k: self.accuracy_k,
            keep_spectrum: self.spectrum || html,
            tsd_by: null.tsd_by.ranking(),
            null: null.options(),
        };
        opts.validate()?;
        Ok(InspectPlan {
            adapter: self.adapter.clone(),
            adapter_name: self.adapter_name.clone(),
            base: self.base.as_ref().map(|b| ModelSpec {
                spec: b.clone(),
                revision: model.revision.clone(),
                offline: model.offline,
                local_only: false,
            }),
            strict_base: self.strict_base,
            offline: model.offline,
            reference: self.reference.clone(),
            opts,
            use_cache: !no_cache,
        })
    }
}

/// Parses `8,4`-style pairs.
pub fn parse_pair(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}`: expected two numbers like 8,16"))?;
    let p = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("`{x}`: {e}"));
    let (a, b) = (p(a)?, p(b)?);
    if a == 0 || b == 0 {
        return Err("both numbers must be positive".into());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget smaller than any module runs them one at a time (`budget::batches` gives
    /// singletons) and reports exactly what the unbounded parallel run reports; the cache's hits
    /// (U and V read in place) report what the fresh SVDs did.
    #[test]
    fn a_small_memory_budget_serialises_modules_with_identical_results() {
        use crate::adapter::AdapterConfig;
        use crate::weights::memory::InMemoryModel;
        let values = |n: usize, seed: u64| -> Vec<f32> {
            (0..n)
                .map(|k| {
                    ((k as f64 * 0.7548 + seed as f64 * 1.3).sin() * 43758.5453).fract() as f32
                })
                .collect()
        };
        let mut base = InMemoryModel::default();
        let mut modules = Vec::new();
        for (i, (out, inp)) in [(24, 16), (16, 24), (20, 20), (24, 16), (300, 270)]
            .into_iter()
            .enumerate()
        {
            let module = format!("model.layers.{i}.self_attn.q_proj");
            let w = Matrix::new(out, inp, values(out * inp, i as u64)).unwrap();
            base.tensors.insert(format!("{module}.weight"), w);
            modules.push(ModuleAdapter {
                module,
                r: 2,
                alpha: 4.0,
                scaling: 2.0,
                a: Matrix::new(2, inp, values(2 * inp, 50 + i as u64)).unwrap(),
                b: Matrix::new(out, 2, values(out * 2, 90 + i as u64)).unwrap(),
                dora_magnitude: None,
                dash: None,
            });
        }
        let sizes: Vec<usize> = modules.iter().map(|m| working_bytes(m, false)).collect();
        assert!(crate::budget::batches(&sizes, 1, 8)
            .iter()
            .all(|b| b.len() == 1));
        let adapter = Adapter {
            path: "generated".into(),
            config: AdapterConfig {
                r: 2,
                lora_alpha: 4.0,
                ..Default::default()
            },
            modules,
            warnings: vec![],
            unmatched: vec![],
            metadata: Default::default(),
            extras: Default::default(),
        };
        let opts = InspectOptions {
            keep_spectrum: true,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = SvdCache::new(dir.path());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let run = |budget: usize| {
            let r = pool
                .install(|| inspect_within(&adapter, &base, None, &opts, &cache, budget, &|_| {}))
                .unwrap();
            let mut v = serde_json::to_value(&r).unwrap();
            for m in v["modules"].as_array_mut().unwrap() {
                m.as_object_mut().unwrap().remove("svd_seconds");
                m.as_object_mut().unwrap().remove("svd_cache");
            }
            for k in ["wall_seconds", "svd_seconds_total", "cache_hits"] {
                v.as_object_mut().unwrap().remove(k);
            }
            (v, r.cache_hits)
        };
        let (serial, hits0) = run(1);
        let (parallel, hits1) = run(usize::MAX);
        assert_eq!(
            (hits0, hits1),
            (0, 5),
            "the second run reads every SVD from the cache"
        );
        assert_eq!(serial, parallel);
    }
}
