//! The dispatcher: manifest entries in, downloads spawned in manifest
//! order, outcomes out to the log, the summary and the report, one at a
//! time as they finish.
//!
//! Invariant: at most a bounded number of downloads exist at once (the
//! lookahead), so memory stays flat however long the manifest is; each
//! entry takes its [`crate::pool::Ticket`] here, in manifest order, so
//! slots go in that order whichever task the runtime polls first.
//!
//! Entries of a host that is paused or down wait aside, in a queue per host
//! (at most [`PARKED_MAX`] in all), and downloads waiting for such a host
//! do not count against the lookahead: healthy hosts keep their pace. A
//! gone host's entries fail at once ([`crate::hosts`]). An entry with
//! several URLs goes by the host it starts with ([`download::start_host`]),
//! and goes on to its other URLs rather than fail with one gone host.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use crate::commit;
use crate::download::{self, Context};
use crate::error::{AttemptError, DownloadError};
use crate::hosts::State;
use crate::manifest::{Entry, Item};
use crate::pool::Gate;
use crate::progress::Reporter;
use crate::report::{Outcome, Report, Summary};

#[derive(Debug)]
pub struct Dispatcher {
    ctx: Arc<Context>,
    reporter: Arc<Reporter>,
    report: Option<Report>,
    summary: Summary,
    tasks: JoinSet<Option<Outcome>>,
    /// Entries admitted ahead of a free slot, so that one slow host with
    /// --per-host does not idle the others, and a slot that frees finds the
    /// next download ready; bounded (a task is about 5 KiB), so memory
    /// stays flat. Downloads waiting for their commit do not count, up to
    /// its backlog. A smaller lookahead idled slots on one-byte files
    /// (commit 7206ed9).
    lookahead: usize,
    /// Entries of paused or down hosts, by host, in manifest order, with
    /// when they were set aside (their wait goes in the report).
    parked: HashMap<String, VecDeque<(Entry, Instant)>>,
    parked_len: usize,
    /// Entries whose host reopened, to start before any new one.
    ready: VecDeque<(Entry, Instant)>,
}

/// Entries that wait aside for their hosts, at most: about 20 MiB. Beyond
/// it the manifest is read no further until some start or fail.
pub const PARKED_MAX: usize = 50_000;

impl Dispatcher {
    pub fn new(ctx: Arc<Context>, reporter: Arc<Reporter>, report: Option<Report>) -> Dispatcher {
        let lookahead = ctx.net.limits.jobs() * 16 + 64;
        Dispatcher {
            ctx,
            reporter,
            report,
            summary: Summary::default(),
            tasks: JoinSet::new(),
            lookahead,
            parked: HashMap::new(),
            parked_len: 0,
            ready: VecDeque::new(),
        }
    }

    /// Download every entry that arrives on `items`, until the channel
    /// closes or Ctrl-C; entries not started then are left for the next
    /// run, unreported.
    pub async fn run(mut self, mut items: mpsc::Receiver<Vec<Item>>) -> Summary {
        let shutdown = self.ctx.net.shutdown.clone();
        let mut reading = true;
        // Read, not yet started: the rest of the reader's last batch.
        let mut unstarted = Vec::new().into_iter();
        loop {
            // Finished downloads first: each counts against the lookahead
            // until joined, and a barrier finishes many at once.
            while let Some(done) = self.tasks.try_join_next() {
                self.joined(done);
            }
            while self.has_room() {
                if let Some((entry, parked)) = self.ready.pop_front() {
                    let host = download::start_host(&entry, &self.ctx.net.limits);
                    self.spawn(entry, &host, parked.elapsed());
                } else if self.parked_len < PARKED_MAX
                    && let Some(item) = unstarted.next()
                {
                    self.start(item);
                } else {
                    break;
                }
            }
            if !reading
                && unstarted.len() == 0
                && self.tasks.is_empty()
                && self.parked_len == 0
                && self.ready.is_empty()
            {
                return self.summary;
            }
            let limits = &self.ctx.net.limits;
            tokio::select! {
                batch = items.recv(), if reading && unstarted.len() == 0 => match batch {
                    None => reading = false,
                    Some(batch) => unstarted = batch.into_iter(),
                },
                Some(done) = self.tasks.join_next() => self.joined(done),
                () = limits.changed(), if self.parked_len > 0 => self.unpark(),
                () = shutdown.cancelled(), if reading || unstarted.len() > 0 || self.parked_len > 0 => {
                    // Entries not started are left for the next run, unreported.
                    reading = false;
                    unstarted = Vec::new().into_iter();
                    self.parked.clear();
                    self.parked_len = 0;
                    self.ready.clear();
                }
            }
            if self.parked_len > 0 && self.tasks.is_empty() && self.ready.is_empty() {
                // Nothing out for the parked hosts: let one probe each.
                self.unpark();
            }
        }
    }

