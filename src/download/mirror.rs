//! An entry's several URLs (a manifest line's `urls`): which one serves it,
//! when to leave one for the next, and when bytes from one may be continued
//! from another. Pure decisions over the entry, its hosts' health and the
//! failure; the attempt loop (`fetch`) and the dispatcher only ask.
//!
//! The URLs are tried in the manifest's order, each at most once per entry:
//! - A URL is left for the next when its failure stands ([`Walk::leaves`]): a
//!   permanent failure (`404`, `403`, `410`, any status not retried, a host
//!   the DNS does not know, a bad redirect, a certificate error), its retry
//!   budget spent on transient ones, a length or checksum that does not
//!   match the manifest, its host gone (`--host-timeout`), or its host not
//!   answering (refused, connect timeout, reset before a response: the
//!   host is then down) rather than waiting for the host to come back.
//!   Local failures (the disk, file descriptors, Ctrl-C) end the entry as
//!   they would with one URL.
//! - A pause (`429`, `503`, `Retry-After`) is waited out on the same URL:
//!   the host answered and asked for less, and a mirror list is no reason
//!   to be less polite; a host that pauses for longer than `--host-timeout`
//!   is gone and left.
//! - Before the first attempt and at each switch, a URL whose host is down
//!   or gone is passed over when a later URL remains; the last URL is
//!   always tried, waiting for its host as an entry with one URL does.
//! - Each host keeps its own `--per-host` slots and health: a switch gives
//!   the slot back and waits for one of the next host.
//!
//! Bytes already in the partial file (from this run or an earlier one)
//! are continued from another URL only when the other server proves they
//! are of the same file ([`may_continue`]): the request carries `Range`
//! and the stored validator as `If-Range`, so a server with another version
//! answers `200` and the file restarts; a `206` must name the same total
//! length and start where the bytes end ([`crate::transfer`]). Without a
//! known length or a validator, or after the bytes were shown wrong, the
//! file restarts from zero at the next URL. A split download keeps all its
//! ranges on the URL that served its first response; if it fails there,
//! the next URL starts the file over.

use reqwest::Url;

use super::host_key;
use crate::error::{AttemptError, DownloadError, Left, UrlFailure};
use crate::fsx::Meta;
use crate::manifest::Entry;
use crate::pool::{Gate, Limits, Unavailable};
use crate::redact;
use crate::transfer::State;

/// Where an entry stands among its URLs.
#[derive(Debug)]
pub(super) struct Walk<'a> {
    entry: &'a Entry,
    /// The URL in use, by its place in [`Entry::urls`].
    at: usize,
    /// The URLs left behind, and why.
    left: Vec<UrlFailure>,
}

/// What a host's health says to an entry that could go elsewhere.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// Open, or paused (a pause is waited for).
    Usable,
    Down,
    Gone(Unavailable),
}

fn standing(limits: &Limits, host: &str) -> Standing {
    match limits.gate(host) {
        Gate::Open => Standing::Usable,
        Gate::Gone(unavailable) => Standing::Gone(unavailable),
        // Down with nobody probing it: the probe is for entries with
        // nowhere else to go.
        Gate::Probe => Standing::Down,
        Gate::Blocked if limits.paused_for(host).is_some() => Standing::Usable,
        Gate::Blocked => Standing::Down,
    }
}

impl<'a> Walk<'a> {
    /// At the first URL worth trying now.
    pub(super) fn new(entry: &'a Entry, limits: &Limits) -> Walk<'a> {
        let mut walk = Walk { entry, at: 0, left: Vec::new() };
        walk.pick(0, limits);
        walk
    }

    pub(super) fn url(&self) -> &'a Url {
        self.url_at(self.at)
    }

    fn url_at(&self, at: usize) -> &'a Url {
        match at {
            0 => &self.entry.url,
            n => &self.entry.mirrors[n - 1],
        }
    }

    /// Whether a URL after the one in use remains: then a down host is
    /// not waited for ([`crate::net::Failure::fallback`]).
    pub(super) fn has_next(&self) -> bool {
        self.at < self.entry.mirrors.len()
    }

    /// Whether `error`, which ends the attempts at the URL in use, leaves
    /// it for the next.
    pub(super) fn leaves(&self, error: &DownloadError) -> bool {
        self.has_next() && is_url_failure(error)
    }

    /// Leave the URL in use after `error` ([`Walk::leaves`] said so); the
    /// next URL to try.
    pub(super) fn advance(&mut self, error: DownloadError, limits: &Limits) -> &'a Url {
        let url = redact::url(self.url());
        self.left.push(UrlFailure { url, why: Left::Failed(error) });
        self.pick(self.at + 1, limits);
        self.url()
    }

    /// Move to the first URL from `from` on whose host is neither down nor
    /// gone, or else to the last.
    fn pick(&mut self, from: usize, limits: &Limits) {
        let last = self.entry.mirrors.len();
        for at in from..last {
            let url = self.url_at(at);
            let host = host_key(url);
            let why = match standing(limits, &host) {
                Standing::Usable => {
                    self.at = at;
                    return;
                }
                Standing::Down => Left::Down(host),
                Standing::Gone(gone) => Left::Failed(AttemptError::Unavailable(gone).into()),
            };
            self.left.push(UrlFailure { url: redact::url(url), why });
        }
        self.at = last;
    }

    /// The entry's error, once `error` ended it at the URL in use: with
    /// several URLs, each one's last failure, when this one failed too.
    pub(super) fn finish(mut self, error: DownloadError) -> DownloadError {
        if self.entry.mirrors.is_empty() || !is_url_failure(&error) {
            return error;
        }
        let url = redact::url(self.url());
        self.left.push(UrlFailure { url, why: Left::Failed(error) });
        DownloadError::Mirrors(self.left)
    }

    /// The URL that served the file, for the report: only for an entry
    /// with several.
    pub(super) fn served_by(&self) -> Option<String> {
        (!self.entry.mirrors.is_empty()).then(|| redact::url(self.url()))
    }
}

