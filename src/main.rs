use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use fetch::cli::{Cli, Command, header_values, with_habit_hint};
use fetch::config::{Config, ConfigError};
use fetch::error::ErrorChain;
use fetch::progress::escape;
use fetch::report::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let args = match fetch::defaults::with_defaults(&args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("fetch: {}", escape(&err.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|err| usage_error(&with_habit_hint(err), &args));
    match cli.command {
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fetch", &mut script);
            return print(&script);
        }
        Some(Command::Manpage) => {
            let mut page = Vec::new();
            fetch::manpage::render(&mut page).expect("writing to memory");
            return print(&page);
        }
        None => {}
    }
    match Config::from_cli(cli).map_err(fetch::Error::from).and_then(fetch::run) {
        Ok(summary) => ExitCode::from(summary.exit_code()),
        // Its lines are ours alone.
        Err(err @ fetch::Error::Config(ConfigError::StdinIsTerminal)) => {
            eprintln!("fetch: {err}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            eprintln!("fetch: {}", escape(&ErrorChain(&err).to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Write a subcommand's output. A closed pipe (`fetch manpage | head`) is
/// not an error; any other failure (a full disk under `> fetch.1`) is, so
/// that a truncated page or script is never taken for a whole one.
fn print(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_OK),
        Err(err) => {
            eprintln!("fetch: cannot write to standard output: {err}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Print clap's error (or help) and exit, with every `-H` value taken out
/// (clap quotes the arguments it objects to, and a header is a secret) and
/// control characters in arguments escaped. Such an error is printed
/// without colors; any other as clap prints it.
fn usage_error(err: &clap::Error, args: &[OsString]) -> ! {
    let secrets = header_values(args);
    let unprintable: Vec<String> =
        args.iter().map(|a| a.to_string_lossy().into_owned()).filter(|a| escape(a) != a.as_str()).collect();
    if (secrets.is_empty() && unprintable.is_empty()) || !err.use_stderr() {
        err.exit();
    }
    let mut text = err.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "<header>");
    }
    for arg in &unprintable {
        text = text.replace(arg.as_str(), &escape(arg));
    }
    eprint!("{text}");
    std::process::exit(err.exit_code());
}
