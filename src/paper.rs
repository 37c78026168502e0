//! The paper's claims (Si et al. 2025, LoRA-Dash; LLaMA-7B on the commonsense tasks): its table
//! and the figures the reproduction is held against, in one place that every renderer and the
//! reproduction's summary read. Pure data.

/// The paper's LLaMA-7B commonsense table (CSV; Params% as in README, Definitions), parsed by
/// `reproduce::summary::paper_table` into the reproduction's record.
pub const TABLE_CSV: &str = include_str!("../reproductions/paper/commonsense_llama7b.csv");

/// TSD capture accuracy@(8,16) the paper reports on the q, k, v modules: (low, high).
pub const CAPTURE_QKV: (f64, f64) = (0.75, 0.82);

/// Parameter efficiency: LoRA-Dash at rank r matches LoRA at (low, high) × r.
pub const EFFICIENCY: (u32, u32) = (8, 16);

/// The table's rows behind the efficiency claim: LoRA-Dash at this rank against LoRA at these.
pub const EFFICIENCY_DASH_RANK: usize = 4;
pub const EFFICIENCY_LORA_RANKS: [usize; 2] = [32, 64];

/// `0.75–0.82`.
pub fn capture_range() -> String {
    format!("{:.2}–{:.2}", CAPTURE_QKV.0, CAPTURE_QKV.1)
}

/// `8–16×`.
pub fn efficiency_range() -> String {
    format!("{}–{}×", EFFICIENCY.0, EFFICIENCY.1)
}
