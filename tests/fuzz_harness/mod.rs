//! A structure-aware mutation fuzzer for tsd's parsers of untrusted bytes, on stable Rust.
//!
//! Each target takes bytes and feeds them to a parser the way tsd reads them (most through a file,
//! beside valid companion files). Inputs are real files (fixtures, or files built here) mutated by
//! byte flips, interesting-integer overwrites (lengths and counts such as 2⁴⁰ or `u64::MAX`),
//! chunk deletion/duplication/splicing, truncation, JSON token replacement, and — for safetensors —
//! mutation of the JSON header with its length prefix kept consistent. There is no coverage
//! feedback (that needs an instrumenting fuzzer such as afl++); the structure-aware mutators stand
//! in for it.
//!
//! Findings: a panic (caught per input), a hang (an input that runs longer than the hang limit:
//! the watchdog saves it and exits), and an allocation larger than the allocation limit (the
//! allocator saves the input and refuses the allocation). Saved inputs go to the crash directory;
//! fixed ones are kept under `tests/fixtures/fuzz-regressions/<target>/` and replayed by
//! `tests/fuzz.rs`.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A single allocation above this many bytes is a finding (a 2⁴⁰-byte claim must never be honoured).
pub static ALLOC_LIMIT: AtomicUsize = AtomicUsize::new(1 << 30);
static BIG_ALLOC: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator with a per-allocation size limit while fuzzing.
pub struct LimitedAlloc;

unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && layout.size() > ALLOC_LIMIT.load(Ordering::Relaxed) {
            BIG_ALLOC.store(layout.size(), Ordering::SeqCst);
            if !IN_HOOK.with(|h| h.replace(true)) {
                save_current("alloc");
                IN_HOOK.with(|h| h.set(false));
            }
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && layout.size() > ALLOC_LIMIT.load(Ordering::Relaxed) {
            return self.alloc(layout);
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && new > ALLOC_LIMIT.load(Ordering::Relaxed) {
            BIG_ALLOC.store(new, Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new)
    }
}

struct Current {
    target: &'static str,
    input: Vec<u8>,
    crash_dir: PathBuf,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);
static STARTED_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Writes the input being run to the crash directory as `<target>-<kind>-<hash>.bin`.
fn save_current(kind: &str) -> Option<PathBuf> {
    let guard = CURRENT.try_lock().ok()?;
    let c = guard.as_ref()?;
    let h = xxhash_rust::xxh3::xxh3_64(&c.input);
    let p = c
        .crash_dir
        .join(format!("{}-{kind}-{h:016x}.bin", c.target));
    std::fs::create_dir_all(&c.crash_dir).ok()?;
    std::fs::write(&p, &c.input).ok()?;
    eprintln!(
        "fuzz: {kind} finding in {} saved to {}",
        c.target,
        p.display()
    );
    Some(p)
}

/// Scratch space for a target: a directory with valid companion files, reused for every input.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// Builds the seeds and lays out the scratch directory's companion files.
    pub setup: fn(&Path) -> Vec<Vec<u8>>,
    /// Parses one input; errors are expected, panics are findings.
    pub run: fn(&Path, &[u8]),
    /// JSON-aware mutation for JSON inputs, header-aware for safetensors.
    pub kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Json,
    Safetensors,
    /// GGUF: integers right after a metadata key or tensor name (values, counts, dims, dtypes,
    /// offsets) are the favourite places to overwrite.
    Gguf,
    Binary,
}

/// A finding.
#[derive(Debug, Clone)]
pub struct Finding {
    pub target: &'static str,
    pub kind: &'static str,
    pub message: String,
    pub input: Vec<u8>,
}

/// What a fuzzing session did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub target: String,
    pub inputs: u64,
    pub seconds: f64,
    pub findings: usize,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

// ---- targets -------------------------------------------------------------------------------

fn setup_adapter_weights(dir: &Path) -> Vec<Vec<u8>> {
    copy(
        &fixture("peft-lora/adapter_config.json"),
        &dir.join("adapter_config.json"),
    );
    vec![
        read(&fixture("peft-lora/adapter_model.safetensors")),
        read(&fixture(
            "tsd-written/dash-folded/adapter_model.safetensors",
        )),
    ]
}

fn run_adapter(dir: &Path, _: &[u8]) {
    if let Ok(a) = tsd::adapter::load_adapter(dir) {
        for m in &a.modules {
            let _ = m.update();
        }
    }
}

fn run_adapter_weights(dir: &Path, b: &[u8]) {
    std::fs::write(dir.join("adapter_model.safetensors"), b).unwrap();
    run_adapter(dir, b)
}

