//! Text on its way to the user: [`escape`] for names and messages,
//! [`human_bytes`] and [`human_duration`] for figures, [`short_name`] for a
//! name cut to a width, and [`line()`], the one writer of a plain line to
//! stderr.
//!
//! Invariant: every line and bar label passes through [`escape`] on its way
//! out. Names come from URLs and manifests, and a raw newline, carriage
//! return or escape sequence in one would forge log lines or drive the
//! terminal. Everything here but [`line()`] is a pure function of its input.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use crate::redact;

/// `args` as one escaped line on stderr.
pub(super) fn line(args: std::fmt::Arguments<'_>) {
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

/// `120ms`, `2.5s`, `2m05s`.
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

/// The end of a long name, so the part that differs stays visible.
pub(super) fn short_name(name: &str, width: usize) -> String {
    let count = name.chars().count();
    if count <= width {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
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
