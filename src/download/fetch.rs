//! The attempts for one file: resume what an earlier run left if its
//! validator still holds, run attempts (whole-file, or ranged once the
//! server shows it takes ranges) until the file is complete and verified,
//! and, when the entry fails, decide in one place ([`settle`]) what becomes
//! of its partial file.
//!
//! Every failed attempt passes through [`Net::retry`], which the ranged
//! transfers of [`crate::segments`] use too.

use std::sync::Arc;

use reqwest::Url;
use reqwest::header::HeaderMap;

use super::mirror::{self, Walk};
use super::{Context, host_key, partial_error};
use crate::config::SplitPolicy;
use crate::error::{AttemptError, DownloadError};
use crate::fsx::Partial;
use crate::manifest::Entry;
use crate::net::{Failure, Stop};
use crate::pool::Slot;
use crate::progress::TransferProgress;
use crate::redact;
use crate::report::Outcome;
use crate::retry::{self, Budget, Class};
use crate::segments;
use crate::transfer::{self, Attempted, State, Target};
use crate::validators::{Condition, Validators};

/// One entry's transfer, from its partial file's first byte to its last.
struct Transfer<'a> {
    entry: &'a Entry,
    ctx: &'a Arc<Context>,
    /// The URL in use: the entry's first, or another of its `urls`.
    url: &'a Url,
    host: String,
    headers: HeaderMap,
    /// Split large files; `None` once a split failed or this file is known
    /// to be too small.
    split: Option<SplitPolicy>,
    progress: Arc<TransferProgress>,
    state: State,
    /// `--refresh`: the condition for the file on disk.
    condition: Option<Condition>,
}

/// How the attempts for a file ended well.
pub(super) enum Fetched {
    /// Every byte is in the partial file, verified.
    Complete(Partial),
    /// The server's file is the one on disk (`--refresh`).
    Unchanged,
}

/// Where an attempt left the entry.
enum Step {
    /// Every byte is in the partial file, verified.
    Complete,
    /// The condition held: nothing to download.
    Unchanged,
    /// The server answered ranges of a split download wrongly: the file
    /// restarts as one plain stream.
    Unsplit,
    /// The digest of bytes spliced from several responses does not match:
    /// it may be wrong only because of a splice, so one plain stream from
    /// zero decides, once.
    Spliced(DownloadError),
    /// The attempt failed; [`Net::retry`] weighs it.
    Failed(DownloadError),
    /// A split download failed after its ranges were retried on their own.
    Final(DownloadError),
}

/// Run attempts until the file is complete and verified in `partial`, or
/// the failure stands at every URL of the entry; then the partial is
/// settled ([`settle`]).
pub(super) async fn fetch(
    entry: &Entry,
    ctx: &Arc<Context>,
    mut partial: Partial,
    slot: &mut Option<Slot>,
    outcome: &mut Outcome,
    condition: Option<Condition>,
) -> Result<Fetched, DownloadError> {
    let dest = &entry.dest;
    let mut walk = Walk::new(entry, &ctx.net.limits);
    let url = walk.url();
    let mut t = Transfer::new(entry, ctx, url, condition);
    if slot.as_ref().is_some_and(|slot| slot.host() != t.host) {
        // Taken for another of the entry's URLs, whose host was better then.
        drop(slot.take());
    }
    let mut resumed =
        resume_or_truncate(entry, ctx, url, &mut partial, &mut t.state).map_err(partial_error(dest))?;
    outcome.resumed_from = match &resumed {
        Some(done) => done.iter().map(|[s, e]| e - s).sum(),
        None => t.state.offset,
    };
    let mut budget = Budget::new(ctx.net.retry, t.state.offset);
    let mut restarted_for_checksum = false;
    let (error, class) = loop {
        match ctx.net.slot(&t.host, slot).await {
            Ok(waited) => outcome.waited += waited,
            Err(error) => {
                let stood = (error.into(), Class::Cancelled, false);
                match t.fall_back(&mut walk, stood, &mut partial, slot, &mut budget)? {
                    Some(stands) => break stands,
                    None => continue,
                }
            }
        }
        if !ctx.resume && t.state.offset > 0 {
            // --no-resume: a retry starts from zero too, without Range.
            t.restart(&mut partial).map_err(partial_error(dest))?;
        }
        let error = match t.step(&mut partial, resumed.take(), slot, outcome).await {
            Step::Complete => return Ok(Fetched::Complete(t.finished(partial, &walk, outcome))),
            Step::Unchanged => {
                // Bytes of another version an earlier run left are no use.
                partial.discard().map_err(partial_error(dest))?;
                return Ok(Fetched::Unchanged);
            }
            Step::Spliced(_) if !restarted_for_checksum => {
                restarted_for_checksum = true;
                t.restart_plain(&mut partial).map_err(partial_error(dest))?;
                continue;
            }
            Step::Unsplit => {
                t.restart_plain(&mut partial).map_err(partial_error(dest))?;
                continue;
            }
            Step::Final(error) => {
                let class = retry::classify(&error);
                match t.fall_back(&mut walk, (error, class, true), &mut partial, slot, &mut budget)? {
                    Some(stands) => break stands,
                    None => continue,
                }
            }
            Step::Spliced(error) | Step::Failed(error) => error,
        };
        let class = retry::classify(&error);
        let retried = t.retry(&error, class, walk.has_next(), slot, &mut budget, outcome).await;
        match retried {
            Ok(()) => {}
            Err(Stop::GaveUp) => {
                match t.fall_back(&mut walk, (error, class, false), &mut partial, slot, &mut budget)? {
                    Some(stands) => break stands,
                    None => continue,
                }
            }
            Err(Stop::Cancelled) => break (AttemptError::Cancelled.into(), Class::Cancelled),
        }
    };
    settle(partial, class).map_err(partial_error(dest))?;
    Err(walk.finish(error))
}

