//! Training: data and prompt template, optimizer and schedule, the loop, checkpoints and the run
//! record.

pub mod config;
pub mod data;
pub mod optim;
pub mod switch;
pub mod trainer;

pub use config::{Method, TrainConfig};
pub use trainer::{RunRecord, StepLog, Trainer};
