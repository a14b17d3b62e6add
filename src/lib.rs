//! `fetch`: a bulk downloader. The data flow, one module each:
//!
//! manifest line -> [`manifest::Entry`] -> [`download`] (skip? resume?) ->
//! [`transfer`] attempt -> [`fsx`] partial file -> verify -> rename ->
//! [`report::Outcome`] -> [`progress`] line and [`report`] record.
//!
//! [`run`] wires them together: a reader thread streams the manifest into a
//! bounded channel, the dispatcher spawns at most a bounded number of
//! downloads, a committer thread ([`commit`]) makes finished files durable
//! and puts them in place in batches, and outcomes are handled one at a time
//! as they finish.

pub mod body;
pub mod check;
pub mod cli;
pub mod commit;
pub mod config;
pub mod credentials;
pub mod defaults;
pub mod dest;
pub mod digest;
pub mod dispatch;
pub mod download;
pub mod error;
pub mod fsx;
pub mod hosts;
pub mod manifest;
pub mod manpage;
pub mod net;
pub mod netrc;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod redact;
pub mod report;
pub mod retry;
pub mod segments;
pub mod shard;
pub mod shutdown;
pub mod sums;
pub mod sys;
pub mod throttle;
pub mod tls;
pub mod traffic;
pub mod transfer;
pub mod validators;

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::body::BodyLimits;
use crate::commit::Committer;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::download::Context;
use crate::manifest::{Item, Reader};
use crate::net::{Clients, Net};
use crate::pool::{Keyed, Limits};
use crate::progress::Reporter;
use crate::report::{Report, Summary};
use crate::shutdown::Shutdown;
use crate::throttle::Throttle;

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
        let reporter = Reporter::new(config.verbosity, config::Display::Log);
        return Ok(plan::run(config, &reporter));
    }
    if config.check {
        let report = open_report(&config)?;
        return Ok(check::run(config, report));
    }
    let open_files = sys::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::Runtime)?;
    // On a worker, not the main thread: each finished download wakes the
    // dispatcher, and a wake within the runtime costs no thread switch.
    runtime.block_on(async {
        tokio::spawn(run_async(config, open_files))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    })
}

/// Descriptors a run holds besides its downloads': standard streams, the
/// runtime's, the manifest, the report, the committer's.
const FD_RESERVE: u64 = 16;
/// Descriptors one download may hold: its connection, its part file, its
/// file at the commit.
const FD_PER_JOB: u64 = 3;

