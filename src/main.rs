use std::process::ExitCode;

use clap::Parser;
use fetch::cli::Cli;
use fetch::config::Config;
use fetch::report::EXIT_USAGE;
use fetch::transfer::ErrorChain;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match Config::from_cli(cli).map_err(fetch::Error::from).and_then(fetch::run) {
        Ok(summary) => ExitCode::from(summary.exit_code()),
        Err(err) => {
            eprintln!("fetch: {}", ErrorChain(&err));
            ExitCode::from(EXIT_USAGE)
        }
    }
}
