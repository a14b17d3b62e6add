//! Split downloads: one large file over several connections at once.
//!
//! Object stores and CDNs cap each connection's bandwidth, so a large file
//! is cut into ranges, each fetched by its own `Range` request (with
//! `If-Range`, so every range belongs to one version of the file) and
//! written at its offset in the part file, which has its full length from
//! the start.
//!
//! - The first range continues the response that revealed the file's size
//!   ([`crate::transfer::Attempted::Split`]); the others wait for slots
//!   from the same [`crate::pool::Limits`] as whole downloads.
//! - A worker asks for its range a window at a time (about a second of its
//!   connection's rate, closed `Range: bytes=a-b` requests), and
//!   reads every response to its end. A worker whose range is done takes
//!   the next unclaimed one, else half of the largest part of a range that
//!   nobody has asked for yet (work stealing), so one slow connection holds
//!   the file back by one window at most.
//! - No byte is asked for twice, so none is sent twice, but for one
//!   response: the plain `GET` that revealed the size asked for the whole
//!   file, and once others take ranges after it, it stops at its range's
//!   end. The bytes fetched twice are what that one connection had in
//!   flight when it stopped (its socket buffers), once per file.
//! - Each range retries on its own, from its own offset, with the run's
//!   backoff; a range that moved forward resets its retry budget.
//! - The ranges written so far are recorded in the part file's meta every
//!   second and when the run stops, so the next run (after Ctrl-C or
//!   `kill -9`) fetches only what is missing.
//! - A server that ignores a range or whose validator changes fails the
//!   split with [`AttemptError::BadRange`]: the caller restarts the file as
//!   one plain stream.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Response, Url};
use tokio::task::JoinSet;

use crate::download::Context;
use crate::fsx::{DIRECT_WRITE, Meta, Partial, WRITEBACK_EVERY};
use crate::pool::Slot;
use crate::progress::TransferProgress;
use crate::retry::Class;
use crate::transfer::{self, AttemptError, Target};

/// Never split off a piece smaller than this: each costs a request. Also
/// the first window of every worker.
const MIN_PIECE: u64 = 1 << 20;
/// A worker asks for what its connection brought in this long on its last
/// request: long enough that the round trip between two requests costs
/// little, short enough that a slow connection's last window is short.
const WINDOW_TIME: Duration = Duration::from_secs(1);
/// The most a worker asks for in one request.
const MAX_WINDOW: u64 = 64 << 20;
/// How often the written ranges are recorded while the download runs.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often a file on one connection is judged for splitting.
const JUDGE_EVERY: Duration = Duration::from_millis(100);
/// Split a file whose rest would take longer than this on one connection
/// at its rate so far. On a fast link (or loopback) more connections only
/// cost requests and CPU; on a capped one they multiply the rate.
const SPLIT_WORTH: Duration = Duration::from_secs(2);
/// Bytes a worker gathers before one positional write.
const WRITE_BUFFER: usize = 256 * 1024;

/// One range of the file: `start..end`, of which `start..written` is on
/// disk, `written..next` is in its worker's buffer and `next..asked` is
/// asked for by its worker's request in flight. A stealer lowers `end`,
/// never below `asked`.
///
/// The first response asked for the whole file, but keeps `asked` at
/// `next`: it is the one request that stops short of what it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: u64,
    written: u64,
    /// `start..synced` has been handed to writeback.
    synced: u64,
    next: u64,
    asked: u64,
    end: u64,
    claimed: bool,
}

impl Piece {
    fn fresh(start: u64, end: u64) -> Piece {
        Piece { start, written: start, synced: start, next: start, asked: start, end, claimed: false }
    }

    fn left(&self) -> u64 {
        self.end - self.next
    }

    /// The bytes nobody has asked for: what a stealer may take.
    fn unasked(&self) -> u64 {
        self.end - self.asked
    }
}

/// The pieces of one file and who works on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pieces: Vec<Piece>,
}