fn setup_adapter_config(dir: &Path) -> Vec<Vec<u8>> {
    copy(
        &fixture("peft-lora/adapter_model.safetensors"),
        &dir.join("adapter_model.safetensors"),
    );
    vec![
        read(&fixture("peft-lora/adapter_config.json")),
        read(&fixture("peft-rslora/adapter_config.json")),
        read(&fixture("peft-dora/adapter_config.json")),
    ]
}

fn run_adapter_config(dir: &Path, b: &[u8]) {
    std::fs::write(dir.join("adapter_config.json"), b).unwrap();
    run_adapter(dir, b)
}

fn setup_model_safetensors(dir: &Path) -> Vec<Vec<u8>> {
    copy(&fixture("tiny-llama/config.json"), &dir.join("config.json"));
    vec![read(&fixture("tiny-llama/model.safetensors"))]
}

fn read_all_weights(src: &dyn tsd::weights::WeightSource) {
    let _ = src.describe();
    let _ = src.total_params();
    let _ = src.config_json();
    for n in src.names() {
        let _ = src.shape(&n);
        match src.shape(&n).map(|s| s.len()) {
            Some(2) => drop(src.matrix(&n)),
            _ => drop(src.tensor(&n)),
        }
    }
}

fn run_model_safetensors(dir: &Path, b: &[u8]) {
    std::fs::write(dir.join("model.safetensors"), b).unwrap();
    if let Ok(m) = tsd::weights::SafetensorsModel::open(dir) {
        read_all_weights(&m);
    }
}

fn setup_shard_index(dir: &Path) -> Vec<Vec<u8>> {
    let sharded = fixture("tiny-llama-sharded");
    for e in std::fs::read_dir(&sharded).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            copy(&e.path(), &dir.join(e.file_name()));
        }
    }
    vec![read(&sharded.join("model.safetensors.index.json"))]
}

fn run_shard_index(dir: &Path, b: &[u8]) {
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, b).unwrap();
    let _ = tsd::weights::safetensors_dir::shard_names(&p);
    if let Ok(m) = tsd::weights::SafetensorsModel::open(dir) {
        read_all_weights(&m);
    }
}

/// A GGUF file built from the tiny LLaMA's weights (F32 and Q8_0 tensors) with LLaMA and GPT-2
/// tokenizer metadata, written by candle's own GGUF writer.
pub fn tiny_gguf() -> Vec<u8> {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let dev = candle_core::Device::Cpu;
    let st = candle_core::safetensors::load(fixture("tiny-llama/model.safetensors"), &dev).unwrap();
    let map = [
        (
            "model.layers.0.self_attn.q_proj.weight",
            "blk.0.attn_q.weight",
            GgmlDType::F32,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            "blk.0.attn_k.weight",
            GgmlDType::Q8_0,
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            "blk.0.ffn_up.weight",
            GgmlDType::F32,
        ),
        ("model.norm.weight", "output_norm.weight", GgmlDType::F32),
    ];
    let qs: Vec<(&str, QTensor)> = map
        .iter()
        .map(|(hf, g, dt)| (*g, QTensor::quantize(&st[*hf], *dt).unwrap()))
        .collect();
    let tokens: Vec<Value> = ["a", "b", "ab", "<|endoftext|>"]
        .iter()
        .map(|t| Value::String(t.to_string()))
        .collect();
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(160)),
        ("llama.context_length", Value::U32(128)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("general.alignment", Value::U32(32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(3),
            ]),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(3)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut out, &meta_refs, &q_refs).unwrap();
    out.into_inner()
}

fn setup_gguf(_: &Path) -> Vec<Vec<u8>> {
    vec![tiny_gguf()]
}

fn run_gguf(dir: &Path, b: &[u8]) {
    let p = dir.join("model.gguf");
    std::fs::write(&p, b).unwrap();
    if let Ok(m) = tsd::weights::GgufModel::open(&p) {
        read_all_weights(&m);
        if let Ok(tok) = tsd::model::tokenizer::tokenizer_from_gguf(m.content(), &p) {
            if let Ok(ids) = tsd::model::tokenizer::encode(&tok, "ab ba") {
                let _ = tsd::model::tokenizer::decode(&tok, &ids, true);
            }
        }
        let _ = tsd::model::tokenizer::TokenizerInfo::from_gguf(m.content(), &p);
    }
}

fn setup_model_config(_: &Path) -> Vec<Vec<u8>> {
    vec![
        read(&fixture("tiny-llama/config.json")),
        read(&fixture("tiny-llama-bf16/config.json")),
    ]
}

