//! The manifest: lines in, [`Entry`]s or located errors out, streamed.
//!
//! A reader thread parses each source in order and sends items through a
//! bounded channel, so downloading starts with the first line and memory is
//! bounded by the channel and the dispatcher, never by the manifest's length.
//! Every item carries its [`Location`] (`MANIFEST:LINE`, lines counted from 1
//! including comments and blank lines) so errors can name it.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::dest::{self, DestError, Rules};
use crate::shard::Shard;

/// A manifest line longer than this is refused rather than buffered.
const MAX_LINE: usize = 64 * 1024;

/// Where a manifest line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub source: Arc<str>,
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// One download the manifest asks for.
#[derive(Debug)]
pub struct Entry {
    pub url: Url,
    /// The destination as the manifest gives it or as derived from the URL,
    /// before joining `--dir`: the key for `--shard`.
    pub path: String,
    /// The resolved destination.
    pub dest: PathBuf,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
    pub headers: HeaderMap,
    pub location: Location,
}

/// What the reader sends: an entry, or a line that could not be one.
#[derive(Debug)]
pub enum Item {
    Entry(Box<Entry>),
    Invalid {
        location: Location,
        error: LineError,
    },
    /// A source that failed while being read; the run ends with exit 2.
    ReadFailed {
        source: Arc<str>,
        error: io::Error,
    },
}

/// Why a manifest line is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("unsupported URL scheme {0:?}: only http and https are accepted")]
    Scheme(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid sha256 {0:?}: expected 64 hex digits")]
    Sha256(String),
    #[error("invalid header {name:?}: {reason}")]
    Header { name: String, reason: &'static str },
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("line is longer than {MAX_LINE} bytes")]
    TooLong,
}

/// A manifest source, opened before the run starts so that a missing file
/// is a usage error (exit 2) rather than a surprise halfway through.
pub struct Source {
    pub name: Arc<str>,
    /// The file, for a second pass that counts entries; `None` for stdin.
    pub path: Option<PathBuf>,
    pub reader: Box<dyn Read + Send>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

impl Source {
    pub fn stdin() -> Self {
        Source { name: "<stdin>".into(), path: None, reader: Box::new(io::stdin()) }
    }

    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        Ok(Source {
            name: path.display().to_string().into(),
            path: Some(path.to_owned()),
            reader: Box::new(file),
        })
    }
}

/// How lines become items: destination rules and the shard filter.
#[derive(Debug, Clone)]
pub struct Reader {
    pub rules: Rules,
    pub shard: Option<Shard>,
}

impl Reader {
    /// Read every source in order on the calling (blocking) thread, sending
    /// items in batches until the receiver goes away. A batch goes out when
    /// it is full or when the next line is not read yet, so that a slow
    /// pipe's lines are not held back.
    pub fn read_all(&self, sources: Vec<Source>, tx: &mpsc::Sender<Vec<Item>>) {
        let mut batch = Batcher { tx, items: Vec::with_capacity(BATCH) };
        for source in sources {
            let name = source.name.clone();
            match self.read_source(&name, source.reader, &mut batch) {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    if !batch.item(Item::ReadFailed { source: name, error }) {
                        return;
                    }
                }
            }
        }
        batch.flush();
    }

    /// How many items (entries and invalid lines, in this shard) the files
    /// hold: the total for the progress display.
    pub fn count(&self, paths: &[PathBuf]) -> io::Result<u64> {
        let mut total = Counter(0);
        for path in paths {
            let name: Arc<str> = path.display().to_string().into();
            self.read_source(&name, Box::new(File::open(path)?), &mut total)?;
        }
        Ok(total.0)
    }

    /// Parse one source, giving each item to `sink` until it returns false
    /// (then `Ok(false)`).
    fn read_source(
        &self,
        name: &Arc<str>,
        reader: Box<dyn Read + Send>,
        sink: &mut dyn Sink,
    ) -> io::Result<bool> {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut buf = Vec::with_capacity(256);
        let mut line_no = 0u64;
        loop {
            buf.clear();
            if !reader.buffer().contains(&b'\n') && !sink.flush() {
                // The next line needs a read, which may wait.
                return Ok(false);
            }
            let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(true);
            }
            line_no += 1;
            let (parsed, text) = if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
                // Skip the rest of the overlong line.
                let mut sink = Vec::new();
                reader.read_until(b'\n', &mut sink)?;
                (Err(LineError::TooLong), "")
            } else {
                match std::str::from_utf8(&buf) {
                    Ok(text) => (parse_line(text, &self.rules), text),
                    Err(_) => (Err(LineError::NotUtf8), ""),
                }
            };
            let location = || Location { source: name.clone(), line: line_no };
            let item = match parsed {
                Ok(None) => continue,
                Ok(Some(spec)) if self.shard.is_some_and(|s| !s.contains(&spec.path)) => continue,
                Ok(Some(spec)) => Item::Entry(Box::new(spec.into_entry(location()))),
                Err(_) if self.shard.is_some_and(|s| !s.contains(shard_key(text))) => continue,
                Err(error) => Item::Invalid { location: location(), error },
            };
            if !sink.item(item) {
                return Ok(false);
            }
        }
    }
}

