//! One manifest entry from start to [`Outcome`]: skip if the destination
//! exists, lock its partial file, decide whether the bytes already there can
//! be resumed, run attempts until one succeeds or the failure stands,
//! verify, and commit.
//!
//! A large file on a server that takes ranges is handed to
//! [`crate::segments`] once its first response shows that; if the server
//! then misbehaves with ranges, the file restarts here as one stream.
//!
//! The attempts themselves, and what becomes of the partial file when the
//! entry fails, are the job of the `fetch` submodule.

mod fetch;
mod mirror;

use fetch::Fetched;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use crate::commit::Committer;
use crate::dest::{self, DestTree, Found};
use crate::error::{AttemptError, DownloadError};
use crate::fsx::{Committed, Dir, Opened, Partial};
use crate::manifest::{Entry, LineError};
use crate::net::Net;
use crate::pool::{Gate, Keyed, KeyedPermit, Slot, Ticket};
use crate::report::{Outcome, SkipReason, Status};
use crate::retry::{self, Class};
use crate::validators::{self, Condition, Plan};

pub use mirror::start_host;

/// What every download of a run shares.
#[derive(Debug)]
pub struct Context {
    pub net: Arc<Net>,
    pub committer: Committer,
    /// One in-flight download per destination within this run.
    pub destinations: Keyed<PathBuf>,
    pub tree: DestTree,
    pub headers: HeaderMap,
    pub overwrite: bool,
    /// `--refresh`: an existing file is asked about with a condition.
    pub refresh: bool,
    pub resume: bool,
    /// Give files the server's `Last-Modified` as their mtime.
    pub remote_time: bool,
}

/// The `--per-host` key of `url`: host and port.
pub fn host_key(url: &reqwest::Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
        + ":"
        + &url.port_or_known_default().unwrap_or(0).to_string()
}

/// Download one entry, whose place in line for a slot is `ticket`, and
/// which has `waited` aside for its host already; never
/// fails, the outcome says how it went. `None` when the run was interrupted
/// before this entry began: like the manifest lines not yet read, it is
/// left for the next run and not reported.
///
/// Out of file descriptors (EMFILE, ENFILE), wherever that happened (the
/// connection, the part file, the commit), the entry is not failed: the run
/// goes on with fewer downloads at once ([`crate::pool::Limits::lower`])
/// and the entry starts over, resuming what it wrote, for as long as other
/// downloads or commits hold descriptors that they will give back.
pub async fn download(entry: Entry, ticket: Ticket, ctx: Arc<Context>, waited: Duration) -> Option<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome::start(&entry);
    outcome.waited = waited;
    let mut ticket = Some(ticket);
    let mut alone = 0;
    let mut vanished = false;
    let limits = &ctx.net.limits;
    let result = loop {
        let generation = limits.generation();
        let ticket = ticket.take().unwrap_or_else(|| limits.ticket(&start_host(&entry, limits)));
        let result = run(&entry, ticket, &ctx, &mut outcome).await;
        let Err(error) = &result else { break result };
        if error.is_directory_removed() && !std::mem::replace(&mut vanished, true) {
            // Removed while the file was on its way, by another run that
            // found it empty (or by anyone): made again, once.
            ctx.tree.forget_parent(&entry.dest);
            continue;
        }
        if retry::classify(error) != Class::OutOfDescriptors {
            break result;
        }
        // With nothing else in flight, nobody will give descriptors back.
        alone = if limits.in_use() > 0 || ctx.committer.in_flight() > 0 { 0 } else { alone + 1 };
        if alone > OUT_OF_DESCRIPTORS_ALONE {
            break result;
        }
        if let Some(jobs) = limits.lower(generation)
            && limits.first_to_tell()
        {
            let jobs = if jobs == 1 { "1 download".to_owned() } else { format!("{jobs} downloads") };
            ctx.net.reporter.error(&format_args!("too many open files: {jobs} at once from now on"));
        }
        ctx.net.reporter.retrying(&entry.dest, outcome.attempts, error, OUT_OF_DESCRIPTORS_WAIT);
        tokio::select! {
            () = tokio::time::sleep(OUT_OF_DESCRIPTORS_WAIT) => {}
            () = ctx.net.shutdown.cancelled() => break Err(AttemptError::Cancelled.into()),
        }
    };
    outcome.elapsed = started.elapsed();
    record(&mut outcome, result)?;
    Some(outcome)
}

