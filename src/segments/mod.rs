//! Split downloads: one large file over several connections at once.
//!
//! Object stores and CDNs cap each connection's bandwidth, so a large file
//! is cut into ranges, each fetched by its own `Range` request (with
//! `If-Range`, so every range belongs to one version of the file) and
//! written at its offset in the part file, which has its full length from
//! the start.
//!
//! - The first range continues the response that revealed the file's size
//!   ([`crate::transfer::Attempted::Segments`]); the others wait for slots
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Response, Url};
use tokio::task::JoinSet;

use crate::error::AttemptError;
use crate::fsx::{Meta, Partial};
use crate::net::Net;
use crate::pool::Slot;
use crate::progress::TransferProgress;
use crate::throttle::Throttle;
use crate::transfer::Target;

mod table;
mod worker;

use table::Table;
use worker::worker;

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

/// The file being split, as its workers see it.
#[derive(Debug)]
pub struct Resource {
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

/// Where a split download starts.
#[derive(Debug)]
pub struct Start {
    /// The response streaming the file from byte 0, if this run has one.
    pub first: Option<Response>,
    /// Ranges already on disk (from an earlier run).
    pub done: Vec<[u64; 2]>,
    /// The slot the caller holds, for the first worker.
    pub slot: Option<Slot>,
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
    net: Arc<Net>,
    resource: Resource,
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
            net: &self.net,
            host: &self.resource.host,
            url: &self.resource.url,
            headers: &self.resource.headers,
            size: None,
            split: None,
            condition: None,
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

/// What the judge sees of a file on one connection.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Since the file's first response.
    elapsed: Duration,
    /// Bytes of the file received since then.
    got: u64,
    /// Bytes it had left then.
    left: u64,
    /// Bytes its host sent since then, to all its transfers.
    host_got: u64,
    /// Transfers from its host now, this one included.
    transfers: u64,
}

/// Whether a file on one connection should split now, given how many
/// judgments in a row (`slow`) found it slow before; returns the new count.
///
/// A file splits when its rest would take longer than [`SPLIT_WORTH`] at
/// its rate so far: at once when far too slow, after two slow judgments in
/// a row when merely slow, so that a start slowed by a busy disk or CPU
/// does not split a fast file. A file that gets under half its share of
/// what its host sends is losing a race with the host's other transfers:
/// the bottleneck is what they share (CPU, disk, a link), which more
/// connections cannot widen (splitting one made four 256 MiB files slower
/// on loopback, commit 03ba2e3). Files from other hosts do not count: a
/// host that caps each connection is slow next to any other, and it is the
/// one that splitting speeds up.
fn judge(pace: Pace, slow: u32) -> (bool, u32) {
    let seconds = pace.elapsed.as_secs_f64();
    let rate = pace.got as f64 / seconds;
    let rest = pace.left.saturating_sub(pace.got) as f64 / rate;
    let worth = SPLIT_WORTH.as_secs_f64();
    let host_rate = pace.host_got as f64 / seconds;
    let outpaced = pace.transfers > 1 && rate < host_rate / pace.transfers as f64 / 2.0;
    let slow = if rest > worth && !outpaced { slow + 1 } else { 0 };
    (!outpaced && (rest > 4.0 * worth || slow >= 2), slow)
}

/// Download the missing ranges of `resource` into `partial` over up to
/// `connections` connections (the bytes in `start.done` are kept). On
/// success the whole file is in `partial`; on failure its written ranges
/// are recorded for the next run.
pub async fn run(
    net: &Arc<Net>,
    resource: Resource,
    connections: usize,
    partial: &mut Partial,
    start: Start,
    progress: Arc<TransferProgress>,
) -> (Stats, Result<(), AttemptError>) {
    let connections = connections.max(1);
    // With a first response the file starts as one piece, and the others
    // join (stealing from it) only if it proves slow; a resumed file starts
    // with a piece per connection.
    let adaptive = start.first.is_some();
    let mut table = Table::new(resource.total, &start.done, if adaptive { 1 } else { connections });
    // The response streaming from byte 0 can only fill the piece at 0.
    let first = start.first.map(|response| {
        debug_assert!(table.pieces[0].start == 0 && !table.pieces[0].claimed);
        table.pieces[0].claimed = true;
        (0, response)
    });
    let mut meta = Meta { done: Some(table.done()), ..resource.meta.clone() };
    let file = match partial.segmented(&meta, resource.total) {
        Ok(file) => file,
        Err(e) => return (Stats::default(), Err(AttemptError::Disk(e))),
    };
    progress.begin(table.done_bytes(), Some(resource.total));
    let shared = Arc::new(Shared {
        net: net.clone(),
        resource,
        file,
        table: Mutex::new(table),
        progress,
        requests: AtomicU32::new(0),
        received: AtomicU64::new(0),
    });
    let mut workers = Workers { set: JoinSet::new(), shared: shared.clone(), connections, adaptive };
    workers.set.spawn(worker(shared.clone(), start.slot, first));
    let failure = workers.watch(partial, &mut meta).await;
    let stats = shared.stats();
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

/// The workers of one file.
struct Workers {
    set: JoinSet<Result<(), AttemptError>>,
    shared: Arc<Shared>,
    connections: usize,
    /// Started on one connection, split when [`judge`] says so.
    adaptive: bool,
}

impl Workers {
    /// Add the workers beyond the first: a resumed file needs no more than
    /// its missing pieces; a fresh one's helpers each steal half of the
    /// largest piece.
    fn spawn_helpers(&mut self) {
        let open = if self.adaptive { self.connections } else { self.shared.table().open() };
        let helpers = open.clamp(1, self.connections) - 1;
        self.shared.progress.split(helpers + 1);
        for _ in 0..helpers {
            self.set.spawn(worker(self.shared.clone(), None, None));
        }
    }

    /// Run the workers to their end, judging a file on one connection for
    /// splitting and recording the written ranges every [`SAVE_EVERY`].
    /// The first failure, if any.
    async fn watch(&mut self, partial: &mut Partial, meta: &mut Meta) -> Option<AttemptError> {
        let started = Instant::now();
        let (host_bytes_at_start, _) = self.shared.progress.host_traffic();
        let left = self.shared.resource.total - self.shared.table().done_bytes();
        let mut split = !self.adaptive;
        if split {
            self.spawn_helpers();
        }
        let mut failure: Option<AttemptError> = None;
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.tick().await;
        let mut judging = tokio::time::interval(JUDGE_EVERY);
        judging.tick().await;
        let mut slow = 0;
        loop {
            tokio::select! {
                _ = judging.tick(), if !split && failure.is_none() => {
                    // Slow because of --limit-rate: more connections
                    // would not help.
                    if self.shared.net.body.throttle.as_ref().is_some_and(Throttle::saturated) {
                        slow = 0;
                        continue;
                    }
                    let (host_bytes, transfers) = self.shared.progress.host_traffic();
                    let pace = Pace {
                        elapsed: started.elapsed(),
                        got: self.shared.received.load(Ordering::Relaxed),
                        left,
                        host_got: host_bytes.saturating_sub(host_bytes_at_start),
                        transfers,
                    };
                    (split, slow) = judge(pace, slow);
                    if split {
                        self.spawn_helpers();
                    }
                }
                joined = self.set.join_next() => match joined {
                    None => return failure,
                    Some(joined) => self.joined(joined, &mut failure),
                },
                _ = save.tick(), if failure.is_none() => {
                    meta.done = Some(self.shared.table().done());
                    if let Err(e) = partial.save_meta(meta) {
                        self.set.abort_all();
                        failure = Some(AttemptError::Disk(e));
                    }
                }
            }
        }
    }

    fn joined(
        &mut self,
        joined: Result<Result<(), AttemptError>, tokio::task::JoinError>,
        failure: &mut Option<AttemptError>,
    ) {
        match joined {
            Ok(Ok(())) => {
                if self.shared.table().complete() {
                    // Those still waiting for a slot have nothing to do.
                    self.set.abort_all();
                }
            }
            Ok(Err(error)) => {
                // On Ctrl-C every worker stops by itself, writing what it
                // holds; any other failure ends the others at once.
                if !matches!(error, AttemptError::Cancelled) {
                    self.set.abort_all();
                }
                failure.get_or_insert(error);
            }
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_aborted) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIN_PIECE;

    #[test]
    fn a_file_splits_when_its_rest_would_take_long_unless_its_host_is_the_bottleneck() {
        let s = Duration::from_secs;
        // (elapsed, got, left, host_got, transfers, slow before) -> (split, slow after)
        let cases = [
            // 10 MB/s with 1 MB left: done in 0.1 s, never split.
            ((s(1), 10 * M, 11 * M, 10 * M, 1), 0, (false, 0)),
            // 1 MB/s with 4 MB left: 3 s to go, slow; split on the second.
            ((s(1), M, 4 * M, M, 1), 0, (false, 1)),
            ((s(1), M, 4 * M, M, 1), 1, (true, 2)),
            // 1 MB/s with 100 MB left: far too slow, split at once.
            ((s(1), M, 100 * M, M, 1), 0, (true, 1)),
            // Far too slow, but its host sends 8 files 40x faster in all:
            // it is losing a race for what they share; never split.
            ((s(1), M, 100 * M, 40 * M, 8), 5, (false, 0)),
            // Slow with others of its host, but getting its share: split.
            ((s(1), M, 100 * M, 4 * M, 4), 0, (true, 1)),
        ];
        for ((elapsed, got, left, host_got, transfers), slow, want) in cases {
            let pace = Pace { elapsed, got, left, host_got, transfers };
            assert_eq!(judge(pace, slow), want, "{pace:?} after {slow}");
        }
    }
}
