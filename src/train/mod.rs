//! Training: data and prompt template, optimizer and schedule, set-up, the loop, forward passes
//! and checkpoints. The run directory and its record are [`crate::run`]'s.

mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
mod forward;
pub mod optim;
mod setup;
pub mod switch;
pub mod trainer;

pub use crate::run::{RunRecord, StepLog};
pub use config::TrainConfig;
pub use trainer::Trainer;
