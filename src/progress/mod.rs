//! What the user sees while the run goes on. Transfer code reports through
//! this small API ([`Reporter`], [`TransferProgress`]) and never formats
//! output itself.
//!
//! Three displays:
//! - `log` (stderr is not a terminal: cron, pipes, files): one plain line per
//!   finished entry, `downloaded PATH SIZE`, `skipped PATH (reason)`,
//!   `failed PATH: reason`; no escape codes.
//! - `bar` (a terminal): an overall bar and one bar per active large
//!   download; failures and `-v` lines print above the bars.
//! - `none`: neither; failures and the summary still print.
//!
//! Every line and bar label goes through [`escape`] on its way out. The
//! hot path stays cheap at tens of thousands of files per second: the
//! calls here add to atomics, a ticker thread redraws the bars, and only
//! downloads of at least [`LARGE`] bytes (or of unknown size) get a bar of
//! their own.
//!
//! This module owns the API and the log lines; `bars` owns the indicatif
//! display, `layout` what the bars say at a given width, `health` the
//! words for troubled hosts (seen through a [`HostsView`] the run sets),
//! `text` the escaping and units. The per-host counters that the split rule
//! reads are [`crate::traffic`]'s: a [`TransferProgress`] carries its
//! host's handle because every transfer already reports its bytes here.

mod bars;
mod health;
mod layout;
mod text;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use self::bars::{Bars, Counters};
pub use self::health::{HostStatus, HostsView};
use self::health::{Watch, state_text, summary_lines};
use self::text::line;
pub use self::text::{escape, human_bytes, human_duration};
use crate::config::{Display, Verbosity};
use crate::hosts::State;
use crate::report::{Outcome, Status, Summary};
use crate::traffic::{HostTraffic, Hosts};

/// Downloads at least this large get a bar of their own.
pub const LARGE: u64 = 1024 * 1024;

/// The run's one reporter, shared by every download.
#[derive(Debug)]
pub struct Reporter {
    verbosity: Verbosity,
    counters: Arc<Counters>,
    hosts: Hosts,
    bars: Option<Arc<Bars>>,
    /// The run's troubled hosts, for the bars and the summary.
    watch: Arc<Watch>,
    /// Hosts logged gone.
    gone: Mutex<HashSet<String>>,
    /// "No host answers" was said, and no host answered since.
    all_down_told: AtomicBool,
}

impl Reporter {
    pub fn new(verbosity: Verbosity, display: Display) -> Reporter {
        let counters = Arc::new(Counters::new());
        let watch = Arc::new(Watch::default());
        let bars = match display {
            Display::Bar { forced } => Some(Bars::start(counters.clone(), watch.clone(), forced)),
            Display::Log | Display::None => None,
        };
        Reporter {
            verbosity: if display == Display::None { Verbosity::Quiet } else { verbosity },
            counters,
            hosts: Hosts::default(),
            bars,
            watch,
            gone: Mutex::new(HashSet::new()),
            all_down_told: AtomicBool::new(false),
        }
    }

    /// Where the bars and the summary see the run's troubled hosts from;
    /// set once, when the run's limits exist.
    pub fn watch_hosts(&self, view: HostsView) {
        self.watch.set(view);
    }

    /// The number of entries the manifest holds, once counted.
    pub fn set_total(&self, total: u64) {
        self.counters.total_files.store(total, Ordering::Relaxed);
    }

    /// The run reads bodies at most `rate` bytes per second
    /// (`--limit-rate`): shown beside the rate on the bars, and said with `-v`.
    pub fn rate_limited(&self, rate: u64) {
        self.counters.limit.store(rate, Ordering::Relaxed);
        if self.verbosity >= Verbosity::Verbose {
            self.line(format_args!(
                "limit       bodies limited to {}/s for the whole run",
                human_bytes(rate)
            ));
        }
    }

    /// A handle for the byte counts of one transfer from `host`
    /// (`host:port`).
    pub fn transfer(&self, dest: &Path, host: &str) -> TransferProgress {
        let host = self.hosts.transfer(host);
        self.counters.transfers.fetch_add(1, Ordering::Relaxed);
        TransferProgress {
            verbose: self.verbosity >= Verbosity::Verbose,
            dest: dest.display().to_string(),
            counters: self.counters.clone(),
            host,
            bars: self.bars.clone(),
            bar: OnceLock::new(),
            outstanding: AtomicU64::new(0),
        }
    }

