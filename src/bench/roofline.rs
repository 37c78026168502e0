//! `tsd bench roofline`: this machine's limits — the CPU's identity, its theoretical f32 FMA peak
//! and, where the CPU has AVX512-BF16, its bf16 `vdpbf16ps` peak (derivations from stated
//! microarchitecture assumptions, not measurements), the f32 matrix product rate tsd reaches on
//! the default model's training and decode shapes as its layers run them ([`LayerOp`]: frozen
//! linears' stored layout and column split, the decode's weights packed once, the fused head
//! loss's 128-row blocks) and as a bare
//! candle matmul (gemm direct), tsd's bf16 frozen-weight kernel on the same shapes,
//! PyTorch's `torch.matmul` in the same invocation (`benches/torch_matmul.py`, f32 and, where the
//! CPU has bf16 instructions, bf16), the system BLAS found at run time on the same shapes
//! (Debian's OpenBLAS and BLIS through `cblas_sgemm`, [`super::system_blas`]), and a STREAM-like
//! memory bandwidth on the same pool.

use super::{loadavg, median};
use crate::error::{Error, Result};
use crate::nn::frozen::{matmul_2d, FrozenLinear};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// The peer script, compiled in so that the binary runs the committed file from any directory.
pub const TORCH_SCRIPT: &str = include_str!("../../benches/torch_matmul.py");

/// One matrix product `[m, k] · [k, n]`; `rhs_transposed`: the right operand is a `[n, k]`
/// row-major weight read as its transpose (`x·Wᵀ`, a linear's forward), else a `[k, n]` row-major
/// matrix (`g·W`, a frozen linear's input gradient). [`layer_op`] says how tsd's layers run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductShape {
    pub name: String,
    /// Where the training step or the decode runs this product.
    pub used_in: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub rhs_transposed: bool,
}

impl ProductShape {
    fn new(name: &str, used_in: &str, m: usize, k: usize, n: usize, rhs_transposed: bool) -> Self {
        ProductShape {
            name: name.into(),
            used_in: used_in.into(),
            m,
            k,
            n,
            rhs_transposed,
        }
    }

    /// Floating-point operations of the product, counted as 2·m·k·n (one multiply and one add per
    /// multiply-add).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

/// How tsd's layers run a product shape: what the roofline's `tsd` column times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOp {
    /// `FrozenLinear::product(x)`: `x [m, k] · Wᵀ`, W `[n, k]` (a frozen linear's forward in
    /// training; CPU weights with k > n stored transposed, ≤ 256 rows column-split).
    Product,
    /// `FrozenLinear::product(x)` after `with_packed_products` (a frozen linear's or the head's
    /// forward in inference, `Llama::use_packed_products`: the weight packed once, where the
    /// packed kernel applies; else as [`LayerOp::Product`]).
    PackedProduct,
    /// `FrozenLinear::input_grad(g)`: `g [m, k] · W`, W `[k, n]` (the layer's `[out, in]`).
    InputGrad,
    /// `matmul_2d(x, Aᵀ)` as `AdaptedLinear::forward` runs LoRA's down-projection (A `[n, k]`,
    /// trainable: no stored transpose, no bf16 path).
    LoraDown,
    /// The fused head loss's forward (`nn::loss::head_cross_entropy`): `FrozenLinear::product`
    /// over blocks of 128 rows (products only, not the softmax between them), on the head packed
    /// once as training runs it (`Llama::use_packed_head`; records before it timed `gemm`).
    HeadProductBlocks,
    /// The fused head loss's input gradient: `FrozenLinear::input_grad` over 128-row blocks.
    HeadInputGradBlocks,
}

impl LayerOp {
    /// The call in words, for the record's notes and the table.
    pub fn describe(self) -> &'static str {
        match self {
            LayerOp::Product => "FrozenLinear::product",
            LayerOp::PackedProduct => "FrozenLinear::product, weight packed once (inference)",
            LayerOp::InputGrad => "FrozenLinear::input_grad",
            LayerOp::LoraDown => "matmul_2d(x, Aᵀ)",
            LayerOp::HeadProductBlocks => {
                "FrozenLinear::product per 128-row block, head packed once"
            }
            LayerOp::HeadInputGradBlocks => "FrozenLinear::input_grad per 128-row block",
        }
    }

    /// Whether the op multiplies by a frozen weight, so has a bf16 path.
    pub fn frozen(self) -> bool {
        self != LayerOp::LoraDown
    }
}

/// The op tsd's layers run `s` with: LoRA's thin product through `matmul_2d`, the training LM
/// head through the fused head loss's blocks, the decode's forwards through the packed weights
/// evaluation uses, every other forward (`rhs_transposed`) through `FrozenLinear::product` and
/// every input gradient through `FrozenLinear::input_grad`.
pub fn layer_op(s: &ProductShape) -> LayerOp {
    let head = s.name.starts_with("LM head") && s.used_in.starts_with("train");
    match (s.name.starts_with("LoRA"), head, s.rhs_transposed) {
        (true, _, _) => LayerOp::LoraDown,
        (false, true, true) => LayerOp::HeadProductBlocks,
        (false, true, false) => LayerOp::HeadInputGradBlocks,
        (false, false, true) if s.used_in.starts_with("decode") => LayerOp::PackedProduct,
        (false, false, true) => LayerOp::Product,
        (false, false, false) => LayerOp::InputGrad,
    }
}

/// The products of the default model (SmolLM2-135M: hidden 576, FFN 1536, 9 query heads and 3
/// KV heads of 64, vocabulary 49152 with a tied head) in a training step of `tokens` tokens
/// (batch 4 × 128 = 512) and in the decode (4 beams × 16 examples = `decode_rows` rows; and 1 row).
pub fn default_shapes(tokens: usize, decode_rows: usize) -> Vec<ProductShape> {
    let (h, f, kv, v) = (576, 1536, 192, 49152);
    let t = tokens;
    let mut s = vec![
        ProductShape::new("q,o fwd", "train forward", t, h, h, true),
        ProductShape::new("k,v fwd", "train forward", t, h, kv, true),
        ProductShape::new("gate,up fwd", "train forward", t, h, f, true),
        ProductShape::new("down fwd", "train forward", t, f, h, true),
        ProductShape::new("q,o bwd dx", "train backward", t, h, h, false),
        ProductShape::new("k,v bwd dx", "train backward", t, kv, h, false),
        ProductShape::new("gate,up bwd dx", "train backward", t, f, h, false),
        ProductShape::new("down bwd dx", "train backward", t, h, f, false),
        ProductShape::new("LoRA x·Aᵀ r=8", "train forward", t, h, 8, true),
        ProductShape::new("LM head fwd", "train forward", t, h, v, true),
        ProductShape::new("LM head bwd dx", "train backward", t, v, h, false),
    ];
    let d = decode_rows;
    s.extend([
        ProductShape::new("q,o decode", "decode", d, h, h, true),
        ProductShape::new("gate,up decode", "decode", d, h, f, true),
        ProductShape::new("down decode", "decode", d, f, h, true),
        ProductShape::new("LM head decode", "decode", d, h, v, true),
        ProductShape::new("gate,up 1 row", "decode (batch 1)", 1, h, f, true),
        ProductShape::new("LM head 1 row", "decode (batch 1)", 1, h, v, true),
    ]);
    s
}

/// What `/proc/cpuinfo` says about the CPU (its first processor's block, the counts over all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model_name: String,
    pub vendor: String,
    pub family: Option<u32>,
    pub model: Option<u32>,
    pub stepping: Option<u32>,
    /// The flags that matter to f32/bf16 matrix kernels, those present (`avx2`, `fma`, `avx512f`,
    /// `avx512_bf16`, `amx_*`, …).
    pub kernel_flags: Vec<String>,
    /// Logical processors listed.
    pub threads: usize,
    /// Distinct (physical id, core id) pairs (the logical count when those fields are missing).
    pub cores: usize,
    /// `cpu MHz` of the first processor (under KVM with `tsc_known_freq`: the TSC's nominal rate).
    pub cpu_mhz: Option<f64>,
    /// The `hypervisor` flag is set.
    pub hypervisor_flag: bool,
}

