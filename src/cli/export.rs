use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::adapter::{fold_dash, read_adapter, write_adapter};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Adapter directory to read.
    input: PathBuf,
    /// Directory to write (adapter_config.json + adapter_model.safetensors).
    output: PathBuf,
    /// Which adapter of the input directory: `default` (its root) or a PEFT subfolder name; it is
    /// written at OUTPUT's root [default: the only one there is]
    #[arg(long)]
    adapter_name: Option<String>,
    /// Write LoRA-Dash as the plain rank-(r+s) LoRA alone (the same ΔW), without
    /// tsd_dash.safetensors: tsd then reads it as plain LoRA too. Without it a Dash adapter is
    /// written as that LoRA plus tsd_dash.safetensors beside it (README, Adapter formats)
    #[arg(long)]
    fold_dash: bool,
    /// What the written adapter_config.json declares as its base (`base_model_name_or_path`; the
    /// revision is cleared): a Hugging Face id or a path, e.g. the directory `tsd fetch --hf-dir`
    /// wrote, so that PEFT's `AutoPeftModelForCausalLM` finds it [default: as read]
    #[arg(long, value_name = "NAME_OR_PATH")]
    base_name: Option<String>,
    /// Write a random control instead: every module's A and B replaced by seeded Gaussian
    /// matrices of the same shapes and norms (LoRA-Dash, biases and other tensors dropped), to
    /// answer "what would random give?" for any metric [default: off]
    #[arg(long, value_name = "SEED", conflicts_with = "fold_dash")]
    randomize: Option<u64>,
    /// Replace files in a non-empty output directory.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let adapter = read_adapter(&a.input, a.adapter_name.as_deref())?;
    for w in &adapter.warnings {
        eprintln!("warning: {w}");
    }
    if a.output.exists() && a.output.read_dir()?.next().is_some() && !a.force {
        return Err(super::input_error(format!(
            "{} exists and is not empty (use --force to overwrite)",
            a.output.display()
        )));
    }
    if adapter.has_dash() && !a.fold_dash && a.randomize.is_none() {
        eprintln!("note: LoRA-Dash: adapter_model.safetensors is its fold, the rank-(r+s) LoRA with the same ΔW that PEFT loads; the Dash parametrisation is kept beside it in {} for tsd (--fold-dash leaves it out)", tsd::adapter::read::DASH_FILE);
    }
    let mut out = if let Some(seed) = a.randomize {
        tsd::adapter::control::randomised(&adapter, seed)
    } else if a.fold_dash {
        fold_dash(&adapter)
    } else {
        adapter
    };
    if let Some(name) = a.base_name {
        if name.is_empty() {
            return Err(super::input_error(
                "--base-name must not be empty".to_string(),
            ));
        }
        out.config.base_model_name_or_path = Some(name);
        out.config.revision = None;
    }
    write_adapter(&a.output, &out)?;
    // The rank PEFT sees: r + s for a Dash module (its fold).
    let r: Vec<usize> = out
        .modules
        .iter()
        .map(|m| m.r + m.dash.as_ref().map_or(0, |d| d.s()))
        .collect();
    let ex = &out.extras;
    eprintln!(
        "wrote {} module(s), PEFT rank {}..{}, {} LoRA bias(es), {} embedding LoRA(s), {} whole tensor(s), to {}",
        out.modules.len(),
        r.iter().min().unwrap_or(&0),
        r.iter().max().unwrap_or(&0),
        ex.lora_biases.len(),
        ex.embeddings.len(),
        ex.base_tensors.len(),
        a.output.display()
    );
    Ok(())
}
