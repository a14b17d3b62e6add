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

use crate::config::{Display, Verbosity};
use crate::redact;
use crate::report::{Outcome, Status, Summary};

/// Downloads at least this large get a bar of their own.
pub const LARGE: u64 = 1024 * 1024;
/// At most this many per-download bars at once.
const SLOT_BARS: usize = 8;
const UNKNOWN: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Counters {
    files_done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    total_files: AtomicU64,
    /// Transfers under way ([`TransferProgress`] handles alive).
    transfers: AtomicU64,
    /// Bytes the transfers under way have still to receive, of those whose
    /// length is known (kept with bars only, for the ETA).
    outstanding: AtomicU64,
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
                // The transfer's own time: not the wait for a slot, nor for
                // the commit of a batch that other files are in.
                self.line(format_args!(
                    "downloaded  {path}  {} in {}{resumed}",
                    human_bytes(outcome.bytes),
                    human_duration(outcome.transfer.unwrap_or(outcome.elapsed))
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
        (self.host.bytes.load(Ordering::Relaxed), self.host.transfers.load(Ordering::Relaxed))
    }

    pub fn advance(&self, bytes: u64) {
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.host.bytes.fetch_add(bytes, Ordering::Relaxed);
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
        self.host.transfers.fetch_sub(1, Ordering::Relaxed);
        self.counters.transfers.fetch_sub(1, Ordering::Relaxed);
        self.counters.outstanding.fetch_sub(self.outstanding.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        if let (Some(bars), Some(Some(bar))) = (&self.bars, self.bar.take()) {
            bars.release(bar);
        }
    }
}

/// The bar display: an overall bar and a pool of slot bars.
#[derive(Debug)]
struct Bars {
    /// The stand-in terminal of `--progress bar` off a terminal.
    forced: Option<AnsiStderr>,
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
        let forced = forced.then(AnsiStderr::new);
        // Styled before it is added, which draws it.
        let overall = multi.add(ProgressBar::no_length().with_style(overall_style(false)));
        let bars = Arc::new(Bars {
            forced,
            multi,
            overall,
            free: Mutex::new(Vec::new()),
            in_use: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            ticker: Mutex::new(None),
        });
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
        let started = Instant::now();
        let mut known = false;
        let mut last = (Instant::now(), 0u64);
        let mut rate = 0.0f64;
        while !self.stop.load(Ordering::Relaxed) {
            // Parked rather than asleep, so that stop() need not wait out a tick.
            std::thread::park_timeout(Duration::from_millis(100));
            let total = Some(counters.total_files.load(Ordering::Relaxed)).filter(|&t| t != UNKNOWN);
            if let Some(total) = total
                && !known
            {
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
            let done = counters.files_done.load(Ordering::Relaxed);
            let overall = Overall {
                elapsed: started.elapsed(),
                done,
                total,
                failed: counters.failed.load(Ordering::Relaxed),
                bytes,
                rate,
                eta: eta(&Remaining {
                    done,
                    total,
                    transfers: counters.transfers.load(Ordering::Relaxed),
                    bytes,
                    outstanding: counters.outstanding.load(Ordering::Relaxed),
                    rate,
                }),
            };
            let (before, after) = overall_text(&overall, self.width(), known);
            self.overall.set_position(done);
            self.overall.set_prefix(before);
            self.overall.set_message(after);
        }
    }

    /// The terminal's width now (it may be resized during a run).
    fn width(&self) -> usize {
        let width = match &self.forced {
            Some(term) => term.width,
            None => console::Term::stderr().size_checked().map_or(80, |(_, cols)| cols),
        };
        width.into()
    }

    fn style_overall(&self, known_total: bool) {
        self.overall.set_style(overall_style(known_total));
    }

    fn style_slot(&self, bar: &ProgressBar, name: &str, total: Option<u64>) {
        let (template, name_width) = slot_template(self.width(), total.is_some());
        bar.set_prefix(short_name(&escape(name), name_width));
        bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
    }

    /// A slot bar for `name`, if fewer than [`SLOT_BARS`] are shown.
    fn claim(&self, name: &str, total: Option<u64>) -> Option<ProgressBar> {
        if self.in_use.fetch_add(1, Ordering::AcqRel) >= SLOT_BARS as u64 {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Hidden until it joins the multi display: a bar with its own stderr
        // target would draw over the others' lines.
        let bar = self.free.lock().expect("free bars").pop().unwrap_or_else(ProgressBar::hidden);
        bar.reset();
        // Styled before it is added, which draws it.
        self.style_slot(&bar, name, total);
        Some(self.multi.add(bar))
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

/// A bar is never narrower than this.
const MIN_BAR: usize = 10;

/// The overall bar's figures, gathered once a tick.
#[derive(Debug, Clone, Copy, Default)]
struct Overall {
    elapsed: Duration,
    done: u64,
    total: Option<u64>,
    failed: u64,
    bytes: u64,
    /// Bytes per second.
    rate: f64,
    eta: Option<Duration>,
}

/// The overall bar's text, `(before the bar, after it)`, within `width`
/// columns and leaving [`MIN_BAR`] for the bar (when the total is known
/// and a bar is drawn; else a spinner). The figures a user needs most are
/// kept as the width shrinks: files, then the ETA, bytes, failures, rate
/// and elapsed time.
fn overall_text(o: &Overall, width: usize, bar: bool) -> (String, String) {
    let files = match o.total {
        Some(total) if bar => format!("{}/{total} files", o.done),
        _ => format!("{} files", o.done),
    };
    let optional = [
        o.eta.filter(|_| bar).map(|eta| format!(" ETA {}", eta_text(eta))),
        Some(format!(" {}", human_bytes(o.bytes))),
        (o.failed > 0).then(|| format!(" {} failed", o.failed)),
        Some(format!(" {}/s", human_bytes(o.rate as u64))),
    ];
    let elapsed = {
        let s = o.elapsed.as_secs();
        format!("{:02}:{:02}:{:02} ", s / 3600, s / 60 % 60, s % 60)
    };
    // "[" and "] " around a bar; a spinner and a space.
    let room = width.saturating_sub(if bar { MIN_BAR + 3 } else { 2 });
    let mut used = files.len();
    let mut keep = [false; 4];
    for (i, part) in optional.iter().enumerate() {
        if let Some(part) = part
            && used + part.len() <= room
        {
            used += part.len();
            keep[i] = true;
        }
    }
    let before = if used + elapsed.len() <= room { elapsed } else { String::new() };
    // Shown in reading order: files, bytes, rate, failures, ETA.
    let mut after = files;
    for i in [1, 3, 2, 0] {
        if keep[i] {
            after.push_str(optional[i].as_deref().unwrap_or_default());
        }
    }
    (before, after)
}

/// The overall bar's style; the text around the bar is fitted to the
/// width by [`overall_text`].
fn overall_style(known_total: bool) -> ProgressStyle {
    let template =
        if known_total { "{prefix}[{wide_bar:.cyan/blue}] {msg}" } else { "{prefix}{spinner} {msg}" };
    ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
}

/// A slot bar's template for `width` columns, and the width of its name.
/// The name gets up to 24 columns; as the width shrinks, the rate goes,
/// then the bar, then the name shortens.
fn slot_template(width: usize, known_total: bool) -> (String, usize) {
    let bytes = if known_total { " {binary_bytes:>9}/{binary_total_bytes:<9}" } else { " {binary_bytes:>9}" };
    // Widest values: "1023.99 MiB", "1023.99 MiB/s".
    let bytes_width = if known_total { 24 } else { 12 };
    let rate = " {binary_bytes_per_sec:>11}";
    // Indent 2; a bar takes " [" + MIN_BAR + "]". The last layout is
    // taken however narrow the terminal, with a name of at least 1.
    let name_width = |with_bar: bool, with_rate: bool| {
        let fixed = 2 + bytes_width + if with_bar { MIN_BAR + 3 } else { 0 } + if with_rate { 14 } else { 0 };
        width.saturating_sub(fixed).min(24)
    };
    let (with_bar, with_rate) = [(known_total, true), (known_total, false)]
        .into_iter()
        .find(|&(with_bar, with_rate)| name_width(with_bar, with_rate) >= 12)
        .unwrap_or((false, false));
    let name = name_width(with_bar, with_rate).max(1);
    let bar = if with_bar { " [{wide_bar:.green/white}]" } else { "" };
    let rate = if with_rate { rate } else { "" };
    (format!("  {{prefix:{name}!}}{bar}{bytes}{rate}"), name)
}

/// What the ETA is computed from, read from [`Counters`] once a tick.
#[derive(Debug, Clone, Copy, Default)]
struct Remaining {
    done: u64,
    total: Option<u64>,
    transfers: u64,
    bytes: u64,
    outstanding: u64,
    rate: f64,
}

/// Time left for the run, from bytes: what the transfers under way have
/// still to receive, plus, for the entries not started, as many bytes
/// each as the started ones average. Counting files instead says `ETA 0s`
/// for three files with 500 MiB to go. None while there is nothing to go
/// by (no total, no rate, nothing started).
fn eta(r: &Remaining) -> Option<Duration> {
    let started = r.done + r.transfers;
    let waiting = r.total?.saturating_sub(started);
    let mut left = r.outstanding as f64;
    if waiting > 0 {
        if started == 0 {
            return None;
        }
        left += waiting as f64 * (r.bytes + r.outstanding) as f64 / started as f64;
    }
    if left == 0.0 {
        return Some(Duration::ZERO);
    }
    if r.rate < 1.0 {
        return None;
    }
    Duration::try_from_secs_f64(left / r.rate).ok()
}

/// `42s`, `2m05s`, `3h20m`: whole seconds, rounded up (`0s` is done), as
/// an ETA is no more precise.
fn eta_text(eta: Duration) -> String {
    let s = eta.as_secs() + u64::from(eta.subsec_nanos() > 0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
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
    if !text.chars().any(redact::unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c as u32 {
            _ if !redact::unprintable(c) => out.push(c),
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

    /// What a bar draws, as lines without escape codes.
    #[derive(Debug, Clone, Default)]
    struct Screen {
        width: u16,
        text: Arc<Mutex<String>>,
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.text.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.write_str("\n")
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The widest line `draw` makes a bar draw on a screen `width` wide.
    fn drawn_width(width: u16, draw: impl FnOnce(&ProgressBar)) -> usize {
        let screen = Screen { width, ..Screen::default() };
        let bar =
            ProgressBar::with_draw_target(None, ProgressDrawTarget::term_like(Box::new(screen.clone())));
        draw(&bar);
        bar.tick();
        let text = screen.text.lock().unwrap().clone();
        assert!(!text.trim().is_empty(), "nothing drawn at {width}");
        text.lines().map(console::measure_text_width).max().unwrap_or(0)
    }

    #[test]
    fn slot_bars_fit_the_terminal() {
        for width in 30..=160u16 {
            for known in [true, false] {
                let (template, name_width) = slot_template(width.into(), known);
                let name = short_name("a/long/directory/name/for/the/file-0001.bin", name_width);
                let drawn = drawn_width(width, |bar| {
                    bar.set_style(ProgressStyle::with_template(&template).unwrap());
                    bar.set_prefix(name);
                    if known {
                        bar.set_length(1_073_731_000);
                    }
                    bar.set_position(1_073_731_000);
                });
                assert!(drawn <= width.into(), "{drawn} columns at {width} ({known}): {template}");
            }
        }
        // The fixed template this replaced wrapped at 60 columns.
        let fixed = "  {prefix:24!} [{wide_bar}] {binary_bytes:>9}/{binary_total_bytes:<9} {binary_bytes_per_sec:>11}";
        let drawn = drawn_width(60, |bar| {
            bar.set_style(ProgressStyle::with_template(fixed).unwrap());
            bar.set_length(1_073_731_000);
        });
        assert!(drawn > 60, "the check sees a line too wide: {drawn}");
        assert!(slot_template(60, true).0.contains("wide_bar"), "a bar at 60 columns");
        assert!(slot_template(100, true).0.contains("bytes_per_sec"), "a rate at 100 columns");
    }

    #[test]
    fn the_overall_bar_fits_the_terminal() {
        let busy = Overall {
            elapsed: Duration::from_secs(3 * 3600),
            done: 1_999_999,
            total: Some(2_000_000),
            failed: 123_456,
            bytes: 1023 << 30,
            rate: 1023.0 * (1 << 20) as f64,
            eta: Some(Duration::from_secs(59 * 60)),
        };
        for width in 30..=160u16 {
            for known in [true, false] {
                let (before, after) = overall_text(&busy, width.into(), known);
                let template = if known { "{prefix}[{wide_bar}] {msg}" } else { "{prefix}{spinner} {msg}" };
                let drawn = drawn_width(width, |bar| {
                    bar.set_style(ProgressStyle::with_template(template).unwrap());
                    bar.set_length(2_000_000);
                    bar.set_prefix(before);
                    bar.set_message(after);
                });
                assert!(drawn <= width.into(), "{drawn} columns at {width} ({known})");
            }
        }
        let (before, after) = overall_text(&busy, 60, true);
        assert_eq!((before.as_str(), after.as_str()), ("", "1999999/2000000 files 1023.0 GiB ETA 59m00s"));
        let (before, after) = overall_text(&busy, 120, true);
        assert_eq!(before, "03:00:00 ");
        assert_eq!(after, "1999999/2000000 files 1023.0 GiB 1023.0 MiB/s 123456 failed ETA 59m00s");
    }

    #[test]
    fn the_eta_counts_bytes() {
        let mib = 1 << 20;
        let cases = [
            // Three files under way with 500 MiB to go at 10 MiB/s.
            (
                Remaining {
                    total: Some(3),
                    transfers: 3,
                    outstanding: 500 * mib,
                    rate: 10.0 * mib as f64,
                    ..Remaining::default()
                },
                Some(50),
            ),
            // One of four done (10 MiB), one under way with 10 MiB to go:
            // two more of 10 MiB each are expected.
            (
                Remaining {
                    done: 1,
                    total: Some(4),
                    transfers: 1,
                    bytes: 10 * mib,
                    outstanding: 10 * mib,
                    rate: mib as f64,
                },
                Some(30),
            ),
            // Nothing started yet: no average to go by.
            (Remaining { total: Some(4), rate: 1.0, ..Remaining::default() }, None),
            // No rate yet.
            (Remaining { total: Some(1), transfers: 1, outstanding: mib, ..Remaining::default() }, None),
            // All done.
            (Remaining { done: 2, total: Some(2), bytes: mib, ..Remaining::default() }, Some(0)),
            // Unknown total: no ETA.
            (Remaining { done: 2, transfers: 1, outstanding: mib, rate: 1.0, ..Remaining::default() }, None),
        ];
        for (remaining, want) in cases {
            assert_eq!(eta(&remaining).map(|d| d.as_secs()), want, "{remaining:?}");
        }
        assert_eq!(eta_text(Duration::from_secs(42)), "42s");
        assert_eq!(eta_text(Duration::from_millis(300)), "1s");
        assert_eq!(eta_text(Duration::from_secs(125)), "2m05s");
        assert_eq!(eta_text(Duration::from_secs(3 * 3600 + 20 * 60)), "3h20m");
    }

    #[test]
    fn long_names_keep_their_end() {
        assert_eq!(short_name("short", 10), "short");
        assert_eq!(short_name("a/very/long/path/file.bin", 10), "…/file.bin");
        assert_eq!(short_name("a/very/long/path/file.bin", 10).chars().count(), 10);
    }
}