/// `--jobs`, or fewer if `open_files` descriptors cannot hold that many.
/// Running out later still only lowers the concurrency (see
/// [`download::download`]); this spares a run that is bound to the
/// failures at its start.
fn jobs_within(jobs: usize, open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else { return jobs };
    let fit = (open_files.saturating_sub(FD_RESERVE) / FD_PER_JOB).max(1);
    jobs.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

async fn run_async(config: Config, open_files: Option<u64>) -> Result<Summary, Error> {
    let started = Instant::now();
    let shutdown = Shutdown::install().map_err(Error::Runtime)?;
    let report = open_report(&config)?;
    let reporter = Arc::new(Reporter::new(config.verbosity, config.display));
    let (config, items) = start_reading(config, &reporter)?;
    let ctx = context(config, open_files, &reporter, &shutdown)?;
    let dispatcher = Dispatcher::new(ctx.clone(), reporter.clone(), report);
    let mut summary = dispatcher.run(items).await;
    ctx.tree.remove_empty();
    summary.interrupted = shutdown.signal();
    reporter.summary(&summary, started.elapsed());
    Ok(summary)
}

fn open_report(config: &Config) -> Result<Option<Report>, Error> {
    let Some(path) = &config.report else { return Ok(None) };
    let report =
        Report::open(path).map_err(|source| Error::Report { path: path.display().to_string(), source })?;
    Ok(Some(report))
}

/// Start the manifest reader on a thread of its own, and the count of the
/// entries for the bars' total; the rest of `config` and the channel the
/// entries arrive on.
fn start_reading(
    mut config: Config,
    reporter: &Arc<Reporter>,
) -> Result<(Config, mpsc::Receiver<Vec<Item>>), Error> {
    let mut reader = Reader::new(config.tree.rules().clone(), config.shard);
    reader.sums = config.sums.clone();
    // The bars' total: count the manifests in a second pass, in the
    // background, when all are regular files (read at their own offset:
    // a pipe or FIFO cannot be read twice, so its total stays unknown).
    let recounts: Option<Vec<_>> = config.sources.iter().map(manifest::Source::recount).collect();
    if let (config::Display::Bar { .. }, Some(recounts)) = (config.display, recounts) {
        let reporter = reporter.clone();
        reader.spawn_count(recounts, move |total| reporter.set_total(total));
    }
    // A plain thread, not spawn_blocking: a read from a quiet pipe may block
    // forever and must not keep the runtime from shutting down.
    let (tx, rx) = mpsc::channel(4);
    let sources = std::mem::take(&mut config.sources);
    std::thread::Builder::new()
        .name("manifest".into())
        .spawn(move || reader.read_all(sources, &tx))
        .map_err(Error::Runtime)?;
    Ok((config, rx))
}

/// What every download of the run shares: the network side with its
/// limits (fewer jobs than `--jobs` if `open_files` cannot hold them), and
/// the committer.
fn context(
    config: Config,
    open_files: Option<u64>,
    reporter: &Arc<Reporter>,
    shutdown: &Shutdown,
) -> Result<Arc<Context>, Error> {
    let clients = Clients::new(&config).map_err(Error::Client)?;
    let jobs = jobs_within(config.jobs, open_files);
    let health = hosts::Policy {
        delay: config.retry.delay,
        max_delay: config.retry.max_delay,
        host_timeout: config.host_timeout,
        max_rate: config.max_rate,
        max: jobs,
    };
    let limits = Limits::new(jobs, config.per_host, health);
    if jobs < config.jobs && limits.first_to_tell() {
        let limit = open_files.unwrap_or_default();
        let downloads = if jobs == 1 { "1 download".to_owned() } else { format!("{jobs} downloads") };
        reporter.error(&format_args!(
            "too many open files for --jobs {} (ulimit -n is {limit}): {downloads} at once",
            config.jobs
        ));
    }
    let committer = Committer::start(config.tree.made_dirs()).map_err(Error::Runtime)?;
    // --dir's filesystem has its barrier descriptor before any entry can
    // write there, even one that finds its directory prepared by another.
    if let Some(root) = config.tree.root() {
        committer.watch(root);
    }
    if let Some(rate) = config.limit_rate {
        reporter.rate_limited(rate);
    }
    let net = Arc::new(Net {
        clients,
        credentials: config.credentials,
        limits,
        body: BodyLimits {
            throttle: config.limit_rate.map(Throttle::new),
            floor: config.speed_floor,
            max_filesize: config.max_filesize,
        },
        retry: config.retry,
        split: config.split,
        reporter: reporter.clone(),
        shutdown: shutdown.clone(),
    });
    // Weak: the reporter outlives the run's network side.
    let weak = Arc::downgrade(&net);
    reporter.watch_hosts(Arc::new(move || weak.upgrade().map_or_else(Vec::new, |net| net.troubled())));
    Ok(Arc::new(Context {
        net,
        committer,
        destinations: Keyed::new(1),
        tree: config.tree,
        headers: config.headers,
        overwrite: config.overwrite,
        refresh: config.refresh,
        resume: config.resume,
        remote_time: config.remote_time,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_fit_the_open_file_limit() {
        let cases = [
            (16, Some(1024), 16),
            (200, Some(64), 16),
            (200, Some(1 << 20), 200),
            (8, Some(10), 1),
            (8, Some(u64::MAX), 8),
            (8, None, 8),
        ];
        for (jobs, open_files, want) in cases {
            assert_eq!(jobs_within(jobs, open_files), want, "{jobs} jobs, {open_files:?} files");
        }
    }
}
