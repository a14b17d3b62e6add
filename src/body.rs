//! A response body as the run reads it: the one place every body chunk of
//! every transfer passes (whole files in [`crate::transfer`], the ranges
//! of split files in [`crate::segments`]), and so where the run's limits on
//! bodies apply:
//!
//! - `--limit-rate`: each chunk is paid for to the run's [`Throttle`]
//!   before the next is read;
//! - `--speed-limit`/`--speed-time`: a body that brings fewer than
//!   `rate × time` bytes in any `time` fails the attempt as
//!   [`AttemptError::TooSlow`], a transient error that is retried (and
//!   resumed) like a cut connection. Time spent waiting for the throttle
//!   does not count: the floor judges the server, not the run's own limit.
//!   It is measured per response, so each range of a split file is judged
//!   on its own connection;
//! - `--max-filesize`: a length the server or manifest announces is
//!   checked before anything is written ([`BodyLimits::check_size`]), and a
//!   body without one fails as soon as it passes the limit, with nothing
//!   past it written ([`AttemptError::TooLarge`], permanent).
//!
//! With none of them set, a chunk costs a few branches more than a bare
//! `Response::chunk`.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Response;
use tokio::time::Sleep;

use crate::config::SpeedFloor;
use crate::error::AttemptError;
use crate::shutdown::Shutdown;
use crate::throttle::Throttle;

/// The run's limits on bodies.
#[derive(Debug, Default)]
pub struct BodyLimits {
    pub throttle: Option<Throttle>,
    pub floor: Option<SpeedFloor>,
    pub max_filesize: Option<u64>,
}

impl BodyLimits {
    /// Refuse a file whose announced length (`Content-Length`, a `206`'s
    /// total, the manifest's `size`) is over `--max-filesize`.
    pub fn check_size(&self, size: Option<u64>) -> Result<(), AttemptError> {
        match (size, self.max_filesize) {
            (Some(size), Some(limit)) if size > limit => {
                Err(AttemptError::TooLarge { size, limit, known: true })
            }
            _ => Ok(()),
        }
    }
}

/// One response's body, read under the run's [`BodyLimits`].
#[derive(Debug)]
pub struct Body<'a> {
    response: Response,
    limits: &'a BodyLimits,
    shutdown: &'a Shutdown,
    /// Where the next byte goes in the file.
    at: u64,
    /// Bytes read and not yet paid to the throttle.
    owed: u64,
    /// With a throttle, what was read and not yet handed on.
    pending: Bytes,
    /// The speed floor's window and its deadline, with `--speed-limit`.
    stall: Option<(Window, Pin<Box<Sleep>>)>,
}

impl<'a> Body<'a> {
    /// The body of `response`, whose first byte goes at offset `at` of the
    /// file.
    pub fn new(response: Response, limits: &'a BodyLimits, shutdown: &'a Shutdown, at: u64) -> Body<'a> {
        let stall = limits.floor.map(|floor| {
            let window = Window::new(floor, Instant::now());
            (window, Box::pin(tokio::time::sleep_until(window.deadline().into())))
        });
        Body { response, limits, shutdown, at, owed: 0, pending: Bytes::new(), stall }
    }

    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        self.response.headers()
    }

    /// The next chunk, `None` at the end of the body (once what it owes
    /// the throttle is paid).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, AttemptError> {
        let limits = self.limits;
        let Some(throttle) = &limits.throttle else { return self.read().await };
        if self.pending.is_empty() {
            match self.read().await? {
                Some(chunk) => self.pending = chunk,
                None => {
                    self.pay(throttle, None).await?;
                    return Ok(None);
                }
            }
        }
        // Handed on a quantum at a time, each once paid for: the bars and
        // the disk see the rate, not the size of the reads (up to 400 KiB
        // from a full socket).
        let piece = self.pending.split_to(self.pending.len().min(throttle.quantum() as usize));
        self.pay(throttle, Some(piece.len() as u64)).await?;
        Ok(Some(piece))
    }

    /// The next chunk from the connection, checked against the size limit
    /// and counted by the speed floor.
    async fn read(&mut self) -> Result<Option<Bytes>, AttemptError> {
        let chunk = match &mut self.stall {
            None => tokio::select! {
                chunk = self.response.chunk() => chunk,
                () = self.shutdown.cancelled() => return Err(AttemptError::Cancelled),
            },
            // Bytes that came count before the deadline is judged.
            Some((window, deadline)) => tokio::select! {
                biased;
                chunk = self.response.chunk() => chunk,
                () = deadline.as_mut() => return Err(window.too_slow()),
                () = self.shutdown.cancelled() => return Err(AttemptError::Cancelled),
            },
        };
        let Some(chunk) = chunk.map_err(AttemptError::Http)? else { return Ok(None) };
        let len = chunk.len() as u64;
        self.at += len;
        if let Some(limit) = self.limits.max_filesize.filter(|&limit| self.at > limit) {
            return Err(AttemptError::TooLarge { size: self.at, limit, known: false });
        }
        if let Some((window, deadline)) = &mut self.stall
            && window.received(len, Instant::now())
        {
            deadline.as_mut().reset(window.deadline().into());
        }
        Ok(Some(chunk))
    }

    /// Pay the throttle for `bytes` just read (`None`: what the ended
    /// body still owes), unless Ctrl-C comes first; the speed floor's
    /// window is moved on by the wait.
    async fn pay(&mut self, throttle: &Throttle, bytes: Option<u64>) -> Result<(), AttemptError> {
        let started = Instant::now();
        let owed = &mut self.owed;
        let paid = async move {
            match bytes {
                Some(bytes) => throttle.pay(owed, bytes).await,
                None => throttle.settle(owed).await,
            }
        };
        tokio::select! {
            () = paid => {}
            () = self.shutdown.cancelled() => return Err(AttemptError::Cancelled),
        }
        if let Some((window, deadline)) = &mut self.stall {
            window.pause(started.elapsed());
            deadline.as_mut().reset(window.deadline().into());
        }
        Ok(())
    }
}

