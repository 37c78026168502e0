//! tsd: task-specific directions (TSD) for LoRA and LoRA-Dash.
//!
//! Data flows one way: sources (`weights`, `adapter`) → pure math (`linalg`, `directions`) →
//! analyses (`inspect`, `params`) → rendering (`output`). The `tsd` binary only parses arguments
//! and calls into this library.

pub mod adapter;
pub mod assets;
pub mod bench;
pub mod budget;
pub mod data;
pub mod device;
pub mod directions;
pub mod error;
pub mod faults;
pub mod fsutil;
pub mod linalg;
pub mod weights;

pub use error::{Error, Result};
pub mod eval;
pub mod inspect;
pub mod model;
pub mod nn;
pub mod output;
pub mod params;
pub mod render;
pub mod report;
pub mod reproduce;
pub mod run;
pub mod signals;
pub mod stats;
pub mod threads;
pub mod track;
pub mod train;
