//! One attempt at one download: send the request (with `Range`/`If-Range`
//! when bytes are already on disk), judge the response, stream its body into
//! the partial file. The retry loop around it lives in [`crate::download`].
//!
//! Resume rules (RFC 9110 §14.4, §13.1.5):
//! - a `206` is appended only when its `Content-Range` starts exactly where
//!   the local bytes end and its total matches the known length;
//! - a `200` to a ranged request means the server ignored the range or the
//!   resource changed: the file restarts from zero with the new validator;
//! - a `416` whose `bytes */N` equals the local length means the partial is
//!   already complete; any other `416` restarts.
//!
//! A fresh download is a plain `GET`. When its `200` shows a large file
//! (`Content-Length` of at least `--split-size`), a validator and
//! `Accept-Ranges: bytes` (RFC 9110 §14.3), the response is handed to
//! [`crate::segments`] still streaming, to become the first of several
//! ranges: no `HEAD` first, and ordinary files are fetched, logged and
//! reported exactly as without splitting (a `Range: bytes=0-` probe would
//! turn every `200` into a `206`). A server that advertises ranges and then
//! ignores them is caught there and the file restarts as one stream.
//!
//! Redirects are followed here rather than by reqwest so that no header the
//! user gave (`-H`, manifest `headers`: all treated as credentials) is sent to
//! a different origin than the manifest URL's, and each hop gets the
//! `--netrc` and `--header-for` secrets of its own host.

use std::time::SystemTime;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode, Url};

use crate::body::Body;
use crate::config::SplitPolicy;
use crate::digest::{Digests, Expected};
use crate::error::{AttemptError, LookupFailure, lookup_failure};
use crate::fsx::{Meta, Partial};
use crate::net::Net;
use crate::progress::TransferProgress;
use crate::redact;
use crate::retry;
use crate::shutdown::Shutdown;
use crate::validators::Condition;

/// A chain of this many redirects succeeds; one more is an error, as curl
/// and wget count them.
pub const MAX_REDIRECTS: usize = 10;

/// What one download has established so far, carried across attempts.
#[derive(Debug, Default)]
pub struct State {
    /// Bytes on disk that belong to `validator`.
    pub offset: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The full length, from Content-Length or Content-Range.
    pub total: Option<u64>,
    /// Running digests of bytes `0..offset`, one per algorithm the entry
    /// expects (none when it expects none).
    pub digests: Digests,
    /// Responses whose bytes make up the file: more than one means splices.
    pub pieces: u32,
    pub http_status: Option<u16>,
    /// Bytes received over the network, whatever became of them.
    pub received: u64,
}

impl State {
    /// Nothing known yet; digests kept for what the entry expects.
    pub fn for_entry(expected: &[Expected]) -> State {
        State { digests: Digests::new(expected), ..State::default() }
    }

    /// The `If-Range` value: a strong ETag, else Last-Modified (weak ETags
    /// are not allowed there, RFC 9110 §13.1.5).
    pub fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(tag) if !tag.starts_with("W/") => Some(tag),
            _ => self.last_modified.as_deref(),
        }
    }

    fn reset(&mut self) {
        self.offset = 0;
        self.pieces = 0;
        self.digests.reset();
    }

    pub fn meta(&self, url: &Url) -> Meta {
        Meta {
            url: redact::url(url),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            total: self.total,
            done: None,
        }
    }

    /// Whether what the server told us allows fetching ranges of one
    /// version of the file: a known length and a validator for `If-Range`.
    fn splittable(&self, policy: Option<SplitPolicy>) -> bool {
        policy.is_some_and(|p| self.total.is_some_and(|t| t >= p.min_size)) && self.if_range().is_some()
    }
}

/// How an attempt ended well.
#[derive(Debug)]
pub enum Attempted {
    /// Every byte is in the partial file.
    Complete,
    /// The file is large and the server takes ranges: this first response
    /// (a `200`, nothing read of its body yet) is to be continued as a
    /// split download.
    Segments(Response),
    /// The condition held: the file on disk is the server's
    /// ([`crate::validators`]).
    Unchanged,
}