/// What becomes of the partial file of an entry that failed with `class`:
/// kept for the next run to resume, unless the failure makes its bytes
/// useless (the server refuses the file, or it does not match the
/// manifest). Interrupted, out of descriptors or out of retries, the bytes
/// are good.
fn settle(partial: Partial, class: Class) -> std::io::Result<()> {
    match class {
        Class::Permanent => partial.discard(),
        Class::Transient | Class::Cancelled | Class::OutOfDescriptors => partial.keep(),
    }
}

impl<'a> Transfer<'a> {
    fn new(entry: &'a Entry, ctx: &'a Arc<Context>, url: &'a Url, condition: Option<Condition>) -> Self {
        let host = host_key(url);
        Transfer {
            entry,
            ctx,
            url,
            progress: Arc::new(ctx.net.reporter.transfer(&entry.dest, &host)),
            host,
            headers: merged_headers(&ctx.headers, &entry.headers),
            split: ctx.net.split.filter(|p| entry.size.is_none_or(|size| size >= p.min_size)),
            state: State::for_entry(&entry.checksums),
            condition,
        }
    }

    /// The file is complete in `partial`: give it the server's time (unless
    /// `--no-remote-time`) and its validators, and say which URL served it.
    fn finished(&self, mut partial: Partial, walk: &Walk<'_>, outcome: &mut Outcome) -> Partial {
        let state = &self.state;
        let modified = state.last_modified.as_deref().and_then(|v| httpdate::parse_http_date(v).ok());
        if let Some(time) = modified.filter(|_| self.ctx.remote_time) {
            partial.set_modified(time);
        }
        partial.set_validators(Validators::new(state.etag.as_deref(), state.last_modified.as_deref()));
        outcome.served_by = walk.served_by();
        partial
    }

    /// The one retry step ([`crate::net::Net::retry`]) after `error`; the
    /// time it waited for the host goes to the report.
    async fn retry(
        &self,
        error: &DownloadError,
        class: Class,
        fallback: bool,
        slot: &mut Option<Slot>,
        budget: &mut Budget,
        outcome: &mut Outcome,
    ) -> Result<(), Stop> {
        let attempt_error = match error {
            DownloadError::Attempt(e) => Some(e),
            _ => None,
        };
        let failure = Failure {
            error,
            class,
            trouble: attempt_error.and_then(retry::trouble),
            retry_after: attempt_error.and_then(AttemptError::retry_after),
            position: self.state.offset,
            host: &self.host,
            dest: &self.entry.dest,
            attempt: outcome.attempts,
            fallback,
        };
        let retried = self.ctx.net.retry(budget, failure, slot).await;
        outcome.waited += std::mem::take(&mut budget.host_waited);
        retried
    }