impl Table {
    /// The parts of `0..total` not in `done`, cut into at least
    /// `connections` pieces where they are large enough.
    pub fn new(total: u64, done: &[[u64; 2]], connections: usize) -> Table {
        let done = merge(done.iter().map(|&[s, e]| [s.min(total), e.min(total)]).collect());
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = 0;
        for &[start, end] in &done {
            if start > at {
                pieces.push(Piece::fresh(at, start));
            }
            pieces.push(Piece {
                start,
                written: end,
                synced: end,
                next: end,
                asked: end,
                end,
                claimed: false,
            });
            at = end;
        }
        if at < total {
            pieces.push(Piece::fresh(at, total));
        }
        // Halve the largest missing piece until there is one per connection.
        while pieces.iter().filter(|p| p.left() > 0).count() < connections {
            let Some(i) = (0..pieces.len()).max_by_key(|&i| pieces[i].left()) else { break };
            let piece = pieces[i];
            if piece.left() < 2 * MIN_PIECE {
                break;
            }
            let mid = piece.next + piece.left() / 2;
            pieces[i].end = mid;
            pieces.insert(i + 1, Piece::fresh(mid, piece.end));
        }
        Table { pieces }
    }

    /// A piece for a worker: the first one nobody has, else the second half
    /// of the largest part of a piece in flight that its worker has not
    /// asked for yet. `None` when nothing is left to share.
    fn claim(&mut self) -> Option<usize> {
        if let Some(i) = self.pieces.iter().position(|p| !p.claimed && p.left() > 0) {
            self.pieces[i].claimed = true;
            return Some(i);
        }
        let i = (0..self.pieces.len()).max_by_key(|&i| self.pieces[i].unasked())?;
        let victim = self.pieces[i];
        if victim.unasked() < 2 * MIN_PIECE {
            return None;
        }
        // Page-aligned, so both halves write whole pages.
        let mid = (victim.asked + victim.unasked() / 2) & !4095;
        self.pieces[i].end = mid;
        self.pieces.push(Piece { claimed: true, ..Piece::fresh(mid, victim.end) });
        Some(self.pieces.len() - 1)
    }

    /// The next request of piece `i`'s worker: up to `window` bytes from
    /// where the piece stands, which no stealer may take from then on.
    /// `None` when the piece is complete.
    fn ask(&mut self, i: usize, window: u64) -> Option<Range<u64>> {
        let piece = &mut self.pieces[i];
        if piece.left() == 0 {
            return None;
        }
        piece.asked = piece.end.min(piece.next + window);
        Some(piece.next..piece.asked)
    }

    /// Take up to `len` more bytes for piece `i` from a response that
    /// stops at `stop`; says how many, and whether that response is then
    /// done with (at `stop` or at the piece's end, whichever comes first).
    fn take(&mut self, i: usize, len: u64, stop: u64) -> (u64, bool) {
        let piece = &mut self.pieces[i];
        let stop = stop.min(piece.end);
        let take = len.min(stop - piece.next);
        piece.next += take;
        piece.asked = piece.asked.max(piece.next);
        (take, piece.next == stop)
    }

    /// The `[start, end)` ranges on disk, merged.
    pub fn done(&self) -> Vec<[u64; 2]> {
        merge(self.pieces.iter().filter(|p| p.written > p.start).map(|p| [p.start, p.written]).collect())
    }

    pub fn done_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.written - p.start).sum()
    }

    pub fn complete(&self) -> bool {
        self.pieces.iter().all(|p| p.written == p.end)
    }

    fn open(&self) -> usize {
        self.pieces.iter().filter(|p| p.left() > 0).count()
    }
}

fn merge(mut ranges: Vec<[u64; 2]>) -> Vec<[u64; 2]> {
    ranges.retain(|r| r[1] > r[0]);
    ranges.sort_unstable();
    let mut out: Vec<[u64; 2]> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
            _ => out.push(r),
        }
    }
    out
}

