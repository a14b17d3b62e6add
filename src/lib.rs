//! `fetch`: a bulk downloader. The data flow, one module each:
//!
//! manifest line -> [`manifest::Entry`] -> [`download`] (skip? resume?) ->
//! [`transfer`] attempt -> [`fsx`] partial file -> verify -> rename ->
//! [`report::Outcome`] -> [`progress`] line and [`report`] record.
//!
//! [`run`] wires them together: a reader thread streams the manifest into a
//! bounded channel, the dispatcher spawns at most a bounded number of
//! downloads, and outcomes are handled one at a time as they finish.

pub mod cli;
pub mod config;
pub mod dest;
pub mod download;
pub mod fsx;
pub mod manifest;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod redact;
pub mod report;
pub mod retry;
pub mod segments;
pub mod shard;
pub mod shutdown;
pub mod transfer;

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::download::Context;
use crate::manifest::{Item, Reader};
use crate::pool::{Keyed, Limits};
use crate::progress::Reporter;
use crate::report::{Outcome, Report, Summary};
use crate::shutdown::Shutdown;

/// A failure of the run as a whole (exit status 2), as opposed to an entry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot start: {0}")]
    Runtime(io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("cannot open the report {path}: {source}")]
    Report { path: String, source: io::Error },
}

/// Run the downloads that `config` describes.
pub fn run(config: Config) -> Result<Summary, Error> {
    if config.dry_run {
        let reporter = Reporter::new(config.verbosity, progress::Display::Log);
        return Ok(plan::run(config, &reporter));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::Runtime)?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<Summary, Error> {
    let started = Instant::now();
    let shutdown = Shutdown::install().map_err(Error::Runtime)?;
    let client = pool::client(&config).map_err(Error::Client)?;
    let mut report = match &config.report {
        Some(path) => Some(
            Report::open(path)
                .map_err(|source| Error::Report { path: path.display().to_string(), source })?,
        ),
        None => None,
    };
    let reporter = Arc::new(Reporter::new(config.verbosity, config.display));
    let reader = Reader { rules: config.rules.clone(), shard: config.shard };

    // The bars' total: count the manifest files in a second pass, in the
    // background (a pipe cannot be read twice, so its total stays unknown).
    let paths: Option<Vec<_>> = config.sources.iter().map(|s| s.path.clone()).collect();
    if let (progress::Display::Bar { .. }, Some(paths)) = (config.display, paths) {
        let (reader, reporter) = (reader.clone(), reporter.clone());
        std::thread::spawn(move || {
            if let Ok(total) = reader.count(&paths) {
                reporter.set_total(total);
            }
        });
    }

    // A plain thread, not spawn_blocking: a read from a quiet pipe may block
    // forever and must not keep the runtime from shutting down.
    let (tx, mut rx) = mpsc::channel(config.jobs.max(64));
    let sources = config.sources;
    std::thread::Builder::new()
        .name("manifest".into())
        .spawn(move || reader.read_all(sources, &tx))
        .map_err(Error::Runtime)?;

    let ctx = Arc::new(Context {
        client,
        limits: Limits::new(config.jobs, config.per_host),
        split: config.split,
        destinations: Keyed::new(1),
        rules: config.rules,
        headers: config.headers,
        retry: config.retry,
        overwrite: config.overwrite,
        resume: config.resume,
        reporter: reporter.clone(),
        shutdown: shutdown.clone(),
    });
    // Entries admitted ahead of a free slot, so that one slow host with
    // --per-host does not idle the others; bounded, so memory stays flat.
    let lookahead = config.jobs * 4 + 16;

    let mut summary = Summary::default();
    let mut tasks = JoinSet::new();
    let mut reading = true;
    let mut finish = |outcome: Outcome, summary: &mut Summary| {
        reporter.finished(&outcome);
        summary.add(&outcome);
        if let Some(writer) = &mut report
            && let Err(e) = writer.write(&outcome)
        {
            if e.kind() != io::ErrorKind::BrokenPipe {
                reporter.error(&format_args!("cannot write the report: {e}"));
                summary.report_failed = true;
            }
            report = None;
        }
    };
    loop {
        if !reading && tasks.is_empty() {
            break;
        }
        tokio::select! {
            item = rx.recv(), if reading && tasks.len() < lookahead => match item {
                None => reading = false,
                Some(Item::Entry(entry)) => {
                    tasks.spawn(download::download(*entry, ctx.clone()));
                }
                Some(Item::Invalid { location, error }) => finish(Outcome::invalid(location, error), &mut summary),
                Some(Item::ReadFailed { source, error }) => {
                    reporter.error(&format_args!("cannot read manifest {source}: {error}"));
                    summary.manifest_error = true;
                }
            },
            Some(joined) = tasks.join_next() => match joined {
                Ok(Some(outcome)) => finish(outcome, &mut summary),
                Ok(None) => {}
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            () = shutdown.cancelled(), if reading => reading = false,
        }
    }
    summary.interrupted = shutdown.signal();
    reporter.summary(&summary, started.elapsed());
    Ok(summary)
}