/// Items in one message from the reader thread: one wakeup of the
/// dispatcher for many lines.
const BATCH: usize = 128;

/// Where [`Reader::read_source`] puts what it parses; `false` stops it.
trait Sink {
    fn item(&mut self, item: Item) -> bool;
    /// Deliver what is held back: the next line may be long in coming.
    fn flush(&mut self) -> bool;
}

struct Batcher<'a> {
    tx: &'a mpsc::Sender<Vec<Item>>,
    items: Vec<Item>,
}

impl Sink for Batcher<'_> {
    fn item(&mut self, item: Item) -> bool {
        self.items.push(item);
        self.items.len() < BATCH || self.flush()
    }

    fn flush(&mut self) -> bool {
        if self.items.is_empty() {
            return true;
        }
        let items = std::mem::replace(&mut self.items, Vec::with_capacity(BATCH));
        self.tx.blocking_send(items).is_ok()
    }
}

struct Counter(u64);

impl Sink for Counter {
    fn item(&mut self, _: Item) -> bool {
        self.0 += 1;
        true
    }

    fn flush(&mut self) -> bool {
        true
    }
}

/// What an invalid line is sharded by, so every line, valid or not, is
/// handled by exactly one shard: its path when the line has one in text
/// form (`URL PATH`), else the whole line.
fn shard_key(line: &str) -> &str {
    let line = line.trim();
    match line.split_once(char::is_whitespace) {
        Some((_, path)) if !line.starts_with('{') => path.trim(),
        _ => line,
    }
}