/// The file being split, as its workers see it.
#[derive(Debug)]
pub struct Job {
    pub url: Url,
    pub headers: HeaderMap,
    /// The `--per-host` key.
    pub host: String,
    pub dest: PathBuf,
    /// What every range must belong to: the length and validators of the
    /// first response (or of the meta of an earlier run).
    pub meta: Meta,
    pub total: u64,
    pub if_range: String,
}

/// What a split download did, for the outcome.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: u32,
    pub received: u64,
}

/// State shared by the workers of one file.
#[derive(Debug)]
struct Shared {
    ctx: Arc<Context>,
    job: Job,
    file: File,
    table: Mutex<Table>,
    progress: Arc<TransferProgress>,
    requests: AtomicU32,
    received: AtomicU64,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().expect("piece table poisoned")
    }

    fn target(&self) -> Target<'_> {
        Target {
            clients: &self.ctx.clients,
            url: &self.job.url,
            headers: &self.job.headers,
            size: None,
            split: None,
        }
    }
}

/// Download the missing ranges of `job` into `partial` (whose bytes in
/// `done` are kept). `first` is the response that is still streaming the
/// file from byte 0; `slot` is the one the caller holds. On success the
/// whole file is in `partial`; on failure its written ranges are recorded
/// for the next run.
pub async fn run(
    ctx: &Arc<Context>,
    job: Job,
    partial: &mut Partial,
    done: &[[u64; 2]],
    first: Option<Response>,
    slot: Option<Slot>,
    progress: Arc<TransferProgress>,
) -> (Stats, Result<(), AttemptError>) {
    let connections = ctx.split.map_or(1, |p| p.connections).max(1);
    // With a first response the file starts as one piece, and the others
    // join (stealing from it) only if it proves slow; a resumed file starts
    // with a piece per connection.
    let adaptive = first.is_some();
    let mut table = Table::new(job.total, done, if adaptive { 1 } else { connections });
    // The response streaming from byte 0 can only fill the piece at 0.
    let first = first.map(|response| {
        debug_assert!(table.pieces[0].start == 0 && !table.pieces[0].claimed);
        table.pieces[0].claimed = true;
        (0, response)
    });
    let mut meta = Meta { done: Some(table.done()), ..job.meta.clone() };
    let file = match partial.split(&meta, job.total) {
        Ok(file) => file,
        Err(e) => return (Stats::default(), Err(AttemptError::Disk(e))),
    };
    progress.begin(table.done_bytes(), Some(job.total));
    let left_at_start = job.total - table.done_bytes();
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        job,
        file,
        table: Mutex::new(table),
        progress,
        requests: AtomicU32::new(0),
        received: AtomicU64::new(0),
    });

    let mut workers = JoinSet::new();
    workers.spawn(worker(shared.clone(), slot, first));
    let spawn_helpers = |workers: &mut JoinSet<_>| {
        // A resumed file needs no more workers than missing pieces; a
        // fresh one's helpers each steal half of the largest piece.
        let open = if adaptive { connections } else { shared.table().open() };
        let helpers = open.clamp(1, connections) - 1;
        shared.progress.split(helpers + 1);
        for _ in 0..helpers {
            workers.spawn(worker(shared.clone(), None, None));
        }
    };
    let started = Instant::now();
    let (host_bytes_at_start, _) = shared.progress.host_traffic();
    let mut split = !adaptive;
    if split {
        spawn_helpers(&mut workers);
    }

    let mut failure: Option<AttemptError> = None;
    let mut save = tokio::time::interval(SAVE_EVERY);
    save.tick().await;
    let mut judge = tokio::time::interval(JUDGE_EVERY);
    let mut slow_judgments = 0;
    judge.tick().await;
    loop {
        tokio::select! {
            _ = judge.tick(), if !split && failure.is_none() => {
                let got = shared.received.load(Ordering::Relaxed);
                let rate = got as f64 / started.elapsed().as_secs_f64();
                let rest = left_at_start.saturating_sub(got) as f64 / rate;
                let worth = SPLIT_WORTH.as_secs_f64();
                // A file that gets under half its share of what its host
                // sends is losing a race with the host's other transfers:
                // the bottleneck is what they share (CPU, disk, a link),
                // which more connections cannot widen: splitting one made
                // four 256 MiB files slower on loopback (commit 03ba2e3).
                // Files from other hosts do not count: a host that
                // caps each connection is slow next to any other, and it
                // is the one that splitting speeds up.
                let (host_bytes, transfers) = shared.progress.host_traffic();
                let host_rate = host_bytes.saturating_sub(host_bytes_at_start) as f64 / started.elapsed().as_secs_f64();
                let outpaced = transfers > 1 && rate < host_rate / transfers as f64 / 2.0;
                // A file far too slow splits at once; a merely slow one
                // must be judged so twice in a row, so that a start slowed
                // by a busy disk or CPU does not split a fast file.
                slow_judgments = if rest > worth && !outpaced { slow_judgments + 1 } else { 0 };
                if !outpaced && (rest > 4.0 * worth || slow_judgments >= 2) {
                    split = true;
                    spawn_helpers(&mut workers);
                }
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {
                    if shared.table().complete() {
                        // Those still waiting for a slot have nothing to do.
                        workers.abort_all();
                    }
                }
                Some(Ok(Err(error))) => {
                    // On Ctrl-C every worker stops by itself, writing what it
                    // holds; any other failure ends the others at once.
                    if !matches!(error, AttemptError::Cancelled) {
                        workers.abort_all();
                    }
                    failure.get_or_insert(error);
                }
                Some(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Some(Err(_aborted)) => {}
            },
            _ = save.tick(), if failure.is_none() => {
                meta.done = Some(shared.table().done());
                if let Err(e) = partial.save_meta(&meta) {
                    workers.abort_all();
                    failure = Some(AttemptError::Disk(e));
                }
            }
        }
    }

    let stats = Stats {
        requests: shared.requests.load(Ordering::Relaxed),
        received: shared.received.load(Ordering::Relaxed),
    };
    let table = shared.table().clone();
    let result = match failure {
        None if table.complete() => Ok(()),
        None => Err(AttemptError::Disk(std::io::Error::other("split download ended with ranges missing"))),
        Some(error) => {
            meta.done = Some(table.done());
            // A range that failed to verify changes nothing: the caller
            // restarts. Otherwise the record is what the next run resumes.
            let saved = match error {
                AttemptError::BadRange(_) => Ok(()),
                _ => partial.save_meta(&meta),
            };
            saved.map_err(AttemptError::Disk).and(Err(error))
        }
    };
    (stats, result)
}