fn run_model_config(dir: &Path, b: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) {
        if let Ok(c) = tsd::model::config::LlamaConfig::from_json(v, dir) {
            let _ = c.total_params();
            let _ = c.head_dim();
            let _ = c.kv_heads();
            for m in tsd::names::LINEARS {
                let _ = c.linear_shape(m);
            }
        }
    }
}

fn setup_tokenizer(dir: &Path) -> Vec<Vec<u8>> {
    copy(&fixture("tiny-llama/config.json"), &dir.join("config.json"));
    vec![read(&fixture("tiny-llama/tokenizer.json"))]
}

fn run_tokenizer(dir: &Path, b: &[u8]) {
    std::fs::write(dir.join("tokenizer.json"), b).unwrap();
    if let Ok(tok) = tsd::model::tokenizer::load_tokenizer(dir) {
        if let Ok(ids) = tsd::model::tokenizer::encode_truncated(&tok, "the answer is beta", 16) {
            let _ = tsd::model::tokenizer::decode(&tok, &ids, false);
        }
    }
    let _ = tsd::model::tokenizer::load_tokenizer_info(dir);
}

/// A run record and a training config, as a finished tiny run writes them.
fn record_seed() -> Vec<u8> {
    read(&fixture("fuzz-seeds/record.json"))
}

fn setup_run_record(_: &Path) -> Vec<Vec<u8>> {
    vec![record_seed()]
}

fn run_run_record(_: &Path, b: &[u8]) {
    let _ = serde_json::from_slice::<tsd::train::trainer::RunRecord>(b);
}

fn setup_train_config(_: &Path) -> Vec<Vec<u8>> {
    vec![read(&fixture("fuzz-seeds/config.json"))]
}

fn run_train_config(dir: &Path, b: &[u8]) {
    let p = dir.join("config.json");
    std::fs::write(&p, b).unwrap();
    let _ = tsd::run::config::TrainConfig::load(&p);
}

/// The real Trainer's `trainer_state.json` (`tests/fixtures/hf-trainer-run`), as `tsd track` and
/// `tsd report` read it.
fn setup_trainer_state(_: &Path) -> Vec<Vec<u8>> {
    vec![read(&fixture(
        "hf-trainer-run/checkpoint-6/trainer_state.json",
    ))]
}

fn run_trainer_state(dir: &Path, b: &[u8]) {
    let p = dir.join("trainer_state.json");
    std::fs::write(&p, b).unwrap();
    let _ = tsd::run::hf::read_curves(&p);
}

static CACHE_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A valid SVD-cache entry for a 12×7 weight, written by the cache itself.
fn setup_svd_entry(dir: &Path) -> Vec<Vec<u8>> {
    let data = (0..84)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let w = tsd::linalg::Matrix::new(12, 7, data).unwrap();
    let cache_dir = dir.join("svd");
    let mut seeds = Vec::new();
    for p in [tsd::linalg::Precision::F32, tsd::linalg::Precision::F64] {
        tsd::svd_cache::SvdCache::new(&cache_dir)
            .get_or_compute(&w, p)
            .unwrap();
        let key = tsd::svd_cache::SvdCache::key(&w, p);
        seeds.push(read(&cache_dir.join(format!("{key}.safetensors"))));
        if p == tsd::linalg::Precision::F32 {
            let _ = CACHE_KEY.set(key);
        }
    }
    seeds
}

fn run_svd_entry(_: &Path, b: &[u8]) {
    let key = CACHE_KEY.get().map(String::as_str).unwrap_or_default();
    let _ = tsd::svd_cache::parse_entry(b, key, 12, 7);
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "adapter-safetensors",
            setup: setup_adapter_weights,
            run: run_adapter_weights,
            kind: Kind::Safetensors,
        },
        Target {
            name: "adapter-config",
            setup: setup_adapter_config,
            run: run_adapter_config,
            kind: Kind::Json,
        },
        Target {
            name: "model-safetensors",
            setup: setup_model_safetensors,
            run: run_model_safetensors,
            kind: Kind::Safetensors,
        },
        Target {
            name: "shard-index",
            setup: setup_shard_index,
            run: run_shard_index,
            kind: Kind::Json,
        },
        Target {
            name: "gguf",
            setup: setup_gguf,
            run: run_gguf,
            kind: Kind::Gguf,
        },
        Target {
            name: "model-config",
            setup: setup_model_config,
            run: run_model_config,
            kind: Kind::Json,
        },
        Target {
            name: "tokenizer-json",
            setup: setup_tokenizer,
            run: run_tokenizer,
            kind: Kind::Json,
        },
        Target {
            name: "run-record",
            setup: setup_run_record,
            run: run_run_record,
            kind: Kind::Json,
        },
        Target {
            name: "trainer-state",
            setup: setup_trainer_state,
            run: run_trainer_state,
            kind: Kind::Json,
        },
        Target {
            name: "train-config",
            setup: setup_train_config,
            run: run_train_config,
            kind: Kind::Json,
        },
        Target {
            name: "svd-cache-entry",
            setup: setup_svd_entry,
            run: run_svd_entry,
            kind: Kind::Safetensors,
        },
    ]
}