/// Times an entry that ran out of file descriptors with nothing else in
/// flight starts over before it fails.
const OUT_OF_DESCRIPTORS_ALONE: u32 = 3;
/// How long such an entry waits first, for the committer to catch up.
const OUT_OF_DESCRIPTORS_WAIT: Duration = Duration::from_millis(50);

/// How an entry ended, but for failures.
enum Done {
    Downloaded,
    /// `--refresh`: the server's file is the one in place.
    Unchanged,
    Skipped(SkipReason),
    /// Interrupted before it began: not reported.
    NotStarted,
}

/// Record in `outcome` how the entry ended; `None` for one that never began.
fn record(outcome: &mut Outcome, result: Result<Done, DownloadError>) -> Option<()> {
    match result {
        Ok(Done::NotStarted) => return None,
        Ok(Done::Downloaded) => outcome.status = Status::Downloaded,
        Ok(Done::Unchanged) => outcome.status = Status::Unchanged,
        Ok(Done::Skipped(reason)) => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(reason);
        }
        // Another fetch process took the part file after this one
        // looked for it: that process has the entry.
        Err(error) if error.is_locked_by_other_process() => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(SkipReason::LockedByOtherProcess);
        }
        Err(error) => {
            outcome.status = Status::Failed;
            outcome.error = Some(error);
        }
    }
    Some(())
}

/// An entry that has its destination to itself, a slot, and its locked
/// partial file.
struct Claimed {
    permit: KeyedPermit<PathBuf>,
    slot: Option<Slot>,
    partial: Partial,
    /// The destination holds a file of the wrong size: replace it.
    replace: bool,
    /// `--refresh`: the condition for the file in place, replaced if it fails.
    condition: Option<Condition>,
    /// The wait for its first slot, if its host was paused or down.
    waited: Duration,
}

async fn run(
    entry: &Entry,
    ticket: Ticket,
    ctx: &Arc<Context>,
    outcome: &mut Outcome,
) -> Result<Done, DownloadError> {
    let claimed = match claim(entry, ticket, ctx).await? {
        Ok(claimed) => claimed,
        Err(done) => return Ok(done),
    };
    let Claimed { permit, mut slot, partial, replace, condition, waited } = claimed;
    outcome.waited += waited;
    let transfer_started = Instant::now();
    let fetched = fetch::fetch(entry, ctx, partial, &mut slot, outcome, condition).await?;
    outcome.transfer = Some(transfer_started.elapsed());
    let Fetched::Complete(partial) = fetched else {
        permit.mark_done();
        return Ok(Done::Unchanged);
    };
    let dest = &entry.dest;
    let pending = ctx
        .committer
        .submit(partial, dest.clone(), ctx.overwrite || replace)
        .await
        .map_err(DownloadError::Commit)?;
    drop(slot);
    match pending.wait().await.map_err(DownloadError::Commit)? {
        Committed::Renamed => {
            ctx.tree.note_placed(dest);
            permit.mark_done();
            Ok(Done::Downloaded)
        }
        Committed::DestinationExists => {
            // Another process works in this directory too: look before
            // downloading into it from now on.
            ctx.tree.distrust_parent(dest);
            Ok(Done::Skipped(SkipReason::CompletedElsewhere))
        }
    }
}

