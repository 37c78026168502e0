//! Direction math on matrices (README, Definitions: change rates and TSDs; direction metrics): pure functions on faer matrices, no files,
//! no candle. Every weight is PyTorch layout `[n, m] = [out, in]`.
//!
//! - [`update`]: a weight update ΔW, low-rank (LoRA / LoRA-Dash) or dense (full fine-tuning).
//! - [`change_rate`]: coordinates `u_iᵀ ΔW v_i`, change rates `δ_i`, TSD selection.
//! - [`capture`]: recall@(8,4) / accuracy@(8,16) between two updates' change rates.
//! - [`amplification`]: LoRA §7's amplification factor and its reference projections.
//! - [`null`]: the rotation null of capture and coordinates: exact sampler, capture test, enrichment.
//! - [`subspace`]: LoRA §7's normalised subspace similarity φ.

pub mod amplification;
pub mod capture;
pub mod change_rate;
pub mod null;
pub mod subspace;
pub mod update;

pub use amplification::{amplification, Amplification};
pub use capture::{capture, Capture};
pub use change_rate::{
    change_rates, change_rates_on, top_k, DashPick, Ranking, SigmaFloor, Tsd, TsdBy,
    NEAR_NULL_RATIO,
};
pub use subspace::subspace_similarity;
pub use update::Update;