/// The flags [`CpuInfo::kernel_flags`] keeps (and any `amx_*`).
const KERNEL_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "hypervisor",
];

/// Parses `/proc/cpuinfo` text (x86 layout: `key\t: value` lines, blank-line separated blocks).
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut cores = std::collections::BTreeSet::new();
    let mut first: Option<BTreeMap<String, String>> = None;
    for block in text.split("\n\n").filter(|b| b.contains(':')) {
        let kv: BTreeMap<String, String> = block
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if !kv.contains_key("processor") {
            continue;
        }
        info.threads += 1;
        if let (Some(p), Some(c)) = (kv.get("physical id"), kv.get("core id")) {
            cores.insert((p.clone(), c.clone()));
        }
        first.get_or_insert(kv);
    }
    info.cores = if cores.is_empty() {
        info.threads
    } else {
        cores.len()
    };
    let Some(kv) = first else {
        return info;
    };
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    info.model_name = get("model name");
    info.vendor = get("vendor_id");
    info.family = get("cpu family").parse().ok();
    info.model = get("model").parse().ok();
    info.stepping = get("stepping").parse().ok();
    info.cpu_mhz = get("cpu MHz").parse().ok();
    let flags = get("flags");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    info.hypervisor_flag = flags.contains(&"hypervisor");
    info.kernel_flags = flags
        .iter()
        .filter(|f| KERNEL_FLAGS.contains(f) || f.starts_with("amx"))
        .map(|f| f.to_string())
        .collect();
    info
}

impl CpuInfo {
    pub fn has(&self, flag: &str) -> bool {
        self.kernel_flags.iter().any(|f| f == flag)
    }

    /// bf16 matrix instructions: AVX-512 BF16 or AMX-BF16.
    pub fn has_bf16(&self) -> bool {
        self.has("avx512_bf16") || self.has("amx_bf16")
    }
}

/// What the theoretical peak assumes about the cores' vector units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MicroArch {
    /// The microarchitecture assumed from vendor, family and model.
    pub name: String,
    /// f32 FMA instructions a core can issue per cycle (FMA pipes).
    pub fma_units: u32,
    /// Width of each FMA unit's datapath in bits (what one FMA processes per cycle).
    pub datapath_bits: u32,
    /// The assumption in words.
    pub assumption: String,
}

impl MicroArch {
    /// f32 lanes per FMA per cycle.
    pub fn f32_lanes(&self) -> u32 {
        self.datapath_bits / 32
    }
}

/// The microarchitecture tsd assumes for the peak, from cpuinfo's vendor, family, model and flags.
/// A table of a few known cases; anything else falls back on the widest vector flag with two
/// FMA pipes, and says so.
pub fn assume_microarch(cpu: &CpuInfo) -> MicroArch {
    let (fam, model) = (cpu.family.unwrap_or(0), cpu.model.unwrap_or(0));
    let amd = cpu.vendor == "AuthenticAMD";
    let ma = |name: &str, units: u32, bits: u32, why: &str| MicroArch {
        name: name.into(),
        fma_units: units,
        datapath_bits: bits,
        assumption: why.into(),
    };
    if amd && fam == 26 && cpu.has("avx512f") {
        if (0x20..0x30).contains(&model) {
            return ma("AMD Zen 5 (mobile, family 26 model 0x20–0x2f)", 2, 256,
                "Zen 5 mobile parts execute AVX-512 on 256-bit datapaths: 2 FMA pipes x 256 bits (8 f32 lanes) per cycle");
        }
        return ma("AMD Zen 5 (family 26)", 2, 512,
            "Zen 5 server/desktop cores (EPYC 9005 'Turin', family 26 models 0x00–0x1f; Ryzen 9000) have full 512-bit FP datapaths: 2 of the 4 FP pipes do FMA, each on a 512-bit vector (16 f32 lanes) per cycle");
    }
    if amd && fam == 25 {
        return if cpu.has("avx512f") {
            ma("AMD Zen 4 (family 25 with AVX-512)", 2, 256,
                "Zen 4 executes a 512-bit FMA as two 256-bit halves: 2 FMA pipes x 256 bits (8 f32 lanes) per cycle")
        } else {
            ma(
                "AMD Zen 3 (family 25)",
                2,
                256,
                "2 FMA pipes x 256 bits (8 f32 lanes) per cycle",
            )
        };
    }
    if amd && fam == 23 {
        return ma(
            "AMD Zen / Zen 2 (family 23)",
            2,
            if model >= 0x30 { 256 } else { 128 },
            "Zen 2: 2 FMA pipes x 256 bits; Zen 1 (models below 0x30): 2 x 128 bits",
        );
    }
    if cpu.vendor == "GenuineIntel" && cpu.has("avx512f") {
        return ma("Intel with AVX-512", 2, 512,
            "assumed 2 AVX-512 FMA units (Xeon Gold/Platinum, Sapphire Rapids and later; some Xeon Silver/Bronze have one, which halves the peak)");
    }
    let bits = if cpu.has("avx512f") {
        512
    } else if cpu.has("avx2") || cpu.has("avx") {
        256
    } else {
        128
    };
    let units = if cpu.has("fma") || cpu.has("avx512f") {
        2
    } else {
        1
    };
    ma("unknown", units, bits,
        "no table entry for this CPU: assumed the widest vector flag's width with 2 FMA pipes (1 without FMA)")
}

/// The theoretical f32 FMA peak and its derivation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub cores: usize,
    pub ghz: f64,
    /// Where the frequency came from.
    pub ghz_source: String,
    pub microarch: MicroArch,
    pub f32_lanes: u32,
    /// cores × GHz × FMA units × lanes × 2, in FLOP/s.
    pub f32_flops_per_s: f64,
    /// The product written out.
    pub derivation: String,
}

/// cores × GHz × FMA units × lanes × 2 (an FMA is two floating-point operations).
pub fn peak(cores: usize, ghz: f64, ghz_source: &str, microarch: MicroArch) -> Peak {
    let lanes = microarch.f32_lanes();
    let flops = cores as f64 * ghz * 1e9 * microarch.fma_units as f64 * lanes as f64 * 2.0;
    Peak {
        cores,
        ghz,
        ghz_source: ghz_source.into(),
        f32_lanes: lanes,
        derivation: format!(
            "{cores} cores x {ghz:.3} GHz x {} FMA units x {lanes} f32 lanes x 2 = {:.1} GFLOP/s",
            microarch.fma_units,
            flops / 1e9
        ),
        microarch,
        f32_flops_per_s: flops,
    }
}

/// The theoretical bf16 peak of `vdpbf16ps` (AVX512-BF16) and its derivation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bf16Peak {
    /// cores × GHz × FMA units × f32 lanes × 2 bf16 products per lane × 2, in FLOP/s.
    pub flops_per_s: f64,
    /// The product written out.
    pub derivation: String,
    /// What it assumes about the instruction.
    pub assumption: String,
}

/// The bf16 peak from the f32 one's cores, clock, FMA units and lanes: `vdpbf16ps` runs on the FMA
/// units and adds two bf16 products into each f32 lane, so 2× the f32 FMA rate. `Err`: why there
/// is none (the CPU lacks avx512_bf16).
pub fn bf16_peak(cpu: &CpuInfo, f32_peak: &Peak) -> std::result::Result<Bf16Peak, String> {
    if !cpu.has("avx512_bf16") {
        return Err(
            "no avx512_bf16 in /proc/cpuinfo: no vdpbf16ps, so no bf16 peak (and no tsd \
                    bf16 kernel) on this CPU"
                .into(),
        );
    }
    let (units, lanes) = (f32_peak.microarch.fma_units, f32_peak.f32_lanes);
    let flops = f32_peak.f32_flops_per_s * 2.0;
    let mut assumption = "vdpbf16ps issues on the same FMA units at the f32 FMA's throughput per \
                          datapath width, each f32 lane summing 2 bf16 products: 2x the f32 FMA \
                          peak"
        .to_string();
    if cpu.kernel_flags.iter().any(|f| f == "amx_bf16") {
        assumption += "; AMX-BF16 tiles (not used by tsd) are not included";
    }
    Ok(Bf16Peak {
        flops_per_s: flops,
        derivation: format!(
            "{} cores x {:.3} GHz x {units} FMA units x {lanes} f32 lanes x 2 bf16 products per \
             lane x 2 = {:.1} GFLOP/s",
            f32_peak.cores,
            f32_peak.ghz,
            flops / 1e9
        ),
        assumption,
    })
}

