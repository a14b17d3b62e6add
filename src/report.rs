//! What became of each entry: the [`Outcome`] record, the run's
//! [`Summary`] and exit status, and the JSON Lines report (`--report`).
//!
//! Exit statuses live here and only here (docs/contract.md, "Exit status"). The report is
//! written one line per finished entry and flushed each time, so a crash
//! loses at most the entries still in flight.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::ser::Formatter;

use crate::error::DownloadError;
use crate::manifest::{Entry, LineError, Location};
use crate::redact;

/// Every entry was downloaded, unchanged (`--refresh`) or skipped.
pub const EXIT_OK: u8 = 0;
/// At least one entry failed (invalid manifest lines included).
pub const EXIT_FAILED: u8 = 1;
/// Bad option, unreadable manifest, unusable --dir.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Downloaded,
    /// `--refresh`: the server's file is the one in place (`304`).
    Unchanged,
    Skipped,
    Failed,
}

/// Why an entry was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The destination existed before we started.
    Exists,
    /// Another entry of this run, or another process, completed it first.
    CompletedElsewhere,
    /// Another fetch process holds the partial file's lock.
    LockedByOtherProcess,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Exists => "exists",
            SkipReason::CompletedElsewhere => "completed by another entry or process",
            SkipReason::LockedByOtherProcess => "being downloaded by another fetch process",
        }
    }
}

/// The result of one manifest entry.
#[derive(Debug)]
pub struct Outcome {
    /// The URL, password redacted; `None` for a line that did not parse.
    pub url: Option<String>,
    /// The destination; for an invalid line, `MANIFEST:LINE`.
    pub path: PathBuf,
    pub status: Status,
    pub skip: Option<SkipReason>,
    pub error: Option<DownloadError>,
    /// Bytes in the destination (downloaded) or transferred (failed).
    pub bytes: u64,
    /// Bytes received over the network in this run.
    pub received: u64,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub elapsed: Duration,
    /// From the first request to the last byte, retries included: the
    /// time the log shows, without the waits for a slot or a commit.
    pub transfer: Option<Duration>,
    /// Where this run continued a partial file left by an earlier run.
    pub resumed_from: u64,
    /// Time spent waiting for its host while the host was paused or down
    /// ([`crate::hosts`]): set aside by the dispatcher, for a slot, or
    /// after a failure that was the host's.
    pub waited: Duration,
    /// The URL that served the file (password redacted), for an entry
    /// with several `urls`.
    pub served_by: Option<String>,
}

impl Outcome {
    /// The record of an entry about to start: failed until it says otherwise.
    pub fn start(entry: &Entry) -> Outcome {
        Outcome {
            url: Some(redact::url(&entry.url)),
            path: entry.dest.clone(),
            status: Status::Failed,
            skip: None,
            error: None,
            bytes: 0,
            received: 0,
            attempts: 0,
            http_status: None,
            elapsed: Default::default(),
            transfer: None,
            resumed_from: 0,
            waited: Duration::ZERO,
            served_by: None,
        }
    }

    /// The record of a manifest line that is not a valid entry.
    pub fn invalid(location: Location, error: LineError) -> Outcome {
        Outcome {
            url: None,
            path: PathBuf::from(location.to_string()),
            status: Status::Failed,
            skip: None,
            error: Some(DownloadError::Invalid { location, error }),
            bytes: 0,
            received: 0,
            attempts: 0,
            http_status: None,
            elapsed: Default::default(),
            transfer: None,
            resumed_from: 0,
            waited: Duration::ZERO,
            served_by: None,
        }
    }
}

/// Counts for the summary line and the exit status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub downloaded: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Bytes received over the network.
    pub bytes: u64,
    /// A manifest could not be read to its end.
    pub manifest_error: bool,
    /// The report could not be written.
    pub report_failed: bool,
    pub interrupted: Option<crate::shutdown::Signal>,
}