/// Fetch pieces until none is left to share. `slot` and `first` (a piece
/// already claimed, and the response to fill it from) are the first
/// worker's; the others wait for a slot of their own.
async fn worker(
    shared: Arc<Shared>,
    slot: Option<Slot>,
    first: Option<(usize, Response)>,
) -> Result<(), AttemptError> {
    let mut slot = slot;
    let mut buffer = Vec::with_capacity(WRITE_BUFFER);
    let mut window = MIN_PIECE;
    if let Some((i, response)) = first {
        fetch_piece(&shared, i, &mut slot, Some(response), &mut buffer, &mut window).await?;
        shared.table().pieces[i].claimed = false;
    }
    if slot.is_none() {
        let ctx = &shared.ctx;
        let acquired = ctx.shutdown.unless_cancelled(ctx.limits.slot(&shared.job.host)).await;
        slot = Some(acquired.ok_or(AttemptError::Cancelled)?);
    }
    loop {
        let Some(i) = shared.table().claim() else { return Ok(()) };
        fetch_piece(&shared, i, &mut slot, None, &mut buffer, &mut window).await?;
        shared.table().pieces[i].claimed = false;
    }
}

/// Fetch piece `i` to its (possibly lowered) end, a window at a time,
/// retrying on its own. `window` is the worker's, carried from piece to
/// piece: its connection's pace.
async fn fetch_piece(
    shared: &Shared,
    i: usize,
    slot: &mut Option<Slot>,
    mut first: Option<Response>,
    buffer: &mut Vec<u8>,
    window: &mut u64,
) -> Result<(), AttemptError> {
    let ctx = &shared.ctx;
    let mut schedule = ctx.retry.schedule();
    let mut failures = 0;
    loop {
        let asked_at = Instant::now();
        let (range, response) = match first.take() {
            Some(response) => {
                let start = shared.table().pieces[i].next;
                (start..shared.job.total, Ok(response))
            }
            None => {
                let Some(range) = shared.table().ask(i, *window) else { return Ok(()) };
                let response = request(shared, slot, range.start, range.end - 1).await;
                (range, response)
            }
        };
        let start = range.start;
        let result = match response {
            Ok(response) => stream(shared, i, response, range, buffer).await,
            Err(e) => Err(e),
        };
        flush(shared, i, buffer).map_err(AttemptError::Disk)?;
        let error = match result {
            Ok(()) => {
                let got = shared.table().pieces[i].next - start;
                *window = next_window(got, asked_at.elapsed());
                continue;
            }
            Err(error @ (AttemptError::Cancelled | AttemptError::BadRange(_))) => return Err(error),
            Err(error) => error,
        };
        if shared.table().pieces[i].next > start {
            failures = 0;
            schedule = ctx.retry.schedule();
        }
        if error.class() == Class::Permanent || failures >= ctx.retry.retries {
            return Err(error);
        }
        failures += 1;
        let wait = schedule.next_delay(error.retry_after());
        let attempt = shared.requests.load(Ordering::Relaxed);
        ctx.reporter.retrying(&shared.job.dest, attempt, &error, wait);
        // Waiting does not occupy a connection slot.
        drop(slot.take());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = ctx.shutdown.cancelled() => return Err(AttemptError::Cancelled),
        }
    }
}