/// What one attempt is about.
#[derive(Debug)]
pub struct Target<'a> {
    /// Where requests go through; `host` is the URL's `--per-host` key,
    /// told of each answer.
    pub net: &'a Net,
    pub host: &'a str,
    pub url: &'a Url,
    /// `-H` and manifest headers together.
    pub headers: &'a HeaderMap,
    /// The manifest's `size`, checked against the server's length.
    pub size: Option<u64>,
    /// Split large files; `None` when splitting is off or this file is known
    /// to be too small.
    pub split: Option<SplitPolicy>,
    /// `--refresh`: the condition sent, on every hop (the validator is the
    /// final server's).
    pub condition: Option<&'a Condition>,
}

/// A `Range` request header and its `If-Range`.
#[derive(Debug, Clone, Copy)]
struct RangeRequest<'a> {
    start: u64,
    /// Inclusive; `None` asks for the rest of the file.
    end: Option<u64>,
    if_range: Option<&'a str>,
}

/// Run one attempt. On [`Attempted::Complete`] every byte of the file is on
/// disk (or in the partial's buffer) and `state.offset` is its length.
pub async fn attempt(
    target: &Target<'_>,
    state: &mut State,
    partial: &mut Partial,
    progress: &TransferProgress,
    shutdown: &Shutdown,
) -> Result<Attempted, AttemptError> {
    let disk = AttemptError::Disk;
    target.net.body.check_size(target.size)?;
    let ranged = state.offset > 0;
    // Where a 206's body ends by its Content-Range.
    let mut range_end = None;
    let range = RangeRequest { start: state.offset, end: None, if_range: state.if_range() };
    let response = tokio::select! {
        r = send(target, ranged.then_some(range)) => r?,
        () = shutdown.cancelled() => return Err(AttemptError::Cancelled),
    };
    let status = response.status();
    state.http_status = Some(status.as_u16());
    let etag = header_str(response.headers(), header::ETAG);
    if let Some(condition) = target.condition
        && (status == StatusCode::NOT_MODIFIED
            || status == StatusCode::OK && condition.same_file(etag.as_deref(), response.content_length()))
    {
        return Ok(Attempted::Unchanged);
    }
    match status {
        StatusCode::OK => {
            if ranged {
                progress.restarted(state.offset);
            }
            state.reset();
            state.etag = etag;
            state.last_modified = header_str(response.headers(), header::LAST_MODIFIED);
            state.total = response.content_length();
            check_size(target, state.total)?;
            partial.restart(state.meta(target.url)).map_err(disk)?;
            let ranges = response.headers().get(header::ACCEPT_RANGES).is_some_and(|v| v == "bytes");
            if ranges && state.splittable(target.split) {
                state.pieces += 1;
                return Ok(Attempted::Segments(response));
            }
        }
        StatusCode::PARTIAL_CONTENT if ranged => {
            let (end, total) =
                match check_partial(&response, state.offset, state.total, state.etag.as_deref()) {
                    Ok(range) => range,
                    Err(error) => {
                        state.reset();
                        partial.truncate().map_err(disk)?;
                        return Err(error);
                    }
                };
            state.total = total.or(state.total);
            range_end = Some(end + 1);
            check_size(target, state.total)?;
        }
        StatusCode::RANGE_NOT_SATISFIABLE if ranged => return unsatisfiable(&response, state, partial),
        _ => {
            let retry_after = retry::retry_after(response.headers(), SystemTime::now());
            return Err(AttemptError::Status { status, retry_after });
        }
    }
    state.pieces += 1;
    let limit = Limit { manifest: target.size, server: min_some(range_end, state.total) };
    let body = Body::new(response, &target.net.body, shutdown, state.offset);
    stream_body(body, state, partial, progress, limit).await.map(|()| Attempted::Complete)
}

/// A `416` to a resumed request: complete when it names the length the
/// partial already has (and nothing known says otherwise); otherwise the
/// partial is wrong, and truncated.
fn unsatisfiable(
    response: &reqwest::Response,
    state: &mut State,
    partial: &mut Partial,
) -> Result<Attempted, AttemptError> {
    let total = header_str(response.headers(), header::CONTENT_RANGE)
        .and_then(|v| v.strip_prefix("bytes */").and_then(|n| n.trim().parse::<u64>().ok()));
    if total == Some(state.offset) && state.total.is_none_or(|t| t == state.offset) {
        state.total = total;
        return Ok(Attempted::Complete);
    }
    state.reset();
    partial.truncate().map_err(AttemptError::Disk)?;
    Err(AttemptError::BadRange(format!(
        "416 with {}",
        total.map_or("no length".into(), |t| format!("length {t}"))
    )))
}

