//! Faults of the whole host, whatever the path asked: statuses for its
//! first requests, a rate limit, a capacity beyond which it refuses, and an
//! outage. They are what `fetch` has to learn per host rather than per
//! entry (issue 17). Each is decided before the route, and a request a
//! fault answers leaves its route untouched.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{InFlight, Shared};

/// What the host does wrong, all paths together.
#[derive(Debug, Default)]
pub(super) struct HostFaults {
    /// Answer these first, one per request: (status, Retry-After).
    statuses: VecDeque<(u16, Option<String>)>,
    rate: Option<RateLimit>,
    /// At most this many requests at work at once; 503 beyond.
    capacity: Option<usize>,
    /// Go down when the host has seen this many requests, for this long.
    outage: Option<(usize, Duration)>,
    /// Requests seen so far.
    requests: usize,
}

/// At most `limit` requests in each fixed `window` (counted from the first
/// request); beyond, `429` with this `Retry-After`, if any.
#[derive(Debug)]
struct RateLimit {
    limit: usize,
    window: Duration,
    retry_after: Option<String>,
    began: Option<Instant>,
    count: usize,
}

impl HostFaults {
    /// The status that answers one request in place of its route, if any.
    /// A request let through a capacity counts as at work until `guard`
    /// drops.
    pub(super) fn verdict(&mut self, state: &Shared, guard: &mut InFlight) -> Option<(u16, Option<String>)> {
        self.requests += 1;
        if self.outage.is_some_and(|(after, _)| self.requests == after) {
            state.outage_begins.notify_one();
        }
        if let Some(status) = self.statuses.pop_front() {
            return Some(status);
        }
        if let Some(rate) = &mut self.rate {
            let now = Instant::now();
            let began = *rate.began.get_or_insert(now);
            let windows = (now - began).as_nanos() / rate.window.as_nanos();
            let start = began + rate.window * windows as u32;
            if start != began {
                rate.began = Some(start);
                rate.count = 0;
            }
            rate.count += 1;
            if rate.count > rate.limit {
                return Some((429, rate.retry_after.clone()));
            }
        }
        if let Some(capacity) = self.capacity {
            if state.at_work.load(Ordering::SeqCst) >= capacity {
                return Some((503, None));
            }
            guard.work();
        }
        None
    }

    /// How long the outage lasts, once it begins.
    pub(super) fn outage_length(&self) -> Duration {
        self.outage.map_or(Duration::ZERO, |(_, length)| length)
    }
}

impl super::Server {
    /// Answer the host's next requests with these statuses, whatever the
    /// path: (status, Retry-After).
    pub fn host_statuses(&self, statuses: impl IntoIterator<Item = (u16, Option<&'static str>)>) {
        let statuses = statuses.into_iter().map(|(code, after)| (code, after.map(str::to_owned)));
        self.shared.host.lock().unwrap().statuses.extend(statuses);
    }

    /// At most `limit` requests every `window`, all paths together; `429`
    /// beyond, with `Retry-After: retry_after` if given.
    pub fn rate_limit(&self, limit: usize, window: Duration, retry_after: Option<&str>) {
        let retry_after = retry_after.map(str::to_owned);
        let rate = RateLimit { limit, window, retry_after, began: None, count: 0 };
        self.shared.host.lock().unwrap().rate = Some(rate);
    }

    /// At most `capacity` requests at work at once (from the request to
    /// the end of its body); `503` beyond.
    pub fn capacity(&self, capacity: usize) {
        self.shared.host.lock().unwrap().capacity = Some(capacity);
    }

    /// The most requests at work at once, under [`Server::capacity`].
    pub fn max_at_work(&self) -> usize {
        self.shared.max_at_work.load(Ordering::SeqCst)
    }

    /// When the host has seen `after` requests, drop every connection and
    /// refuse new ones (nothing listens on the port) for `length`.
    pub fn outage(&self, after: usize, length: Duration) {
        self.shared.host.lock().unwrap().outage = Some((after, length));
    }

    /// The outages so far: when each began and (once over) ended, and the
    /// connections it dropped.
    pub fn outages(&self) -> Vec<(Instant, Option<Instant>, usize)> {
        self.shared.outages.lock().unwrap().clone()
    }
}

/// Close `listener` and drop every `open` connection; when the outage is
/// over, listen on the same address again.
pub(super) async fn outage(
    state: &Shared,
    listener: tokio::net::TcpListener,
    open: &mut Vec<tokio::task::AbortHandle>,
) -> tokio::net::TcpListener {
    let addr = listener.local_addr().unwrap();
    let length = state.host.lock().unwrap().outage_length();
    let began = Instant::now();
    drop(listener);
    let dropped = open.drain(..).filter(|c| !c.is_finished()).inspect(|c| c.abort()).count();
    state.outages.lock().unwrap().push((began, None, dropped));
    tokio::time::sleep(length).await;
    // The port is ours again unless something took it meanwhile, which
    // a few tries get past.
    for _ in 0..50 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            state.outages.lock().unwrap().last_mut().unwrap().1 = Some(Instant::now());
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot listen on {addr} again after the outage");
}

/// An address where nothing listens: connections to it are refused.
pub fn refusing_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