async fn request(
    shared: &Shared,
    slot: &mut Option<Slot>,
    start: u64,
    end: u64,
) -> Result<Response, AttemptError> {
    let ctx = &shared.ctx;
    if slot.is_none() {
        let acquired = ctx.shutdown.unless_cancelled(ctx.limits.slot(&shared.job.host)).await;
        *slot = Some(acquired.ok_or(AttemptError::Cancelled)?);
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let job = &shared.job;
    let target = shared.target();
    let fetch =
        transfer::fetch_range(&target, start, end, &job.if_range, job.meta.etag.as_deref(), job.total);
    tokio::select! {
        r = fetch => r,
        () = ctx.shutdown.cancelled() => Err(AttemptError::Cancelled),
    }
}

/// What a worker asks for next, having received `bytes` in `took` on its
/// last request: about [`WINDOW_TIME`] at that rate, in whole pages.
fn next_window(bytes: u64, took: Duration) -> u64 {
    let rate = bytes as f64 / took.as_secs_f64().max(1e-3);
    ((rate * WINDOW_TIME.as_secs_f64()) as u64).clamp(MIN_PIECE, MAX_WINDOW) & !4095
}

/// Stream a response for `range` of the file into piece `i` until the
/// range or the piece ends (its end may be lowered by a stealer meanwhile,
/// never below what was asked for, but for the first response) or the body
/// does.
async fn stream(
    shared: &Shared,
    i: usize,
    mut response: Response,
    range: Range<u64>,
    buffer: &mut Vec<u8>,
) -> Result<(), AttemptError> {
    // A 206 carries no byte past its Content-Range: bytes beyond it are
    // not the ones asked for.
    let span = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| transfer::parse_content_range(v.to_str().ok()?))
        .map(|(start, end, _)| end + 1 - start);
    let mut body = 0u64;
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk.map_err(AttemptError::Http)?,
            () = shared.ctx.shutdown.cancelled() => return Err(AttemptError::Cancelled),
        };
        let Some(chunk) = chunk else { break };
        shared.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        body += chunk.len() as u64;
        if let Some(expected) = span.filter(|&span| body > span) {
            return Err(AttemptError::Overlong { got: body, expected });
        }
        let (take, complete) = shared.table().take(i, chunk.len() as u64, range.end);
        let bytes = &chunk[..take as usize];
        if bytes.len() >= DIRECT_WRITE {
            // Large chunks (a fast link's) go to the file as they are: a
            // copy into the buffer cost 0.1 s of CPU per GiB.
            flush(shared, i, buffer).map_err(AttemptError::Disk)?;
            write_at(shared, i, bytes).map_err(AttemptError::Disk)?;
        } else {
            buffer.extend_from_slice(bytes);
        }
        shared.progress.advance(take);
        if complete {
            return Ok(());
        }
        if buffer.len() >= WRITE_BUFFER {
            flush(shared, i, buffer).map_err(AttemptError::Disk)?;
        }
    }
    let table = shared.table();
    let piece = &table.pieces[i];
    let expected = range.end.min(piece.end) - range.start;
    Err(AttemptError::Truncated { got: piece.next - range.start, expected })
}

