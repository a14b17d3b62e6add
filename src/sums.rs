//! Checksum files (`--checksums FILE`): the output of `sha256sum`,
//! `sha512sum`, `sha1sum`, `md5sum` (and their BSD `--tag` form), read once
//! before the run into a table from file name to expected digests, which the
//! manifest reader gives to each entry whose path is that name.
//!
//! Lines, as GNU coreutils writes and `sha256sum -c` reads them:
//! - `HEX  NAME` (text mode), `HEX *NAME` (binary mode), and `HEX NAME`
//!   (BSD `sha256 -r`): the algorithm is told by the number of digits;
//! - `ALGO (NAME) = HEX` (BSD tags: `MD5`, `SHA1`, `SHA256`, `SHA512`);
//! - either one after a `\`, whose NAME then has `\\`, `\n` and `\r`
//!   escaped (how coreutils writes a name holding those);
//! - blank lines and `#` comments are passed over; a CRLF ending is taken.
//!
//! A leading `./` of a name (and of a manifest path) is not part of it.
//! Anything else is an error naming `FILE:LINE`, before any request. The
//! table holds every line, 100 to 200 bytes each whatever the name's
//! length (see [`Sums`]); a line longer than 64 KiB is refused, so
//! `/dev/zero` is not read forever.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::{Algorithm, Checksum, Expected, Origin};

/// A line of a checksum file longer than this is an error.
const MAX_LINE: u64 = 64 * 1024;

/// What the checksum files say, by name.
///
/// Names are not kept: a name is known by its 64-bit hash under a key
/// drawn for each run (SipHash, as [`std::collections::HashMap`] uses),
/// which indexes its digests. Per line that costs a table slot (16 bytes,
/// at most half of the slots empty), a `Listed` (24 bytes) and the
/// digest's own bytes (16 to 64), with up to as much again unused while
/// the vectors grow: 100 to 200 bytes. Two names of one hash would share
/// their digests: a false mismatch (never a false match) or a refusal of
/// the file as listing a name twice, with a chance of about 2^-64 per pair
/// of names, and no file can be crafted to cause it.
#[derive(Debug, Default)]
pub struct Sums {
    files: Vec<Arc<str>>,
    key: RandomState,
    /// Name hash to the index in `listed` of the name's first digest.
    index: HashMap<u64, u32>,
    listed: Vec<Listed>,
    /// The digests' bytes, one after another.
    bytes: Vec<u8>,
}

/// One digest and the line that gave it.
#[derive(Debug, Clone, Copy)]
struct Listed {
    /// Where its bytes start in `Sums::bytes`.
    at: usize,
    line: u64,
    /// The next digest of the same name, if any (`u32::MAX`: none).
    next: u32,
    /// Index in `Sums::files`.
    file: u16,
    algorithm: Algorithm,
}

/// A checksum file that cannot be used: exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum SumsError {
    #[error("cannot read checksum file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}:{line}: {reason}")]
    Line { path: String, line: u64, reason: String },
}

/// A digest the line gives that contradicts one a checksum file gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub algorithm: Algorithm,
    pub listed: Origin,
}

impl Sums {
    /// Read every file, in order. A name given twice with the same
    /// algorithm must give the same digest.
    pub fn read(paths: &[PathBuf]) -> Result<Sums, SumsError> {
        let mut sums = Sums::default();
        for path in paths {
            let shown = crate::redact::path(path);
            let read_error = |source| SumsError::Read { path: shown.clone(), source };
            let file = std::fs::File::open(path).map_err(read_error)?;
            let index = u16::try_from(sums.files.len()).map_err(|_| SumsError::Read {
                path: shown.clone(),
                source: io::Error::other("more than 65,535 checksum files"),
            })?;
            sums.files.push(shown.as_str().into());
            sums.read_file(index, file).map_err(|e| match e {
                LineOrIo::Io(source) => SumsError::Read { path: shown.clone(), source },
                LineOrIo::Line(line, reason) => SumsError::Line { path: shown.clone(), line, reason },
            })?;
        }
        sums.listed.shrink_to_fit();
        sums.bytes.shrink_to_fit();
        Ok(sums)
    }