// ---- mutation ------------------------------------------------------------------------------

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    1 << 48,
    (1 << 62) + 1,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 7,
    u64::MAX,
];

const JSON_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "-0",
    "0.5",
    "1e309",
    "-1e309",
    "1e-400",
    "4294967296",
    "1099511627776",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[1,2,3]",
    "[0,0]",
    "[18446744073709551615,1]",
    "{\"a\":1}",
    "\"NaN\"",
    "\"F32\"",
    "\"I64\"",
    "\"BF16\"",
    "\"lora\"",
    "\"q_proj\"",
    "[[]]",
];

fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = b.len();
    match rng.random_range(0..9) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            b[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            b[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b',', b'0']
                [rng.random_range(0..10)];
        }
        2 if len >= 8 => {
            // Overwrite a little-endian integer (u8/u16/u32/u64), often at an aligned offset.
            let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
            let mut i = rng.random_range(0..=len - width);
            if rng.random_bool(0.5) {
                i -= i % width;
            }
            let mut v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            if rng.random_bool(0.2) {
                v = (len as u64)
                    .wrapping_add(rng.random_range(0..16))
                    .wrapping_sub(8);
            }
            b[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(64));
            b.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(64));
            let chunk = b[i..i + n].to_vec();
            let at = rng.random_range(0..=len);
            b.splice(at..at, chunk);
        }
        5 if len > 0 => {
            b.truncate(rng.random_range(0..len));
        }
        6 => {
            let other = &pool[rng.random_range(0..pool.len())];
            if !other.is_empty() && len > 0 {
                let i = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - i).min(256));
                let at = rng.random_range(0..len);
                let end = (at + n).min(len);
                b.splice(at..end, other[i..i + n].iter().copied());
            }
        }
        7 => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..16);
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(at..at, junk);
        }
        _ => mutate_json_text(rng, b),
    }
}

/// Replaces one JSON token (number, string, literal) or structural character by another value.
fn mutate_json_text(rng: &mut StdRng, b: &mut Vec<u8>) {
    let starts: Vec<usize> = b
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            (c.is_ascii_digit() || **c == b'-' || **c == b'"' || **c == b't' || **c == b'n')
                && (*i == 0 || matches!(b[i - 1], b':' | b',' | b'[' | b' ' | b'\n'))
        })
        .map(|(i, _)| i)
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.random_range(0..starts.len())];
    let mut e = s + 1;
    if b[s] == b'"' {
        while e < b.len() && !(b[e] == b'"' && b[e - 1] != b'\\') {
            e += 1;
        }
        e = (e + 1).min(b.len());
    } else {
        while e < b.len() && !matches!(b[e], b',' | b']' | b'}' | b' ' | b'\n') {
            e += 1;
        }
    }
    let v = JSON_VALUES[rng.random_range(0..JSON_VALUES.len())];
    b.splice(s..e, v.bytes());
}