/// The `--per-host` key of the URL an entry starts with: its first,
/// unless that host is down or gone and another URL remains.
pub fn start_host(entry: &Entry, limits: &Limits) -> String {
    if entry.mirrors.is_empty() {
        return host_key(&entry.url);
    }
    host_key(Walk::new(entry, limits).url())
}

/// Whether a failure is the URL's (its server, its host, its bytes) rather
/// than this machine's or the run's: only those move to the next URL.
fn is_url_failure(error: &DownloadError) -> bool {
    match error {
        DownloadError::Attempt(e) => {
            !matches!(e, AttemptError::Disk(_) | AttemptError::Cancelled) && !error.is_out_of_descriptors()
        }
        DownloadError::Checksum { .. } | DownloadError::Size { .. } => true,
        DownloadError::Invalid { .. }
        | DownloadError::Prepare(_)
        | DownloadError::Partial { .. }
        | DownloadError::Commit(_)
        | DownloadError::Mirrors(_) => false,
    }
}

/// Whether the bytes in `state`, left by a URL after `error`, may be
/// continued from another: they are a prefix of one file of known length
/// with a validator to send as `If-Range` (so that the other server
/// decides whether it has the same file), and the failure said nothing
/// against them. A split download (`split`) restarts instead.
pub(super) fn may_continue(error: &DownloadError, state: &State, split: bool) -> bool {
    let against_bytes = matches!(
        error,
        DownloadError::Checksum { .. }
            | DownloadError::Size { .. }
            | DownloadError::Attempt(
                AttemptError::SizeMismatch { .. }
                    | AttemptError::OverManifestSize { .. }
                    | AttemptError::Overlong { .. }
            )
    );
    !split && !against_bytes && state.offset > 0 && state.total.is_some() && state.if_range().is_some()
}