    fn read_file(&mut self, file: u16, reader: impl Read) -> Result<(), LineOrIo> {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut buf = Vec::with_capacity(256);
        let mut line = 0u64;
        loop {
            buf.clear();
            let n = (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut buf).map_err(LineOrIo::Io)?;
            if n == 0 {
                return Ok(());
            }
            line += 1;
            let at = |reason: String| LineOrIo::Line(line, reason);
            if buf.len() as u64 > MAX_LINE {
                return Err(at(format!("line is longer than {} KiB", MAX_LINE / 1024)));
            }
            let text = std::str::from_utf8(&buf).map_err(|_| at("line is not valid UTF-8".into()))?;
            let Some((checksum, name)) = parse_line(text).map_err(at)? else { continue };
            self.insert(normal(&name), checksum, file, line).map_err(at)?;
        }
    }

    fn insert(&mut self, name: &str, checksum: Checksum, file: u16, line: u64) -> Result<(), String> {
        let hash = self.key.hash_one(name);
        let first = self.index.get(&hash).copied();
        let algorithm = checksum.algorithm();
        if let Some(earlier) = self.chain(first).find(|&i| self.listed[i].algorithm == algorithm) {
            if self.checksum(earlier) == checksum {
                return Ok(());
            }
            return Err(format!("{name:?} has another {algorithm} at {}", self.origin(earlier)));
        }
        let index = u32::try_from(self.listed.len())
            .ok()
            .filter(|&i| i != u32::MAX)
            .ok_or("more than 4 billion lines in checksum files")?;
        let next = first.unwrap_or(u32::MAX);
        self.listed.push(Listed { at: self.bytes.len(), line, next, file, algorithm });
        self.bytes.extend_from_slice(checksum.as_bytes());
        self.index.insert(hash, index);
        Ok(())
    }

    /// The indices in `listed` of a name's digests, from its first.
    fn chain(&self, first: Option<u32>) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(first.map(|i| i as usize), |&i| {
            let next = self.listed[i].next;
            (next != u32::MAX).then_some(next as usize)
        })
    }

    fn checksum(&self, index: usize) -> Checksum {
        let Listed { at, algorithm, .. } = self.listed[index];
        let bytes = &self.bytes[at..at + algorithm.bytes()];
        Checksum::from_bytes(algorithm, bytes).expect("stored at its algorithm's length")
    }

    fn origin(&self, index: usize) -> Origin {
        let Listed { file, line, .. } = self.listed[index];
        let file = self.files.get(usize::from(file)).cloned().unwrap_or_else(|| "?".into());
        Origin::Listed { file, line }
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Add to `checksums` (an entry's own) what the files list for `path`.
    /// A digest of an algorithm the entry gives already must be the same
    /// one: two sources that disagree cannot both be right, and the entry
    /// is refused rather than downloaded to fail.
    pub fn merge(&self, path: &str, checksums: &mut Vec<Expected>) -> Result<(), Conflict> {
        if self.is_empty() {
            return Ok(());
        }
        let first = self.index.get(&self.key.hash_one(normal(path))).copied();
        for index in self.chain(first) {
            let listed = self.checksum(index);
            let algorithm = listed.algorithm();
            match checksums.iter().find(|e| e.checksum.algorithm() == algorithm) {
                Some(own) if own.checksum == listed => {}
                Some(_) => return Err(Conflict { algorithm, listed: self.origin(index) }),
                None => checksums.push(Expected { checksum: listed, origin: self.origin(index) }),
            }
        }
        Ok(())
    }
}

enum LineOrIo {
    Io(io::Error),
    Line(u64, String),
}

/// `name` without leading `./`: `sha256sum ./a` lists `./a`, a manifest
/// says `a`.
fn normal(name: &str) -> &str {
    let mut name = name;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest.trim_start_matches('/');
    }
    name
}