/// Everything before the first request: the checks that may skip the
/// entry, its turn at its destination, a slot, its directory and its
/// partial file. `Ok(Err(done))` when the entry ends here.
async fn claim(
    entry: &Entry,
    mut ticket: Ticket,
    ctx: &Arc<Context>,
) -> Result<Result<Claimed, Done>, DownloadError> {
    let dest = &entry.dest;
    ctx.tree.check_protected(dest).map_err(|error| DownloadError::Invalid {
        location: entry.location.clone(),
        error: LineError::Dest(error),
    })?;
    let shutdown = &ctx.net.shutdown;
    // Not looked for where this run knows it cannot be: a system call per
    // entry saved, 10% of the CPU on 1-byte files in new directories.
    // A refresh looks later, from the directory's handle (`validators::plan`).
    let unknown = !ctx.overwrite && !ctx.refresh && ctx.tree.may_exist(dest);
    let mut found = if unknown { dest::look(dest, entry.size) } else { Found::Nothing };
    if found == Found::Keep {
        return Ok(Err(Done::Skipped(SkipReason::Exists)));
    }
    // Entries of this run that share a destination go one at a time; a later
    // one finds the file in place, or the earlier one's success flag. Until
    // it has a slot, nothing here waits with the ticket held: the tickets
    // behind it would wait too (see [`crate::pool::Limits`]), for an entry
    // that may itself be waiting for a slot.
    let permit = match ctx.destinations.try_acquire(dest.clone()) {
        Some(permit) => permit,
        None => {
            drop(ticket);
            let acquire = ctx.destinations.acquire(dest.clone());
            let Some(permit) = shutdown.unless_cancelled(acquire).await else {
                return Ok(Err(Done::NotStarted));
            };
            ticket = ctx.net.limits.ticket(&start_host(entry, &ctx.net.limits));
            permit
        }
    };
    // Another process may finish the file too; the commit never replaces
    // it (`RENAME_NOREPLACE`), so looking again here would only cost every
    // entry a system call to save a rare race a download.
    if permit.done() {
        return Ok(Err(Done::Skipped(SkipReason::CompletedElsewhere)));
    }
    // An earlier entry for this destination may have placed it between the
    // look above and this turn; the filter tells, and only then the disk.
    if !ctx.overwrite && !ctx.refresh && !unknown && ctx.tree.may_have_placed(dest) {
        found = dest::look(dest, entry.size);
        if found == Found::Keep {
            return Ok(Err(Done::Skipped(SkipReason::Exists)));
        }
    }
    let Some((slot, waited)) = take_slot(entry, ticket, ctx).await? else {
        return Ok(Err(Done::NotStarted));
    };
    // Opened with a slot, not before: the entries waiting in the lookahead
    // hold no directory descriptors (with `ulimit -n 20` those alone ran
    // the run out of them).
    let parent = ctx.tree.prepare_parent(dest)?;
    if parent.first {
        ctx.committer.watch(&parent.handle);
    }
    match Partial::open(parent.handle.clone(), dest, !parent.fresh).map_err(partial_error(dest))? {
        Opened::Locked(partial) => {
            let (replace, condition) = match refresh(entry, ctx, &parent.handle)? {
                _ if !ctx.refresh => (found == Found::WrongSize, None),
                Some(Plan::Keep) => return Ok(Err(Done::Skipped(SkipReason::Exists))),
                None | Some(Plan::Download) => (false, None),
                Some(Plan::Replace) => (true, None),
                Some(Plan::Ask(condition)) => (true, Some(condition)),
            };
            Ok(Ok(Claimed { permit, slot, partial, replace, condition, waited }))
        }
        Opened::Busy => Ok(Err(Done::Skipped(SkipReason::LockedByOtherProcess))),
    }
}

/// The slot `ticket` waits for, and how long it waited for a host that was
/// paused or down; `None` when the run was interrupted first. No slot when
/// the host went and the entry has other URLs to try (`fetch`).
async fn take_slot(
    entry: &Entry,
    ticket: Ticket,
    ctx: &Context,
) -> Result<Option<(Option<Slot>, Duration)>, DownloadError> {
    let blocked = ctx.net.limits.gate(ticket.host()) != Gate::Open;
    let asked = Instant::now();
    let Some(slot) = ctx.net.shutdown.unless_cancelled(ticket.slot()).await else {
        return Ok(None);
    };
    let slot = match slot {
        Ok(slot) => Some(slot),
        Err(_) if !entry.mirrors.is_empty() => None,
        Err(gone) => return Err(AttemptError::from(gone).into()),
    };
    Ok(Some((slot, if blocked { asked.elapsed() } else { Duration::ZERO })))
}

/// `--refresh`: what to do with the file at the entry's destination,
/// looked at through its directory's handle; `None` without `--refresh`
/// or where the run knows there is none.
fn refresh(entry: &Entry, ctx: &Context, dir: &Dir) -> Result<Option<Plan>, DownloadError> {
    if !ctx.refresh || !ctx.tree.may_exist(&entry.dest) {
        return Ok(None);
    }
    let name = entry.dest.file_name().unwrap_or_default();
    let plan = validators::plan(dir, name, entry.size).map_err(AttemptError::Disk)?;
    Ok(Some(plan))
}

fn partial_error(dest: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Partial { path: crate::fsx::part_paths(dest).0, source }
}
