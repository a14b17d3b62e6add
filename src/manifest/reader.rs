//! The reader: every source in order, line by line, to batches of
//! [`Item`]s on a channel; and the count ahead of regular files, which the
//! reader checks its own count against when it is done.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::line::{LineError, MAX_LINE, Spec, parse_line};
use super::seen::Seen;
use super::source::{Recount, Source};
use super::{Item, Location};
use crate::dest::Rules;
use crate::shard::Shard;
use crate::sums::Sums;

/// How lines become items: destination rules and the shard filter.
/// Clones share the `Tally` of the count ahead.
#[derive(Debug, Clone)]
pub struct Reader {
    pub rules: Rules,
    pub shard: Option<Shard>,
    /// `--checksums`: digests for the entries whose path they list.
    pub sums: Arc<Sums>,
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
        Reader { rules, shard, sums: Arc::default(), tally: Arc::default() }
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
                Ok(text) => (parse_line(text, &self.rules).and_then(|spec| self.listed(spec)), text),
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

impl Reader {
    /// `spec` with the digests `--checksums` files list for its path.
    fn listed(&self, spec: Option<Spec>) -> Result<Option<Spec>, LineError> {
        let Some(mut spec) = spec else { return Ok(None) };
        match self.sums.merge(&spec.path, &mut spec.checksums) {
            Ok(()) => Ok(Some(spec)),
            Err(conflict) => Err(LineError::ChecksumConflict {
                algorithm: conflict.algorithm,
                listed: conflict.listed,
                path: spec.path,
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::seen::SEEN_SLOTS;

    fn rules() -> Rules {
        Rules::new(".".into(), false)
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
