//! Training: data and prompt template, optimizer and schedule, set-up, the loop, forward passes
//! and checkpoints. The run directory, its record and the
//! training configuration ([`crate::run::TrainConfig`]) are [`crate::run`]'s.

mod checkpoint;
pub mod data;
pub mod device;
mod forward;
pub mod optim;
pub mod pick;
pub mod prepare;
pub mod preview;
mod setup;
pub mod sft;
pub mod switch;
pub mod trainer;

pub use crate::run::{RunRecord, StepLog};

pub use trainer::Trainer;
