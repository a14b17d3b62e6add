//! The dispatcher: manifest entries in, downloads spawned in manifest
//! order, outcomes out to the log, the summary and the report, one at a
//! time as they finish.
//!
//! Invariant: at most a bounded number of downloads exist at once (the
//! lookahead), so memory stays flat however long the manifest is; each
//! entry takes its [`crate::pool::Ticket`] here, in manifest order, so
//! slots go in that order whichever task the runtime polls first.

use std::io;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use crate::commit;
use crate::download::{self, Context};
use crate::manifest::Item;
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
}

impl Dispatcher {
    pub fn new(ctx: Arc<Context>, reporter: Arc<Reporter>, report: Option<Report>) -> Dispatcher {
        let lookahead = ctx.net.limits.jobs() * 16 + 64;
        Dispatcher { ctx, reporter, report, summary: Summary::default(), tasks: JoinSet::new(), lookahead }
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
            while self.tasks.len() < self.lookahead + self.ctx.committer.in_flight().min(commit::BACKLOG)
                && let Some(item) = unstarted.next()
            {
                self.start(item);
            }
            if !reading && unstarted.len() == 0 && self.tasks.is_empty() {
                return self.summary;
            }
            tokio::select! {
                batch = items.recv(), if reading && unstarted.len() == 0 => match batch {
                    None => reading = false,
                    Some(batch) => unstarted = batch.into_iter(),
                },
                Some(done) = self.tasks.join_next() => self.joined(done),
                () = shutdown.cancelled(), if reading || unstarted.len() > 0 => {
                    reading = false;
                    unstarted = Vec::new().into_iter();
                }
            }
        }
    }

    fn start(&mut self, item: Item) {
        match item {
            Item::Entry(entry) => {
                // Taken here, in manifest order: slots go by tickets.
                let ticket = self.ctx.net.limits.ticket(&download::host_key(&entry.url));
                self.tasks.spawn(download::download(*entry, ticket, self.ctx.clone()));
            }
            Item::Invalid { location, error } => self.finish(Outcome::invalid(location, error)),
            Item::ReadFailed { source, error } => {
                self.reporter.error(&format_args!("cannot read manifest {source}: {error}"));
                self.summary.manifest_error = true;
            }
        }
    }

    fn joined(&mut self, joined: Result<Option<Outcome>, JoinError>) {
        match joined {
            Ok(Some(outcome)) => self.finish(outcome),
            Ok(None) => {}
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn finish(&mut self, outcome: Outcome) {
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
