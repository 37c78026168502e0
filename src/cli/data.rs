use anyhow::Result;
use clap::{Args, Subcommand};
use tsd::render::data::{preview_csv, preview_text};
use tsd::render::{to_json, Format, OutputArgs};
use tsd::run::config::LossOn;
use tsd::train::prepare::DataPlan;
use tsd::weights::{ModelArgs, ModelSpec};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// The first examples of training data as `tsd train` tokenizes them for a model: token ids,
    /// which tokens carry loss, cuts and drops (`--json` for ids and masks).
    Preview(PreviewArgs),
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// Training data, as `tsd train --data` takes it: JSON, JSON Lines or Parquet files,
    /// LLM-Adapters task directories, `hf:ORG/NAME[@rev][/config][:split]`; comma-separated
    #[arg(long, value_delimiter = ',', required = true)]
    data: Vec<String>,
    /// Model whose tokenizer and chat template are used: path, Hugging Face id, or `default`
    #[arg(long, default_value = "default")]
    model: String,
    #[command(flatten)]
    src: ModelArgs,
    /// Examples shown
    #[arg(long, short = 'n', default_value_t = 3)]
    limit: usize,
    /// Tokens that carry loss, as `tsd train --loss-on` [default: completion for prompt/completion
    /// data, else all; LLM-Adapters data: from --train-on-inputs]
    #[arg(long, value_enum)]
    loss_on: Option<LossOn>,
    /// LLM-Adapters data: loss on the prompt too [default: true]
    #[arg(long)]
    train_on_inputs: Option<bool>,
    /// Longest tokenized example, as `tsd train --cutoff-len` [default: 256 for LLM-Adapters data,
    /// else 1024 or the model's positions if fewer]
    #[arg(long)]
    cutoff_len: Option<usize>,
    /// A Jinja chat template used instead of the model's, as `tsd train --template-file`
    /// [default: the model's own]
    #[arg(long, value_name = "FILE")]
    template_file: Option<std::path::PathBuf>,
    /// Read only the first N examples of each data file [default: all]
    #[arg(long)]
    max_examples: Option<usize>,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Preview(p) => preview(p),
    }
}

fn preview(a: PreviewArgs) -> Result<()> {
    let path = tsd::provision::resolve_path(&ModelSpec {
        spec: a.model.clone(),
        revision: a.src.revision.clone(),
        offline: a.src.offline,
        local_only: false,
    })?;
    let plan = DataPlan {
        data: &a.data,
        max_examples: a.max_examples,
        cutoff_len: a.cutoff_len,
        loss_on: a.loss_on,
        train_on_inputs: a.train_on_inputs.unwrap_or(true),
        template_file: a.template_file.as_deref(),
    };
    let rec = tsd::train::preview::preview(&plan, &a.model, &path, a.limit)?;
    let text = match a.out.format() {
        Format::Json => to_json(&rec)? + "\n",
        Format::Csv => preview_csv(&rec)?,
        Format::Table => preview_text(&rec),
    };
    Ok(a.out.emit(&text)?)
}