/// Whether a partial file whose meta is `meta` may be resumed from `url`,
/// one of `entry`'s: from the URL that started it, as with one URL; from
/// another of the entry's only when its length is known, so that the
/// other server's `206` is checked against it ([`may_continue`]).
pub(super) fn may_resume(entry: &Entry, url: &Url, meta: &Meta) -> bool {
    if meta.url == redact::url(url) {
        return true;
    }
    meta.total.is_some() && entry.urls().any(|other| meta.url == redact::url(other))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hosts::{Policy, Trouble};

    fn entry(urls: &[&str]) -> Entry {
        let mut urls = urls.iter().map(|u| Url::parse(u).unwrap());
        Entry {
            url: urls.next().unwrap(),
            mirrors: urls.collect(),
            path: "f".into(),
            dest: "f".into(),
            size: None,
            checksums: Vec::new(),
            headers: Default::default(),
            location: crate::manifest::Location { source: "m".into(), line: 1 },
        }
    }

    fn checksum_mismatch() -> DownloadError {
        use crate::digest::{Algorithm, Checksum, Expected, Mismatch, Origin};
        let checksum = |hex: &str| Checksum::parse(Algorithm::Md5, &hex.repeat(32)).unwrap();
        let expected = Expected { checksum: checksum("a"), origin: Origin::Manifest };
        DownloadError::Checksum(Box::new(Mismatch { expected, actual: checksum("b") }))
    }

    fn limits(host_timeout: Duration) -> Limits {
        let s = Duration::from_secs(1);
        Limits::new(4, None, Policy { delay: s, max_delay: s, host_timeout, max_rate: None, max: 4 })
    }

    fn status(code: u16) -> DownloadError {
        let status = reqwest::StatusCode::from_u16(code).unwrap();
        AttemptError::Status { status, retry_after: None }.into()
    }

    #[test]
    fn down_and_gone_hosts_are_passed_over_but_the_last_url_is_always_tried() {
        let limits = limits(Duration::from_secs(600));
        let e = entry(&["http://a/f", "http://b/f", "http://c/f"]);
        assert_eq!(start_host(&e, &limits), "a:80");
        limits.failed("a:80", Trouble::Unreachable, None, &"refused", 0);
        assert_eq!(start_host(&e, &limits), "b:80");
        // Paused: waited for, not left.
        limits.failed("b:80", Trouble::Busy(429), Some(Duration::from_secs(5)), &"429", 0);
        assert_eq!(start_host(&e, &limits), "b:80");
        limits.failed("b:80", Trouble::Unreachable, None, &"refused", 0);
        limits.failed("c:80", Trouble::Unreachable, None, &"refused", 0);
        let walk = Walk::new(&e, &limits);
        assert_eq!(walk.url().as_str(), "http://c/f", "the last is tried, down or not");
        assert!(!walk.has_next());
        let error = walk.finish(status(404)).to_string();
        assert_eq!(
            error,
            "every URL failed: http://a/f: host a:80 is down, not tried; \
             http://b/f: host b:80 is down, not tried; http://c/f: HTTP 404 Not Found"
        );

        let gone = limits_gone();
        let walk = Walk::new(&e, &gone);
        assert_eq!(walk.url().as_str(), "http://b/f");
        assert!(walk.finish(status(410)).to_string().contains("http://a/f: a:80 has not answered since"));
    }

    fn limits_gone() -> Limits {
        let limits = limits(Duration::ZERO);
        limits.failed("a:80", Trouble::Unreachable, None, &"refused", 0);
        limits
    }

    #[test]
    fn only_failures_of_the_url_move_on_and_each_is_named() {
        let limits = limits(Duration::from_secs(600));
        let e = entry(&["http://u:hunter2@a/f", "http://b/f"]);
        let mut walk = Walk::new(&e, &limits);
        let disk = || DownloadError::Attempt(AttemptError::Disk(std::io::Error::other("full")));
        assert!(!walk.leaves(&disk()));
        assert!(!walk.leaves(&AttemptError::Cancelled.into()));
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!walk.leaves(&AttemptError::Disk(emfile).into()));
        for leaving in [
            status(404),
            status(503),
            checksum_mismatch(),
            AttemptError::SizeMismatch { server: 1, manifest: 2 }.into(),
            AttemptError::HostNotFound("a".into()).into(),
        ] {
            assert!(walk.leaves(&leaving), "{leaving}");
        }
        assert_eq!(walk.advance(status(404), &limits).as_str(), "http://b/f");
        assert!(!walk.leaves(&status(404)), "nothing after the last");
        assert_eq!(walk.served_by().as_deref(), Some("http://b/f"));
        assert!(matches!(walk.finish(disk()), DownloadError::Attempt(AttemptError::Disk(_))));
        let mut walk = Walk::new(&e, &limits);
        walk.advance(status(404), &limits);
        let error = walk.finish(status(403)).to_string();
        assert_eq!(
            error,
            "every URL failed: http://u:***@a/f: HTTP 404 Not Found; http://b/f: HTTP 403 Forbidden"
        );

        let single = entry(&["http://a/f"]);
        let walk = Walk::new(&single, &limits_gone());
        assert_eq!(walk.served_by(), None);
        assert_eq!(walk.finish(status(404)).to_string(), "HTTP 404 Not Found", "one URL: its error as it is");
    }

    #[test]
    fn bytes_continue_from_another_url_only_with_a_length_and_a_validator() {
        let etag = Some("\"v1\"".to_owned());
        let good = State { offset: 5, total: Some(10), etag: etag.clone(), ..State::default() };
        let cut = AttemptError::Truncated { got: 5, expected: 10 }.into();
        assert!(may_continue(&cut, &good, false));
        assert!(may_continue(&status(404), &good, false));
        assert!(!may_continue(&status(404), &good, true), "a split download restarts");
        let weak = State { etag: Some("W/\"v1\"".into()), ..good };
        assert!(!may_continue(&status(404), &weak, false), "a weak ETag cannot be If-Range");
        let dated = State { etag: None, last_modified: Some("Tue, 01 Jan 2030 00:00:00 GMT".into()), ..weak };
        assert!(may_continue(&status(404), &dated, false));
        let no_length = State { total: None, etag: etag.clone(), offset: 5, ..State::default() };
        assert!(!may_continue(&status(404), &no_length, false));
        let empty = State { offset: 0, total: Some(10), etag: etag.clone(), ..State::default() };
        assert!(!may_continue(&status(404), &empty, false));
        let wrong = checksum_mismatch();
        let good = State { offset: 5, total: Some(10), etag, ..State::default() };
        assert!(!may_continue(&wrong, &good, false));
        let over = AttemptError::OverManifestSize { manifest: 4 }.into();
        assert!(!may_continue(&over, &good, false));

        let e = entry(&["http://u:pw@a/f", "http://b/f"]);
        let meta = |url: &str, total| Meta { url: url.into(), total, ..Meta::default() };
        let (a, b) = (&e.url, &e.mirrors[0]);
        assert!(may_resume(&e, a, &meta("http://u:***@a/f", None)), "its own URL, as today");
        assert!(may_resume(&e, b, &meta("http://u:***@a/f", Some(10))));
        assert!(!may_resume(&e, b, &meta("http://u:***@a/f", None)), "no length to check");
        assert!(!may_resume(&e, a, &meta("http://c/f", Some(10))), "not one of the entry's URLs");
    }
}
