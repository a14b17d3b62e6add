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
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

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
    /// Not quoted: what is not a header name may be a secret.
    #[error("invalid header name: a token without spaces or ':'")]
    HeaderName,
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error(
        "ambiguous line: the URL ends at the first space ({url}), so the path would be {path:?}, \
         which holds a wider gap: if the URL has a space, write it as %20, or use the JSON form"
    )]
    AmbiguousSplit { url: String, path: String },
    #[error(
        "destination {} is also given by {} with another URL",
        dest.display(),
        earlier.as_ref().map_or_else(|| "an earlier line".to_owned(), Location::to_string)
    )]
    SameDestination { dest: PathBuf, earlier: Option<Location> },
}

/// A manifest source, opened before the run starts so that a missing file
/// is a usage error (exit 2) rather than a surprise halfway through.
pub struct Source {
    pub name: Arc<str>,
    pub reader: Box<dyn Read + Send>,
    /// The same open file when it is a regular one, and where reading
    /// starts: what [`Source::recount`] reads. Never the path: opened again,
    /// a FIFO or `/dev/fd/N` would hand the second reader lines the first
    /// one then never sees.
    regular: Option<(Arc<File>, u64)>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

impl Source {
    pub fn stdin() -> Self {
        // A duplicate of the descriptor, only ever read with pread: it
        // shares the offset that `io::stdin()` reads at.
        let regular = io::stdin().as_fd().try_clone_to_owned().ok().map(File::from).and_then(regular_at);
        Source { name: "<stdin>".into(), reader: Box::new(io::stdin()), regular }
    }

    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        let file = Arc::new(file);
        let regular = file.metadata()?.is_file().then(|| (file.clone(), 0));
        Ok(Source { name: path.display().to_string().into(), reader: Box::new(file), regular })
    }

    /// A source that is only a stream: never counted ahead.
    pub fn stream(name: &str, reader: Box<dyn Read + Send>) -> Self {
        Source { name: name.into(), reader, regular: None }
    }

    /// A second reader of a regular file's bytes, from where the source
    /// starts, that does not move the source's offset; `None` for anything
    /// else (pipe, FIFO, socket, terminal, device), which cannot be read twice.
    pub fn recount(&self) -> Option<Recount> {
        let (file, start) = self.regular.as_ref()?;
        Some(Recount { name: self.name.clone(), file: file.clone(), offset: *start })
    }
}

/// `Some` when `file` is a regular file, with its current offset.
fn regular_at(file: File) -> Option<(Arc<File>, u64)> {
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let offset = (&file).stream_position().ok()?;
    Some((Arc::new(file), offset))
}

/// Reads a regular manifest file with positional reads (`pread`), so that
/// counting it never takes bytes from the reader that parses it.
#[derive(Debug)]
pub struct Recount {
    name: Arc<str>,
    file: Arc<File>,
    offset: u64,
}

impl Read for Recount {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// How lines become items: destination rules and the shard filter.
/// Clones share the `Tally` of the count ahead.
#[derive(Debug, Clone)]
pub struct Reader {
    pub rules: Rules,
    pub shard: Option<Shard>,
    tally: Arc<Tally>,
}

/// The count ahead, per source, for the reader to check its own against
/// when it is done: a regular file rewritten or appended to while it is
/// read would otherwise end the run as if every line had been seen.
#[derive(Debug, Default)]
struct Tally {
    count: Mutex<Count>,
    done: Condvar,
}

#[derive(Debug, Default)]
enum Count {
    #[default]
    NotAsked,
    Pending,
    Done(Vec<(Arc<str>, u64)>),
    Failed,
}

impl Reader {
    pub fn new(rules: Rules, shard: Option<Shard>) -> Self {
        Reader { rules, shard, tally: Arc::default() }
    }