/// The lowest clock (GHz) at which `flops_per_s` fits under `peak`'s assumptions (its cores, FMA
/// units and lanes).
pub fn implied_ghz(flops_per_s: f64, peak: &Peak) -> f64 {
    flops_per_s
        / (peak.cores as f64 * peak.microarch.fma_units as f64 * peak.f32_lanes as f64 * 2.0)
        / 1e9
}

/// Bytes a STREAM kernel moves over arrays of `n` f64, counted as STREAM counts them (each array
/// read or written once; no write-allocate traffic): copy 2 arrays, scale 2, add 3, triad 3.
pub fn stream_bytes(kernel: &str, n: usize) -> u64 {
    let arrays = match kernel {
        "copy" | "scale" => 2,
        "add" | "triad" => 3,
        _ => 0,
    };
    arrays * 8 * n as u64
}

/// One product's timings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProductRate {
    #[serde(flatten)]
    pub shape: ProductShape,
    pub flops: f64,
    /// Products per timed sample (small products are repeated so a sample lasts ≥ 10 ms).
    pub repeats_per_sample: usize,
    /// Seconds per product, one per sample.
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    /// flops / median seconds, in GFLOP/s, of the product as tsd's layers run it ([`Self::tsd_op`];
    /// in records without one, a bare candle matmul, as `gemm_direct_gflops` now).
    pub tsd_gflops: f64,
    /// flops / fastest sample's seconds: interference from other work only slows a sample, so on
    /// a shared machine this is the steadier estimate of the kernel itself.
    pub tsd_best_gflops: f64,
    /// The layer op `tsd_gflops` timed (absent in records from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsd_op: Option<LayerOp>,
    /// candle's bare `x.matmul(rhs)` on the same operands (the weight as given, no column split):
    /// beside `tsd_gflops`, what the layers' layout and split buy. Median, GFLOP/s.
    #[serde(default)]
    pub gemm_direct_gflops: Option<f64>,
    /// The same, fastest sample.
    #[serde(default)]
    pub gemm_direct_best_gflops: Option<f64>,
    /// tsd's bf16 frozen-weight kernel through `FrozenLinear::with_bf16_products` and the same op
    /// (median), where the CPU has AVX512-BF16 and the op has a frozen weight.
    #[serde(default)]
    pub tsd_bf16_gflops: Option<f64>,
    /// The same, fastest sample.
    #[serde(default)]
    pub tsd_bf16_best_gflops: Option<f64>,
    /// `torch.matmul` f32 (median), when the peer ran.
    #[serde(default)]
    pub torch_f32_gflops: Option<f64>,
    /// `torch.matmul` f32 (fastest sample).
    #[serde(default)]
    pub torch_f32_best_gflops: Option<f64>,
    /// tsd / torch f32 (medians).
    #[serde(default)]
    pub tsd_over_torch: Option<f64>,
    /// tsd / torch f32 (fastest samples).
    #[serde(default)]
    pub tsd_over_torch_best: Option<f64>,
    /// `torch.matmul` bf16 (median), when the peer ran on a CPU with bf16 instructions.
    #[serde(default)]
    pub torch_bf16_gflops: Option<f64>,
    /// `torch.matmul` bf16 (fastest sample).
    #[serde(default)]
    pub torch_bf16_best_gflops: Option<f64>,
    /// Each system BLAS found ([`Roofline::system_blas`]) on the same product: its name → rates.
    #[serde(default)]
    pub blas: BTreeMap<String, BlasRate>,
    /// The fastest f32 path on this product by median (tsd, torch f32, each system BLAS).
    #[serde(default)]
    pub fastest_f32: Option<Fastest>,
    /// The fastest bf16 path by median (tsd bf16, torch bf16), where either ran.
    #[serde(default)]
    pub fastest_bf16: Option<Fastest>,
}

/// One system BLAS's `cblas_sgemm` on one product, timed as tsd's product is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlasRate {
    pub repeats_per_sample: usize,
    /// Seconds per product, one per sample.
    pub seconds: Vec<f64>,
    /// flops / median seconds, in GFLOP/s.
    pub gflops: f64,
    /// flops / fastest sample's seconds, in GFLOP/s.
    pub best_gflops: f64,
    /// tsd / this library (medians): below 1, the library is faster on this product.
    pub tsd_over: f64,
    /// tsd / this library (fastest samples).
    pub tsd_over_best: f64,
}

/// The fastest path on a product and its median rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fastest {
    /// `tsd`, `torch`, or a system BLAS's name (`gemm direct` is not a path of tsd's layers and
    /// is not among them).
    pub name: String,
    pub gflops: f64,
}

/// The system BLAS libraries the roofline opened, or why each was not.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SystemBlasPeers {
    /// Those opened and measured, in the order measured.
    pub libraries: Vec<super::system_blas::BlasInfo>,
    /// Per library not opened: its name and, per file tried, why not.
    pub not_found: BTreeMap<String, String>,
    pub how: String,
}

/// The STREAM-like bandwidth measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bandwidth {
    /// f64 elements per array.
    pub elements: usize,
    /// Bytes of the three arrays together.
    pub total_bytes: u64,
    pub threads: usize,
    pub runs: usize,
    /// Best (highest) bytes/s of each kernel over the runs, STREAM's byte count.
    pub copy_bytes_per_s: f64,
    pub triad_bytes_per_s: f64,
    pub copy_seconds: Vec<f64>,
    pub triad_seconds: Vec<f64>,
    pub how: String,
}

/// `tsd bench roofline`'s record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Roofline {
    pub what: String,
    pub cpu: CpuInfo,
    /// `Hypervisor vendor` as lscpu reads it (CPUID leaf 0x40000000), or `hypervisor flag set`.
    pub hypervisor: Option<String>,
    /// tsd's rayon pool (the threads gemm splits a product over).
    pub pool_threads: usize,
    /// The matrix-kernel path gemm took for the products (absent in records written before tsd
    /// recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<crate::kernels::KernelPath>,
    /// `/sys/devices/system/cpu/cpu0/cpufreq`'s current frequency in GHz, when readable.
    pub current_ghz: Option<f64>,
    /// The same directory's nominal (base, else maximum) frequency in GHz, when readable.
    pub cpufreq_nominal_ghz: Option<f64>,
    pub peak: Peak,
    pub products: Vec<ProductRate>,
    /// The best tsd f32 product rate over the shapes, GFLOP/s, and its shape's name.
    pub best_measured_f32_gflops: f64,
    pub best_measured_shape: String,
    pub best_measured_over_peak: f64,
    /// The theoretical bf16 `vdpbf16ps` peak, where the CPU has avx512_bf16 (absent in older
    /// records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_peak: Option<Bf16Peak>,
    /// Why there is no bf16 peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_peak_absent_because: Option<String>,
    /// The best bf16 product rate over the shapes and paths (tsd bf16, torch bf16; medians),
    /// GFLOP/s, its shape's name and path; none where nothing ran in bf16.
    #[serde(default)]
    pub best_measured_bf16: Option<BestBf16>,
    /// The fastest single sample's rate over all shapes, GFLOP/s.
    #[serde(default)]
    pub best_sample_f32_gflops: f64,
    /// The clock (GHz) the cores must at least have run at for the fastest sample under the
    /// peak's assumptions: best sample ÷ (cores × FMA units × lanes × 2). Above the nominal
    /// frequency, the cores boosted (or the assumption is wrong).
    #[serde(default)]
    pub implied_min_ghz: f64,
    /// The peer: what ran it, or why it did not.
    pub torch: TorchPeer,
    /// The system BLAS peers (records from before they were measured have none).
    #[serde(default)]
    pub system_blas: SystemBlasPeers,
    pub bandwidth: Bandwidth,
    pub runs_per_shape: usize,
    pub load_average_before: Vec<f64>,
    pub load_average_after: Vec<f64>,
    pub notes: Vec<String>,
}