    /// A failed attempt that will be retried after `wait`.
    pub fn retrying(&self, dest: &Path, attempt: u32, error: &dyn std::fmt::Display, wait: Duration) {
        if self.verbosity >= Verbosity::Verbose {
            self.line(format_args!(
                "retry       {}: attempt {attempt} failed: {error}; retrying in {}",
                dest.display(),
                human_duration(wait)
            ));
        }
    }

    /// An entry leaves the URL `from` after `error` for `to`, another of
    /// its `urls`: logged with `-v`.
    pub fn fallback(&self, dest: &Path, from: &str, error: &str, to: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.line(format_args!("mirror      {}: {from} failed: {error}; trying {to}", dest.display()));
        }
    }

    /// A host's state changed ([`crate::hosts`]): logged with `-v`. Its
    /// owner tells each change once; only "gone", which every entry of the
    /// host meets, may come again, and is logged once.
    pub fn host_state(&self, host: &str, state: &State) {
        if let State::Gone { .. } = state
            && !self.gone.lock().expect("gone hosts").insert(host.to_owned())
        {
            return;
        }
        if *state == State::Open {
            self.all_down_told.store(false, Ordering::Relaxed);
        }
        if self.verbosity >= Verbosity::Verbose {
            self.line(format_args!("host        {host}: {}", state_text(state, Instant::now())));
        }
    }

    /// Every host with work is down at once: said once, until one answers.
    pub fn all_down(&self, hosts: usize) {
        if self.verbosity == Verbosity::Quiet || self.all_down_told.swap(true, Ordering::Relaxed) {
            return;
        }
        self.error(&format_args!("no host answers ({hosts} down): is the network down?"));
    }

    pub fn finished(&self, outcome: &Outcome) {
        self.counters.files_done.fetch_add(1, Ordering::Relaxed);
        let path = outcome.path.display();
        match outcome.status {
            Status::Failed => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let error =
                    outcome.error.as_ref().map_or_else(|| "unknown error".to_owned(), ToString::to_string);
                if outcome.url.is_none() {
                    // An invalid line: the error names MANIFEST:LINE itself.
                    self.line(format_args!("failed      {error}"));
                } else if outcome.attempts > 1 {
                    self.line(format_args!(
                        "failed      {path}: {error} (after {} attempts)",
                        outcome.attempts
                    ));
                } else {
                    self.line(format_args!("failed      {path}: {error}"));
                }
            }
            // The bars count these; a line each would scroll them away.
            _ if self.verbosity == Verbosity::Quiet || self.bars.is_some() => {}
            Status::Downloaded => {
                let resumed = match outcome.resumed_from {
                    0 => String::new(),
                    n => format!(", resumed at {}", human_bytes(n)),
                };
                let resumed = match &outcome.served_by {
                    Some(url) if outcome.url.as_ref() != Some(url) => format!("{resumed}, from {url}"),
                    _ => resumed,
                };
                // The transfer's own time: not the wait for a slot, nor for
                // the commit of a batch that other files are in.
                self.line(format_args!(
                    "downloaded  {path}  {} in {}{resumed}",
                    human_bytes(outcome.bytes),
                    human_duration(outcome.transfer.unwrap_or(outcome.elapsed))
                ));
            }
            Status::Unchanged => self.line(format_args!("unchanged   {path}")),
            Status::Skipped => {
                let reason = outcome.skip.map_or("skipped", |s| s.as_str());
                self.line(format_args!("skipped     {path}  ({reason})"));
            }
        }
    }

    /// Clear the bars and print the summary line.
    pub fn summary(&self, summary: &Summary, elapsed: Duration) {
        if let Some(bars) = &self.bars {
            bars.stop();
        }
        let secs = elapsed.as_secs_f64().max(1e-3);
        let unchanged = match summary.unchanged {
            0 => String::new(),
            n => format!(", {n} unchanged"),
        };
        self.line(format_args!(
            "fetch: {} downloaded{unchanged}, {} skipped, {} failed; {} in {} ({}/s)",
            summary.downloaded,
            summary.skipped,
            summary.failed,
            human_bytes(summary.bytes),
            human_duration(elapsed),
            human_bytes((summary.bytes as f64 / secs) as u64),
        ));
        for text in summary_lines(&self.watch.hosts()) {
            self.line(format_args!("fetch: {text}"));
        }
    }

    /// A problem with the run itself rather than one entry.
    pub fn error(&self, message: &dyn std::fmt::Display) {
        self.line(format_args!("fetch: {message}"));
    }

    fn line(&self, args: std::fmt::Arguments<'_>) {
        match &self.bars {
            Some(bars) => bars.println(&args.to_string()),
            None => line(args),
        }
    }
}