    /// Read every source in order on the calling (blocking) thread, sending
    /// items in batches until the receiver goes away. A batch goes out when
    /// it is full or when the next line is not read yet, so that a slow
    /// pipe's lines are not held back.
    ///
    /// Every line read becomes an item or is deliberately passed over
    /// (blank, comment, another shard's); a source that cannot be read to
    /// its end, or a reader that fails, ends with [`Item::ReadFailed`], so a
    /// run never mistakes a lost tail for the end of the manifest.
    /// A source whose count ahead (see [`Reader::spawn_count`]) differs
    /// from what was read ends with `ReadFailed` too.
    pub fn read_all(&self, sources: Vec<Source>, tx: &mpsc::Sender<Vec<Item>>) {
        let mut batch = Batcher { tx, items: Vec::with_capacity(BATCH), sent: 0 };
        let mut seen = Seen::new();
        let mut tally = Some(Vec::with_capacity(sources.len()));
        for source in sources {
            let name = source.name.clone();
            let before = batch.sent;
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.read_source(&name, source.reader, &mut batch, Some(&mut seen))
            }));
            let error = match read {
                Ok(Ok(true)) => {
                    if let Some(tally) = &mut tally {
                        tally.push((name, batch.sent - before));
                    }
                    continue;
                }
                Ok(Ok(false)) => return,
                Ok(Err(error)) => error,
                // The panic message is already on stderr.
                Err(_) => io::Error::other("the manifest reader failed"),
            };
            // Already a failure of the run: no count to compare.
            tally = None;
            if !batch.item(Item::ReadFailed { source: name, error }) {
                return;
            }
        }
        if !batch.flush() {
            return;
        }
        if let Some((source, counted, read)) = tally.and_then(|tally| self.tally.disagreement(&tally)) {
            let error = io::Error::other(format!(
                "it changed while being read: {counted} entries counted ahead, {read} read"
            ));
            batch.item(Item::ReadFailed { source, error });
            batch.flush();
        }
    }

    /// Count, on a thread of its own, the items (entries and invalid lines,
    /// in this shard) that regular files hold, and give the total to
    /// `total`: the progress display's. The reader compares its own tally
    /// with this count when done, and waits for it if need be.
    pub fn spawn_count(&self, sources: Vec<Recount>, total: impl FnOnce(u64) + Send + 'static) {
        *self.tally.count.lock().unwrap_or_else(PoisonError::into_inner) = Count::Pending;
        let reader = self.clone();
        let spawned = std::thread::Builder::new().name("manifest count".into()).spawn(move || {
            let counted = reader.count(sources);
            let sum = counted.as_ref().ok().map(|counts| counts.iter().map(|(_, n)| n).sum());
            *reader.tally.count.lock().unwrap_or_else(PoisonError::into_inner) = match counted {
                Ok(counts) => Count::Done(counts),
                Err(_) => Count::Failed,
            };
            reader.tally.done.notify_all();
            if let Some(sum) = sum {
                total(sum);
            }
        });
        if spawned.is_err() {
            // No count: no total on the bars, nothing to compare.
            *self.tally.count.lock().unwrap_or_else(PoisonError::into_inner) = Count::Failed;
        }
    }

    fn count(&self, sources: Vec<Recount>) -> io::Result<Vec<(Arc<str>, u64)>> {
        let mut counter = Counter(0);
        let mut counts = Vec::with_capacity(sources.len());
        for source in sources {
            let name = source.name.clone();
            let before = counter.0;
            self.read_source(&name, Box::new(source), &mut counter, None)?;
            counts.push((name, counter.0 - before));
        }
        Ok(counts)
    }

    /// Parse one source, giving each item to `sink` until it returns false
    /// (then `Ok(false)`). With `seen`, a destination given again with
    /// another URL makes the later line invalid.
    fn read_source(
        &self,
        name: &Arc<str>,
        reader: Box<dyn Read + Send>,
        sink: &mut dyn Sink,
        mut seen: Option<&mut Seen>,
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
            let too_long = buf.len() > MAX_LINE && buf.last() != Some(&b'\n');
            if too_long {
                skip_line(&mut reader)?;
            }
            let mut line = &buf[..];
            if line_no == 1 {
                // A byte-order mark, as some Windows editors write.
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            let (parsed, text) = match std::str::from_utf8(line) {
                // A comment may be as long as it likes.
                _ if too_long && line.trim_ascii_start().starts_with(b"#") => (Ok(None), ""),
                _ if too_long => (Err(LineError::TooLong), ""),
                Ok(text) => (parse_line(text, &self.rules), text),
                Err(_) => (Err(LineError::NotUtf8), ""),
            };
            let location = || Location { source: name.clone(), line: line_no };
            let item = match parsed {
                Ok(None) => continue,
                Ok(Some(spec)) if self.shard.is_some_and(|s| !s.contains(&spec.path)) => continue,
                Ok(Some(spec)) => match seen.as_deref_mut().and_then(|seen| seen.insert(&spec, location())) {
                    Some(earlier) => Item::Invalid {
                        location: location(),
                        error: LineError::SameDestination { dest: spec.dest, earlier },
                    },
                    None => Item::Entry(Box::new(spec.into_entry(location()))),
                },
                Err(_) if self.shard.is_some_and(|s| !s.contains(shard_key(text))) => continue,
                Err(error) => Item::Invalid { location: location(), error },
            };
            if !sink.item(item) {
                return Ok(false);
            }
        }
    }
}