/// The speed floor's current window: it starts when the body starts, or
/// when the last window brought its `rate × time` bytes; a window that
/// reaches its deadline without them is too slow.
#[derive(Debug, Clone, Copy)]
struct Window {
    floor: SpeedFloor,
    start: Instant,
    bytes: u64,
}

impl Window {
    fn new(floor: SpeedFloor, now: Instant) -> Window {
        Window { floor, start: now, bytes: 0 }
    }

    fn deadline(&self) -> Instant {
        self.start + self.floor.time
    }

    /// Bytes in a window for the body to be fast enough.
    fn needed(&self) -> u64 {
        ((self.floor.rate as f64 * self.floor.time.as_secs_f64()).ceil() as u64).max(1)
    }

    /// `bytes` arrived at `now`; whether a new window began (the deadline
    /// moved).
    fn received(&mut self, bytes: u64, now: Instant) -> bool {
        self.bytes += bytes;
        if self.bytes < self.needed() {
            return false;
        }
        *self = Window::new(self.floor, now);
        true
    }

    /// The body waited this long for the throttle: not the server's time.
    fn pause(&mut self, waited: Duration) {
        self.start += waited;
    }

    fn too_slow(&self) -> AttemptError {
        AttemptError::TooSlow { bytes: self.bytes, time: self.floor.time, limit: self.floor.rate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_ends_when_it_brings_rate_times_time() {
        let floor = SpeedFloor { rate: 1024, time: Duration::from_secs(2) };
        let t0 = Instant::now();
        let mut window = Window::new(floor, t0);
        assert_eq!(window.needed(), 2048);
        assert_eq!(window.deadline(), t0 + Duration::from_secs(2));
        // A byte every 200 ms never gets there.
        for i in 1..=9 {
            assert!(!window.received(1, t0 + Duration::from_millis(200 * i)));
        }
        assert!(matches!(window.too_slow(), AttemptError::TooSlow { bytes: 9, limit: 1024, .. }));
        // Enough bytes start a new window, from when they came.
        let t1 = t0 + Duration::from_millis(1900);
        assert!(window.received(2048, t1));
        assert_eq!(window.deadline(), t1 + Duration::from_secs(2));
        // A wait for the throttle moves the deadline on.
        window.pause(Duration::from_secs(1));
        assert_eq!(window.deadline(), t1 + Duration::from_secs(3));
    }

    #[test]
    fn a_tiny_floor_needs_a_byte() {
        let floor = SpeedFloor { rate: 1, time: Duration::from_millis(10) };
        assert_eq!(Window::new(floor, Instant::now()).needed(), 1);
    }

    #[test]
    fn announced_sizes_over_the_limit_are_refused() {
        let limits = BodyLimits { max_filesize: Some(100), ..BodyLimits::default() };
        assert!(limits.check_size(Some(100)).is_ok());
        assert!(limits.check_size(None).is_ok());
        assert!(matches!(
            limits.check_size(Some(101)),
            Err(AttemptError::TooLarge { size: 101, limit: 100, known: true })
        ));
        assert!(BodyLimits::default().check_size(Some(u64::MAX)).is_ok());
    }
}