/// One transfer's progress. Cheap to call per chunk.
#[derive(Debug)]
pub struct TransferProgress {
    verbose: bool,
    dest: String,
    counters: Arc<Counters>,
    host: HostTraffic,
    bars: Option<Arc<Bars>>,
    /// A slot bar, claimed when a large response starts.
    bar: OnceLock<Option<ProgressBar>>,
    /// This transfer's part of [`Counters::outstanding`].
    outstanding: AtomicU64,
}

impl TransferProgress {
    /// A response started streaming at `offset` of `total` bytes.
    pub fn begin(&self, offset: u64, total: Option<u64>) {
        if self.verbose {
            let size = total.map_or_else(|| "unknown size".to_owned(), human_bytes);
            let text = match offset {
                0 => format!("attempt     {}: receiving {size}", self.dest),
                n => format!("attempt     {}: resuming at {} of {size}", self.dest, human_bytes(n)),
            };
            self.print(&text);
        }
        let Some(bars) = &self.bars else { return };
        // Added before it is recorded, so that advance() never takes from
        // the sum what was not yet added to it.
        let outstanding = total.map_or(0, |t| t.saturating_sub(offset));
        self.counters.outstanding.fetch_add(outstanding, Ordering::Relaxed);
        let before = self.outstanding.swap(outstanding, Ordering::Relaxed);
        self.counters.outstanding.fetch_sub(before, Ordering::Relaxed);
        if total.is_some_and(|t| t < LARGE) {
            return;
        }
        let bar = self.bar.get_or_init(|| bars.claim(&self.dest, total));
        if let Some(bar) = bar {
            bars.style_slot(bar, &self.dest, total);
            bar.set_position(offset);
        }
    }

    /// Bytes received from this transfer's host by the transfers under way
    /// (and by those that ran alongside them), and how many are under way.
    pub fn host_traffic(&self) -> (u64, u64) {
        self.host.snapshot()
    }

    pub fn advance(&self, bytes: u64) {
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.host.received(bytes);
        if self.bars.is_some() {
            let before = self
                .outstanding
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(bytes)))
                .unwrap_or_default();
            self.counters.outstanding.fetch_sub(before.min(bytes), Ordering::Relaxed);
        }
        if let Some(Some(bar)) = self.bar.get() {
            bar.inc(bytes);
        }
    }

    /// A large file is fetched as ranges over this many connections.
    pub fn split(&self, connections: usize) {
        if self.verbose {
            self.print(&format!("split       {}: {connections} connections", self.dest));
        }
    }

    /// A split download failed in a way only a fresh single stream fixes.
    pub fn unsplit(&self, reason: &str) {
        if self.verbose {
            self.print(&format!("restart     {}: {reason}; downloading as one stream", self.dest));
        }
    }

    /// The server answered a range request with the whole file.
    pub fn restarted(&self, discarded: u64) {
        if self.verbose {
            self.print(&format!(
                "restart     {}: server sent the whole file; discarding {} already received",
                self.dest,
                human_bytes(discarded)
            ));
        }
    }

    fn print(&self, text: &str) {
        match &self.bars {
            Some(bars) => bars.println(text),
            None => line(format_args!("{text}")),
        }
    }
}

impl Drop for TransferProgress {
    fn drop(&mut self) {
        self.counters.transfers.fetch_sub(1, Ordering::Relaxed);
        self.counters.outstanding.fetch_sub(self.outstanding.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        if let (Some(bars), Some(Some(bar))) = (&self.bars, self.bar.take()) {
            bars.release(bar);
        }
    }
}
