//! Conditional requests (RFC 9110 §13.1), for `--refresh` (issue 18): a
//! route made [`Route::conditional`] answers `304` when the request's
//! `If-None-Match` names its ETag (weak comparison, §8.8.3.2) or, without
//! `If-None-Match`, when its `If-Modified-Since` is not before its
//! `Last-Modified` (§13.1.3). Other routes ignore conditions, as some
//! servers do. [`Server::traffic`] counts what each path cost.

use hyper::header::HeaderValue;
use hyper::{HeaderMap, Response, StatusCode};

use super::{BoxBody, Route, plain};

impl Route {
    /// This route, answering conditional requests.
    pub fn conditional(self) -> Route {
        Route { conditional: true, ..self }
    }
}

/// The `304` that answers a request whose condition holds for `route`.
pub(super) fn not_modified(route: &Route, headers: &HeaderMap) -> Option<Response<BoxBody>> {
    if !route.conditional || !holds(route, headers) {
        return None;
    }
    let (mut response, _) = plain(StatusCode::NOT_MODIFIED, "");
    if let Some(etag) = &route.etag {
        response.headers_mut().insert("etag", HeaderValue::from_str(etag).unwrap());
    }
    Some(response)
}

/// Whether the file has not changed by the request's condition.
fn holds(route: &Route, headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    if let Some(tags) = header("if-none-match") {
        let Some(etag) = &route.etag else { return false };
        return tags.split(',').any(|tag| tag.trim() == "*" || weak(tag) == weak(etag));
    }
    let since = header("if-modified-since").and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = route.last_modified.as_deref().and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// What one path cost: requests, how many were answered `304`, body bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub requests: usize,
    pub not_modified: usize,
    pub bytes: usize,
}

impl super::Server {
    /// The requests to `path` so far, and the body bytes sent for them.
    pub fn traffic(&self, path: &str) -> Traffic {
        let log = self.requests_to(path);
        Traffic {
            requests: log.len(),
            not_modified: log.iter().filter(|l| l.status == 304).count(),
            bytes: log.iter().map(|l| l.sent()).sum(),
        }
    }
}
