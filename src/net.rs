//! The network side of a run that every request goes through: the HTTP
//! clients, the connection slots, and the retry step shared by whole-file
//! and ranged transfers.
//!
//! Every attempt of every entry takes its slot with [`Net::slot`] and, when
//! it fails, passes through [`Net::retry`]: one budget ([`Budget`]), one
//! classifier ([`crate::retry::classify_attempt`]), one wait that holds no
//! slot and ends early on Ctrl-C. This is where per-host state plugs in.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::body::BodyLimits;
use crate::config::{Config, SplitPolicy};
use crate::credentials::Credentials;
use crate::error::AttemptError;
use crate::hosts::{State, Trouble};
use crate::pool::{Gate, Limits, Slot};
use crate::progress::{HostStatus, Reporter};
use crate::retry::{Budget, Class, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::tls::{Roots, Tls};

/// What every transfer of a run shares.
#[derive(Debug)]
pub struct Net {
    pub clients: Clients,
    /// What each hop of a request carries for its host.
    pub credentials: Credentials,
    pub limits: Limits,
    /// `--limit-rate`, `--speed-limit`, `--max-filesize`.
    pub body: BodyLimits,
    pub retry: RetryPolicy,
    /// `None` when `--max-connections-per-file 1` turns splitting off.
    pub split: Option<SplitPolicy>,
    pub reporter: Arc<Reporter>,
    pub shutdown: Shutdown,
}

/// A failure, as [`Net::retry`] weighs it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub error: &'a (dyn std::error::Error + Sync),
    pub class: Class,
    /// What it says about the host ([`crate::retry::trouble`]).
    pub trouble: Option<Trouble>,
    /// The server's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Where the transfer stands after it, in bytes: past its furthest
    /// point so far, the budget starts over.
    pub position: u64,
    /// The `--per-host` key, the entry's destination and attempt number.
    pub host: &'a str,
    pub dest: &'a Path,
    pub attempt: u32,
    /// Another URL of the entry remains: a host that does not answer is
    /// left for it rather than waited for.
    pub fallback: bool,
}

impl Net {
    /// Make sure `slot` holds a slot for a request to `host`, waiting for one
    /// (and for the host to take requests) unless the run is interrupted
    /// first or the host is gone. Returns the time waited for a host that
    /// was paused or down when the wait began (for the report).
    pub async fn slot(&self, host: &str, slot: &mut Option<Slot>) -> Result<Duration, AttemptError> {
        if slot.is_some() {
            return Ok(Duration::ZERO);
        }
        // Down, the gate may say Probe: one may go, at the probe's time.
        let blocked = self.limits.gate(host) != Gate::Open;
        let started = Instant::now();
        let acquired = self.shutdown.unless_cancelled(self.limits.slot(host)).await;
        *slot = Some(acquired.ok_or(AttemptError::Cancelled)??);
        Ok(if blocked { started.elapsed() } else { Duration::ZERO })
    }

    /// A response from `host` arrived that does not ask for less; logged
    /// when it reopens the host.
    pub fn answered(&self, host: &str) {
        if self.limits.answered(host) {
            self.reporter.host_state(host, &State::Open);
        }
    }

    /// The run's troubled hosts, as the reporter shows them.
    pub fn troubled(&self) -> Vec<HostStatus> {
        let troubled = self.limits.troubled().into_iter();
        troubled.map(|t| HostStatus { host: t.host, state: t.state, record: t.record }).collect()
    }

