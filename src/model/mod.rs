//! LLaMA-family model description (config); the candle model itself lives beside it.

pub mod config;

pub use config::LlamaConfig;