/// The best measured bf16 product rate of a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestBf16 {
    pub gflops: f64,
    pub shape: String,
    /// `tsd` or `torch`.
    pub path: String,
    /// Over [`Roofline::bf16_peak`], where there is one.
    pub over_peak: Option<f64>,
}

/// The PyTorch peer's identity, or why it was skipped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TorchPeer {
    pub ran: bool,
    pub python: Option<String>,
    pub script: String,
    pub torch_version: Option<String>,
    pub threads: Option<usize>,
    pub cpu_capability: Option<String>,
    pub bf16: bool,
    pub skipped_because: Option<String>,
}

/// `tsd bench roofline`'s settings.
#[derive(Clone, Debug)]
pub struct RooflineOptions {
    pub runs: usize,
    pub tokens: usize,
    pub decode_rows: usize,
    /// Total bytes of the three STREAM arrays.
    pub stream_bytes: u64,
    pub stream_runs: usize,
    /// The Python that runs the peer; None skips it.
    pub torch_python: Option<String>,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A cpufreq file's kHz as GHz.
fn khz(path: &str) -> Option<f64> {
    read_trim(path)?.parse::<f64>().ok().map(|k| k / 1e6)
}

/// lscpu's `Hypervisor vendor`, if lscpu runs.
fn hypervisor_vendor() -> Option<String> {
    let out = std::process::Command::new("lscpu").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("Hypervisor vendor"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Median seconds of `f`, each sample repeating it so the sample lasts ≥ 10 ms.
fn time_samples(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<(usize, Vec<f64>)> {
    let t = Instant::now();
    f()?; // warm-up (packing buffers, pages)
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.01 / once).ceil() as usize).clamp(1, 10_000);
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        secs.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    Ok((reps, secs))
}

/// The operands of `shape`: the left `[m, k]` and the weight as its layer holds it, `[n, k]` for
/// a forward (`x·Wᵀ`), `[k, n]` for an input gradient (`g·W`).
fn operands(shape: &ProductShape) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (shape.m, shape.k), &dev)?;
    let w = if shape.rhs_transposed {
        Tensor::randn(0f32, 1.0, (shape.n, shape.k), &dev)?
    } else {
        Tensor::randn(0f32, 1.0, (shape.k, shape.n), &dev)?
    };
    Ok((x, w))
}

/// Times each shape through candle's bare CPU matmul (gemm, tsd's rayon pool) on the weight as
/// given: no stored transpose, no column split (`gemm direct`).
fn time_gemm_direct(shape: &ProductShape, runs: usize) -> Result<(usize, Vec<f64>)> {
    let (x, w) = operands(shape)?;
    let rhs = if shape.rhs_transposed { w.t()? } else { w };
    time_samples(runs, || {
        let y = x.matmul(&rhs)?;
        std::hint::black_box(&y);
        Ok(())
    })
}

/// Row blocks `(start, len)` the op runs `m` rows in: the fused head loss's, else one block.
fn op_blocks(op: LayerOp, m: usize) -> Vec<(usize, usize)> {
    match op {
        LayerOp::HeadProductBlocks | LayerOp::HeadInputGradBlocks => {
            crate::nn::loss::row_blocks(m).collect()
        }
        _ => vec![(0, m)],
    }
}

/// Times `shape` as tsd's layers run it ([`layer_op`]); `bf16`: through a frozen linear with bf16
/// products. None where that path does not exist (bf16 on LoRA's product, or on a CPU without
/// AVX512-BF16).
fn time_layer(shape: &ProductShape, runs: usize, bf16: bool) -> Result<Option<(usize, Vec<f64>)>> {
    let op = layer_op(shape);
    let (x, w) = operands(shape)?;
    if op == LayerOp::LoraDown {
        if bf16 {
            return Ok(None);
        }
        let at = w.t()?;
        return time_samples(runs, || {
            std::hint::black_box(matmul_2d(&x, &at)?);
            Ok(())
        })
        .map(Some);
    }
    let mut lin = FrozenLinear::new(w);
    if bf16 && !lin.with_bf16_products()? {
        return Ok(None);
    }
    if matches!(op, LayerOp::PackedProduct | LayerOp::HeadProductBlocks) && !bf16 {
        // As inference packs every forward and training its head (`Llama::use_packed_head`);
        // false (candle's matmul, as they would run it) where the kernel is unavailable.
        lin.with_packed_products()?;
    }
    let blocks: Vec<_> = op_blocks(op, shape.m)
        .into_iter()
        .map(|(s, len)| x.narrow(0, s, len))
        .collect::<candle_core::Result<_>>()?;
    let forward = matches!(
        op,
        LayerOp::Product | LayerOp::PackedProduct | LayerOp::HeadProductBlocks
    );
    time_samples(runs, || {
        for b in &blocks {
            let y = if forward {
                lin.product(b)?
            } else {
                lin.input_grad(b)?
            };
            std::hint::black_box(&y);
        }
        Ok(())
    })
    .map(Some)
}

/// Times `blas`'s `cblas_sgemm` on `shape`, row-major with tsd's transposition (the right operand
/// `[n, k]` read transposed when `rhs_transposed`, else `[k, n]`), as [`time_gemm_direct`] times
/// candle's.
fn time_blas(
    blas: &super::system_blas::SystemBlas,
    shape: &ProductShape,
    runs: usize,
) -> Result<(usize, Vec<f64>)> {
    use candle_core::{Device, Tensor};
    let (m, k, n) = (shape.m, shape.k, shape.n);
    let a = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)?.to_vec1::<f32>()?;
    let b = Tensor::randn(0f32, 1.0, k * n, &Device::Cpu)?.to_vec1::<f32>()?;
    let mut c = vec![0f32; m * n];
    time_samples(runs, || {
        blas.sgemm((m, k, n), &a, &b, shape.rhs_transposed, &mut c);
        std::hint::black_box(&c);
        Ok(())
    })
}

/// Measures every system BLAS that opens on every shape, after tsd and before PyTorch, one
/// library at a time: each library gets tsd's pool size in threads while it runs, and nothing
/// else computes meanwhile (rayon's workers are parked), so no two pools compete for the cores.
fn measure_blas(
    shapes: &[ProductShape],
    products: &mut [ProductRate],
    pool: usize,
    runs: usize,
    log: &dyn Fn(&str),
) -> Result<SystemBlasPeers> {
    use super::system_blas::{open, KINDS};
    let mut peers = SystemBlasPeers {
        how: format!(
            "opened at run time (libloading, no link-time dependency), `cblas_sgemm` row-major \
             f32 with tsd's transposition, the library's own threads set to tsd's pool size \
             ({pool}) while measured and to 1 after; timed as tsd's products are (warm-up, \
             samples of repeats lasting ≥ 10 ms, median and fastest)"
        ),
        ..Default::default()
    };
    for kind in KINDS {
        let blas = match open(kind) {
            Ok(b) => b,
            Err(why) => {
                log(&format!("roofline: no {}: {why}", kind.name()));
                peers.not_found.insert(kind.name().to_string(), why);
                continue;
            }
        };
        blas.set_threads(pool);
        let info = blas.info();
        log(&format!(
            "roofline: {} ({}, {} threads)…",
            info.name,
            info.resolved.as_deref().unwrap_or(&info.file),
            info.threads
        ));
        for (s, p) in shapes.iter().zip(products.iter_mut()) {
            let (reps, secs) = time_blas(blas, s, runs)?;
            let med = median(&secs);
            let best = secs.iter().cloned().fold(f64::INFINITY, f64::min);
            let (g, gb) = (s.flops() / med / 1e9, s.flops() / best / 1e9);
            p.blas.insert(
                info.name.clone(),
                BlasRate {
                    repeats_per_sample: reps,
                    seconds: secs,
                    gflops: g,
                    best_gflops: gb,
                    tsd_over: p.tsd_gflops / g,
                    tsd_over_best: p.tsd_best_gflops / gb,
                },
            );
        }
        // Back to one thread: nothing else in tsd calls the library, but should anything later
        // do so it must not start a second pool beside rayon's. The pause lets the library's
        // workers, which spin a while after a call (OpenBLAS's pthreads, BLIS's OpenMP team),
        // go to sleep before the next measurement.
        blas.set_threads(1);
        std::thread::sleep(std::time::Duration::from_millis(300));
        peers.libraries.push(info);
    }
    Ok(peers)
}