    /// The step after a failed attempt: its host is told; then `Ok` once
    /// the backoff is waited out (with no slot held: `slot` is given back),
    /// when the failure is transient and `budget` lasts; otherwise the
    /// failure stands, or Ctrl-C came during the wait. A failure that was
    /// the host's (paused, unreachable) spends nothing and waits for the
    /// host instead, in [`Net::slot`], unless it is down and another URL
    /// remains ([`Failure::fallback`]).
    pub async fn retry(
        &self,
        budget: &mut Budget,
        failure: Failure<'_>,
        slot: &mut Option<Slot>,
    ) -> Result<(), Stop> {
        let mut host_fault = false;
        if let Some(trouble) = failure.trouble {
            let started = slot.as_ref().map_or(u64::MAX, Slot::episode);
            let change =
                self.limits.failed(failure.host, trouble, failure.retry_after, failure.error, started);
            if let Some(state) = change {
                self.reporter.host_state(failure.host, &state);
                if let State::Down { .. } = state
                    && let Some(down) = self.limits.all_down()
                {
                    self.reporter.all_down(down);
                }
            }
            // `--retries 0`: no second attempt, whoever's the fault.
            host_fault = self.retry.retries > 0
                && !matches!(trouble, Trouble::Strained)
                && budget.host_fault(self.limits.answers(failure.host));
        }
        let host_wait = host_fault && failure.class == Class::Transient;
        if host_wait && failure.fallback && failure.trouble == Some(Trouble::Unreachable) {
            return Err(Stop::GaveUp);
        }
        let wait = if host_wait {
            // The wait is the host's: until its pause ends, or (down) until
            // a probe may go, which the slot's wait decides.
            budget.waive(failure.position);
            Some(self.limits.paused_for(failure.host).unwrap_or(Duration::ZERO))
        } else {
            budget.next(failure.class, failure.retry_after, failure.position)
        };
        let Some(wait) = wait else { return Err(Stop::GaveUp) };
        self.reporter.retrying(failure.dest, failure.attempt, failure.error, wait);
        drop(slot.take());
        let started = Instant::now();
        let waited = tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.shutdown.cancelled() => Err(Stop::Cancelled),
        };
        if host_wait {
            budget.host_waited += started.elapsed();
        }
        waited
    }
}

/// Why [`Net::retry`] did not lead to another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The failure is not worth another attempt, or the budget is spent.
    GaveUp,
    /// Ctrl-C came during the wait.
    Cancelled,
}

/// The run's HTTP clients: connection pooling, HTTP/2 by ALPN, system
/// proxies, no automatic decompression (not compiled in), no redirects
/// (followed in [`crate::transfer`] to control which headers cross hosts).
///
/// Plain `http` URLs have a client of their own that never loads the
/// system's CA certificates; the `https` one is built at its first use.
/// Loading them reads every file of `/etc/ssl/certs`: 20 ms of a run's start
/// when they are not cached, for a manifest that may hold no `https` URL.
///
/// The ranges of a split download have an `https` client of their own (built
/// at the first split) that speaks HTTP/1.1 only: over HTTP/2 every range
/// would be a stream of one connection, and `--max-connections-per-file`
/// would open none.
#[derive(Debug)]
pub struct Clients {
    plain: reqwest::Client,
    tls: OnceLock<reqwest::Client>,
    ranges: OnceLock<reqwest::Client>,
    settings: Settings,
}

/// What both clients are built with.
#[derive(Debug)]
struct Settings {
    user_agent: String,
    connect_timeout: std::time::Duration,
    read_timeout: std::time::Duration,
    insecure: bool,
    tls: Tls,
    local_address: Option<std::net::IpAddr>,
}

impl Settings {
    fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .user_agent(self.user_agent.clone())
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .local_address(self.local_address)
    }

    /// The `https` client's builder: [`Settings::builder`] and the TLS files.
    fn tls_builder(&self) -> reqwest::ClientBuilder {
        let builder = self.builder().tls_danger_accept_invalid_certs(self.insecure);
        let builder = match &self.tls.roots {
            Roots::Platform => builder,
            Roots::Only(certs) => builder.tls_certs_only(certs.iter().cloned()),
            Roots::Added(certs) => builder.tls_certs_merge(certs.iter().cloned()),
        };
        match &self.tls.identity {
            Some(identity) => builder.identity(identity.clone()),
            None => builder,
        }
    }
}

impl Clients {
    pub fn new(config: &Config) -> reqwest::Result<Clients> {
        // reqwest is built without a bundled crypto provider; ring is ours. An
        // error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = Settings {
            user_agent: config.user_agent.clone(),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            insecure: config.insecure,
            tls: config.tls.clone(),
            local_address: config.local_address,
        };
        // No roots: this client is never asked to verify a certificate.
        let plain = settings.builder().tls_certs_only(Vec::new()).build()?;
        Ok(Clients { plain, tls: OnceLock::new(), ranges: OnceLock::new(), settings })
    }

    /// The client for `url`'s scheme, and for a range of a split download
    /// when `range` says so.
    pub fn for_url(&self, url: &reqwest::Url, range: bool) -> reqwest::Result<&reqwest::Client> {
        if url.scheme() != "https" {
            return Ok(&self.plain);
        }
        let cell = if range { &self.ranges } else { &self.tls };
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        // Two first uses at once may both build; one client is kept.
        let builder = self.settings.tls_builder();
        let built = if range { builder.http1_only() } else { builder }.build()?;
        Ok(cell.get_or_init(|| built))
    }
}
