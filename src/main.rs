//! The `tsd` command line: parse arguments, validate them into a plan, call the library, print.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        // One line of cause for the user; exit 2 for bad input, 1 for internal failures.
        let user = e
            .downcast_ref::<tsd::Error>()
            .is_none_or(tsd::Error::is_user_input);
        // First line of each cause only: candle appends a backtrace when RUST_BACKTRACE is set.
        let chain: Vec<String> = e
            .chain()
            .filter_map(|c| c.to_string().lines().next().map(str::to_string))
            .collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(if user { 2 } else { 1 });
    }
}
