//! LLaMA-family model description (config); the candle model itself lives beside it.

pub mod chat_template;
pub mod config;
pub mod llama;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use llama::{KvCache, Llama};
