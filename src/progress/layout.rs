//! What the bars say, fitted to the terminal's width: the overall bar's
//! text ([`overall_text`]) and style, a slot bar's template
//! ([`slot_template`]), and the ETA ([`eta`], [`eta_text`]).
//!
//! Everything here is a pure function of the figures and the width, so the
//! tests can draw each layout on a fake screen of every width from 30 to 160
//! columns. Invariant: no line drawn is wider than the terminal, and the
//! figures a user needs most are the last to go as it narrows.

use std::time::Duration;

use indicatif::ProgressStyle;

use super::text::human_bytes;

/// A bar is never narrower than this.
const MIN_BAR: usize = 10;

/// The overall bar's figures, gathered once a tick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Overall {
    pub(super) elapsed: Duration,
    pub(super) done: u64,
    pub(super) total: Option<u64>,
    pub(super) failed: u64,
    pub(super) bytes: u64,
    /// Bytes per second.
    pub(super) rate: f64,
    pub(super) eta: Option<Duration>,
    /// `--limit-rate`, bytes per second.
    pub(super) limit: Option<u64>,
}

/// The overall bar's text, `(before the bar, after it)`, within `width`
/// columns and leaving [`MIN_BAR`] for the bar (when the total is known
/// and a bar is drawn; else a spinner). The figures a user needs most are
/// kept as the width shrinks: files, then the ETA, bytes, failures, rate,
/// the rate limit and elapsed time.
pub(super) fn overall_text(o: &Overall, width: usize, bar: bool) -> (String, String) {
    let files = match o.total {
        Some(total) if bar => format!("{}/{total} files", o.done),
        _ => format!("{} files", o.done),
    };
    let optional = [
        o.eta.filter(|_| bar).map(|eta| format!(" ETA {}", eta_text(eta))),
        Some(format!(" {}", human_bytes(o.bytes))),
        (o.failed > 0).then(|| format!(" {} failed", o.failed)),
        Some(format!(" {}/s", human_bytes(o.rate as u64))),
        o.limit.map(|limit| format!(" (limited to {}/s)", human_bytes(limit))),
    ];
    let elapsed = {
        let s = o.elapsed.as_secs();
        format!("{:02}:{:02}:{:02} ", s / 3600, s / 60 % 60, s % 60)
    };
    // "[" and "] " around a bar; a spinner and a space.
    let room = width.saturating_sub(if bar { MIN_BAR + 3 } else { 2 });
    let mut used = files.len();
    let mut keep = [false; 5];
    for (i, part) in optional.iter().enumerate() {
        if let Some(part) = part
            && used + part.len() <= room
        {
            used += part.len();
            keep[i] = true;
        }
    }
    let before = if used + elapsed.len() <= room { elapsed } else { String::new() };
    // Shown in reading order: files, bytes, rate, its limit, failures, ETA.
    let mut after = files;
    for i in [1, 3, 4, 2, 0] {
        if keep[i] {
            after.push_str(optional[i].as_deref().unwrap_or_default());
        }
    }
    (before, after)
}

/// The overall bar's style; the text around the bar is fitted to the
/// width by [`overall_text`].
pub(super) fn overall_style(known_total: bool) -> ProgressStyle {
    let template =
        if known_total { "{prefix}[{wide_bar:.cyan/blue}] {msg}" } else { "{prefix}{spinner} {msg}" };
    ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
}

/// A slot bar's template for `width` columns, and the width of its name.
/// The name gets up to 24 columns; as the width shrinks, the rate goes,
/// then the bar, then the name shortens.
pub(super) fn slot_template(width: usize, known_total: bool) -> (String, usize) {
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

/// What the ETA is computed from, read from the bars' counters once a tick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Remaining {
    pub(super) done: u64,
    pub(super) total: Option<u64>,
    pub(super) transfers: u64,
    pub(super) bytes: u64,
    pub(super) outstanding: u64,
    pub(super) rate: f64,
}

/// Time left for the run, from bytes: what the transfers under way have
/// still to receive, plus, for the entries not started, as many bytes
/// each as the started ones average. Counting files instead says `ETA 0s`
/// for three files with 500 MiB to go. None while there is nothing to go
/// by (no total, no rate, nothing started).
pub(super) fn eta(r: &Remaining) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::{ProgressBar, ProgressDrawTarget, TermLike};

    use super::*;
    use crate::progress::text::short_name;

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
            limit: None,
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
        let limited = Overall { limit: Some(1 << 30), ..busy };
        let (_, after) = overall_text(&limited, 120, true);
        assert_eq!(
            after,
            "1999999/2000000 files 1023.0 GiB 1023.0 MiB/s (limited to 1.0 GiB/s) 123456 failed ETA 59m00s"
        );
        // The limit is the first to go as the width shrinks.
        let (_, after) = overall_text(&limited, 100, true);
        assert!(!after.contains("limited") && after.contains("MiB/s"), "{after}");
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
}
