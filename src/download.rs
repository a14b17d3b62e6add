//! One manifest entry from start to [`Outcome`]: skip if the destination
//! exists, lock its partial file, decide whether the bytes already there can
//! be resumed, run attempts with backoff until one succeeds or the failure is
//! permanent, verify, and commit.
//!
//! The retry budget (`--retries`) counts consecutive attempts that brought
//! no new bytes: an attempt that moved the file forward resets it, so a large
//! file over a link that drops every minute still finishes, while a server
//! that never makes progress is given up on after `--retries` waits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

use crate::dest::{PrepareError, Rules};
use crate::fsx::{Committed, Opened, Partial};
use crate::manifest::{Entry, LineError, Location};
use crate::pool::{Keyed, Limits};
use crate::progress::Reporter;
use crate::redact;
use crate::report::{Outcome, SkipReason, Status};
use crate::retry::{Class, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::transfer::{self, AttemptError, State, Target};

/// What every download of a run shares.
#[derive(Debug)]
pub struct Context {
    pub client: reqwest::Client,
    pub limits: Limits,
    /// One in-flight download per destination within this run.
    pub destinations: Keyed<PathBuf>,
    pub rules: Rules,
    pub headers: HeaderMap,
    pub retry: RetryPolicy,
    pub overwrite: bool,
    pub resume: bool,
    pub reporter: Arc<Reporter>,
    pub shutdown: Shutdown,
}

/// Why an entry failed, after classification.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{location}: {error}")]
    Invalid { location: Location, error: LineError },
    #[error(transparent)]
    Attempt(#[from] AttemptError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("cannot use the partial file {}: {source}", path.display())]
    Partial { path: PathBuf, source: std::io::Error },
    #[error("cannot move the finished file into place: {0}")]
    Commit(std::io::Error),
    #[error("sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    Checksum { expected: String, actual: String },
    #[error("size mismatch: the manifest says {expected} bytes, the server sent {actual}")]
    Size { expected: u64, actual: u64 },
}

impl Outcome {
    fn start(entry: &Entry) -> Outcome {
        Outcome {
            url: Some(redact::url(&entry.url)),
            path: entry.dest.clone(),
            status: Status::Failed,
            skip: None,
            error: None,
            bytes: 0,
            received: 0,
            attempts: 0,
            http_status: None,
            elapsed: Default::default(),
            resumed_from: 0,
        }
    }

    /// The record of a manifest line that is not a valid entry.
    pub fn invalid(location: Location, error: LineError) -> Outcome {
        Outcome {
            url: None,
            path: PathBuf::from(location.to_string()),
            status: Status::Failed,
            skip: None,
            error: Some(DownloadError::Invalid { location, error }),
            bytes: 0,
            received: 0,
            attempts: 0,
            http_status: None,
            elapsed: Default::default(),
            resumed_from: 0,
        }
    }
}

/// Download one entry; never fails, the outcome says how it went. `None`
/// when the run was interrupted before this entry began: like the manifest
/// lines not yet read, it is left for the next run and not reported.
pub async fn download(entry: Entry, ctx: Arc<Context>) -> Option<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome::start(&entry);
    let result = run(&entry, &ctx, &mut outcome).await;
    match result {
        Ok(Done::NotStarted) => return None,
        Ok(Done::Downloaded) => outcome.status = Status::Downloaded,
        Ok(Done::Skipped(reason)) => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(reason);
        }
        Err(error) => {
            outcome.status = Status::Failed;
            outcome.error = Some(error);
        }
    }
    outcome.elapsed = started.elapsed();
    Some(outcome)
}