    /// After `stood` (the error, its class, and whether it ended a split
    /// download) ended the attempts at the URL in use: go on at the next
    /// URL if the walk leaves this one (`None`), with the bytes on disk
    /// when [`mirror::may_continue`] says so, a fresh retry budget and a
    /// slot of the next host; else the failure stands.
    fn fall_back(
        &mut self,
        walk: &mut Walk<'a>,
        stood: (DownloadError, Class, bool),
        partial: &mut Partial,
        slot: &mut Option<Slot>,
        budget: &mut Budget,
    ) -> Result<Option<(DownloadError, Class)>, DownloadError> {
        let (error, class, split) = stood;
        if !walk.leaves(&error) {
            return Ok(Some((error, class)));
        }
        let keep = mirror::may_continue(&error, &self.state, split);
        let (from, why) = (redact::url(self.url), error.to_string());
        let url = walk.advance(error, &self.ctx.net.limits);
        let dest = &self.entry.dest;
        self.ctx.net.reporter.fallback(dest, &from, &why, &redact::url(url));
        drop(slot.take());
        self.url = url;
        self.host = host_key(url);
        self.progress = Arc::new(self.ctx.net.reporter.transfer(dest, &self.host));
        self.split = self.ctx.net.split.filter(|p| self.entry.size.is_none_or(|size| size >= p.min_size));
        if !keep {
            self.restart(partial).map_err(partial_error(dest))?;
        }
        *budget = Budget::new(self.ctx.net.retry, self.state.offset);
        Ok(None)
    }

    /// One attempt (or, for a split file, one round of ranged requests),
    /// accounted in `outcome` and verified.
    async fn step(
        &mut self,
        partial: &mut Partial,
        resumed: Option<Vec<[u64; 2]>>,
        slot: &mut Option<Slot>,
        outcome: &mut Outcome,
    ) -> Step {
        let before = self.state.received;
        // `Some` to go on as a split download: the response streaming the
        // file from byte 0, if any, and the ranges already on disk.
        let attempted = match resumed {
            // An earlier run's split download goes on as one.
            Some(done) => Ok(Some((None, done))),
            None => {
                outcome.attempts += 1;
                let target = Target {
                    net: &self.ctx.net,
                    host: &self.host,
                    url: self.url,
                    headers: &self.headers,
                    size: self.entry.size,
                    split: self.split,
                    condition: self.condition.as_ref(),
                };
                let shutdown = &self.ctx.net.shutdown;
                let attempted =
                    transfer::attempt(&target, &mut self.state, partial, &self.progress, shutdown);
                match attempted.await {
                    Ok(Attempted::Unchanged) => {
                        outcome.http_status = self.state.http_status;
                        return Step::Unchanged;
                    }
                    Ok(Attempted::Complete) => Ok(None),
                    Ok(Attempted::Segments(first)) => Ok(Some((Some(first), Vec::new()))),
                    Err(error) => Err(error),
                }
            }
        };
        let result = match attempted {
            Ok(None) => Ok(()),
            Ok(Some((first, done))) => {
                match self.segments(partial, first, done, slot.take(), outcome).await {
                    Ok(()) => Ok(()),
                    Err(AttemptError::BadRange(reason)) => {
                        // The server cannot be trusted with ranges of this file.
                        self.progress.unsplit(&reason);
                        return Step::Unsplit;
                    }
                    Err(error) => return Step::Final(error.into()),
                }
            }
            Err(error) => Err(DownloadError::from(error)),
        };
        outcome.received += self.state.received - before;
        outcome.http_status = self.state.http_status.or(outcome.http_status);
        outcome.bytes = self.state.offset;
        match result.and_then(|()| verify(self.entry, &mut self.state)) {
            Ok(()) => Step::Complete,
            // A digest over bytes spliced from several responses may be
            // wrong only because of a splice.
            Err(error @ DownloadError::Checksum { .. }) if self.state.pieces > 1 => Step::Spliced(error),
            Err(error) => Step::Failed(error),
        }
    }

