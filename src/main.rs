use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use fetch::cli::{Cli, Command};
use fetch::config::Config;
use fetch::report::{EXIT_OK, EXIT_USAGE};
use fetch::transfer::ErrorChain;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Completions { shell }) = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "fetch", &mut std::io::stdout());
        return ExitCode::from(EXIT_OK);
    }
    match Config::from_cli(cli).map_err(fetch::Error::from).and_then(fetch::run) {
        Ok(summary) => ExitCode::from(summary.exit_code()),
        Err(err) => {
            eprintln!("fetch: {}", ErrorChain(&err));
            ExitCode::from(EXIT_USAGE)
        }
    }
}