/// Pass over the rest of a line (through its newline) without holding it:
/// memory stays at the reader's buffer however long the line.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
}

/// Destinations given earlier in the run and their URLs, to refuse a line
/// that gives a destination again with another URL: one of the two
/// downloads would be silently lost.
///
/// A fixed table (2^16 slots, 1.5 MiB at most, pages touched as used), so
/// memory does not grow with the manifest: each slot holds the 64-bit hashes
/// of a destination and of its URL, and the line that gave them. A new
/// destination takes its slot over, so the table remembers about the last
/// 65,536 distinct destinations; a repeat further back goes unreported (and
/// the download stage still keeps the two from writing the file together).
/// A report needs the full 64-bit destination hashes to match under a key
/// drawn at random for each run (SipHash): the chance that a line is wrongly
/// refused is about 2^-64, and no manifest can be crafted to cause it.
/// The same URL twice for one destination is harmless (the second is skipped
/// as already downloaded) and is not reported.
struct Seen {
    hasher: RandomState,
    dests: Box<[u64]>,
    urls: Box<[u64]>,
    /// Index into `sources` (high 16 bits) and line number (low 48 bits);
    /// 0 when they do not fit.
    places: Box<[u64]>,
    sources: Vec<Arc<str>>,
}

const SEEN_SLOTS: usize = 1 << 16;

impl Seen {
    fn new() -> Self {
        // Zeroed allocations: the kernel maps pages as they are first used.
        Seen {
            hasher: RandomState::new(),
            dests: vec![0; SEEN_SLOTS].into_boxed_slice(),
            urls: vec![0; SEEN_SLOTS].into_boxed_slice(),
            places: vec![0; SEEN_SLOTS].into_boxed_slice(),
            sources: Vec::new(),
        }
    }

    /// Record `spec`'s destination; if an earlier line gave it with another
    /// URL, return where (`None` inside when that is not known).
    fn insert(&mut self, spec: &Spec, location: Location) -> Option<Option<Location>> {
        // 0 marks an empty slot.
        let dest = self.hasher.hash_one(spec.dest.as_os_str().as_encoded_bytes()).max(1);
        // The fragment is never sent: `#a` and `#b` request the same bytes.
        let url = self.hasher.hash_one(spec.url.as_str().split('#').next());
        let slot = (dest >> 48) as usize % SEEN_SLOTS;
        if self.dests[slot] == dest {
            return (self.urls[slot] != url).then(|| self.place(self.places[slot]));
        }
        self.dests[slot] = dest;
        self.urls[slot] = url;
        self.places[slot] = self.pack(location);
        None
    }

    fn pack(&mut self, location: Location) -> u64 {
        let index = match self.sources.iter().position(|s| Arc::ptr_eq(s, &location.source)) {
            Some(index) => index,
            None => {
                self.sources.push(location.source);
                self.sources.len() - 1
            }
        };
        if index >= 1 << 16 || location.line >= 1 << 48 {
            return 0;
        }
        (index as u64) << 48 | location.line
    }

    fn place(&self, packed: u64) -> Option<Location> {
        let line = packed & ((1 << 48) - 1);
        let source = self.sources.get((packed >> 48) as usize)?;
        (line > 0).then(|| Location { source: source.clone(), line })
    }
}

/// Items in one message from the reader thread: one wakeup of the
/// dispatcher for many lines.
const BATCH: usize = 128;

impl Tally {
    /// Wait for a count under way; the first source whose count differs
    /// from `read`, with both numbers.
    fn disagreement(&self, read: &[(Arc<str>, u64)]) -> Option<(Arc<str>, u64, u64)> {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        while matches!(*count, Count::Pending) {
            count = self.done.wait(count).unwrap_or_else(PoisonError::into_inner);
        }
        let Count::Done(counted) = &*count else {
            return None;
        };
        counted
            .iter()
            .zip(read)
            .find(|((_, c), (_, r))| c != r)
            .map(|((name, c), (_, r))| (name.clone(), *c, *r))
    }
}

/// Where [`Reader::read_source`] puts what it parses; `false` stops it.
trait Sink {
    fn item(&mut self, item: Item) -> bool;
    /// Deliver what is held back: the next line may be long in coming.
    fn flush(&mut self) -> bool;
}