/// The fastest f32 path on `p` by median rate.
fn fastest_f32(p: &ProductRate) -> Fastest {
    let mut all = vec![("tsd".to_string(), p.tsd_gflops)];
    all.extend(p.torch_f32_gflops.map(|g| ("torch".to_string(), g)));
    all.extend(p.blas.iter().map(|(n, r)| (n.clone(), r.gflops)));
    let (name, gflops) = all
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("tsd's rate");
    Fastest { name, gflops }
}

/// The fastest bf16 path on `p` by median rate (tsd's kernel, torch), where either ran.
fn fastest_bf16(p: &ProductRate) -> Option<Fastest> {
    [("tsd", p.tsd_bf16_gflops), ("torch", p.torch_bf16_gflops)]
        .into_iter()
        .filter_map(|(n, g)| Some((n, g?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, gflops)| Fastest {
            name: name.into(),
            gflops,
        })
}

/// The best of the shapes' fastest bf16 paths, and its fraction of `peak`.
fn best_bf16(products: &[ProductRate], peak: Option<&Bf16Peak>) -> Option<BestBf16> {
    let (p, f) = products
        .iter()
        .filter_map(|p| Some((p, p.fastest_bf16.as_ref()?)))
        .max_by(|a, b| a.1.gflops.total_cmp(&b.1.gflops))?;
    Some(BestBf16 {
        gflops: f.gflops,
        shape: p.shape.name.clone(),
        path: f.name.clone(),
        over_peak: peak.map(|k| f.gflops * 1e9 / k.flops_per_s),
    })
}

/// STREAM copy and triad over three arrays of `bytes / 24` f64, split over the rayon pool.
pub fn bench_bandwidth(bytes: u64, runs: usize) -> Bandwidth {
    let n = (bytes / 24) as usize;
    let threads = rayon::current_num_threads();
    let chunk = n.div_ceil(threads * 4).max(1);
    let mut a = vec![0f64; n];
    let mut b = vec![0f64; n];
    let mut c = vec![0f64; n];
    // first touch on the pool, as the timed loops touch them
    a.par_chunks_mut(chunk).for_each(|x| x.fill(1.0));
    b.par_chunks_mut(chunk).for_each(|x| x.fill(2.0));
    c.par_chunks_mut(chunk).for_each(|x| x.fill(0.0));
    let s = 3.0f64;
    let (mut copy, mut triad) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        c.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk))
            .for_each(|(c, a)| c.copy_from_slice(a));
        copy.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk).zip(c.par_chunks(chunk)))
            .for_each(|(a, (b, c))| {
                for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                    *a = b + s * c;
                }
            });
        triad.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box((&a, &c));
    let best = |xs: &[f64]| xs.iter().cloned().fold(f64::INFINITY, f64::min);
    Bandwidth {
        elements: n,
        total_bytes: 24 * n as u64,
        threads,
        runs,
        copy_bytes_per_s: stream_bytes("copy", n) as f64 / best(&copy),
        triad_bytes_per_s: stream_bytes("triad", n) as f64 / best(&triad),
        copy_seconds: copy,
        triad_seconds: triad,
        how: "STREAM-style copy c = a and triad a = b + 3·c over three f64 arrays, each split in \
              chunks over tsd's rayon pool; best run; bytes counted as STREAM does (copy 16, \
              triad 24 bytes per element, no write-allocate traffic)"
            .into(),
    }
}

/// The peer's output: per shape name, f32 and bf16 medians in seconds; and its identity.
#[derive(Deserialize)]
struct TorchOut {
    torch: String,
    threads: usize,
    cpu_capability: Option<String>,
    results: Vec<TorchResult>,
}

#[derive(Deserialize)]
struct TorchResult {
    name: String,
    f32_median_seconds: f64,
    f32_best_seconds: f64,
    bf16_median_seconds: Option<f64>,
    bf16_best_seconds: Option<f64>,
}

