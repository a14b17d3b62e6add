//! What the user sees while the run goes on. Transfer code reports through
//! this small API ([`Reporter`], [`TransferProgress`]) and never formats
//! output itself.
//!
//! Three displays:
//! - `log` (stderr is not a terminal: cron, pipes, files): one plain line per
//!   finished entry, `downloaded PATH SIZE`, `skipped PATH (reason)`,
//!   `failed PATH: reason`; no escape codes.
//! - `bar` (a terminal): an overall bar (files done of total, bytes, rate,
//!   ETA) and one bar per active large download. Slot bars are a small pool
//!   reused across downloads (indicatif's MultiProgress misbehaves with
//!   thousands of bars); failures and `-v` lines print above the bars.
//! - `none`: neither; failures and the summary still print.
//!
//! Every line and bar label goes through [`escape`] on its way out: names
//! come from URLs and manifests, and a raw newline, carriage return or
//! escape sequence in one would forge log lines or drive the terminal.
//!
//! The hot path stays cheap at tens of thousands of files per second: bytes
//! and files are counted in atomics, a ticker thread redraws the overall bar
//! ten times a second, and only downloads of at least [`LARGE`] bytes (or of
//! unknown size) get a bar of their own.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use crate::report::{Outcome, Status, Summary};

/// Downloads at least this large get a bar of their own.
pub const LARGE: u64 = 1024 * 1024;
/// At most this many per-download bars at once.
const SLOT_BARS: usize = 8;
const UNKNOWN: u64 = u64::MAX;

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

/// How progress is shown, after `auto` has been decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Log,
    /// Bars; `forced` draws them even when stderr is not a terminal.
    Bar {
        forced: bool,
    },
    None,
}

#[derive(Debug, Default)]
struct Counters {
    files_done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    total_files: AtomicU64,
}

/// What one host's transfers under way have received, for the split rule:
/// a file is compared with the others from its host, because a host that
/// caps each connection slows only its own files, while what all hosts
/// share (CPU, disk, the local link) slows every file alike.
#[derive(Debug, Default)]
struct Traffic {
    bytes: AtomicU64,
    /// [`TransferProgress`] handles alive for this host.
    transfers: AtomicU64,
}

/// Hosts with transfers under way, by `host:port`. Entries whose
/// transfers have all ended are pruned as the map doubles, so it stays
/// within twice the hosts in use (plus [`HOSTS_KEPT`]).
#[derive(Debug, Default)]
struct Hosts {
    traffic: HashMap<String, Weak<Traffic>>,
    prune_above: usize,
}

const HOSTS_KEPT: usize = 64;

impl Hosts {
    fn traffic(&mut self, host: &str) -> Arc<Traffic> {
        if let Some(traffic) = self.traffic.get(host).and_then(Weak::upgrade) {
            return traffic;
        }
        let traffic = Arc::new(Traffic::default());
        self.traffic.insert(host.to_owned(), Arc::downgrade(&traffic));
        if self.traffic.len() > self.prune_above {
            self.traffic.retain(|_, t| t.strong_count() > 0);
            self.prune_above = (2 * self.traffic.len()).max(HOSTS_KEPT);
        }
        traffic
    }
}

#[derive(Debug)]
pub struct Reporter {
    verbosity: Verbosity,
    counters: Arc<Counters>,
    hosts: Mutex<Hosts>,
    bars: Option<Arc<Bars>>,
}

impl Reporter {
    pub fn new(verbosity: Verbosity, display: Display) -> Reporter {
        let counters = Arc::new(Counters { total_files: AtomicU64::new(UNKNOWN), ..Counters::default() });
        let bars = match display {
            Display::Bar { forced } => Some(Bars::start(counters.clone(), forced)),
            Display::Log | Display::None => None,
        };
        Reporter {
            verbosity: if display == Display::None { Verbosity::Quiet } else { verbosity },
            counters,
            hosts: Mutex::default(),
            bars,
        }
    }

    /// The number of entries the manifest holds, once counted.
    pub fn set_total(&self, total: u64) {
        self.counters.total_files.store(total, Ordering::Relaxed);
    }

