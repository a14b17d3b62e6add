//! Why an attempt or an entry failed, in words a user can act on, and
//! what the cause chain of an error holds (a failed name lookup, a TLS
//! error, no file descriptors left).
//!
//! Errors stay typed until [`crate::retry`] has classified them and the
//! report has recorded them: nothing here turns a failure into a string.
//! This module depends on nothing above the manifest and destination
//! rules, so every layer can name these types.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;

use crate::dest::PrepareError;
use crate::fsx::{DirectoryRemoved, LockedElsewhere};
use crate::manifest::{LineError, Location};
use crate::pool::Unavailable;

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("HTTP {}", status_text(*status))]
    Status { status: StatusCode, retry_after: Option<Duration> },
    #[error("{}", describe(.0))]
    Http(reqwest::Error),
    #[error("host {0} not found (DNS)")]
    HostNotFound(String),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("redirect to an unusable location: {0}")]
    BadRedirect(String),
    #[error("body ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("server sent {got} bytes, more than the {expected} it announced")]
    Overlong { got: u64, expected: u64 },
    #[error("resume answered with an unusable range ({0}); restarting from zero")]
    BadRange(String),
    #[error("server says the file is {server} bytes, the manifest says {manifest}")]
    SizeMismatch { server: u64, manifest: u64 },
    #[error("size mismatch: the server sent more than the {manifest} bytes the manifest says")]
    OverManifestSize { manifest: u64 },
    #[error(
        "too slow: {bytes} bytes in {time:?}, below --speed-limit {limit} bytes/s for --speed-time {time:?}"
    )]
    TooSlow { bytes: u64, time: Duration, limit: u64 },
    #[error("{}", too_large(*size, *limit, *known))]
    TooLarge { size: u64, limit: u64, known: bool },
    #[error("cannot write the partial file: {0}")]
    Disk(std::io::Error),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("interrupted")]
    Cancelled,
}

impl AttemptError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }
}

/// `--max-filesize`'s refusal: of a length announced (`known`), or of a
/// body that passed the limit without one.
fn too_large(size: u64, limit: u64, known: bool) -> String {
    if known {
        format!("the file is {size} bytes, over --max-filesize {limit} bytes")
    } else {
        format!(
            "the file is over --max-filesize {limit} bytes (no length announced; stopped at {size} bytes)"
        )
    }
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
    /// `md5`/`sha1`/`sha256`/`sha512 mismatch: the manifest says …`.
    #[error(transparent)]
    Checksum(Box<crate::digest::Mismatch>),
    #[error("size mismatch: the manifest says {expected} bytes, the server sent {actual}")]
    Size { expected: u64, actual: u64 },
    /// An entry with several URLs failed at every one of them.
    #[error("every URL failed: {}", list(.0))]
    Mirrors(Vec<UrlFailure>),
}

/// One URL of an entry with several, and why it was left for the next.
#[derive(Debug)]
pub struct UrlFailure {
    /// Password redacted.
    pub url: String,
    pub why: Left,
}

/// Why a URL was left.
#[derive(Debug, thiserror::Error)]
pub enum Left {
    /// Its last failure.
    #[error(transparent)]
    Failed(DownloadError),
    /// Passed over untried: its host was down and a later URL remained.
    #[error("host {0} is down, not tried")]
    Down(String),
}

fn list(failures: &[UrlFailure]) -> String {
    let each: Vec<String> = failures.iter().map(|f| format!("{}: {}", f.url, f.why)).collect();
    each.join("; ")
}

impl DownloadError {
    /// Another fetch process took the part file after this one looked for
    /// it (see [`crate::fsx::Partial::open`]): that process has the entry.
    pub fn is_locked_by_other_process(&self) -> bool {
        match self {
            DownloadError::Attempt(AttemptError::Disk(e)) | DownloadError::Commit(e) => {
                LockedElsewhere::is(e)
            }
            DownloadError::Partial { source, .. } => LockedElsewhere::is(source),
            _ => false,
        }
    }

    /// The commit found its directory removed (by another run that found
    /// it empty, or by anyone): the entry is worth one more try.
    pub fn is_directory_removed(&self) -> bool {
        matches!(self, DownloadError::Commit(e) if DirectoryRemoved::is(e))
    }

