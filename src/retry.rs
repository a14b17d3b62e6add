//! Which failures are worth another attempt, and how long to wait first.
//!
//! [`classify`] is the one place that decides what a failure calls for;
//! [`status_class`] and [`error_class`] are its tables for statuses and for
//! transport and disk errors, the latter walking the error's `source()`
//! chain because reqwest wraps hyper, which wraps io, rustls and name
//! lookup errors. A [`Budget`] is one transfer's allowance of failures in
//! a row: whole files and the ranges of a split file spend theirs the same
//! way ([`crate::net::Net::retry`] is the one loop step). Wait times come
//! from backon's exponential schedule; a server's `Retry-After` (RFC 9110
//! §10.2.3) overrides it, capped at `--retry-max-delay`.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::error::{AttemptError, DownloadError, LookupFailure, lookup_failure, rustls_error};
use crate::hosts::Trouble;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// A fresh wait schedule. Jitter (up to +100%, capped at the maximum)
    /// spreads out retries of many files that failed together; equal delays
    /// mean a fixed wait, so jitter is off then.
    pub fn schedule(&self) -> Schedule {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times();
        if self.delay != self.max_delay {
            builder = builder.with_jitter();
        }
        Schedule { backoff: builder.build(), max_delay: self.max_delay }
    }
}

#[derive(Debug)]
pub struct Schedule {
    backoff: ExponentialBackoff,
    max_delay: Duration,
}

impl Schedule {
    /// The wait before the next attempt; `retry_after` is the server's word.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let computed = self.backoff.next().unwrap_or(self.max_delay).min(self.max_delay);
        retry_after.map_or(computed, |wait| wait.min(self.max_delay))
    }
}

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Passing trouble of the network or the server: worth another attempt
    /// after a wait, as long as the budget lasts.
    Transient,
    /// The same request will fail the same way: the entry fails now.
    Permanent,
    /// The run was interrupted: stop, keeping what is on disk.
    Cancelled,
    /// This process or the system is out of file descriptors: a local
    /// limit that fewer downloads at once relieve, not the server's fault
    /// nor the entry's (see [`crate::download`]).
    OutOfDescriptors,
}

/// What a failed entry calls for.
pub fn classify(error: &DownloadError) -> Class {
    if error.is_out_of_descriptors() {
        return Class::OutOfDescriptors;
    }
    match error {
        DownloadError::Attempt(e) => classify_attempt(e),
        // A bad manifest line, a destination that cannot be made, a part
        // file or commit the disk refuses, bytes that do not match the
        // manifest: another request changes none of them.
        _ => Class::Permanent,
    }
}

/// What a failed attempt (of a whole file or of one range) calls for.
pub fn classify_attempt(error: &AttemptError) -> Class {
    match error {
        AttemptError::Status { status, .. } => status_class(*status),
        AttemptError::Http(e) if crate::error::out_of_descriptors(e) => Class::OutOfDescriptors,
        AttemptError::Http(e) => error_class(e),
        // A network that cuts bodies short, or a resume the server
        // answered with other bytes (already discarded): what retries are for.
        AttemptError::Truncated { .. } | AttemptError::BadRange(_) | AttemptError::Overlong { .. } => {
            Class::Transient
        }
        // A server that trickles may do better on a new connection, and
        // the attempt resumes where it stopped.
        AttemptError::TooSlow { .. } => Class::Transient,
        // --max-filesize: the same file is as large next time.
        AttemptError::TooLarge { .. } => Class::Permanent,
        // The resolver said the name does not exist.
        AttemptError::HostNotFound(_) => Class::Permanent,
        AttemptError::TooManyRedirects(_) | AttemptError::BadRedirect(_) => Class::Permanent,
        AttemptError::SizeMismatch { .. } | AttemptError::OverManifestSize { .. } => Class::Permanent,
        AttemptError::Disk(e) if crate::error::out_of_descriptors(e) => Class::OutOfDescriptors,
        AttemptError::Disk(source) => error_class(source),
        // Its host did not answer for longer than --host-timeout: the
        // bytes on disk are good for the next run.
        AttemptError::Unavailable(_) => Class::Transient,
        AttemptError::Cancelled => Class::Cancelled,
    }
}