/// Runs [`TORCH_SCRIPT`] with `python` on `shapes` (stdin carries the script; the shapes go as
/// JSON in an argument).
fn run_torch(
    python: &str,
    shapes: &[ProductShape],
    threads: usize,
    runs: usize,
    bf16: bool,
) -> Result<TorchOut> {
    use std::io::Write;
    let shapes_json = serde_json::to_string(shapes)
        .map_err(|e| Error::Internal(format!("roofline shapes: {e}")))?;
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-", "--threads", &threads.to_string()]).args([
        "--runs",
        &runs.to_string(),
        "--shapes",
        &shapes_json,
    ]);
    if bf16 {
        cmd.arg("--bf16");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(std::path::Path::new(python), e))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(TORCH_SCRIPT.as_bytes())
        .map_err(|e| Error::io(std::path::Path::new(python), e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(std::path::Path::new(python), e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "benches/torch_matmul.py: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Internal(format!("benches/torch_matmul.py output: {e}")))
}

/// The clock the peak is derived from and where it was read: cpufreq's nominal frequency, else
/// `/proc/cpuinfo`'s `cpu MHz` (under a hypervisor the TSC's nominal rate).
fn nominal_clock(cpu: &CpuInfo, cpufreq: Option<f64>, hypervisor: bool) -> (f64, String) {
    match (cpufreq, cpu.cpu_mhz) {
        (Some(g), _) => (
            g,
            "cpufreq base_frequency (else cpuinfo_max_freq)".to_string(),
        ),
        (None, Some(mhz)) => (
            mhz / 1e3,
            format!(
                "/proc/cpuinfo `cpu MHz`{}: the nominal clock; the cores may run faster (boost), \
                 which this peak does not include",
                if hypervisor {
                    " (under a hypervisor: the TSC's nominal rate the guest is told, not the \
                     current clock; no cpufreq is exposed)"
                } else {
                    ""
                }
            ),
        ),
        (None, None) => (f64::NAN, "unknown".into()),
    }
}

/// GFLOP/s of `flops` at the median and at the fastest of `secs`.
fn rates(flops: f64, secs: &[f64]) -> (f64, f64) {
    let best = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    (flops / median(secs) / 1e9, flops / best / 1e9)
}

/// tsd's rates on every shape (median of `runs` samples): the layer path in f32, gemm direct, and
/// the layer path with bf16 products where `bf16` (the CPU runs the kernel); the peers' columns
/// still empty.
fn measure_tsd(
    shapes: &[ProductShape],
    runs: usize,
    bf16: bool,
    log: &dyn Fn(&str),
) -> Result<Vec<ProductRate>> {
    let mut products = Vec::new();
    for s in shapes {
        let op = layer_op(s);
        log(&format!(
            "roofline: tsd {} [{}x{}]·[{}x{}] ({}{})…",
            s.name,
            s.m,
            s.k,
            s.k,
            s.n,
            op.describe(),
            if bf16 && op.frozen() {
                ", f32 and bf16"
            } else {
                ""
            }
        ));
        let (reps, secs) = time_layer(s, runs, false)?.expect("the f32 path always exists");
        let (direct, direct_best) = rates(s.flops(), &time_gemm_direct(s, runs)?.1);
        let bf = if bf16 {
            time_layer(s, runs, true)?.map(|(_, t)| rates(s.flops(), &t))
        } else {
            None
        };
        let (g, gb) = rates(s.flops(), &secs);
        products.push(ProductRate {
            shape: s.clone(),
            flops: s.flops(),
            repeats_per_sample: reps,
            median_seconds: median(&secs),
            tsd_gflops: g,
            tsd_best_gflops: gb,
            tsd_op: Some(op),
            gemm_direct_gflops: Some(direct),
            gemm_direct_best_gflops: Some(direct_best),
            tsd_bf16_gflops: bf.map(|b| b.0),
            tsd_bf16_best_gflops: bf.map(|b| b.1),
            seconds: secs,
            torch_f32_gflops: None,
            torch_f32_best_gflops: None,
            tsd_over_torch: None,
            tsd_over_torch_best: None,
            torch_bf16_gflops: None,
            torch_bf16_best_gflops: None,
            blas: BTreeMap::new(),
            fastest_f32: None,
            fastest_bf16: None,
        });
    }
    Ok(products)
}

/// Runs the PyTorch peer (when a Python is given) and fills its columns of `products`.
fn measure_torch(
    o: &RooflineOptions,
    shapes: &[ProductShape],
    products: &mut [ProductRate],
    pool: usize,
    bf16: bool,
    log: &dyn Fn(&str),
) -> Result<TorchPeer> {
    let mut torch = TorchPeer {
        script: "benches/torch_matmul.py (compiled into the binary, run with `python -`)".into(),
        python: o.torch_python.as_deref().map(crate::fsutil::portable),
        ..Default::default()
    };
    let Some(py) = &o.torch_python else {
        torch.skipped_because =
            Some("no --torch-python and no $TSD_PYTHON: the PyTorch peer was not run".into());
        return Ok(torch);
    };
    log(&format!(
        "roofline: torch.matmul on the same shapes ({py})…"
    ));
    let t = run_torch(py, shapes, pool, o.runs, bf16)?;
    for r in &t.results {
        if let Some(p) = products.iter_mut().find(|p| p.shape.name == r.name) {
            let rate = |s: f64| p.flops / s / 1e9;
            let (g, gb) = (rate(r.f32_median_seconds), rate(r.f32_best_seconds));
            p.torch_f32_gflops = Some(g);
            p.torch_f32_best_gflops = Some(gb);
            p.tsd_over_torch = Some(p.tsd_gflops / g);
            p.tsd_over_torch_best = Some(p.tsd_best_gflops / gb);
            p.torch_bf16_gflops = r.bf16_median_seconds.map(rate);
            p.torch_bf16_best_gflops = r.bf16_best_seconds.map(rate);
        }
    }
    torch.ran = true;
    torch.torch_version = Some(t.torch);
    torch.threads = Some(t.threads);
    torch.cpu_capability = t.cpu_capability;
    torch.bf16 = bf16;
    Ok(torch)
}

/// What the record says about how it was measured.
fn roofline_notes(
    cpu: &CpuInfo,
    tsd_bf16: bool,
    bf16_peak_absent: Option<&str>,
    blas: &SystemBlasPeers,
) -> Vec<String> {
    let mut notes = vec![
        "the theoretical peaks are derivations from the stated microarchitecture assumption and \
         frequency, not measurements"
            .to_string(),
        layer_path_note(),
        tsd_bf16_note(tsd_bf16),
        system_blas_note(blas, cpu.has("avx512f")),
        "PyTorch's products run on an OpenMP pool that splits each product statically over its \
         threads and waits for all of them; while other processes hold a core, a product waits \
         for the descheduled thread, where rayon's work stealing (tsd) lets the running thread \
         take over: on a loaded machine the medians favour tsd, compare the fastest samples too"
            .to_string(),
        "attention's QKᵀ and P·V products (per head [128, 64]·[64, 128], gemm called directly, \
         one thread per head) are not among the shapes"
            .to_string(),
    ];
    notes.extend(bf16_peak_absent.map(|why| format!("no theoretical bf16 peak: {why}")));
    if cpu.hypervisor_flag {
        notes.push(
            "a virtual machine: other guests share the host's cores, memory bandwidth and L3; \
             the load average counts this guest only"
                .into(),
        );
    }
    notes
}

/// What the `tsd` rates time: the layers' ops, and gemm direct beside them.
fn layer_path_note() -> String {
    "tsd's f32 products (`tsd`, `tsd_op`) are timed as the layers run them: a training forward \
     `x·Wᵀ` through a FrozenLinear built from W (`product`: a CPU weight with more inputs than \
     outputs is stored as its contiguous transpose, products of ≤ 256 rows are split over the \
     pool by column blocks), a decode forward as inference runs it (`product` after \
     `with_packed_products`: the weight packed once, nn::packed's AVX-512F kernel, the same bits \
     as gemm; gemm itself for 1 row or where AVX-512F is absent), an input gradient `g·W` through `FrozenLinear::input_grad`, LoRA's x·Aᵀ \
     through `matmul_2d` as AdaptedLinear::forward, and the training LM head's two shapes as the \
     fused head loss (nn::loss::head_cross_entropy) runs them, in 128-row blocks (the products \
     only, not its softmax; the forward on the head packed once, as `Llama::use_packed_head` \
     makes training run it); all candle's CPU matmul (f32) → the gemm crate (AVX-512 kernels, \
     feature x86-v4) on tsd's one rayon pool; `gemm_direct` is candle's bare x.matmul(rhs) on \
     the same operands (the weight read as given, one product), what the layout and the split \
     add; each sample is a median over repeats lasting ≥ 10 ms, after one warm-up product; the \
     best measured f32 rate is tsd's (layer path, median)"
        .to_string()
}

/// What `tsd_bf16` times, or why it is absent.
fn tsd_bf16_note(measured: bool) -> String {
    if !measured {
        return "tsd's bf16 kernel (nn::bf16) needs AVX512-BF16, which this CPU lacks: no tsd bf16 \
                rates; bf16 rates, if any, are PyTorch's"
            .into();
    }
    "tsd's bf16 products (`tsd_bf16`): the frozen-weight kernel (nn::bf16, AVX512-BF16 \
     vdpbf16ps: weight and input rounded to bf16, sums in f32) through \
     FrozenLinear::with_bf16_products and the same op as `tsd` (the weight packed once before \
     timing, the input rounded in every product); LoRA's own product stays f32 (no bf16 path); \
     the best measured bf16 rate is the fastest of tsd bf16 and torch bf16 (medians)"
        .into()
}

/// The note on the system BLAS: what was measured, or why nothing was.
fn system_blas_note(blas: &SystemBlasPeers, avx512: bool) -> String {
    let found: Vec<String> = blas
        .libraries
        .iter()
        .map(|l| {
            format!(
                "{} ({}{}, kernels {}{}, {} threads while measured, {})",
                l.name,
                l.resolved.as_deref().unwrap_or(&l.file),
                l.version
                    .as_deref()
                    .map_or(String::new(), |v| format!(", {v}")),
                l.kernels.as_deref().unwrap_or("?"),
                l.kernels_forced_by
                    .as_deref()
                    .map_or(" as picked from CPUID".to_string(), |e| format!(
                        " forced by {e}"
                    )),
                l.threads,
                l.threading.as_deref().unwrap_or("threading unknown")
            )
        })
        .collect();
    let missing: Vec<&str> = blas.not_found.keys().map(String::as_str).collect();
    let mut note = if found.is_empty() {
        "no system BLAS found: the peer is PyTorch's own bundled kernels (oneDNN / MKL as its \
         wheel ships them)"
            .to_string()
    } else {
        format!(
            "system BLAS measured on every shape through cblas_sgemm: {}; each library picks its \
             kernels from CPUID when opened, and a release older than the CPU may not know it and \
             fall back on older kernels (`kernels` names those picked); PyTorch uses its own \
             bundled kernels (oneDNN / MKL as its wheel ships them)",
            found.join("; ")
        )
    };
    let picked = |name: &str, k: &str| {
        blas.libraries.iter().any(|l| {
            l.name == name && l.kernels.as_deref() == Some(k) && l.kernels_forced_by.is_none()
        })
    };
    if avx512 && picked("OpenBLAS", "Haswell") {
        note += "; OpenBLAS took this AVX-512 CPU for Haswell (AVX2 kernels): \
                 OPENBLAS_CORETYPE=SkylakeX in the environment selects its AVX-512 kernels";
    }
    for l in blas.libraries.iter().filter(|l| !l.environment.is_empty()) {
        note += &format!(
            "; {} ran with {} set in the environment{}",
            l.name,
            l.environment.join(" "),
            if l.kernels_forced_by.is_some() {
                ", which overrides the kernels it would pick itself: unset it to measure those"
            } else {
                ""
            }
        );
    }
    if picked("BLIS", "generic") {
        note += "; BLIS did not recognise this CPU: `generic` is its unoptimised reference kernel";
    }
    if !missing.is_empty() {
        note += &format!(
            "; not found: {} (Debian: apt-get install libopenblas0-pthread libblis4)",
            missing.join(", ")
        );
    }
    note
}

/// Measures this machine's limits (see the module doc). `log` hears of each phase.
pub fn bench_roofline(o: &RooflineOptions, log: &dyn Fn(&str)) -> Result<Roofline> {
    let load_before = loadavg();
    let cpu = parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let pool = rayon::current_num_threads();
    let freq_dir = "/sys/devices/system/cpu/cpu0/cpufreq";
    let current_ghz = khz(&format!("{freq_dir}/scaling_cur_freq"));
    let cpufreq_nominal_ghz = khz(&format!("{freq_dir}/base_frequency"))
        .or_else(|| khz(&format!("{freq_dir}/cpuinfo_max_freq")));
    let hypervisor = hypervisor_vendor().or_else(|| {
        cpu.hypervisor_flag
            .then(|| "unknown (hypervisor flag set)".to_string())
    });
    let (ghz, ghz_source) = nominal_clock(&cpu, cpufreq_nominal_ghz, hypervisor.is_some());
    let peak = peak(cpu.cores, ghz, &ghz_source, assume_microarch(&cpu));
    let bf16_peak = bf16_peak(&cpu, &peak);
    let tsd_bf16 = crate::nn::bf16::available();
    let shapes = default_shapes(o.tokens, o.decode_rows);
    let mut products = measure_tsd(&shapes, o.runs, tsd_bf16, log)?;
    let system_blas = measure_blas(&shapes, &mut products, pool, o.runs, log)?;
    let torch = measure_torch(o, &shapes, &mut products, pool, cpu.has_bf16(), log)?;
    for p in &mut products {
        p.fastest_f32 = Some(fastest_f32(p));
        p.fastest_bf16 = fastest_bf16(p);
    }
    log(&format!(
        "roofline: STREAM copy/triad over {} MiB…",
        o.stream_bytes >> 20
    ));
    let bandwidth = bench_bandwidth(o.stream_bytes, o.stream_runs);
    let best = products
        .iter()
        .max_by(|a, b| a.tsd_gflops.total_cmp(&b.tsd_gflops))
        .expect("shapes");
    let best_sample = products
        .iter()
        .map(|p| p.tsd_best_gflops)
        .fold(0.0, f64::max);
    Ok(Roofline {
        what: "this machine's limits: CPU identity, theoretical f32 FMA and bf16 peaks (derived), \
               measured f32 matrix-product rates of tsd's layers (and of a bare gemm), tsd's bf16 \
               kernel, PyTorch's f32 and bf16 and the system BLAS's on the default model's \
               training and decode shapes, STREAM-like memory bandwidth"
            .into(),
        best_measured_bf16: best_bf16(&products, bf16_peak.as_ref().ok()),
        notes: roofline_notes(
            &cpu,
            tsd_bf16,
            bf16_peak.as_ref().err().map(String::as_str),
            &system_blas,
        ),
        bf16_peak_absent_because: bf16_peak.as_ref().err().cloned(),
        bf16_peak: bf16_peak.ok(),
        best_measured_f32_gflops: best.tsd_gflops,
        best_measured_shape: best.shape.name.clone(),
        best_measured_over_peak: best.tsd_gflops * 1e9 / peak.f32_flops_per_s,
        best_sample_f32_gflops: best_sample,
        implied_min_ghz: implied_ghz(best_sample * 1e9, &peak),
        cpu,
        hypervisor,
        pool_threads: pool,
        kernel_path: Some(crate::kernels::current()),
        current_ghz,
        cpufreq_nominal_ghz,
        peak,
        products,
        torch,
        system_blas,
        bandwidth,
        runs_per_shape: o.runs,
        load_average_before: load_before,
        load_average_after: loadavg(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processors of this project's build host (flags shortened), as /proc/cpuinfo lists them.
    const SAMPLE: &str = "processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
cpu MHz\t\t: 2596.122
physical id\t: 0
siblings\t: 2
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c hypervisor avx2 avx512f avx512dq avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
cpu MHz\t\t: 2596.122
physical id\t: 0
siblings\t: 2
core id\t\t: 1
cpu cores\t: 2
flags\t\t: fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c hypervisor avx2 avx512f avx512dq avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni
";

    #[test]
    fn cpuinfo_sample_parses() {
        let c = parse_cpuinfo(SAMPLE);
        assert_eq!(c.model_name, "AMD EPYC");
        assert_eq!(c.vendor, "AuthenticAMD");
        assert_eq!(
            (c.family, c.model, c.stepping),
            (Some(26), Some(2), Some(1))
        );
        assert_eq!((c.threads, c.cores), (2, 2));
        assert_eq!(c.cpu_mhz, Some(2596.122));
        assert!(c.hypervisor_flag);
        assert!(c.has("avx512f") && c.has("fma") && c.has_bf16());
        assert!(!c.has("sse2"), "only kernel-relevant flags are kept");
        assert!(!c.kernel_flags.iter().any(|f| f.starts_with("amx")));
        // hyperthreads: two logical processors on one core count one core
        let ht = SAMPLE.replace("core id\t\t: 1", "core id\t\t: 0");
        assert_eq!(parse_cpuinfo(&ht).cores, 1);
        assert_eq!(parse_cpuinfo("").threads, 0);
    }

    #[test]
    fn zen5_peak_from_given_numbers() {
        let c = parse_cpuinfo(SAMPLE);
        let m = assume_microarch(&c);
        assert_eq!((m.fma_units, m.datapath_bits, m.f32_lanes()), (2, 512, 16));
        let p = peak(2, 2.5, "given", m);
        // 2 cores × 2.5 GHz × 2 FMA × 16 lanes × 2 = 320 GFLOP/s
        assert!((p.f32_flops_per_s - 320e9).abs() < 1.0);
        assert!(p.derivation.contains("= 320.0 GFLOP/s"), "{}", p.derivation);
        // 384 GFLOP/s on those 2 cores needs at least 384 / (2·2·16·2) = 3 GHz
        assert!((implied_ghz(384e9, &p) - 3.0).abs() < 1e-12);
        // Zen 4: 512-bit FMAs on 256-bit halves
        let zen4 = CpuInfo {
            family: Some(25),
            model: Some(0x11),
            ..c.clone()
        };
        let p4 = peak(4, 3.0, "given", assume_microarch(&zen4));
        assert!((p4.f32_flops_per_s - 4.0 * 3e9 * 2.0 * 8.0 * 2.0).abs() < 1.0);
        // unknown CPU with AVX2 + FMA
        let other = CpuInfo {
            vendor: "Other".into(),
            kernel_flags: vec!["avx2".into(), "fma".into()],
            ..Default::default()
        };
        let m = assume_microarch(&other);
        assert_eq!(
            (m.name.as_str(), m.fma_units, m.datapath_bits),
            ("unknown", 2, 256)
        );
    }

    #[test]
    fn product_flops_and_default_shapes() {
        let s = default_shapes(512, 64);
        let up = s.iter().find(|s| s.name == "gate,up fwd").unwrap();
        assert_eq!((up.m, up.k, up.n), (512, 576, 1536));
        assert_eq!(up.flops(), 2.0 * 512.0 * 576.0 * 1536.0);
        let head = s.iter().find(|s| s.name == "LM head fwd").unwrap();
        assert_eq!(head.flops(), 2.0 * 512.0 * 576.0 * 49152.0);
        // the backward input gradient of down: [512, 576]·[576, 1536]
        let d = s.iter().find(|s| s.name == "down bwd dx").unwrap();
        assert_eq!((d.m, d.k, d.n, d.rhs_transposed), (512, 576, 1536, false));
        assert!(s.iter().any(|s| s.m == 1) && s.iter().any(|s| s.m == 64));
        let names: std::collections::BTreeSet<_> = s.iter().map(|s| &s.name).collect();
        assert_eq!(
            names.len(),
            s.len(),
            "names are unique (the peer's results join on them)"
        );
    }

    /// vdpbf16ps: 2 bf16 products per f32 lane on the same FMA units, so twice the f32 peak;
    /// none without avx512_bf16.
    #[test]
    fn bf16_peak_is_twice_the_f32_fma_peak() {
        let c = parse_cpuinfo(SAMPLE);
        let p = peak(2, 2.5, "given", assume_microarch(&c));
        let b = bf16_peak(&c, &p).unwrap();
        // 2 cores × 2.5 GHz × 2 FMA × 16 lanes × 2 products × 2 = 640 GFLOP/s
        assert!((b.flops_per_s - 640e9).abs() < 1.0);
        assert!(
            b.derivation
                .contains("x 16 f32 lanes x 2 bf16 products per lane x 2 = 640.0 GFLOP/s"),
            "{}",
            b.derivation
        );
        assert!(!b.assumption.contains("AMX"));
        let mut amx = c.clone();
        amx.kernel_flags.push("amx_bf16".into());
        assert!(bf16_peak(&amx, &p).unwrap().assumption.contains("AMX"));
        let mut no = c;
        no.kernel_flags.retain(|f| f != "avx512_bf16");
        assert!(bf16_peak(&no, &p).unwrap_err().contains("avx512_bf16"));
    }

    /// Training forwards through `FrozenLinear::product`, the decode's through the packed weights
    /// inference uses, input gradients through `input_grad`, LoRA's thin product through
    /// `matmul_2d`, the training head in the fused loss's 128-row blocks (decode's head is a
    /// plain product).
    #[test]
    fn each_default_shape_maps_to_the_op_its_layer_runs() {
        use LayerOp::*;
        let want = [
            ("q,o fwd", Product),
            ("k,v fwd", Product),
            ("gate,up fwd", Product),
            ("down fwd", Product),
            ("q,o bwd dx", InputGrad),
            ("k,v bwd dx", InputGrad),
            ("gate,up bwd dx", InputGrad),
            ("down bwd dx", InputGrad),
            ("LoRA x·Aᵀ r=8", LoraDown),
            ("LM head fwd", HeadProductBlocks),
            ("LM head bwd dx", HeadInputGradBlocks),
            ("q,o decode", PackedProduct),
            ("gate,up decode", PackedProduct),
            ("down decode", PackedProduct),
            ("LM head decode", PackedProduct),
            ("gate,up 1 row", PackedProduct),
            ("LM head 1 row", PackedProduct),
        ];
        let shapes = default_shapes(512, 64);
        assert_eq!(shapes.len(), want.len());
        for (s, (name, op)) in shapes.iter().zip(want) {
            assert_eq!((s.name.as_str(), layer_op(s)), (name, op));
        }
        assert_eq!(
            op_blocks(HeadProductBlocks, 512),
            [(0, 128), (128, 128), (256, 128), (384, 128)]
        );
        assert_eq!(op_blocks(Product, 512), [(0, 512)]);
        assert!(!LoraDown.frozen() && HeadInputGradBlocks.frozen());
    }

    /// Every op times on small shapes; bf16 exists for frozen weights only, and only where the
    /// CPU runs the kernel.
    #[test]
    fn layer_ops_time_in_f32_and_bf16() -> Result<()> {
        let shapes = [
            ProductShape::new("q,o fwd", "train forward", 8, 32, 24, true),
            ProductShape::new("down bwd dx", "train backward", 8, 16, 40, false),
            ProductShape::new("LoRA x·Aᵀ r=8", "train forward", 8, 32, 4, true),
            ProductShape::new("LM head fwd", "train forward", 300, 16, 64, true),
            ProductShape::new("LM head bwd dx", "train backward", 300, 64, 16, false),
        ];
        for s in &shapes {
            let (_, secs) = time_layer(s, 1, false)?.expect("f32 path");
            assert_eq!(secs.len(), 1);
            let bf = time_layer(s, 1, true)?;
            let frozen = layer_op(s).frozen();
            assert_eq!(
                bf.is_some(),
                frozen && crate::nn::bf16::available(),
                "{}",
                s.name
            );
        }
        Ok(())
    }

    /// A record from before the layer path, gemm direct and bf16 were measured still reads, with
    /// those fields absent.
    #[test]
    fn records_without_the_new_fields_still_read() {
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("../../reproductions/bench/roofline.json")).unwrap();
        for k in [
            "bf16_peak",
            "bf16_peak_absent_because",
            "best_measured_bf16",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        for p in v["products"].as_array_mut().unwrap() {
            let p = p.as_object_mut().unwrap();
            for k in [
                "tsd_op",
                "gemm_direct_gflops",
                "gemm_direct_best_gflops",
                "tsd_bf16_gflops",
                "tsd_bf16_best_gflops",
                "fastest_bf16",
            ] {
                p.remove(k);
            }
        }
        let rec: Roofline = serde_json::from_value(v).unwrap();
        assert!(rec.bf16_peak.is_none() && rec.best_measured_bf16.is_none());
        let p = &rec.products[0];
        assert!(p.tsd_op.is_none() && p.gemm_direct_gflops.is_none());
        assert!(p.tsd_bf16_gflops.is_none() && p.fastest_bf16.is_none());
    }

    #[test]
    fn the_fastest_bf16_path_and_the_best_over_shapes() {
        let shapes = default_shapes(512, 64);
        let rate = |s: &ProductShape, tsd: Option<f64>, torch: Option<f64>| ProductRate {
            shape: s.clone(),
            flops: s.flops(),
            repeats_per_sample: 1,
            seconds: vec![1.0],
            median_seconds: 1.0,
            tsd_gflops: 100.0,
            tsd_best_gflops: 100.0,
            tsd_op: Some(layer_op(s)),
            gemm_direct_gflops: None,
            gemm_direct_best_gflops: None,
            tsd_bf16_gflops: tsd,
            tsd_bf16_best_gflops: tsd,
            torch_f32_gflops: None,
            torch_f32_best_gflops: None,
            tsd_over_torch: None,
            tsd_over_torch_best: None,
            torch_bf16_gflops: torch,
            torch_bf16_best_gflops: torch,
            blas: BTreeMap::new(),
            fastest_f32: None,
            fastest_bf16: None,
        };
        let mut ps = vec![
            rate(&shapes[0], Some(500.0), Some(600.0)),
            rate(&shapes[1], Some(700.0), None),
            rate(&shapes[8], None, None),
        ];
        for p in &mut ps {
            p.fastest_bf16 = fastest_bf16(p);
        }
        assert_eq!(ps[0].fastest_bf16.as_ref().unwrap().name, "torch");
        assert_eq!(ps[1].fastest_bf16.as_ref().unwrap().name, "tsd");
        assert!(ps[2].fastest_bf16.is_none());
        let peak = Bf16Peak {
            flops_per_s: 1400e9,
            derivation: String::new(),
            assumption: String::new(),
        };
        let b = best_bf16(&ps, Some(&peak)).unwrap();
        assert_eq!(
            (b.gflops, b.shape.as_str(), b.path.as_str()),
            (700.0, "k,v fwd", "tsd")
        );
        assert_eq!(b.over_peak, Some(0.5));
        assert!(best_bf16(&ps[2..], None).is_none());
    }

    #[test]
    fn stream_counts_bytes_as_stream_does() {
        assert_eq!(stream_bytes("copy", 1000), 16_000);
        assert_eq!(stream_bytes("scale", 1000), 16_000);
        assert_eq!(stream_bytes("add", 1000), 24_000);
        assert_eq!(stream_bytes("triad", 1000), 24_000);
        let b = bench_bandwidth(24 * 4096, 2);
        assert_eq!((b.elements, b.total_bytes), (4096, 24 * 4096));
        assert_eq!(b.triad_seconds.len(), 2);
    }
}
