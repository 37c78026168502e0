//! The rendering wing: per record its terminal table, CSV (the `csv` crate) and HTML page, the
//! charts and the page environment. Renderers render saved records; they never recompute.

pub mod bench;
pub mod charts;
pub mod data;
pub mod eval;
pub mod inspect;
pub mod page;
pub mod params;
pub mod reproduction;
pub mod run;
pub mod table;
pub mod track;
pub mod train;

pub use table::{number, thousands, to_json, Format};

/// Output selection shared by commands that print results.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Write the output to this file (atomically) instead of stdout [default: stdout]
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

impl OutputArgs {
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv
        } else {
            Format::Table
        }
    }

    /// Prints or writes `text`.
    pub fn emit(&self, text: &str) -> crate::Result<()> {
        match &self.output {
            Some(p) => {
                crate::fsutil::atomic_write(p, text.as_bytes())?;
                eprintln!("wrote {}", p.display());
            }
            None => print!("{text}"),
        }
        Ok(())
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal or when quiet).
pub fn progress_bar(len: u64, msg: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}