/// What a failed attempt says about its host, if anything
/// ([`crate::hosts`]): an answer that asks for less, strain, or no answer.
pub fn trouble(error: &AttemptError) -> Option<Trouble> {
    match error {
        AttemptError::Status { status, retry_after } => match status.as_u16() {
            code @ (429 | 503) => Some(Trouble::Busy(code)),
            code if retry_after.is_some() => Some(Trouble::Busy(code)),
            502 | 504 => Some(Trouble::Strained),
            _ => None,
        },
        // A TLS handshake the server answered, wrongly: its setup, not its health.
        AttemptError::Http(e) if rustls_error(e).is_some() => None,
        AttemptError::Http(e) if e.is_connect() => Some(Trouble::Unreachable),
        AttemptError::Http(e) if e.is_timeout() => Some(Trouble::Strained),
        // Failed before a response began: reset, closed, refused.
        AttemptError::Http(e) if !e.is_body() && !e.is_decode() && !crate::error::out_of_descriptors(e) => {
            Some(Trouble::Unreachable)
        }
        _ => None,
    }
}

/// One transfer's retry budget: `--retries` failures in a row that brought
/// no new bytes. A failure after the transfer moved past its furthest
/// point so far starts a fresh budget and backoff, so a large file over a
/// link that drops every minute still finishes, while a server that never
/// makes progress is given up on after `--retries` waits.
#[derive(Debug)]
pub struct Budget {
    policy: RetryPolicy,
    schedule: Schedule,
    failures: u32,
    high_water: u64,
    /// The host's count of answers at this transfer's last failure that
    /// was its host's trouble.
    host_answers: Option<u64>,
    /// Time spent waiting out its host's trouble, for the report.
    pub host_waited: Duration,
}

impl Budget {
    /// A budget for a transfer that stands at `position` bytes.
    pub fn new(policy: RetryPolicy, position: u64) -> Budget {
        Budget {
            policy,
            schedule: policy.schedule(),
            failures: 0,
            high_water: position,
            host_answers: None,
            host_waited: Duration::ZERO,
        }
    }

    /// Whether a failure that showed the host paused or unreachable is the
    /// host's rather than this transfer's: it is, unless the host answered
    /// others since this transfer's last such failure (`answers` is the
    /// host's count now). A failure of the host's spends nothing: the
    /// transfer waits for the host instead ([`crate::hosts`]).
    pub fn host_fault(&mut self, answers: u64) -> bool {
        let fault = self.host_answers.is_none_or(|before| answers <= before);
        self.host_answers = Some(answers);
        fault
    }

    /// After a failure that spends nothing, at `position`: progress still
    /// starts a fresh budget.
    pub fn waive(&mut self, position: u64) {
        if position > self.high_water {
            let (host_answers, host_waited) = (self.host_answers, self.host_waited);
            *self = Budget { host_answers, host_waited, ..Budget::new(self.policy, position) };
        }
    }

    /// After a failure of `class` that left the transfer at `position`:
    /// how long to wait before the next attempt, or `None` to give up
    /// (the failure is not transient, or the budget is spent).
    pub fn next(&mut self, class: Class, retry_after: Option<Duration>, position: u64) -> Option<Duration> {
        self.waive(position);
        if class != Class::Transient || self.failures >= self.policy.retries {
            return None;
        }
        self.failures += 1;
        Some(self.schedule.next_delay(retry_after))
    }
}