/// Write the buffered bytes of piece `i` at their offset.
fn flush(shared: &Shared, i: usize, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    if buffer.is_empty() {
        return Ok(());
    }
    let result = write_at(shared, i, buffer);
    buffer.clear();
    result
}

/// Write the next bytes of piece `i` (those after its written ones) at
/// their offset, through the page cache, starting writeback every
/// [`WRITEBACK_EVERY`] so that the disk works while the network does.
///
/// Direct I/O (`O_DIRECT`) was measured instead and was slower: the
/// writeback started here already keeps the disk busy (commit be9884a).
fn write_at(shared: &Shared, i: usize, bytes: &[u8]) -> std::io::Result<()> {
    let at = shared.table().pieces[i].written;
    let result = shared.file.write_all_at(bytes, at);
    let writeback = {
        let mut table = shared.table();
        let piece = &mut table.pieces[i];
        match result {
            Ok(()) => piece.written += bytes.len() as u64,
            // The bytes are lost: fetch them again.
            Err(_) => piece.next = piece.written,
        }
        let dirty = piece.synced..piece.written;
        if dirty.end - dirty.start >= WRITEBACK_EVERY {
            piece.synced = dirty.end;
        }
        dirty
    };
    if writeback.end - writeback.start >= WRITEBACK_EVERY {
        crate::sys::start_writeback(&shared.file, writeback.start, writeback.end - writeback.start);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIN_PIECE;

    #[test]
    fn a_fresh_file_is_cut_into_one_piece_per_connection() {
        let t = Table::new(64 * M, &[], 8);
        let ranges: Vec<_> = t.pieces.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(ranges.len(), 8);
        assert!(ranges.iter().all(|&(s, e)| e - s == 8 * M), "{ranges:?}");
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges[7].1, 64 * M);
        // Too small to split further than pieces of MIN_PIECE.
        assert_eq!(Table::new(3 * M, &[], 8).pieces.len(), 2);
        assert_eq!(Table::new(100, &[], 8).pieces.len(), 1);
    }

    #[test]
    fn only_missing_ranges_become_pieces() {
        let done = [[0, 10 * M], [30 * M, 40 * M], [35 * M, 50 * M]];
        let t = Table::new(64 * M, &done, 2);
        assert_eq!(t.done(), vec![[0, 10 * M], [30 * M, 50 * M]]);
        assert_eq!(t.done_bytes(), 30 * M);
        let missing: Vec<_> = t.pieces.iter().filter(|p| p.left() > 0).map(|p| [p.next, p.end]).collect();
        assert_eq!(missing, vec![[10 * M, 30 * M], [50 * M, 64 * M]]);
        assert!(!t.complete());
        assert!(Table::new(64 * M, &[[0, 64 * M]], 8).complete());
    }

    #[test]
    fn an_idle_worker_steals_half_of_the_largest_range_nobody_asked_for() {
        let mut t = Table::new(16 * M, &[], 2);
        let a = t.claim().unwrap();
        let b = t.claim().unwrap();
        assert_eq!(t.ask(a, 8 * M), Some(0..8 * M));
        assert_eq!(t.take(a, 8 * M, 8 * M), (8 * M, true));
        t.pieces[a].written = 8 * M;
        t.pieces[a].claimed = false;
        assert_eq!(t.ask(a, M), None, "a complete piece asks for nothing");
        // b asked for 8..10 and has 2 MiB of it: the thief takes half of
        // 10..16, b keeps 8..13.
        assert_eq!(t.ask(b, 2 * M), Some(8 * M..10 * M));
        t.take(b, M, 10 * M);
        let c = t.claim().unwrap();
        assert_eq!((t.pieces[c].start, t.pieces[c].end), (13 * M, 16 * M));
        assert_eq!(t.pieces[b].end, 13 * M);
        assert_eq!(t.take(b, 10 * M, 10 * M), (M, true), "a request stops where it asked to");
        assert_eq!(t.ask(b, 8 * M), Some(10 * M..13 * M), "and the next stops at the new end");
        // b asked for all it has left, c for 13..15: only 15..16 is free,
        // under two pieces' worth.
        t.ask(c, 2 * M);
        assert_eq!(t.claim(), None);
    }

    #[test]
    fn no_byte_is_asked_for_twice() {
        // Workers that ask in windows of every size and steal whenever they
        // can: the requests never overlap, and together cover the file.
        for window in [M, 3 * M + 4096, 7 * M, 64 * M] {
            let mut t = Table::new(64 * M, &[[5 * M, 9 * M]], 4);
            let mut asked: Vec<Range<u64>> = Vec::new();
            let mut workers: Vec<usize> = (0..4).filter_map(|_| t.claim()).collect();
            while !workers.is_empty() {
                for w in std::mem::take(&mut workers) {
                    let next = match t.ask(w, window) {
                        Some(range) => {
                            // Half a window arrives, then a thief comes by.
                            let half = (range.end - range.start).div_ceil(2);
                            t.take(w, half, range.end);
                            let thief = t.claim();
                            t.take(w, range.end - range.start, range.end);
                            asked.push(range);
                            Some(w).into_iter().chain(thief).collect()
                        }
                        None => {
                            t.pieces[w].claimed = false;
                            t.claim().into_iter().collect::<Vec<_>>()
                        }
                    };
                    workers.extend(next);
                }
                for p in &mut t.pieces {
                    p.written = p.next;
                }
            }
            asked.sort_by_key(|r| r.start);
            assert!(asked.windows(2).all(|w| w[0].end <= w[1].start), "{window}: {asked:?}");
            let bytes: u64 = asked.iter().map(|r| r.end - r.start).sum();
            assert_eq!(bytes, 60 * M, "{window}");
            assert!(t.complete(), "{window}");
        }
    }

    #[test]
    fn a_window_is_about_a_second_of_the_last_request() {
        let cases = [
            (4 * M, Duration::from_secs(1), 4 * M),
            (4 * M, Duration::from_secs(2), 2 * M),
            (M, Duration::from_secs(10), MIN_PIECE),
            (1 << 40, Duration::from_secs(1), MAX_WINDOW),
            (M, Duration::ZERO, MAX_WINDOW),
            (3 * M + 1, Duration::from_secs(1), 3 * M),
        ];
        for (bytes, took, want) in cases {
            assert_eq!(next_window(bytes, took), want, "{bytes} in {took:?}");
        }
    }
}
