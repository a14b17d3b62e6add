//! Which failures are worth another attempt, and how long to wait first.
//!
//! [`status_class`] and [`error_class`] are the one place that decides
//! transient versus permanent; the latter walks the error's `source()` chain
//! because reqwest wraps hyper, which wraps io, rustls and name lookup
//! errors. Wait times come from backon's exponential
//! schedule; a server's `Retry-After` (RFC 9110 §10.2.3) overrides it, capped
//! at `--retry-max-delay`.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Permanent,
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

/// How a name lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFailure {
    /// The resolver answered that the name does not exist or has no
    /// address (NXDOMAIN, NODATA): asking again gets the same answer.
    NoSuchHost,
    /// The resolver could not answer (`EAI_AGAIN`: no network, a VPN that
    /// dropped, a server timing out; `EAI_FAIL`: SERVFAIL).
    Unanswered,
}

/// What std prefixes to a `getaddrinfo` error, which hyper-util's resolver
/// passes on as an `io::Error` of kind `Uncategorized`: the resolver's
/// `EAI_*` code survives only as the `gai_strerror` text after it.
const LOOKUP_FAILED: &str = "failed to lookup address information";

/// `gai_strerror` texts of a definitive "no such host" (`EAI_NONAME`,
/// `EAI_NODATA`): glibc, musl, macOS/BSD, Windows. Rust programs run in
/// the C locale, so these are untranslated.
const NO_SUCH_HOST: [&str; 6] = [
    "Name or service not known",
    "No address associated with hostname",
    "Name does not resolve",
    "Name has no usable address",
    "nodename nor servname provided, or not known",
    "No such host is known",
];

/// Whether `error`'s cause chain holds a failed name lookup, and how it
/// failed. A lookup error of the system (`EAI_SYSTEM`, such as EMFILE)
/// carries the OS error instead and is not one.
pub fn lookup_failure(error: &(dyn StdError + 'static)) -> Option<LookupFailure> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            let text = io_err.to_string();
            if let Some(detail) = text.strip_prefix(LOOKUP_FAILED) {
                return Some(if NO_SUCH_HOST.iter().any(|t| detail.contains(t)) {
                    LookupFailure::NoSuchHost
                } else {
                    LookupFailure::Unanswered
                });
            }
        }
        current = err.source();
    }
    None
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

/// `error` as a rustls error: itself, or inside the `io::Error`s that
/// tokio-rustls and hyper-util wrap it in (an `io::Error`'s `source()`
/// skips the error it wraps, so the chain alone never shows it).
pub fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = error;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<io::Error>()?.get_ref()?;
    }
}

/// Whether `error` is this process (EMFILE) or the system (ENFILE) out of
/// file descriptors: a local limit, neither the server's fault nor the
/// disk's, that fewer downloads at once relieve (see [`crate::download`]).
pub fn out_of_descriptors(error: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            if matches!(io_err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                return true;
            }
            // A wrapped error's source() skips the error it wraps.
            if let Some(inner) = io_err.get_ref() {
                current = Some(inner);
                continue;
            }
        }
        current = err.source();
    }
    false
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

    /// An error shaped as reqwest reports a failed lookup: hyper-util's
    /// "dns error" around std's io::Error.
    fn lookup_error(detail: &str) -> impl StdError + 'static {
        #[derive(Debug, thiserror::Error)]
        #[error("dns error")]
        struct Dns(#[source] io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Connect(#[source] Dns);
        let io = io::Error::other(format!("{LOOKUP_FAILED}: {detail}"));
        Connect(Dns(io))
    }

    #[test]
    fn lookup_failure_table() {
        use LookupFailure::*;
        let cases = [
            // glibc EAI_NONAME, EAI_NODATA, EAI_AGAIN, EAI_FAIL
            ("Name or service not known", NoSuchHost),
            ("No address associated with hostname", NoSuchHost),
            ("Temporary failure in name resolution", Unanswered),
            ("Non-recoverable failure in name resolution", Unanswered),
            // musl
            ("Name does not resolve", NoSuchHost),
            ("Name could not be resolved at this time", Unanswered),
            // macOS
            ("nodename nor servname provided, or not known", NoSuchHost),
            ("temporary failure in name resolution", Unanswered),
            // An unknown text is not taken for a definitive answer.
            ("something new", Unanswered),
        ];
        for (detail, want) in cases {
            let error = lookup_error(detail);
            assert_eq!(lookup_failure(&error), Some(want), "{detail}");
            let class = if want == NoSuchHost { Class::Permanent } else { Class::Transient };
            assert_eq!(error_class(&error), class, "{detail}");
        }
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(lookup_failure(&reset), None);
        let other = io::Error::other("failed to look at something");
        assert_eq!(lookup_failure(&other), None);
    }

    #[test]
    fn out_of_descriptors_is_told_apart() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let cases: [(Box<dyn StdError>, bool); 6] = [
            (Box::new(io::Error::from_raw_os_error(libc::EMFILE)), true),
            (Box::new(io::Error::from_raw_os_error(libc::ENFILE)), true),
            (Box::new(Outer(io::Error::from_raw_os_error(libc::EMFILE))), true),
            (Box::new(io::Error::other(io::Error::from_raw_os_error(libc::EMFILE))), true),
            (Box::new(io::Error::from_raw_os_error(libc::ENOSPC)), false),
            (Box::new(Outer(io::Error::from(io::ErrorKind::ConnectionReset))), false),
        ];
        for (error, want) in cases {
            assert_eq!(out_of_descriptors(error.as_ref()), want, "{error:?}");
        }
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