/// One line: its digest and name, `None` for a blank line or a comment.
fn parse_line(line: &str) -> Result<Option<(Checksum, String)>, String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (escaped, rest) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let first = rest.split(' ').next().unwrap_or_default();
    let (checksum, name) = if !first.is_empty() && first.bytes().all(|b| b.is_ascii_hexdigit()) {
        untagged(rest, first)?
    } else {
        tagged(rest)?
    };
    let name = if escaped { unescape(name)? } else { name.to_owned() };
    if name.is_empty() {
        return Err("no file name".into());
    }
    Ok(Some((checksum, name)))
}

/// `HEX  NAME`, `HEX *NAME`, `HEX NAME`.
fn untagged<'a>(line: &'a str, hex: &str) -> Result<(Checksum, &'a str), String> {
    let algorithm = Algorithm::from_hex_digits(hex.len()).ok_or_else(|| {
        format!(
            "a digest of {} hex digits is none of md5 (32), sha1 (40), sha256 (64), sha512 (128)",
            hex.len()
        )
    })?;
    let checksum = Checksum::parse(algorithm, hex).map_err(|e| e.to_string())?;
    let Some(name) = line[hex.len()..].strip_prefix(' ') else {
        return Err("expected two spaces or ' *' and a file name after the digest".into());
    };
    // The mode mark, as `sha256sum -c` reads it: ' ' text, '*' binary.
    let name = name.strip_prefix([' ', '*']).unwrap_or(name);
    Ok((checksum, name))
}

/// `ALGO (NAME) = HEX`. The name ends at the last `) = `.
fn tagged(line: &str) -> Result<(Checksum, &str), String> {
    let form = || "expected HEX  NAME or ALGO (NAME) = HEX".to_owned();
    let (tag, rest) = line.split_once(" (").ok_or_else(form)?;
    let (name, hex) = rest.rsplit_once(") = ").ok_or_else(form)?;
    if tag.is_empty() || tag.contains(' ') {
        return Err(form());
    }
    let algorithm = Algorithm::from_tag(tag).ok_or_else(|| {
        let tag: String = tag.chars().take(20).collect();
        format!("unsupported algorithm {tag:?}: MD5, SHA1, SHA256 and SHA512 are")
    })?;
    Ok((Checksum::parse(algorithm, hex).map_err(|e| e.to_string())?, name))
}

