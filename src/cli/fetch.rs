use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Also write the default model as a Hugging Face model directory that transformers loads
    /// (`AutoModelForCausalLM.from_pretrained(DIR)`): config.json, model.safetensors (f32, the
    /// values tsd computes with, dequantized from the pinned GGUF), the tokenizer with its chat
    /// template. Pass it to `tsd export --base-name` so an exported adapter declares it
    /// [default: none: only the tsd cache]
    #[arg(long, value_name = "DIR")]
    hf_dir: Option<PathBuf>,
}

pub fn run(a: FetchArgs) -> Result<()> {
    let p = tsd::provision::default_model(false)?;
    if let Some(dir) = &a.hf_dir {
        let m = tsd::weights::GgufModel::open(&p)?;
        tsd::provision::hf_dir::write_hf_dir(&m, dir)?;
        eprintln!(
            "wrote the default model as a transformers directory to {}",
            dir.display()
        );
    }
    println!("{}", p.display());
    Ok(())
}