    /// A handle for the byte counts of one transfer from `host`
    /// (`host:port`).
    pub fn transfer(&self, dest: &Path, host: &str) -> TransferProgress {
        let host = self.hosts.lock().expect("hosts").traffic(host);
        host.transfers.fetch_add(1, Ordering::Relaxed);
        TransferProgress {
            verbose: self.verbosity >= Verbosity::Verbose,
            dest: dest.display().to_string(),
            counters: self.counters.clone(),
            host,
            bars: self.bars.clone(),
            bar: OnceLock::new(),
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
                self.line(format_args!(
                    "downloaded  {path}  {} in {}{resumed}",
                    human_bytes(outcome.bytes),
                    human_duration(outcome.elapsed)
                ));
            }
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
        self.line(format_args!(
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
    host: Arc<Traffic>,
    bars: Option<Arc<Bars>>,
    /// A slot bar, claimed when a large response starts.
    bar: OnceLock<Option<ProgressBar>>,
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
        if total.is_some_and(|t| t < LARGE) {
            return;
        }
        let bar = self.bar.get_or_init(|| bars.claim(&self.dest));
        if let Some(bar) = bar {
            bars.style_slot(bar, total);
            bar.set_position(offset);
        }
    }

    /// Bytes received from this transfer's host by the transfers under way
    /// (and by those that ran alongside them), and how many are under way.
    pub fn host_traffic(&self) -> (u64, u64) {
        (self.host.bytes.load(Ordering::Relaxed), self.host.transfers.load(Ordering::Relaxed))
    }

    pub fn advance(&self, bytes: u64) {
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.host.bytes.fetch_add(bytes, Ordering::Relaxed);
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
        self.host.transfers.fetch_sub(1, Ordering::Relaxed);
        if let (Some(bars), Some(Some(bar))) = (&self.bars, self.bar.take()) {
            bars.release(bar);
        }
    }
}

/// The bar display: an overall bar and a pool of slot bars.
#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    /// Slot bars not in use, kept for reuse.
    free: Mutex<Vec<ProgressBar>>,
    in_use: AtomicU64,
    stop: AtomicBool,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Bars {
    fn start(counters: Arc<Counters>, forced: bool) -> Arc<Bars> {
        let target = if forced {
            ProgressDrawTarget::term_like_with_hz(Box::new(AnsiStderr::new()), 10)
        } else {
            ProgressDrawTarget::stderr_with_hz(10)
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::no_length());
        let bars = Arc::new(Bars {
            multi,
            overall,
            free: Mutex::new(Vec::new()),
            in_use: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            ticker: Mutex::new(None),
        });
        bars.style_overall(false);
        let ticker = {
            let bars = bars.clone();
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || bars.tick(&counters))
                .expect("spawn progress thread")
        };
        *bars.ticker.lock().expect("ticker lock") = Some(ticker);
        bars
    }

    fn tick(&self, counters: &Counters) {
        let mut known = false;
        let mut last = (Instant::now(), 0u64);
        let mut rate = 0.0f64;
        while !self.stop.load(Ordering::Relaxed) {
            // Parked rather than asleep, so that stop() need not wait out a tick.
            std::thread::park_timeout(Duration::from_millis(100));
            let total = counters.total_files.load(Ordering::Relaxed);
            if total != UNKNOWN && !known {
                known = true;
                self.style_overall(true);
                self.overall.set_length(total);
            }
            let bytes = counters.bytes.load(Ordering::Relaxed);
            let now = Instant::now();
            let dt = now.duration_since(last.0).as_secs_f64();
            if dt > 0.0 {
                // Smoothed over about a second, so the rate does not jitter.
                let instant = (bytes - last.1) as f64 / dt;
                rate = if rate == 0.0 { instant } else { rate * 0.8 + instant * 0.2 };
            }
            last = (now, bytes);
            self.overall.set_position(counters.files_done.load(Ordering::Relaxed));
            let failed = counters.failed.load(Ordering::Relaxed);
            let failed = if failed > 0 { format!(" {failed} failed") } else { String::new() };
            self.overall.set_message(format!(
                "{} {}/s{failed}",
                human_bytes(bytes),
                human_bytes(rate as u64)
            ));
        }
    }

    fn style_overall(&self, known_total: bool) {
        let template = if known_total {
            "{elapsed_precise} [{wide_bar:.cyan/blue}] {pos}/{len} files {msg} ETA {eta}"
        } else {
            "{elapsed_precise} {spinner} {pos} files {msg}"
        };
        self.overall
            .set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    }

    fn style_slot(&self, bar: &ProgressBar, total: Option<u64>) {
        let template = match total {
            Some(_) => {
                "  {prefix:24!} [{wide_bar:.green/white}] {binary_bytes:>9}/{binary_total_bytes:<9} {binary_bytes_per_sec:>11}"
            }
            None => "  {prefix:24!} {binary_bytes:>9} {binary_bytes_per_sec:>11}",
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
    }

    /// A slot bar for `name`, if fewer than [`SLOT_BARS`] are shown.
    fn claim(&self, name: &str) -> Option<ProgressBar> {
        if self.in_use.fetch_add(1, Ordering::AcqRel) >= SLOT_BARS as u64 {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Hidden until it joins the multi display: a bar with its own stderr
        // target would draw over the others' lines.
        let bar = self.free.lock().expect("free bars").pop().unwrap_or_else(ProgressBar::hidden);
        let bar = self.multi.add(bar);
        bar.reset();
        bar.set_prefix(short_name(&escape(name), 24));
        Some(bar)
    }

    fn release(&self, bar: ProgressBar) {
        self.multi.remove(&bar);
        self.free.lock().expect("free bars").push(bar);
        self.in_use.fetch_sub(1, Ordering::AcqRel);
    }

    fn println(&self, text: &str) {
        if self.multi.is_hidden() {
            line(format_args!("{text}"));
        } else {
            let _ = self.multi.println(escape(text));
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.lock().expect("ticker lock").take() {
            ticker.thread().unpark();
            let _ = ticker.join();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// The end of a long name, so the part that differs stays visible.
fn short_name(name: &str, width: usize) -> String {
    let count = name.chars().count();
    if count <= width {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

/// Bars drawn with plain ANSI sequences on stderr, for `--progress bar`
/// when stderr is not a terminal (indicatif hides bars there by default).
#[derive(Debug)]
struct AnsiStderr {
    width: u16,
}

impl AnsiStderr {
    fn new() -> AnsiStderr {
        let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(80);
        AnsiStderr { width }
    }

    fn write(&self, s: &str) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(s.as_bytes())
    }
}

impl TermLike for AnsiStderr {
    fn width(&self) -> u16 {
        self.width
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write(&format!("\x1b[{n}A")) } else { Ok(()) }
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write(&format!("\x1b[{n}B")) } else { Ok(()) }
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write(&format!("\x1b[{n}C")) } else { Ok(()) }
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write(&format!("\x1b[{n}D")) } else { Ok(()) }
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.write(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.write("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn line(args: std::fmt::Arguments<'_>) {
    let text = match args.as_str() {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(args.to_string()),
    };
    let mut err = std::io::stderr().lock();
    // Nowhere left to report a failure to write to stderr.
    let _ = writeln!(err, "{}", escape(&text));
}

/// `text` made safe to print as one line: control characters (C0, DEL,
/// C1) and the Unicode controls that reorder or break text (bidi
/// overrides and isolates, line and paragraph separators) become
/// `\x1b` or `\u{202e}`. Printable text is unchanged, backslashes too.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c as u32 {
            _ if !unprintable(c) => out.push(c),
            code @ 0..=0xff => {
                let _ = write!(out, "\\x{code:02x}");
            }
            code => {
                let _ = write!(out, "\\u{{{code:x}}}");
            }
        }
    }
    Cow::Owned(out)
}

fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
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
    fn hosts_share_traffic_and_ended_ones_are_pruned() {
        let mut hosts = Hosts::default();
        let a = hosts.traffic("a:1");
        assert!(Arc::ptr_eq(&a, &hosts.traffic("a:1")));
        assert!(!Arc::ptr_eq(&a, &hosts.traffic("a:2")));
        // Many hosts one after the other: the map stays small.
        for i in 0..100_000 {
            drop(hosts.traffic(&format!("h{i}")));
            assert!(hosts.traffic.len() <= 2 * HOSTS_KEPT + 1, "{} at {i}", hosts.traffic.len());
        }
        assert!(Arc::ptr_eq(&a, &hosts.traffic("a:1")), "a live host was pruned");
    }

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

    #[test]
    fn control_characters_are_escaped() {
        let cases = [
            ("plain/name ü.txt", "plain/name ü.txt"),
            ("a\nfailed      x", "a\\x0afailed      x"),
            ("\x1b[31mred\r", "\\x1b[31mred\\x0d"),
            ("tab\tdel\x7f c1\u{9b}", "tab\\x09del\\x7f c1\\x9b"),
            ("bidi\u{202e}txt.exe\u{2069}", "bidi\\u{202e}txt.exe\\u{2069}"),
            ("back\\slash", "back\\slash"),
        ];
        for (input, want) in cases {
            assert_eq!(escape(input), want, "{input:?}");
        }
        assert!(matches!(escape("clean"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_names_keep_their_end() {
        assert_eq!(short_name("short", 10), "short");
        assert_eq!(short_name("a/very/long/path/file.bin", 10), "…/file.bin");
        assert_eq!(short_name("a/very/long/path/file.bin", 10).chars().count(), 10);
    }
}
