//! tsd: task-specific directions (TSD) for LoRA and LoRA-Dash.
//!
//! Data flows one way, bottom-up through the layers README's Architecture table declares (and
//! `tests/layering.rs` enforces): base (`error`, `env`, `fsutil`, `names`, …) → math (`linalg`,
//! `directions`) → sources (`weights`, `adapter`, `model`, `provision`) → compute (`run`, `train`,
//! `eval`, `svd_cache`) → analyses (`inspect`, `track`, `reproduce`) → rendering. The `tsd`
//! binary only parses arguments and calls into this library.

pub mod adapter;
pub mod bench;
pub mod budget;
pub mod data;
pub mod device;
pub mod directions;
pub mod env;
pub mod error;
pub mod faults;
pub mod fsutil;
pub mod kernels;
pub mod linalg;
pub mod names;
pub mod provision;
pub mod weights;

pub use error::{Error, Result};
pub mod eval;
pub mod inspect;
pub mod model;
pub mod nn;
pub mod paper;
pub mod params;
pub mod render;
pub mod reproduce;
pub mod run;
pub mod signals;
pub mod stats;
pub mod svd_cache;
pub mod threads;
pub mod track;
pub mod train;