    /// This process or the system ran out of file descriptors, wherever
    /// that happened (the connection, the part file, the commit).
    pub fn is_out_of_descriptors(&self) -> bool {
        let source: &(dyn StdError + 'static) = match self {
            DownloadError::Attempt(AttemptError::Http(e)) => e,
            DownloadError::Attempt(AttemptError::Disk(e)) | DownloadError::Commit(e) => e,
            DownloadError::Partial { source, .. } => source,
            DownloadError::Prepare(e) => e,
            _ => return false,
        };
        out_of_descriptors(source)
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

fn status_text(status: StatusCode) -> String {
    if status == StatusCode::NOT_MODIFIED {
        // A conditional request's 304 is no error (crate::validators).
        return "304 Not Modified to a request that was not conditional".to_owned();
    }
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// A transport error as a user wants it: what failed, and the root cause
/// (reqwest's outer layers, "error sending request: client error
/// (Connect)", say nothing the kind does not).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "connection lost while receiving"
    } else {
        "request failed"
    };
    let mut root: &(dyn StdError + 'static) = error;
    while let Some(source) = root.source() {
        if let Some(words) = tls_words(root) {
            return format!("{kind}: {words}");
        }
        root = source;
    }
    if let Some(words) = tls_words(root) {
        return format!("{kind}: {words}");
    }
    if std::ptr::addr_eq(root, error as &dyn std::error::Error) {
        return kind.to_owned();
    }
    format!("{kind}: {root}")
}

const TRUST_HINT: &str = "use --insecure to skip verification, or --cacert FILE to trust its CA";

/// A certificate error in words, with what to do about it. rustls prints
/// certificate errors as Rust debug text (`UnknownIssuer`,
/// `Other(OtherError(CaUsedAsEndEntity))`).
fn tls_words(error: &(dyn StdError + 'static)) -> Option<String> {
    let tls = rustls_error(error)?;
    use rustls::CertificateError as E;
    let rustls::Error::InvalidCertificate(cert) = tls else {
        return match tls {
            rustls::Error::NoCertificatesPresented => Some("the server presented no certificate".into()),
            rustls::Error::InvalidMessage(_) => {
                Some("the server did not answer in TLS (is this an http:// port?)".into())
            }
            rustls::Error::AlertReceived(alert) => {
                Some(format!("the server refused the TLS handshake ({})", words_of(&format!("{alert:?}"))))
            }
            rustls::Error::PeerIncompatible(why) => Some(format!(
                "the server and fetch have no TLS version or cipher in common ({})",
                words_of(&format!("{why:?}"))
            )),
            rustls::Error::PeerMisbehaved(why) => {
                Some(format!("the server broke the TLS protocol ({})", words_of(&format!("{why:?}"))))
            }
            _ => None,
        };
    };
    let (what, hint) = match cert {
        E::UnknownIssuer => (
            "the server's certificate is not signed by a trusted authority (unknown issuer)".into(),
            TRUST_HINT,
        ),
        E::BadSignature => ("the server's certificate has a bad signature".into(), TRUST_HINT),
        E::Expired | E::ExpiredContext { .. } => {
            ("the server's certificate has expired".into(), "check the clock, or use --insecure")
        }
        E::NotValidYet | E::NotValidYetContext { .. } => {
            ("the server's certificate is not valid yet".into(), "check the clock, or use --insecure")
        }
        E::Revoked => ("the server's certificate has been revoked".into(), TRUST_HINT),
        E::NotValidForName => ("the server's certificate is for another host name".into(), "use --insecure"),
        E::NotValidForNameContext { presented, .. } => (
            format!(
                "the server's certificate is for another host name (it names {})",
                if presented.is_empty() { "none".into() } else { presented.join(", ") }
            ),
            "use a name it is for, or --insecure",
        ),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            ("the server's certificate is not meant for a TLS server".into(), TRUST_HINT)
        }
        E::BadEncoding => ("the server's certificate is malformed".into(), TRUST_HINT),
        E::Other(other) => match other.to_string().as_str() {
            "CaUsedAsEndEntity" => (
                "the server presented a CA certificate as its own (CA used as end entity)".into(),
                TRUST_HINT,
            ),
            // webpki's errors print as their variant's name.
            name => (format!("the server's certificate was rejected ({})", words_of(name)), TRUST_HINT),
        },
        other => (
            format!("the server's certificate was rejected ({})", words_of(&format!("{other:?}"))),
            TRUST_HINT,
        ),
    };
    Some(format!("{what}; {hint}"))
}

/// `CamelCaseName` as `camel case name`; anything from the first
/// non-letter on (a variant's fields) dropped.
fn words_of(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().take_while(char::is_ascii_alphanumeric) {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// An error with its causes, `outer: inner: innermost`, repeats dropped.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            let text = err.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Class, error_class};

    #[test]
    fn certificate_errors_in_words() {
        use rustls::CertificateError as E;
        let io =
            |e: E| std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(e));
        let cases = [
            (E::UnknownIssuer, "not signed by a trusted authority (unknown issuer); use --insecure"),
            (E::Expired, "has expired; check the clock"),
            (E::NotValidForName, "is for another host name"),
            (E::UnhandledCriticalExtension, "was rejected (unhandled critical extension)"),
        ];
        for (error, want) in cases {
            let text = tls_words(&io(error)).unwrap();
            assert!(text.contains(want), "{text}");
        }
        assert_eq!(tls_words(&std::io::Error::other("plain")), None);
        assert_eq!(words_of("CaUsedAsEndEntity"), "ca used as end entity");
        assert_eq!(words_of("Other(OtherError(X))"), "other");
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
}