/// Ask for bytes `start..=end` of the version of the file that `if_range`
/// names, as one range of a split download. Only a `206` for exactly that
/// start, of a file of length `total` (and the same ETag, when the server
/// sends one) is usable; a `200` or `416` means the server ignored the
/// range or the file changed, reported as [`AttemptError::BadRange`].
pub async fn fetch_range(
    target: &Target<'_>,
    start: u64,
    end: u64,
    if_range: &str,
    etag: Option<&str>,
    total: u64,
) -> Result<Response, AttemptError> {
    target.net.body.check_size(Some(total))?;
    let request = RangeRequest { start, end: Some(end), if_range: Some(if_range) };
    let response = send(target, Some(request)).await?;
    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT => check_partial(&response, start, Some(total), etag).map(|_| response),
        StatusCode::OK => Err(AttemptError::BadRange("200: the whole file, the range was ignored".into())),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            Err(AttemptError::BadRange("416: the file is shorter now".into()))
        }
        _ => {
            let retry_after = retry::retry_after(response.headers(), SystemTime::now());
            Err(AttemptError::Status { status, retry_after })
        }
    }
}

/// The one check of a `206` (RFC 9110 §14.4): its `Content-Range` starts
/// at `start`, names the file's `total` length when that is known (`*`
/// does not do then), and its `ETag`, when both sides have one, is the
/// expected one. The range's last byte and the total it names, or
/// [`AttemptError::BadRange`].
fn check_partial(
    response: &Response,
    start: u64,
    total: Option<u64>,
    etag: Option<&str>,
) -> Result<(u64, Option<u64>), AttemptError> {
    let range = header_str(response.headers(), header::CONTENT_RANGE);
    let tag = header_str(response.headers(), header::ETAG);
    let same_entity = tag.is_none() || etag.is_none() || tag.as_deref() == etag;
    match range.as_deref().and_then(parse_content_range) {
        Some((first, end, named))
            if first == start && total.is_none_or(|t| named == Some(t)) && same_entity =>
        {
            Ok((end, named))
        }
        _ => Err(AttemptError::BadRange(range.unwrap_or_else(|| "no Content-Range".into()))),
    }
}

/// Where a body must end, as an offset in the file: at the manifest's
/// `size`, and at the end of what the server announced (`Content-Length`,
/// or the end of a `206`'s `Content-Range`). Every body read is capped by
/// them: without a cap, an endless chunked or close-delimited body fills
/// the disk.
#[derive(Debug, Clone, Copy)]
struct Limit {
    manifest: Option<u64>,
    server: Option<u64>,
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => a.or(b),
    }
}

