use super::{progress_bar, DeviceArgs, ModelArgs, OutputArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::eval::generate::GenConfig;
use tsd::eval::merge::adapted_model;
use tsd::eval::{eval_generate_batched, eval_loglik, eval_loglik_general, task, TaskResult};
use tsd::model::Llama;
use tsd::output::{to_json, Format};
use tsd::weights::{open_path, resolve_path, ModelSpec};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Base model: path, Hugging Face id, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// A PEFT LoRA / LoRA-Dash adapter, merged before evaluation (with its modules_to_save
    /// copies, biases and embedding LoRA; what cannot be applied exactly is refused) [default:
    /// none, the base model alone]
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Refuse (exit 2) a --model that cannot be shown to be the --adapter's declared base (by
    /// name or path, or a tsd run record's sha256) instead of warning
    #[arg(long, requires = "adapter")]
    strict_base: bool,
    /// Which adapter of the --adapter directory: `default` (its root) or a PEFT subfolder name
    /// [default: the only one there is]
    #[arg(long, requires = "adapter")]
    adapter_name: Option<String>,
    /// Tasks (comma-separated): boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge, openbookqa.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Data directory in LLM-Adapters layout (`<task>/test.json`, as the LLM-Adapters repository's
    /// `dataset/` folder holds them) [default: $TSD_DATA, else ../shared/data/commonsense if
    /// present, else — for social_i_qa alone, the one test set tsd can provision — Social IQa
    /// from PyPI's bigbench sdist into $TSD_HOME/data/commonsense, sha256-checked; other tasks
    /// are refused]
    #[arg(long)]
    data: Option<PathBuf>,
    /// `generate` (the LLM-Adapters protocol: beam search, first label in the response) or
    /// `loglik` (label log-likelihood; cheaper, cannot see invalid-label failures).
    #[arg(long, default_value = "generate")]
    protocol: String,
    /// Beams for `generate`.
    #[arg(long, default_value_t = 4)]
    beams: usize,
    /// New-token budget for `generate`.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Examples per batched beam search for `generate` (predictions do not depend on it).
    #[arg(long, default_value_t = tsd::eval::generate::DEFAULT_BATCH)]
    batch_size: usize,
    /// Loglik scoring: `auto` (one batched pass per example group when the labels differ only in
    /// their last token, else the KV-cache path) or `general` (always the KV-cache path; same
    /// scores, for checking and benchmarks).
    #[arg(long, default_value = "auto")]
    loglik_path: String,
    /// Evaluate only the first N examples of each task [default: all]
    #[arg(long)]
    limit: Option<usize>,
    /// Per-example predictions as JSONL into this directory, one file per task; for loglik, every
    /// label's summed log-likelihood, token count and greediness [default: not written]
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    src: ModelArgs,
    #[command(flatten)]
    dev: DeviceArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.protocol != "loglik" && a.protocol != "generate" {
        return Err(super::input_error(format!(
            "protocol `{}`: expected generate or loglik",
            a.protocol
        )));
    }
    if a.loglik_path != "auto" && a.loglik_path != "general" {
        return Err(super::input_error(format!(
            "--loglik-path `{}`: expected auto or general",
            a.loglik_path
        )));
    }
    let tasks = a
        .tasks
        .iter()
        .map(|t| task(t).ok_or_else(|| super::input_error(format!("unknown task `{t}`"))))
        .collect::<Result<Vec<_>>>()?;
    let data = match tsd::assets::data_dir(a.data.as_deref()) {
        Some(d) => d,
        None => {
            let names: Vec<&str> = tasks.iter().map(|t| t.name).collect();
            if tsd::assets::check_provisionable(&names)? {
                eprintln!(
                    "tsd eval: no data directory (--data, TSD_DATA); provisioning Social IQa, the one commonsense test set a package registry ships"
                );
            }
            tsd::assets::provision_social_iqa(a.src.offline)?
        }
    };
    let path = resolve_path(&ModelSpec {
        spec: a.model.clone(),
        revision: a.src.revision.clone(),
        offline: a.src.offline,
        local_only: false,
    })?;
    let adapter = a
        .adapter
        .as_ref()
        .map(|ad| tsd::adapter::read_adapter(ad, a.adapter_name.as_deref()))
        .transpose()?;
    if let Some(adapter) = &adapter {
        let given = ModelSpec::new(a.model.clone());
        let declared = tsd::run::base::DeclaredBase::of_adapter(&adapter.path, &adapter.config);
        if let Some(w) = tsd::run::base::check_given(
            &ModelSpec {
                revision: a.src.revision.clone(),
                ..given
            },
            &path,
            "--model",
            declared.as_ref(),
            a.strict_base,
        )? {
            eprintln!("warning: {w}");
        }
    }
    let src = open_path(&path)?;
    let (dev, dtype) = a.dev.resolve()?;
    let model = match &adapter {
        Some(adapter) => {
            for w in &adapter.warnings {
                eprintln!("warning: {w}");
            }
            adapted_model(src.as_ref(), adapter, &dev, dtype)?
        }
        None => Llama::from_source(src.as_ref(), &dev, dtype)?,
    };
    let tok = tsd::model::tokenizer::load_tokenizer(&path)?;
    let eos = tsd::model::tokenizer::load_tokenizer_info(&path)?;
    let mut results: Vec<TaskResult> = Vec::new();
    for t in &tasks {
        let file = data.join(t.name).join("test.json");
        if !file.exists() {
            let present: Vec<String> = tsd::data::TASKS
                .iter()
                .filter(|k| data.join(k.name).join("test.json").exists())
                .map(|k| k.name.to_string())
                .collect();
            return Err(super::input_error(format!(
                "{}: test set not found (present in {}: {}); {}",
                file.display(),
                data.display(),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                },
                tsd::assets::LLM_ADAPTERS_DATA
            )));
        }
        let mut ex = tsd::data::load_examples(&file)?;
        if let Some(n) = a.limit {
            ex.truncate(n);
        }
        let pb = progress_bar(ex.len() as u64, t.name, a.quiet);
        let r = if a.protocol == "loglik" {
            if a.loglik_path == "general" {
                eval_loglik_general(&model, &tok, t, &ex, &|| pb.inc(1))?
            } else {
                eval_loglik(&model, &tok, t, &ex, &|| pb.inc(1))?
            }
        } else {
            let cfg = GenConfig {
                num_beams: a.beams,
                max_new_tokens: a.max_new_tokens,
                length_penalty: 1.0,
                eos: eos.eos,
            };
            eval_generate_batched(&model, &tok, t, &ex, &cfg, a.batch_size, &|| pb.inc(1))?
        };
        pb.finish_and_clear();
        if let Some(dir) = &a.predictions {
            let lines: Vec<String> = r
                .predictions
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?;
            tsd::fsutil::atomic_write(
                &dir.join(format!("{}.jsonl", t.name)),
                (lines.join("\n") + "\n").as_bytes(),
            )?;
        }
        results.push(r);
    }
    let text = match a.out.format() {
        Format::Json => to_json(&results)? + "\n",
        Format::Csv => {
            let mut s = String::from("task,protocol,examples,correct,accuracy\n");
            for r in &results {
                s += &format!(
                    "{},{},{},{},{}\n",
                    r.task, r.protocol, r.examples, r.correct, r.accuracy
                );
            }
            s
        }
        Format::Table => {
            let proto = if a.protocol == "loglik" {
                "loglik (label log-likelihood, not beam-search generation)".to_string()
            } else {
                format!(
                    "generate ({} beams, at most {} new tokens, first label in the response)",
                    a.beams, a.max_new_tokens
                )
            };
            let adapter = a
                .adapter
                .as_ref()
                .map_or(String::new(), |p| format!(" + {}", p.display()));
            let mut s = format!("model {}{adapter} · protocol {proto}\n", a.model);
            for r in &results {
                s += &format!(
                    "{:<14} {:>6} examples  accuracy {:6.2}%  unparseable {}  truncated prompts {}\n",
                    r.task,
                    r.examples,
                    100.0 * r.accuracy,
                    r.unparseable,
                    r.truncated
                );
            }
            let avg = results.iter().map(|r| r.accuracy).sum::<f64>() / results.len().max(1) as f64;
            s + &format!(
                "{:<14} {:>6}           accuracy {:6.2}% (mean over tasks)\n",
                "average",
                "",
                100.0 * avg
            )
        }
    };
    a.out.emit(&text)
}
