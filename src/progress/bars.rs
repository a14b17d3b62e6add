//! The bar display (`--progress bar`): an overall bar (files done of
//! total, bytes, rate, ETA) and one bar per active large download, drawn by
//! indicatif above which failures and `-v` lines print.
//!
//! Slot bars are a small pool of at most [`SLOT_BARS`], reused across
//! downloads: indicatif's MultiProgress misbehaves with thousands of bars.
//! The transfers count files and bytes in [`Counters`] (atomics, cheap per
//! chunk); a ticker thread reads them and redraws the overall bar ten times
//! a second, and below it a line of the hosts that are paused, down or
//! gone (shown only while there are any). What the bars say, and how it
//! fits the width, is [`super::layout`]'s.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use super::health::{Watch, bar_text};
use super::layout::{Overall, Remaining, eta, overall_style, overall_text, slot_template};
use super::text::{escape, line, short_name};

/// At most this many per-download bars at once.
const SLOT_BARS: usize = 8;
/// [`Counters::total_files`] before the manifest is counted.
const UNKNOWN: u64 = u64::MAX;

/// The figures the bars draw, counted by the [`super::Reporter`] and its
/// transfers.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) files_done: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) total_files: AtomicU64,
    /// Transfers under way ([`super::TransferProgress`] handles alive).
    pub(super) transfers: AtomicU64,
    /// Bytes the transfers under way have still to receive, of those whose
    /// length is known (kept with bars only, for the ETA).
    pub(super) outstanding: AtomicU64,
    /// `--limit-rate` in bytes per second; 0 for none.
    pub(super) limit: AtomicU64,
}

impl Counters {
    pub(super) fn new() -> Counters {
        Counters { total_files: AtomicU64::new(UNKNOWN), ..Counters::default() }
    }
}

/// The bar display: an overall bar and a pool of slot bars.
#[derive(Debug)]
pub(super) struct Bars {
    /// The stand-in terminal of `--progress bar` off a terminal.
    forced: Option<AnsiStderr>,
    multi: MultiProgress,
    overall: ProgressBar,
    /// The troubled hosts' line, in the display while there are any.
    hosts: ProgressBar,
    hosts_shown: AtomicBool,
    watch: Arc<Watch>,
    /// Slot bars not in use, kept for reuse.
    free: Mutex<Vec<ProgressBar>>,
    in_use: AtomicU64,
    stop: AtomicBool,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Bars {
    pub(super) fn start(counters: Arc<Counters>, watch: Arc<Watch>, forced: bool) -> Arc<Bars> {
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
            hosts: ProgressBar::hidden()
                .with_style(ProgressStyle::with_template("{msg}").expect("valid template")),
            hosts_shown: AtomicBool::new(false),
            watch,
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
                limit: Some(counters.limit.load(Ordering::Relaxed)).filter(|&l| l > 0),
            };
            let (before, after) = overall_text(&overall, self.width(), known);
            self.overall.set_position(done);
            self.overall.set_prefix(before);
            self.overall.set_message(after);
            self.show_hosts(now);
        }
    }

    /// The troubled hosts' line, cut to the width; gone with the last one.
    fn show_hosts(&self, now: Instant) {
        let text = bar_text(&self.watch.hosts(), now);
        let shown = self.hosts_shown.load(Ordering::Relaxed);
        if text.is_empty() {
            if shown {
                self.multi.remove(&self.hosts);
                self.hosts_shown.store(false, Ordering::Relaxed);
            }
            return;
        }
        let text: String = escape(&text).chars().take(self.width().saturating_sub(1)).collect();
        self.hosts.set_message(text);
        if !shown {
            // After the overall bar, before any slot bar.
            self.multi.insert_after(&self.overall, self.hosts.clone());
            self.hosts_shown.store(true, Ordering::Relaxed);
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

    pub(super) fn style_slot(&self, bar: &ProgressBar, name: &str, total: Option<u64>) {
        let (template, name_width) = slot_template(self.width(), total.is_some());
        bar.set_prefix(short_name(&escape(name), name_width));
        bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
    }

    /// A slot bar for `name`, if fewer than [`SLOT_BARS`] are shown.
    pub(super) fn claim(&self, name: &str, total: Option<u64>) -> Option<ProgressBar> {
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

    pub(super) fn release(&self, bar: ProgressBar) {
        self.multi.remove(&bar);
        self.free.lock().expect("free bars").push(bar);
        self.in_use.fetch_sub(1, Ordering::AcqRel);
    }

    pub(super) fn println(&self, text: &str) {
        if self.multi.is_hidden() {
            line(format_args!("{text}"));
        } else {
            let _ = self.multi.println(escape(text));
        }
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.lock().expect("ticker lock").take() {
            ticker.thread().unpark();
            let _ = ticker.join();
        }
        self.overall.finish_and_clear();
        self.hosts.finish_and_clear();
        let _ = self.multi.clear();
    }
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