    /// Whether one more download may start: downloads waiting for a paused
    /// or down host do not count.
    fn has_room(&self) -> bool {
        let in_flight = self.tasks.len();
        let room = self.lookahead + self.ctx.committer.in_flight().min(commit::BACKLOG);
        in_flight < room || in_flight < room + self.ctx.net.limits.blocked_waiters().min(self.lookahead)
    }

    fn start(&mut self, item: Item) {
        match item {
            Item::Entry(entry) => {
                let host = download::start_host(&entry, &self.ctx.net.limits);
                if let Some(queue) = self.parked.get_mut(&host) {
                    queue.push_back((*entry, Instant::now()));
                    self.parked_len += 1;
                    return;
                }
                match self.ctx.net.limits.gate(&host) {
                    Gate::Open | Gate::Probe => self.spawn(*entry, &host, Duration::ZERO),
                    Gate::Blocked => {
                        self.parked.entry(host).or_default().push_back((*entry, Instant::now()));
                        self.parked_len += 1;
                    }
                    // Its other URLs' hosts are gone too: the download names each.
                    Gate::Gone(_) if !entry.mirrors.is_empty() => self.spawn(*entry, &host, Duration::ZERO),
                    Gate::Gone(unavailable) => self.fail(&entry, Duration::ZERO, unavailable),
                }
            }
            Item::Invalid { location, error } => self.finish(Outcome::invalid(location, error)),
            Item::ReadFailed { source, error } => {
                self.reporter.error(&format_args!("cannot read manifest {source}: {error}"));
                self.summary.manifest_error = true;
            }
        }
    }

    /// Start `entry`, which `waited` aside for its host.
    fn spawn(&mut self, entry: Entry, host: &str, waited: Duration) {
        // Taken here, in manifest order: slots go by tickets.
        let ticket = self.ctx.net.limits.ticket(host);
        self.tasks.spawn(download::download(entry, ticket, self.ctx.clone(), waited));
    }

    /// Move the entries of hosts that reopened to the ready queue (one, for
    /// a down host that nobody probes), and fail those of gone hosts.
    fn unpark(&mut self) {
        let hosts: Vec<String> = self.parked.keys().cloned().collect();
        for host in hosts {
            match self.ctx.net.limits.gate(&host) {
                Gate::Blocked => {}
                Gate::Probe => {
                    let queue = self.parked.get_mut(&host).expect("a parked host has a queue");
                    self.ready.extend(queue.pop_front());
                    self.parked_len -= 1;
                    if queue.is_empty() {
                        self.parked.remove(&host);
                    }
                }
                Gate::Open => {
                    let queue = self.parked.remove(&host).unwrap_or_default();
                    self.parked_len -= queue.len();
                    self.ready.extend(queue);
                }
                Gate::Gone(unavailable) => {
                    let queue = self.parked.remove(&host).unwrap_or_default();
                    self.parked_len -= queue.len();
                    for (entry, parked) in queue {
                        if entry.mirrors.is_empty() {
                            self.fail(&entry, parked.elapsed(), unavailable.clone());
                        } else {
                            // Another of its URLs may serve it.
                            self.ready.push_back((entry, parked));
                        }
                    }
                }
            }
        }
    }

    /// An entry whose host is gone: failed without a request.
    fn fail(&mut self, entry: &Entry, waited: Duration, unavailable: crate::pool::Unavailable) {
        let mut outcome = Outcome::start(entry);
        outcome.waited = waited;
        outcome.error = Some(DownloadError::Attempt(AttemptError::Unavailable(unavailable)));
        self.finish(outcome);
    }

    fn joined(&mut self, joined: Result<Option<Outcome>, JoinError>) {
        match joined {
            Ok(Some(outcome)) => self.finish(outcome),
            Ok(None) => {}
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(DownloadError::Attempt(AttemptError::Unavailable(gone))) = &outcome.error {
            // Gone by its timer as well as by a failure: logged here.
            self.reporter.host_state(&gone.host, &State::Gone { since: gone.since });
        }
        self.reporter.finished(&outcome);
        self.summary.add(&outcome);
        if let Some(writer) = &mut self.report
            && let Err(e) = writer.write(&outcome)
        {
            if e.kind() != io::ErrorKind::BrokenPipe {
                self.reporter.error(&format_args!("cannot write the report: {e}"));
                self.summary.report_failed = true;
            }
            self.report = None;
        }
    }
}