/// A name after a leading `\`: `\\` is `\`, `\n` a newline, `\r` a CR.
fn unescape(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => return Err(format!("unknown escape \\{} in an escaped name", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// Read checksum text as if from a file named `name`: for tests.
#[cfg(test)]
fn from_text(text: &str) -> Result<Sums, SumsError> {
    let mut sums = Sums { files: vec!["SUMS".into()], ..Sums::default() };
    sums.read_file(0, text.as_bytes()).map_err(|e| match e {
        LineOrIo::Io(source) => SumsError::Read { path: "SUMS".into(), source },
        LineOrIo::Line(line, reason) => SumsError::Line { path: "SUMS".into(), line, reason },
    })?;
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD5: &str = "900150983cd24fb0d6963f7d28e17f72";
    const SHA1: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn listed(sums: &Sums, path: &str) -> Vec<String> {
        let mut checksums = Vec::new();
        sums.merge(path, &mut checksums).unwrap();
        checksums.iter().map(|e| format!("{:?} {}", e.checksum, e.origin)).collect()
    }

    #[test]
    fn each_line_form_gives_its_digest_and_name() {
        let sha512 = "cd".repeat(64);
        let text = format!(
            "{SHA256}  text.txt\n\
             {SHA1} *binary.bin\r\n\
             {MD5} bsd-reversed\n\
             \n# a comment\n\
             SHA512 (tagged (1).iso) = {sha512}\n\
             \\{SHA256}  back\\\\slash\\nnewline\n\
             {SHA256}  ./dotted\n\
             {}  name with  spaces \n",
            SHA256.to_uppercase()
        );
        let sums = from_text(&text).unwrap();
        assert_eq!(listed(&sums, "text.txt"), [format!("sha256:{SHA256} SUMS:1")]);
        assert_eq!(listed(&sums, "binary.bin"), [format!("sha1:{SHA1} SUMS:2")]);
        assert_eq!(listed(&sums, "bsd-reversed"), [format!("md5:{MD5} SUMS:3")]);
        assert_eq!(listed(&sums, "tagged (1).iso"), [format!("sha512:{sha512} SUMS:6")]);
        assert_eq!(listed(&sums, "back\\slash\nnewline"), [format!("sha256:{SHA256} SUMS:7")]);
        assert_eq!(listed(&sums, "dotted"), [format!("sha256:{SHA256} SUMS:8")]);
        assert_eq!(listed(&sums, "./dotted"), listed(&sums, "dotted"));
        assert_eq!(listed(&sums, "name with  spaces "), [format!("sha256:{SHA256} SUMS:9")]);
        assert!(listed(&sums, "unlisted").is_empty());
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let cases = [
            ("abc  x", "none of md5"),
            (&format!("{SHA256}x  x"), "expected HEX  NAME"),
            (SHA256, "expected two spaces"),
            (&format!("{SHA256}  "), "no file name"),
            (&format!("SHA384 (x) = {SHA256}"), "unsupported algorithm \"SHA384\""),
            (&format!("SHA256 (x) = {MD5}"), "invalid sha256"),
            (&format!("SHA256 x = {SHA256}"), "expected HEX  NAME"),
            (&format!("\\{SHA256}  a\\tb"), "unknown escape \\t"),
            ("just words", "expected HEX  NAME"),
        ];
        for (line, want) in cases {
            let text = format!("{MD5}  fine\n{line}\n");
            let error = from_text(&text).unwrap_err().to_string();
            assert!(error.starts_with("SUMS:2: ") && error.contains(want), "{line:?}: {error}");
        }
        let long = format!("{SHA256}  {}\n", "n".repeat(70_000));
        let error = from_text(&long).unwrap_err().to_string();
        assert!(error.starts_with("SUMS:1: line is longer than 64 KiB"), "{error}");
        let error = from_text("\u{0}\u{ff}").map(|_| ()).unwrap_err().to_string();
        assert!(error.starts_with("SUMS:1:"), "{error}");
        let not_utf8 = Sums::default().read_file(0, &b"\xff\xfe  x\n"[..]);
        assert!(matches!(not_utf8, Err(LineOrIo::Line(1, _))));
    }

    #[test]
    fn a_name_given_again_must_agree_and_may_add_another_algorithm() {
        let sums = from_text(&format!("{SHA256}  a\n{SHA256}  ./a\n{MD5}  a\n")).unwrap();
        assert_eq!(listed(&sums, "a"), [format!("md5:{MD5} SUMS:3"), format!("sha256:{SHA256} SUMS:1")]);
        let error = from_text(&format!("{SHA256}  a\n{}  a\n", "0".repeat(64))).unwrap_err();
        assert_eq!(error.to_string(), "SUMS:2: \"a\" has another sha256 at SUMS:1");
    }

    #[test]
    fn a_line_and_a_file_that_disagree_are_a_conflict() {
        let sums = from_text(&format!("{SHA256}  a\n{MD5}  a\n")).unwrap();
        let own = |hex: &str| Expected {
            checksum: Checksum::parse(Algorithm::Sha256, hex).unwrap(),
            origin: Origin::Manifest,
        };
        let mut same = vec![own(SHA256)];
        sums.merge("a", &mut same).unwrap();
        assert_eq!(same.len(), 2, "the same sha256 once, and the md5");
        assert_eq!(same[0].origin, Origin::Manifest);
        let mut other = vec![own(&"0".repeat(64))];
        let conflict = sums.merge("./a", &mut other).unwrap_err();
        assert_eq!(
            conflict,
            Conflict {
                algorithm: Algorithm::Sha256,
                listed: Origin::Listed { file: "SUMS".into(), line: 1 }
            }
        );
    }
}