/// Statuses worth retrying (docs/contract.md, "Retries and resume").
pub fn status_class(status: StatusCode) -> Class {
    match status.as_u16() {
        // Request Timeout, Too Many Requests: the server asks us to come back.
        408 | 429 => Class::Transient,
        // Server errors that are usually passing: overload, a bad gateway hop,
        // a restart. 501 Not Implemented and 505 will not change on retry.
        500 | 502 | 503 | 504 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Classify a transport or disk error by walking its cause chain.
pub fn error_class(error: &(dyn StdError + 'static)) -> Class {
    // The host does not exist: only NXDOMAIN is definitive; a resolver
    // that cannot answer now is the flaky network retries are for.
    match lookup_failure(error) {
        Some(LookupFailure::NoSuchHost) => return Class::Permanent,
        Some(LookupFailure::Unanswered) => return Class::Transient,
        None => {}
    }
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(err) = current {
        // A certificate the server will keep presenting: retrying cannot help.
        if let Some(tls) = rustls_error(err) {
            return match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType => Class::Permanent,
                _ => Class::Transient,
            };
        }
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            return io_class(io_err.kind());
        }
        if let Some(req) = err.downcast_ref::<reqwest::Error>() {
            if req.is_builder() || req.is_redirect() {
                return Class::Permanent;
            }
            if req.is_timeout() {
                return Class::Transient;
            }
        }
        current = err.source();
    }
    // Connection-level failures without a more specific cause (hyper's
    // "connection closed before message completed", ...) are
    // the flaky network the retries exist for.
    Class::Transient
}

fn io_class(kind: io::ErrorKind) -> Class {
    use io::ErrorKind::*;
    match kind {
        // The network failed under us.
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe | TimedOut
        | UnexpectedEof | Interrupted | WouldBlock | HostUnreachable | NetworkUnreachable | NetworkDown
        | AddrNotAvailable => Class::Transient,
        // Local disk problems (ENOSPC, EACCES, EROFS, ...) will not fix
        // themselves between attempts.
        _ => Class::Permanent,
    }
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use std::path::PathBuf;
        let status = |code: u16| AttemptError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: None,
        };
        let io = |kind: io::ErrorKind| io::Error::from(kind);
        let emfile = || io::Error::from_raw_os_error(libc::EMFILE);
        let attempts: Vec<(AttemptError, Class)> = vec![
            (status(503), Class::Transient),
            (status(429), Class::Transient),
            (status(404), Class::Permanent),
            (AttemptError::Truncated { got: 1, expected: 2 }, Class::Transient),
            (AttemptError::Overlong { got: 3, expected: 2 }, Class::Transient),
            (AttemptError::BadRange("bytes 5-9/10".into()), Class::Transient),
            (AttemptError::HostNotFound("nowhere.invalid".into()), Class::Permanent),
            (AttemptError::TooManyRedirects(10), Class::Permanent),
            (AttemptError::BadRedirect("ftp:".into()), Class::Permanent),
            (AttemptError::SizeMismatch { server: 1, manifest: 2 }, Class::Permanent),
            (AttemptError::OverManifestSize { manifest: 2 }, Class::Permanent),
            (AttemptError::TooSlow { bytes: 9, time: Duration::from_secs(2), limit: 1024 }, Class::Transient),
            (AttemptError::TooLarge { size: 3, limit: 2, known: false }, Class::Permanent),
            (AttemptError::Disk(io(io::ErrorKind::StorageFull)), Class::Permanent),
            (AttemptError::Disk(emfile()), Class::OutOfDescriptors),
            (AttemptError::Cancelled, Class::Cancelled),
        ];
        for (error, want) in attempts {
            assert_eq!(classify_attempt(&error), want, "{error:?}");
            let name = format!("{error:?}");
            assert_eq!(classify(&DownloadError::Attempt(error)), want, "{name}");
        }
        let entries: Vec<(DownloadError, Class)> = vec![
            (DownloadError::Checksum(Box::new(mismatch())), Class::Permanent),
            (DownloadError::Size { expected: 1, actual: 2 }, Class::Permanent),
            (DownloadError::Commit(io(io::ErrorKind::StorageFull)), Class::Permanent),
            (DownloadError::Commit(emfile()), Class::OutOfDescriptors),
            (DownloadError::Partial { path: PathBuf::from("x"), source: emfile() }, Class::OutOfDescriptors),
        ];
        for (error, want) in entries {
            assert_eq!(classify(&error), want, "{error:?}");
        }
    }

    fn mismatch() -> crate::digest::Mismatch {
        use crate::digest::{Algorithm, Checksum, Expected, Origin};
        let checksum = Checksum::parse(Algorithm::Md5, &"0".repeat(32)).unwrap();
        crate::digest::Mismatch {
            expected: Expected { checksum, origin: Origin::Manifest },
            actual: checksum,
        }
    }

    #[test]
    fn a_budget_counts_failures_without_progress() {
        let policy =
            RetryPolicy { retries: 2, delay: Duration::from_millis(1), max_delay: Duration::from_millis(1) };
        let mut budget = Budget::new(policy, 100);
        let wait = Some(Duration::from_millis(1));
        assert_eq!(budget.next(Class::Transient, None, 100), wait);
        assert_eq!(budget.next(Class::Transient, None, 100), wait);
        assert_eq!(budget.next(Class::Transient, None, 100), None, "spent after 2");
        // Progress past the furthest point starts a fresh budget.
        assert_eq!(budget.next(Class::Transient, None, 101), wait);
        assert_eq!(budget.next(Class::Transient, None, 50), wait, "a restart is no progress");
        assert_eq!(budget.next(Class::Transient, None, 101), None);
        // Only transient failures are retried, whatever is left.
        let mut budget = Budget::new(policy, 0);
        for class in [Class::Permanent, Class::Cancelled, Class::OutOfDescriptors] {
            assert_eq!(budget.next(class, None, 0), None, "{class:?}");
        }
        // The server's Retry-After wins, capped.
        let capped =
            RetryPolicy { retries: 1, delay: Duration::from_secs(1), max_delay: Duration::from_secs(5) };
        let mut budget = Budget::new(capped, 0);
        assert_eq!(
            budget.next(Class::Transient, Some(Duration::from_secs(60)), 0),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn status_table() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(status_class(StatusCode::from_u16(code).unwrap()), Class::Transient, "{code}");
        }
        for code in [400, 401, 403, 404, 405, 410, 416, 451, 501, 505] {
            assert_eq!(status_class(StatusCode::from_u16(code).unwrap()), Class::Permanent, "{code}");
        }
    }

    #[test]
    fn io_error_table() {
        use io::ErrorKind::*;
        for kind in [ConnectionReset, ConnectionRefused, UnexpectedEof, TimedOut, BrokenPipe] {
            assert_eq!(error_class(&io::Error::from(kind)), Class::Transient, "{kind:?}");
        }
        for kind in [PermissionDenied, StorageFull, ReadOnlyFilesystem, NotFound, InvalidData] {
            assert_eq!(error_class(&io::Error::from(kind)), Class::Permanent, "{kind:?}");
        }
    }

    #[test]
    fn cause_chain_is_walked() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let reset = Outer(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(error_class(&reset), Class::Transient);
        let full = Outer(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(error_class(&full), Class::Permanent);
        let bad_cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(error_class(&Outer(bad_cert)), Class::Permanent);
        // As hyper-util passes it on: an io::Error around tokio-rustls's.
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, rustls));
        assert!(rustls_error(&nested).is_some());
        assert_eq!(error_class(&Outer(nested)), Class::Permanent);
        let alert = io::Error::other(rustls::Error::DecryptError);
        assert_eq!(error_class(&Outer(alert)), Class::Transient);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().unwrap());
            h
        };
        assert_eq!(retry_after(&headers("2"), now), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&later), now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&past), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn schedule_grows_and_is_capped() {
        let policy =
            RetryPolicy { retries: 5, delay: Duration::from_secs(1), max_delay: Duration::from_secs(4) };
        let mut s = policy.schedule();
        let waits: Vec<_> = (0..5).map(|_| s.next_delay(None)).collect();
        assert!(waits[0] >= Duration::from_secs(1) && waits[0] <= Duration::from_secs(2), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(4)), "{waits:?}");
        assert_eq!(waits[4], Duration::from_secs(4));
        assert_eq!(s.next_delay(Some(Duration::from_secs(100))), Duration::from_secs(4));

        let fixed = RetryPolicy {
            retries: 3,
            delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(50),
        };
        let mut s = fixed.schedule();
        assert!((0..4).all(|_| s.next_delay(None) == Duration::from_millis(50)));
    }
}