enum Done {
    Downloaded,
    Skipped(SkipReason),
    NotStarted,
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

async fn run(entry: &Entry, ctx: &Context, outcome: &mut Outcome) -> Result<Done, DownloadError> {
    let dest = &entry.dest;
    if !ctx.overwrite && exists(dest) {
        return Ok(Done::Skipped(SkipReason::Exists));
    }
    // Entries of this run that share a destination go one at a time; a later
    // one finds the file in place, or the earlier one's success flag.
    let Some(dest_permit) = ctx.shutdown.unless_cancelled(ctx.destinations.acquire(dest.clone())).await
    else {
        return Ok(Done::NotStarted);
    };
    if dest_permit.done() || (!ctx.overwrite && exists(dest)) {
        return Ok(Done::Skipped(SkipReason::CompletedElsewhere));
    }
    ctx.rules.prepare_parent(dest)?;

    let host = entry.url.host_str().unwrap_or_default().to_owned()
        + ":"
        + &entry.url.port_or_known_default().unwrap_or(0).to_string();
    let Some(slot) = ctx.shutdown.unless_cancelled(ctx.limits.slot(&host)).await else {
        return Ok(Done::NotStarted);
    };
    let mut slot = Some(slot);

    let partial_error = |source| DownloadError::Partial { path: crate::fsx::part_paths(dest).0, source };
    let mut partial = match Partial::open(dest).map_err(partial_error)? {
        Opened::Locked(partial) => partial,
        Opened::Busy => return Ok(Done::Skipped(SkipReason::LockedByOtherProcess)),
    };
    // Another process may have finished the file while we waited for its lock.
    if !ctx.overwrite && exists(dest) {
        partial.discard().map_err(partial_error)?;
        return Ok(Done::Skipped(SkipReason::CompletedElsewhere));
    }

    let mut state = State { hasher: entry.sha256.map(|_| Sha256::new()), ..State::default() };
    resume_or_truncate(entry, ctx, &mut partial, &mut state).map_err(partial_error)?;
    outcome.resumed_from = state.offset;

    let headers = merged_headers(&ctx.headers, &entry.headers);
    let target = Target { client: &ctx.client, url: &entry.url, headers: &headers, size: entry.size };
    let progress = ctx.reporter.transfer(dest);
    let mut schedule = ctx.retry.schedule();
    let mut failures = 0u32;
    let mut high_water = state.offset;
    let mut restarted_for_checksum = false;
    loop {
        outcome.attempts += 1;
        let before = state.received;
        let result = transfer::attempt(&target, &mut state, &mut partial, &progress, &ctx.shutdown).await;
        outcome.received += state.received - before;
        outcome.http_status = state.http_status.or(outcome.http_status);
        outcome.bytes = state.offset;
        let error = match result.map_err(DownloadError::from).and_then(|()| verify(entry, &mut state)) {
            Ok(()) => break,
            // A digest over bytes spliced from several responses may be wrong
            // only because of a splice: one clean download from zero decides.
            Err(DownloadError::Checksum { .. }) if state.pieces > 1 && !restarted_for_checksum => {
                restarted_for_checksum = true;
                partial.truncate().map_err(partial_error)?;
                state = State { hasher: Some(Sha256::new()), ..State::default() };
                continue;
            }
            Err(error) => error,
        };
        let class = match &error {
            DownloadError::Attempt(e) => e.class(),
            _ => Class::Permanent,
        };
        if matches!(error, DownloadError::Attempt(AttemptError::Cancelled)) {
            partial.keep().map_err(partial_error)?;
            return Err(error);
        }
        if state.offset > high_water {
            high_water = state.offset;
            failures = 0;
            schedule = ctx.retry.schedule();
        }
        if class == Class::Permanent {
            partial.discard().map_err(partial_error)?;
            return Err(error);
        }
        if failures >= ctx.retry.retries {
            // Keep the bytes: the next run resumes them.
            partial.keep().map_err(partial_error)?;
            return Err(error);
        }
        failures += 1;
        let retry_after = match &error {
            DownloadError::Attempt(e) => e.retry_after(),
            _ => None,
        };
        let wait = schedule.next_delay(retry_after);
        ctx.reporter.retrying(dest, outcome.attempts, &error, wait);
        // Waiting does not occupy a connection slot.
        drop(slot.take());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = ctx.shutdown.cancelled() => {
                partial.keep().map_err(partial_error)?;
                return Err(AttemptError::Cancelled.into());
            }
        }
        slot = Some(ctx.limits.slot(&host).await);
    }
    drop(slot);

    let dest_owned = dest.clone();
    let overwrite = ctx.overwrite;
    let committed = tokio::task::spawn_blocking(move || partial.commit(&dest_owned, overwrite))
        .await
        .expect("commit task panicked")
        .map_err(DownloadError::Commit)?;
    match committed {
        Committed::Renamed => {
            dest_permit.mark_done();
            Ok(Done::Downloaded)
        }
        Committed::DestinationExists => Ok(Done::Skipped(SkipReason::CompletedElsewhere)),
    }
}

/// Trust the bytes of an earlier run only when their meta names the same URL
/// and a validator the server can confirm with `If-Range`.
fn resume_or_truncate(
    entry: &Entry,
    ctx: &Context,
    partial: &mut Partial,
    state: &mut State,
) -> std::io::Result<()> {
    if partial.is_empty() {
        return Ok(());
    }
    let meta = partial.meta().filter(|m| {
        ctx.resume
            && m.url == redact::url(&entry.url)
            && (m.etag.is_some() || m.last_modified.is_some())
            && m.total.is_none_or(|t| t >= partial.len())
    });
    let Some(meta) = meta else {
        return partial.truncate();
    };
    if let Some(hasher) = &mut state.hasher {
        // The digest must cover the bytes already on disk.
        tokio::task::block_in_place(|| partial.read_existing(|bytes| hasher.update(bytes)))?;
    }
    state.offset = partial.len();
    state.etag = meta.etag;
    state.last_modified = meta.last_modified;
    state.total = meta.total;
    state.pieces = 1;
    Ok(())
}

fn verify(entry: &Entry, state: &mut State) -> Result<(), DownloadError> {
    if let Some(expected) = entry.size.filter(|&s| s != state.offset) {
        return Err(DownloadError::Size { expected, actual: state.offset });
    }
    if let (Some(expected), Some(hasher)) = (entry.sha256, state.hasher.take()) {
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != expected {
            return Err(DownloadError::Checksum { expected: hex(&expected), actual: hex(&actual) });
        }
    }
    Ok(())
}

fn merged_headers(global: &HeaderMap, entry: &HeaderMap) -> HeaderMap {
    let mut headers = global.clone();
    for (name, value) in entry {
        // A manifest line's header replaces a -H header of the same name.
        headers.insert(name, value.clone());
    }
    headers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
