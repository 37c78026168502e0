//! The LLM-Adapters commonsense dataset, shared by training, evaluation, the reproduction and the
//! benchmarks (README, Definitions: commonsense protocol): its examples and their loading
//! ([`llm_adapters`]), the training and evaluation prompts ([`prompt`]), the eight tasks with
//! their label sets and answer extraction ([`tasks`]), and the evaluation protocol ([`Protocol`]).
//! The training-data formats of TRL's `SFTTrainer` sit beside it: files read into rows
//! ([`files`]: JSON, JSON Lines, Parquet), rows typed by schema ([`schema`]), `--data` values
//! ([`spec`]), a dataset directory's files per config and split ([`hub_layout`]) and the one
//! entry point training calls ([`load_dataset`]).

pub mod dataset;
pub mod files;
pub mod hub_layout;
pub mod llm_adapters;
pub mod prompt;
pub mod protocol;
pub mod schema;
pub mod spec;
pub mod tasks;

pub use dataset::{load_dataset, local_data_file, DataFile, DataManifest, Dataset};
pub use llm_adapters::{load_examples, test_file, Example};
pub use prompt::{eval_prompt, train_prompt};
pub use protocol::Protocol;
pub use schema::{Record, Schema};
pub use spec::DataSpec;
pub use tasks::{extract_answer, response_text, task, tasks_named, Task, TASKS};