    /// Fetch the missing ranges of a file the server serves in ranges; on
    /// success `state` describes the whole file, digest included.
    async fn segments(
        &mut self,
        partial: &mut Partial,
        first: Option<reqwest::Response>,
        done: Vec<[u64; 2]>,
        slot: Option<Slot>,
        outcome: &mut Outcome,
    ) -> Result<(), AttemptError> {
        let state = &mut self.state;
        let total = state.total.expect("only files of known length are split");
        let resource = segments::Resource {
            url: self.url.clone(),
            headers: self.headers.clone(),
            host: self.host.clone(),
            dest: self.entry.dest.clone(),
            meta: state.meta(self.url),
            total,
            if_range: state.if_range().expect("only files with a validator are split").to_owned(),
        };
        let connections = self.split.map_or(1, |p| p.connections);
        let net = &self.ctx.net;
        let start = segments::Start { first, done, slot };
        let progress = self.progress.clone();
        let (stats, result) = segments::run(net, resource, connections, partial, start, progress).await;
        outcome.attempts += stats.requests;
        outcome.received += stats.received;
        result?;
        state.http_status = state.http_status.or(Some(206));
        state.offset = total;
        state.pieces += stats.requests.max(1);
        if !state.digests.is_empty() {
            // Ranges arrive out of order: the digests are taken from the file.
            let digests = &mut state.digests;
            digests.reset();
            tokio::task::block_in_place(|| partial.read_existing(|bytes| digests.update(bytes)))
                .map_err(AttemptError::Disk)?;
        }
        Ok(())
    }

    /// Start the file over: nothing of it on disk, nothing known of it.
    fn restart(&mut self, partial: &mut Partial) -> std::io::Result<()> {
        partial.truncate()?;
        self.state = State::for_entry(&self.entry.checksums);
        Ok(())
    }

    /// Start the file over as one plain stream, never split again.
    fn restart_plain(&mut self, partial: &mut Partial) -> std::io::Result<()> {
        self.split = None;
        self.restart(partial)
    }
}

/// Trust the bytes of an earlier run only when their meta names the same
/// URL (or another of the entry's, [`mirror::may_resume`]) and a validator the server can confirm with `If-Range`. On return
/// `state` describes what is kept: a prefix of `state.offset` bytes, or
/// (`Some`) the ranges of a split download, the file at its full length.
fn resume_or_truncate(
    entry: &Entry,
    ctx: &Context,
    url: &Url,
    partial: &mut Partial,
    state: &mut State,
) -> std::io::Result<Option<Vec<[u64; 2]>>> {
    if partial.is_empty() {
        return Ok(None);
    }
    let meta = partial.meta().filter(|m| {
        ctx.resume
            && mirror::may_resume(entry, url, m)
            && (m.etag.is_some() || m.last_modified.is_some())
            && m.total.is_none_or(|t| t >= partial.len())
    });
    let Some(meta) = meta else {
        partial.truncate()?;
        return Ok(None);
    };
    state.etag = meta.etag;
    state.last_modified = meta.last_modified;
    state.total = meta.total;
    if let Some(done) = meta.done {
        if meta.total != Some(partial.len()) || state.if_range().is_none() {
            *state = State::for_entry(&entry.checksums);
            partial.truncate()?;
            return Ok(None);
        }
        return Ok(Some(done));
    }
    if !state.digests.is_empty() {
        // The digests must cover the bytes already on disk.
        let digests = &mut state.digests;
        tokio::task::block_in_place(|| partial.read_existing(|bytes| digests.update(bytes)))?;
    }
    state.offset = partial.len();
    state.pieces = 1;
    Ok(None)
}

fn verify(entry: &Entry, state: &mut State) -> Result<(), DownloadError> {
    if let Some(expected) = entry.size.filter(|&s| s != state.offset) {
        return Err(DownloadError::Size { expected, actual: state.offset });
    }
    std::mem::take(&mut state.digests).verify(&entry.checksums).map_err(DownloadError::Checksum)
}

fn merged_headers(global: &HeaderMap, entry: &HeaderMap) -> HeaderMap {
    let mut headers = global.clone();
    for (name, value) in entry {
        // A manifest line's header replaces a -H header of the same name.
        headers.insert(name, value.clone());
    }
    headers
}
