//! The LLM-Adapters commonsense dataset, shared by training, evaluation, the reproduction and the
//! benchmarks (README, Definitions: commonsense protocol): its examples and their loading
//! ([`llm_adapters`]), the training and evaluation prompts ([`prompt`]), the eight tasks with
//! their label sets and answer extraction ([`tasks`]), and the evaluation protocol ([`Protocol`]).
//! Other formats (JSONL, Parquet, chat) belong beside `llm_adapters`.

pub mod llm_adapters;
pub mod prompt;
pub mod protocol;
pub mod tasks;

pub use llm_adapters::{load_examples, test_file, Example};
pub use prompt::{eval_prompt, train_prompt};
pub use protocol::Protocol;
pub use tasks::{extract_answer, response_text, task, tasks_named, Task, TASKS};