impl Summary {
    pub fn add(&mut self, outcome: &Outcome) {
        match outcome.status {
            Status::Downloaded => self.downloaded += 1,
            Status::Unchanged => self.unchanged += 1,
            Status::Skipped => self.skipped += 1,
            Status::Failed => self.failed += 1,
        }
        self.bytes += outcome.received;
    }

    pub fn exit_code(&self) -> u8 {
        if let Some(signal) = self.interrupted {
            signal.exit_code()
        } else if self.manifest_error {
            EXIT_USAGE
        } else if self.failed > 0 || self.report_failed {
            EXIT_FAILED
        } else {
            EXIT_OK
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    url: Option<&'a str>,
    path: String,
    status: Status,
    bytes: u64,
    attempts: u32,
    http_status: Option<u16>,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    elapsed_ms: u128,
    resumed_from: u64,
    waited_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    served_by: Option<&'a str>,
}

/// JSON with the characters [`redact::unprintable`] finds written as
/// `\uXXXX`: serde_json escapes C0 only, and a report is read with `cat`
/// and `grep` too, where DEL, C1 (`U+009B` is CSI) or a bidi override
/// would act. All of them are in the Basic Multilingual Plane.
struct Escaping;

impl Formatter for Escaping {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut shown = 0;
        for (i, c) in fragment.char_indices().filter(|&(_, c)| redact::unprintable(c)) {
            writer.write_all(&fragment.as_bytes()[shown..i])?;
            write!(writer, "\\u{:04x}", c as u32)?;
            shown = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[shown..])
    }
}

/// The `--report` writer. Every record carries the run's id (a UUIDv7,
/// which sorts by time) so many cron runs can append to one file.
#[derive(Debug)]
pub struct Report {
    out: BufWriter<Box<dyn WriteDebug>>,
    run_id: String,
}

trait WriteDebug: Write + Send + std::fmt::Debug {}
impl<T: Write + Send + std::fmt::Debug> WriteDebug for T {}

impl Report {
    /// Open the report: `-` is standard output; a file is appended to, so
    /// several cron runs can share one.
    pub fn open(path: &Path) -> io::Result<Report> {
        let out: Box<dyn WriteDebug> = if path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?) as Box<File>
        };
        Ok(Report { out: BufWriter::new(out), run_id: uuid::Uuid::now_v7().to_string() })
    }

    pub fn write(&mut self, outcome: &Outcome) -> io::Result<()> {
        let record = Record {
            url: outcome.url.as_deref(),
            path: outcome.path.display().to_string(),
            status: outcome.status,
            bytes: outcome.bytes,
            attempts: outcome.attempts,
            http_status: outcome.http_status,
            error: outcome.error.as_ref().map(ToString::to_string),
            reason: outcome.skip.map(SkipReason::as_str),
            elapsed_ms: outcome.elapsed.as_millis(),
            resumed_from: outcome.resumed_from,
            waited_ms: outcome.waited.as_millis(),
            served_by: outcome.served_by.as_deref(),
        };
        self.write_record(&record)
    }

    /// Write one record of any shape (`--check` has its own), after the
    /// run's id, escaped as every record is.
    pub fn write_record(&mut self, record: &impl Serialize) -> io::Result<()> {
        #[derive(Serialize)]
        struct WithId<'a, T> {
            run_id: &'a str,
            #[serde(flatten)]
            record: &'a T,
        }
        let mut json = serde_json::Serializer::with_formatter(&mut self.out, Escaping);
        WithId { run_id: &self.run_id, record }.serialize(&mut json).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_escapes_what_a_terminal_would_act_on() {
        let mut out = Vec::new();
        let text = "a\u{9b}31m \u{202e}txt \x7f \x1b[2J \n é ü 😀";
        text.serialize(&mut serde_json::Serializer::with_formatter(&mut out, Escaping)).unwrap();
        let json = String::from_utf8(out).unwrap();
        assert_eq!(json, r#""a\u009b31m \u202etxt \u007f \u001b[2J \n é ü 😀""#);
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), text);
    }
}