struct Batcher<'a> {
    tx: &'a mpsc::Sender<Vec<Item>>,
    items: Vec<Item>,
    /// Items given so far, sent or not.
    sent: u64,
}

impl Sink for Batcher<'_> {
    fn item(&mut self, item: Item) -> bool {
        self.sent += 1;
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
        let json: JsonLine = serde_json::from_str(line)
            .map_err(|e| LineError::Json(crate::redact::json_error(&e.to_string())))?;
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
        let (url, path) = split_plain(line)?;
        (parse_url(url)?, path.map(str::to_owned), None, None, Vec::new())
    };
    let path = match path {
        Some(path) => path,
        None => dest::name_from_url(&url)?,
    };
    let dest = rules.resolve(&path)?;
    Ok(Some(Spec { url, path, dest, size, sha256, headers }))
}

/// Split a trimmed plain line into `URL` and `PATH`: the URL ends at the
/// first whitespace and the path is the rest, so it may hold spaces. A path
/// holding a gap wider than the one before it (more spaces, or a tab where
/// the gap has none) is refused: that is what a URL with a literal space
/// looks like (`http://h/a b.txt  b.txt`), and it would silently request
/// the wrong URL.
fn split_plain(line: &str) -> Result<(&str, Option<&str>), LineError> {
    let Some(end) = line.find(char::is_whitespace) else {
        return Ok((line, None));
    };
    let (url, rest) = line.split_at(end);
    let path = rest.trim_start();
    let gap = gap_width(&rest[..rest.len() - path.len()]);
    let mut gaps = path.split(|c: char| !c.is_whitespace()).filter(|g| !g.is_empty());
    if gaps.any(|inner| gap_width(inner) > gap) {
        return Err(LineError::AmbiguousSplit { url: crate::redact::url_str(url), path: path.to_owned() });
    }
    Ok((url, Some(path)))
}

/// How wide a run of whitespace looks: any tab beats any number of spaces.
fn gap_width(gap: &str) -> (bool, usize) {
    (gap.contains('\t'), gap.chars().count())
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
    // Digits only: `from_str_radix` would also take a sign ("+0").
    let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bad = || LineError::Sha256(hex.to_owned());
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = digit(pair[0]).ok_or_else(bad)? << 4 | digit(pair[1]).ok_or_else(bad)?;
    }
    Ok(out)
}

