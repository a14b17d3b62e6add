//! What the user sees while the run goes on. Transfer code reports through
//! this small API and never formats output itself, so the display can change
//! (plain lines for logs and cron; live bars on a terminal) without touching
//! the download path.
//!
//! Plain mode prints one line per finished entry on standard error:
//! `downloaded PATH SIZE`, `skipped PATH (reason)`, `failed PATH: reason`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::report::{Outcome, Status, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Failures and the summary only.
    Quiet,
    /// One line per finished entry.
    Normal,
    /// Also each attempt and retry.
    Verbose,
}

impl Verbosity {
    pub fn from_flags(quiet: bool, verbose: bool) -> Verbosity {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, true) => Verbosity::Verbose,
            (false, false) => Verbosity::Normal,
        }
    }
}

#[derive(Debug)]
pub struct Reporter {
    verbosity: Verbosity,
}

impl Reporter {
    pub fn new(verbosity: Verbosity) -> Reporter {
        Reporter { verbosity }
    }

    /// A handle for one transfer's byte counts.
    pub fn transfer(&self, dest: &Path) -> TransferProgress {
        TransferProgress { verbose: self.verbosity >= Verbosity::Verbose, dest: dest.display().to_string() }
    }

    /// A failed attempt that will be retried after `wait`.
    pub fn retrying(&self, dest: &Path, attempt: u32, error: &dyn std::fmt::Display, wait: Duration) {
        if self.verbosity >= Verbosity::Verbose {
            line(format_args!(
                "retry       {}: attempt {attempt} failed: {error}; retrying in {}",
                dest.display(),
                human_duration(wait)
            ));
        }
    }

    pub fn finished(&self, outcome: &Outcome) {
        let path = outcome.path.display();
        match outcome.status {
            Status::Failed => match &outcome.error {
                Some(crate::download::DownloadError::Invalid { .. }) => {
                    line(format_args!("failed      {}", outcome.error.as_ref().expect("matched")));
                }
                error => {
                    let attempts = match outcome.attempts {
                        0 | 1 => String::new(),
                        n => format!(" (after {n} attempts)"),
                    };
                    let error =
                        error.as_ref().map_or_else(|| "unknown error".to_owned(), ToString::to_string);
                    line(format_args!("failed      {path}: {error}{attempts}"));
                }
            },
            _ if self.verbosity == Verbosity::Quiet => {}
            Status::Downloaded => {
                let resumed = match outcome.resumed_from {
                    0 => String::new(),
                    n => format!(", resumed at {}", human_bytes(n)),
                };
                line(format_args!(
                    "downloaded  {path}  {} in {}{resumed}",
                    human_bytes(outcome.bytes),
                    human_duration(outcome.elapsed)
                ));
            }
            Status::Skipped => {
                let reason = outcome.skip.map_or("skipped", |s| s.as_str());
                line(format_args!("skipped     {path}  ({reason})"));
            }
        }
    }

    pub fn summary(&self, summary: &Summary, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        line(format_args!(
            "fetch: {} downloaded, {} skipped, {} failed; {} in {} ({}/s)",
            summary.downloaded,
            summary.skipped,
            summary.failed,
            human_bytes(summary.bytes),
            human_duration(elapsed),
            human_bytes((summary.bytes as f64 / secs) as u64),
        ));
    }

    /// A problem with the run itself rather than one entry.
    pub fn error(&self, message: &dyn std::fmt::Display) {
        line(format_args!("fetch: {message}"));
    }
}

/// One transfer's progress. Cheap to call per chunk.
#[derive(Debug)]
pub struct TransferProgress {
    verbose: bool,
    dest: String,
}

impl TransferProgress {
    /// A response started streaming at `offset` of `total` bytes.
    pub fn begin(&self, offset: u64, total: Option<u64>) {
        if self.verbose {
            let total = total.map_or_else(|| "unknown size".to_owned(), human_bytes);
            match offset {
                0 => line(format_args!("attempt     {}: receiving {total}", self.dest)),
                n => {
                    line(format_args!("attempt     {}: resuming at {} of {total}", self.dest, human_bytes(n)))
                }
            }
        }
    }

    pub fn advance(&self, _bytes: u64) {}

    /// The server answered a range request with the whole file.
    pub fn restarted(&self, discarded: u64) {
        if self.verbose {
            line(format_args!(
                "restart     {}: server sent the whole file; discarding {} already received",
                self.dest,
                human_bytes(discarded)
            ));
        }
    }
}

fn line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    // Nowhere left to report a failure to write to stderr.
    let _ = writeln!(err, "{args}");
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_duration(Duration::from_millis(120)), "120ms");
        assert_eq!(human_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
    }
}