/// Mutates a safetensors file's JSON header and rewrites the length prefix (most of the time).
fn mutate_safetensors(rng: &mut StdRng, b: &mut Vec<u8>, pool: &[Vec<u8>]) {
    if b.len() < 8 || rng.random_bool(0.3) {
        return mutate_bytes(rng, b, pool);
    }
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    if n == 0 || n > b.len() - 8 {
        return mutate_bytes(rng, b, pool);
    }
    let mut header = b[8..8 + n].to_vec();
    for _ in 0..rng.random_range(1..4) {
        mutate_json_text(rng, &mut header);
    }
    let data = b[8 + n..].to_vec();
    let mut out = Vec::with_capacity(b.len() + 64);
    let keep_len = rng.random_bool(0.1);
    out.extend_from_slice(&(if keep_len { n } else { header.len() } as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    *b = out;
}

/// Names in the GGUF seed after which GGUF stores integers worth overwriting.
const GGUF_ANCHORS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.model",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.0.ffn_up.weight",
    "output_norm.weight",
];

fn mutate_gguf(rng: &mut StdRng, b: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let anchor = GGUF_ANCHORS[rng.random_range(0..GGUF_ANCHORS.len())].as_bytes();
    let Some(p) = b.windows(anchor.len()).position(|w| w == anchor) else {
        return mutate_bytes(rng, b, pool);
    };
    // After a key: value type (u32), then the value or array type + length; after a tensor name:
    // n_dims (u32), dims (u64 each), dtype (u32), offset (u64).
    let at = p + anchor.len() + 4 * rng.random_range(0..8);
    let width = [4usize, 8][rng.random_range(0..2)];
    if at + width <= b.len() {
        let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
        b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

/// One input derived from the pool.
pub fn mutate(rng: &mut StdRng, kind: Kind, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut b = pool[rng.random_range(0..pool.len())].clone();
    let rounds = 1 << rng.random_range(0..4);
    for _ in 0..rounds {
        match kind {
            Kind::Json if rng.random_bool(0.6) => mutate_json_text(rng, &mut b),
            Kind::Safetensors if rng.random_bool(0.6) => mutate_safetensors(rng, &mut b, pool),
            Kind::Gguf if rng.random_bool(0.6) => mutate_gguf(rng, &mut b, pool),
            _ => mutate_bytes(rng, &mut b, pool),
        }
    }
    b
}

// ---- driver --------------------------------------------------------------------------------

/// Runs one input, catching a panic. Returns the finding, if any.
pub fn run_one(t: &Target, dir: &Path, input: &[u8], crash_dir: &Path) -> Option<Finding> {
    *CURRENT.lock().unwrap() = Some(Current {
        target: t.name,
        input: input.to_vec(),
        crash_dir: crash_dir.to_path_buf(),
    });
    BIG_ALLOC.store(0, Ordering::SeqCst);
    STARTED_MS.store(now_ms(), Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(dir, input)));
    ARMED.store(false, Ordering::SeqCst);
    STARTED_MS.store(0, Ordering::SeqCst);
    let big = BIG_ALLOC.load(Ordering::SeqCst);
    let finding = match r {
        Err(p) => {
            let message = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            save_current("panic");
            Some(Finding {
                target: t.name,
                kind: "panic",
                message,
                input: input.to_vec(),
            })
        }
        Ok(()) if big > 0 => Some(Finding {
            target: t.name,
            kind: "alloc",
            message: format!("asked for one allocation of {big} bytes"),
            input: input.to_vec(),
        }),
        Ok(()) => None,
    };
    *CURRENT.lock().unwrap() = None;
    finding
}

/// Starts the hang watchdog once: an input running past `limit` is saved and the process exits 3.
pub fn start_watchdog(limit: Duration) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let s = STARTED_MS.load(Ordering::SeqCst);
            if s > 0 && now_ms().saturating_sub(s) > limit.as_millis() as u64 {
                ARMED.store(false, Ordering::SeqCst);
                save_current("hang");
                eprintln!("fuzz: an input ran longer than {limit:?}");
                std::process::exit(3);
            }
        });
    });
}

/// Quiets the panic message of inputs (findings are reported by the driver); a panic outside an
/// input (in the harness itself) is still printed.
pub fn quiet_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if STARTED_MS.load(Ordering::SeqCst) == 0 {
            default(info)
        }
    }));
}

/// Fuzzes `t` until `max_inputs` inputs or `max_time` passed; every seed is run first.
pub fn fuzz(
    t: &Target,
    seed: u64,
    max_inputs: u64,
    max_time: Duration,
    crash_dir: &Path,
) -> (Stats, Vec<Finding>) {
    let dir = tempfile::Builder::new()
        .prefix("tsd-fuzz-")
        .tempdir_in(scratch_root())
        .unwrap();
    let pool = (t.setup)(dir.path());
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut findings = Vec::new();
    let mut n = 0u64;
    for s in &pool {
        if let Some(f) = run_one(t, dir.path(), s, crash_dir) {
            findings.push(f);
        }
        n += 1;
    }
    while n < max_inputs && t0.elapsed() < max_time {
        let input = mutate(&mut rng, t.kind, &pool);
        if let Some(f) = run_one(t, dir.path(), &input, crash_dir) {
            findings.push(f);
        }
        n += 1;
    }
    let stats = Stats {
        target: t.name.to_string(),
        inputs: n,
        seconds: t0.elapsed().as_secs_f64(),
        findings: findings.len(),
    };
    (stats, findings)
}

/// Files are written to a RAM disk when there is one.
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
