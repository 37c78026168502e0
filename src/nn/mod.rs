//! Trainable layers in candle: a frozen linear (input gradient only), and the linear that LoRA,
//! LoRA-Dash or full fine-tuning wrap.

pub mod adapted;
pub mod attention;
pub mod bf16;
pub mod exp;
pub mod frozen;
pub mod fused;
pub mod loss;
pub mod packed;

pub use adapted::{AdaptedLinear, DashLayer, ForwardCtx, LoraLayer};
pub use frozen::FrozenLinear;