async fn stream_body(
    mut body: Body<'_>,
    state: &mut State,
    partial: &mut Partial,
    progress: &TransferProgress,
    limit: Limit,
) -> Result<(), AttemptError> {
    progress.begin(state.offset, state.total);
    loop {
        let Some(chunk) = body.chunk().await? else { break };
        let got = state.offset + chunk.len() as u64;
        // Nothing past a promised end is written: the attempt fails on the
        // first chunk that crosses it.
        if let Some(manifest) = limit.manifest.filter(|&size| got > size) {
            return Err(AttemptError::OverManifestSize { manifest });
        }
        if let Some(expected) = limit.server.filter(|&end| got > end) {
            return Err(AttemptError::Overlong { got, expected });
        }
        partial.write(&chunk).map_err(AttemptError::Disk)?;
        state.digests.update(&chunk);
        state.offset = got;
        state.received += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    match state.total {
        Some(expected) if state.offset < expected => {
            Err(AttemptError::Truncated { got: state.offset, expected })
        }
        _ => Ok(()),
    }
}

fn check_size(target: &Target<'_>, total: Option<u64>) -> Result<(), AttemptError> {
    target.net.body.check_size(total)?;
    match (target.size, total) {
        (Some(manifest), Some(server)) if manifest != server => {
            Err(AttemptError::SizeMismatch { server, manifest })
        }
        _ => Ok(()),
    }
}

/// Send a GET, following up to [`MAX_REDIRECTS`] redirects by hand.
async fn send(target: &Target<'_>, range: Option<RangeRequest<'_>>) -> Result<Response, AttemptError> {
    let origin = target.url.origin();
    let mut url = target.url.clone();
    let split = range.is_some_and(|r| r.end.is_some());
    let mut was_https = false;
    for hop in 0..=MAX_REDIRECTS {
        let same_origin = url.origin() == origin;
        // A host's secrets never go in clear text after HTTPS led to HTTP.
        was_https |= url.scheme() == "https";
        let downgraded = was_https && url.scheme() == "http";
        let client = target.net.clients.for_url(&url, split).map_err(AttemptError::Http)?;
        // reqwest would turn user:pass@ into a second Authorization header
        // beside one the user gave: credentials are added here, once.
        let (bare, userinfo) = split_userinfo(&url);
        let mut headers = if same_origin { target.headers.clone() } else { HeaderMap::new() };
        // The URL's own credentials, else the manifest URL's within its
        // origin (as curl does); the hop's host's own secrets are added
        // whatever the origin ([`crate::credentials`] has the precedence).
        let userinfo = userinfo.or_else(|| same_origin.then(|| split_userinfo(target.url).1).flatten());
        let basic =
            if downgraded { userinfo } else { target.net.credentials.add(&url, &mut headers, userinfo) };
        let mut request = client.get(bare).headers(headers);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, password);
        }
        if let Some((name, value)) = target.condition.map(Condition::header) {
            request = request.header(name, value.clone());
        }
        if let Some(RangeRequest { start, end, if_range }) = range {
            let value = match end {
                Some(end) => format!("bytes={start}-{end}"),
                None => format!("bytes={start}-"),
            };
            request = request.header(header::RANGE, value);
            if let Some(validator) = if_range.and_then(|v| HeaderValue::from_str(v).ok()) {
                request = request.header(header::IF_RANGE, validator);
            }
        }
        let response = request.send().await.map_err(|e| match lookup_failure(&e) {
            Some(LookupFailure::NoSuchHost) => {
                AttemptError::HostNotFound(url.host_str().unwrap_or("").to_owned())
            }
            _ => AttemptError::Http(e.without_url()),
        })?;
        let is_redirect = matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308);
        let Some(location) = response.headers().get(header::LOCATION).filter(|_| is_redirect) else {
            let status = response.status().as_u16();
            if status != 429 && status != 503 && !response.headers().contains_key(header::RETRY_AFTER) {
                target.net.answered(target.host);
            }
            return Ok(response);
        };
        if hop == MAX_REDIRECTS {
            return Err(AttemptError::TooManyRedirects(MAX_REDIRECTS));
        }
        let location =
            location.to_str().map_err(|_| AttemptError::BadRedirect("Location is not text".into()))?;
        let next = url
            .join(location)
            .map_err(|e| AttemptError::BadRedirect(format!("{}: {e}", redact::url_str(location))))?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(AttemptError::BadRedirect(format!(
                "scheme {:?} is not http or https",
                next.scheme()
            )));
        }
        url = next;
    }
    unreachable!("the loop returns by its last hop")
}

/// `url` without its `user:pass@`, and those credentials, percent-decoded
/// (RFC 3986 §3.2.1), when there are any.
fn split_userinfo(url: &Url) -> (Url, Option<(String, Option<String>)>) {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    if url.username().is_empty() && url.password().is_none() {
        return (url.clone(), None);
    }
    let credentials = (decode(url.username()), url.password().map(decode));
    let mut bare = url.clone();
    // Cannot fail: a URL with credentials has a host.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (bare, Some(credentials))
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
pub fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start, end, total))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        let cases = [
            ("bytes 0-499/1234", Some((0, 499, Some(1234)))),
            ("bytes 500-1233/1234", Some((500, 1233, Some(1234)))),
            ("bytes 500-1233/*", Some((500, 1233, None))),
            (" bytes 1-1/2 ", Some((1, 1, Some(2)))),
            ("bytes 500-1234/1234", None),
            ("bytes 5-4/10", None),
            ("bytes */1234", None),
            ("items 0-1/2", None),
            ("bytes 0-x/2", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_content_range(input), want, "{input:?}");
        }
    }

    #[test]
    fn if_range_prefers_strong_etag() {
        let mut s =
            State { etag: Some("\"a\"".into()), last_modified: Some("date".into()), ..State::default() };
        assert_eq!(s.if_range(), Some("\"a\""));
        s.etag = Some("W/\"a\"".into());
        assert_eq!(s.if_range(), Some("date"));
        s.last_modified = None;
        assert_eq!(s.if_range(), None);
    }
}
