use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct FetchArgs {}

pub fn run(_a: FetchArgs) -> Result<()> {
    let p = tsd::assets::default_model(false)?;
    println!("{}", p.display());
    Ok(())
}