/// A parsed line before it is given its location.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    pub url: Url,
    pub path: String,
    pub dest: PathBuf,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Spec {
    fn into_entry(self, location: Location) -> Entry {
        Entry {
            url: self.url,
            path: self.path,
            dest: self.dest,
            size: self.size,
            sha256: self.sha256,
            headers: self.headers.into_iter().collect(),
            location,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    url: String,
    path: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    #[serde(default)]
    headers: HeaderFields,
}

/// A line's `headers` in the order given, none dropped: a name given twice
/// (`x-a` and `X-A`, or the same key twice, which a map would keep one of)
/// is refused rather than sent twice or silently lost.
#[derive(Default)]
struct HeaderFields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = HeaderFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names and values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<HeaderFields, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(HeaderFields(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Parse one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str, rules: &Rules) -> Result<Option<Spec>, LineError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (url, path, size, sha256, headers) = if line.starts_with('{') {
        let json: JsonLine = serde_json::from_str(line).map_err(|e| LineError::Json(e.to_string()))?;
        let sha256 = json.sha256.as_deref().map(parse_sha256).transpose()?;
        let headers: Vec<_> = json
            .headers
            .0
            .into_iter()
            .map(|(name, value)| parse_header(name, &value))
            .collect::<Result<_, _>>()?;
        let mut seen = HashSet::new();
        if let Some((name, _)) = headers.iter().find(|(name, _)| !seen.insert(name)) {
            return Err(LineError::Header { name: name.to_string(), reason: "given more than once" });
        }
        (parse_url(&json.url)?, json.path, json.size, sha256, headers)
    } else {
        let (url, rest) = match line.split_once(char::is_whitespace) {
            Some((url, rest)) => (url, Some(rest.trim().to_owned())),
            None => (line, None),
        };
        (parse_url(url)?, rest, None, None, Vec::new())
    };
    let path = match path {
        Some(path) => path,
        None => dest::name_from_url(&url)?,
    };
    let dest = rules.resolve(&path)?;
    Ok(Some(Spec { url, path, dest, size, sha256, headers }))
}

fn parse_url(text: &str) -> Result<Url, LineError> {
    let url = Url::parse(text)
        .map_err(|e| LineError::BadUrl { url: crate::redact::url_str(text), reason: e.to_string() })?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(LineError::Scheme(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(LineError::BadUrl { url: crate::redact::url_str(text), reason: "no host".into() });
    }
    Ok(url)
}

fn parse_sha256(hex: &str) -> Result<[u8; 32], LineError> {
    let bad = || LineError::Sha256(hex.to_owned());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn parse_header(name: String, value: &str) -> Result<(HeaderName, HeaderValue), LineError> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| LineError::Header { name: name.clone(), reason: "not a valid header name" })?;
    let mut header_value = HeaderValue::from_str(value)
        .map_err(|_| LineError::Header { name, reason: "value has characters not allowed in HTTP" })?;
    header_value.set_sensitive(true);
    Ok((header_name, header_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(".".into(), false, Vec::new()).unwrap()
    }

    fn parse(line: &str) -> Result<Option<Spec>, LineError> {
        parse_line(line, &rules())
    }

    #[test]
    fn line_forms() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t "), Ok(None));
        assert_eq!(parse("  # comment http://x/y"), Ok(None));

        let s = parse("http://h/a/b.bin  out dir/my file.bin  \n").unwrap().unwrap();
        assert_eq!(s.url.as_str(), "http://h/a/b.bin");
        assert_eq!(s.path, "out dir/my file.bin");

        let s = parse("https://h/a/b%20c.bin").unwrap().unwrap();
        assert_eq!((s.path.as_str(), s.dest.to_str().unwrap()), ("b c.bin", "b c.bin"));

        let s = parse(r#"{"url": "http://h/x", "path": "p/q", "size": 3, "sha256": "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", "headers": {"X-A": "1"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.path, "p/q");
        assert_eq!(s.size, Some(3));
        assert_eq!(s.sha256.unwrap()[..2], [0xba, 0x78]);
        assert_eq!(s.headers[0].0.as_str(), "x-a");

        let s = parse(r#"{"url": "http://h/dir/name.txt"}"#).unwrap().unwrap();
        assert_eq!(s.path, "name.txt");
    }

    #[test]
    fn invalid_lines() {
        type Check = fn(&LineError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("not a url", |e| matches!(e, LineError::BadUrl { .. })),
            ("ftp://h/file", |e| matches!(e, LineError::Scheme(s) if s == "ftp")),
            ("file:///etc/passwd x", |e| matches!(e, LineError::Scheme(_))),
            ("http://h/", |e| matches!(e, LineError::Dest(DestError::NoNameInUrl))),
            ("http://h/a ../../etc/x", |e| matches!(e, LineError::Dest(DestError::Escapes(_)))),
            ("http://h/a /etc/x", |e| matches!(e, LineError::Dest(DestError::Absolute(_)))),
            ("{\"url\": ", |e| matches!(e, LineError::Json(_))),
            (
                r#"{"url": "http://h/a", "bogus": 1}"#,
                |e| matches!(e, LineError::Json(m) if m.contains("bogus")),
            ),
            (r#"{"path": "a"}"#, |e| matches!(e, LineError::Json(m) if m.contains("url"))),
            (r#"{"url": "http://h/a", "sha256": "abc"}"#, |e| matches!(e, LineError::Sha256(_))),
            (r#"{"url": "http://h/a", "headers": {"Bad Name": "v"}}"#, |e| {
                matches!(e, LineError::Header { .. })
            }),
            (r#"{"url": "http://h/a", "size": -1}"#, |e| matches!(e, LineError::Json(_))),
        ];
        for (line, check) in cases {
            let err = parse(line).expect_err(line);
            assert!(check(&err), "{line:?} gave {err:?}");
        }
    }

    #[test]
    fn bad_url_error_hides_password() {
        let err = parse("http://user:hunter2@[bad/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn reader_locates_lines_and_streams_all_sources() {
        let text = b"# header\n\nhttp://h/a\nftp://h/b\n\xff\xfe\nhttp://h/c\n";
        let sources = vec![
            Source { name: "m1".into(), path: None, reader: Box::new(io::Cursor::new(text.to_vec())) },
            Source {
                name: "m2".into(),
                path: None,
                reader: Box::new(io::Cursor::new(b"http://h/d".to_vec())),
            },
        ];
        let (tx, mut rx) = mpsc::channel(16);
        Reader { rules: rules(), shard: None }.read_all(sources, &tx);
        drop(tx);
        let mut seen = Vec::new();
        while let Ok(items) = rx.try_recv() {
            seen.extend(items.into_iter().map(|item| match item {
                Item::Entry(e) => format!("{} ok {}", e.location, e.path),
                Item::Invalid { location, .. } => format!("{location} invalid"),
                Item::ReadFailed { .. } => "read failed".into(),
            }));
        }
        assert_eq!(seen, ["m1:3 ok a", "m1:4 invalid", "m1:5 invalid", "m1:6 ok c", "m2:1 ok d"]);
    }
}