fn parse_header(name: String, value: &str) -> Result<(HeaderName, HeaderValue), LineError> {
    let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| LineError::HeaderName)?;
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
                matches!(e, LineError::HeaderName)
            }),
            (r#"{"url": "http://h/a", "size": -1}"#, |e| matches!(e, LineError::Json(_))),
        ];
        for (line, check) in cases {
            let err = parse(line).expect_err(line);
            assert!(check(&err), "{line:?} gave {err:?}");
        }
    }

    #[test]
    fn sha256_is_exactly_64_hex_digits() {
        let good = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015ad";
        assert_eq!(parse_sha256(good).unwrap()[..2], [0xba, 0x78]);
        assert_eq!(parse_sha256(&"0".repeat(64)), Ok([0; 32]));
        let bad = [
            "+0".repeat(32),
            "-0".repeat(32),
            " 0".repeat(32),
            "0 ".repeat(32),
            format!("0x{}", "0".repeat(62)),
            "0".repeat(63),
            "0".repeat(65),
            format!("{}g", "0".repeat(63)),
            format!("{}é", "0".repeat(62)),
            String::new(),
        ];
        for hex in bad {
            assert_eq!(parse_sha256(&hex), Err(LineError::Sha256(hex.clone())), "{hex:?}");
        }
    }

    #[test]
    fn size_is_a_plain_json_integer() {
        let size = |text: &str| {
            parse(&format!(r#"{{"url": "http://h/a", "size": {text}}}"#)).map(|s| s.unwrap().size)
        };
        assert_eq!(size("5"), Ok(Some(5)));
        assert_eq!(size(" 5 "), Ok(Some(5)), "JSON allows whitespace around a value");
        assert_eq!(size("0"), Ok(Some(0)));
        assert_eq!(size("18446744073709551615"), Ok(Some(u64::MAX)));
        for bad in ["+5", "-0", "-1", "5.0", "1e3", "\"5\"", "05", "0x5", "18446744073709551616", "null5"] {
            assert!(matches!(size(bad), Err(LineError::Json(_))), "{bad:?} gave {:?}", size(bad));
        }
    }

    #[test]
    fn plain_lines_split_at_the_first_gap_unless_a_wider_one_follows() {
        let split =
            |line: &str| split_plain(line).map(|(url, path)| (url.to_owned(), path.map(str::to_owned)));
        let ok = |url: &str, path: Option<&str>| Ok((url.to_owned(), path.map(str::to_owned)));
        assert_eq!(split("http://h/a"), ok("http://h/a", None));
        assert_eq!(split("http://h/a b"), ok("http://h/a", Some("b")));
        assert_eq!(split("http://h/a my file.txt"), ok("http://h/a", Some("my file.txt")));
        assert_eq!(
            split("http://h/a    rfc/HTTP Semantics.txt"),
            ok("http://h/a", Some("rfc/HTTP Semantics.txt"))
        );
        assert_eq!(split("http://h/a  x  y"), ok("http://h/a", Some("x  y")));
        assert_eq!(split("http://h/a\tx  y z"), ok("http://h/a", Some("x  y z")));
        assert_eq!(split("http://h/a\tx\ty"), ok("http://h/a", Some("x\ty")));
        for ambiguous in [
            "http://h/with space.txt  sp1.txt",
            "http://h/with space.txt\tsp1.txt",
            "http://h/a b c   d",
            "http://h/a  b \t c",
        ] {
            assert!(matches!(split(ambiguous), Err(LineError::AmbiguousSplit { .. })), "{ambiguous:?}");
        }
        let err = parse("http://u:hunter2@h/with space.txt  sp1.txt").unwrap_err();
        assert!(err.to_string().contains("%20") && !err.to_string().contains("hunter2"), "{err}");
        // The JSON form takes any path.
        let s = parse(r#"{"url": "http://h/with%20space.txt", "path": "a  b\tc"}"#).unwrap().unwrap();
        assert_eq!(s.path, "a  b\tc");
    }

    fn read(sources: Vec<Source>) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(4);
        std::thread::spawn(move || Reader::new(rules(), None).read_all(sources, &tx));
        let mut seen = Vec::new();
        while let Some(items) = rx.blocking_recv() {
            seen.extend(items.into_iter().map(|item| match item {
                Item::Entry(e) => format!("{} ok {}", e.location, e.path),
                Item::Invalid { location, error } => format!("{location} invalid: {error}"),
                Item::ReadFailed { source, error } => format!("{source} read failed: {error}"),
            }));
        }
        seen
    }

    fn text(name: &str, text: impl Into<Vec<u8>>) -> Source {
        Source::stream(name, Box::new(io::Cursor::new(text.into())))
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored_in_each_source() {
        let seen = read(vec![
            text("m1", "\u{feff}http://h/a\n\u{feff}http://h/b\n"),
            text("m2", "\u{feff}# comment\n"),
            text("m3", "\u{feff}{\"url\": \"http://h/c\"}"),
        ]);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], "m1:1 ok a");
        assert!(seen[1].starts_with("m1:2 invalid"), "only a leading mark: {seen:?}");
        assert_eq!(seen[2], "m3:1 ok c");
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_lines_kept() {
        for tail in ["\n", "", "\r\n"] {
            let mut long = format!("http://h/{}", "x".repeat(3 * MAX_LINE)).into_bytes();
            long.extend_from_slice(tail.as_bytes());
            let mut manifest = b"http://h/a\n".to_vec();
            manifest.extend_from_slice(&long);
            manifest.extend_from_slice(b"http://h/b\n");
            let seen = read(vec![text("m", manifest)]);
            if tail.is_empty() {
                // No newline: the line runs to the end of the source.
                assert_eq!(seen, ["m:1 ok a", "m:2 invalid: line is longer than 65536 bytes"]);
            } else {
                assert_eq!(seen, ["m:1 ok a", "m:2 invalid: line is longer than 65536 bytes", "m:3 ok b"]);
            }
        }
        let comment = format!("http://h/a\n  # {}\nhttp://h/b\n", "x".repeat(3 * MAX_LINE));
        assert_eq!(read(vec![text("m", comment)]), ["m:1 ok a", "m:3 ok b"]);
        // A line of exactly the limit, newline excluded, is not too long.
        let exact = format!("http://h/{}y\n", "x/".repeat((MAX_LINE - 10) / 2));
        assert_eq!(exact.len(), MAX_LINE + 1);
        assert_eq!(read(vec![text("m", exact)]), ["m:1 ok y"]);
    }

    #[test]
    fn a_destination_given_again_with_another_url_is_refused() {
        let seen = read(vec![
            text("m1", "http://h/a x\nhttp://h/a#frag x\nhttp://h/b x\nhttp://h/c y\n"),
            text("m2", "http://h/d ./x\nhttp://h/c y\n"),
        ]);
        assert_eq!(
            seen,
            [
                "m1:1 ok x",
                "m1:2 ok x",
                "m1:3 invalid: destination x is also given by m1:1 with another URL",
                "m1:4 ok y",
                "m2:1 invalid: destination x is also given by m1:1 with another URL",
                "m2:2 ok y",
            ]
        );
    }

    #[test]
    fn the_destination_table_forgets_but_never_invents() {
        // Far more destinations than slots: never a false report, and the
        // repeats within the table's reach are all found.
        let mut manifest = String::new();
        for i in 0..3 * SEEN_SLOTS {
            manifest.push_str(&format!("http://h/{i} f{i}\n"));
        }
        for i in (3 * SEEN_SLOTS - 100)..3 * SEEN_SLOTS {
            manifest.push_str(&format!("http://other/{i} f{i}\n"));
        }
        let seen = read(vec![text("m", manifest)]);
        let invalid: Vec<_> = seen.iter().filter(|s| s.contains("invalid")).collect();
        assert!(invalid.iter().all(|s| s.contains("also given by")), "{invalid:?}");
        let found = invalid.len();
        assert!((80..=100).contains(&found), "{found} of the last 100 repeats found");
    }

    #[test]
    fn a_read_error_ends_the_source_with_read_failed() {
        struct FailsAfter(io::Cursor<Vec<u8>>);
        impl Read for FailsAfter {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(io::Error::other("device gone")),
                    n => Ok(n),
                }
            }
        }
        let failing =
            Source::stream("m1", Box::new(FailsAfter(io::Cursor::new(b"http://h/a\nhttp://h/b".to_vec()))));
        let seen = read(vec![failing, text("m2", "http://h/c")]);
        assert_eq!(seen, ["m1:1 ok a", "m1 read failed: device gone", "m2:1 ok c"]);
    }

    #[test]
    fn a_count_ahead_that_disagrees_with_the_read_fails_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Source::open(&path).unwrap()
        };
        let run = |counted: Source, read: Source| {
            let reader = Reader::new(rules(), None);
            reader.spawn_count(vec![counted.recount().unwrap()], |_| {});
            let (tx, mut rx) = mpsc::channel(4);
            std::thread::spawn(move || reader.read_all(vec![read], &tx));
            std::iter::from_fn(|| rx.blocking_recv()).flatten().collect::<Vec<_>>()
        };
        let items = run(file("m", "http://h/a\nhttp://h/b\n"), file("m", "http://h/a\nhttp://h/b\n"));
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|item| matches!(item, Item::Entry(_))));

        // As if lines were appended after the reader had reached the end.
        let items =
            run(file("m", "http://h/a\nhttp://h/b\nhttp://h/c\n"), file("n", "http://h/a\nhttp://h/b\n"));
        let Some(Item::ReadFailed { source, error }) = items.last() else { panic!("{items:?}") };
        assert!(source.ends_with('m'), "{source}");
        assert_eq!(error.to_string(), "it changed while being read: 3 entries counted ahead, 2 read");
    }

    #[test]
    fn only_regular_files_are_counted_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, "http://h/a\n").unwrap();
        assert!(Source::open(&path).unwrap().recount().is_some());
        assert!(Source::open(Path::new("/dev/null")).unwrap().recount().is_none());
        assert!(Source::stream("s", Box::new(io::empty())).recount().is_none());
        // A count reads at its own offset: the source still reads everything.
        let mut source = Source::open(&path).unwrap();
        let mut counted = String::new();
        source.recount().unwrap().read_to_string(&mut counted).unwrap();
        let mut read = String::new();
        source.reader.read_to_string(&mut read).unwrap();
        assert_eq!((counted.as_str(), read.as_str()), ("http://h/a\n", "http://h/a\n"));
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
            Source::stream("m1", Box::new(io::Cursor::new(text.to_vec()))),
            Source::stream("m2", Box::new(io::Cursor::new(b"http://h/d".to_vec()))),
        ];
        let (tx, mut rx) = mpsc::channel(16);
        Reader::new(rules(), None).read_all(sources, &tx);
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
