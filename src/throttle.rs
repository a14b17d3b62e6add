//! `--limit-rate`: one token bucket for the whole run, which every body
//! chunk of every transfer (whole files and the ranges of split files)
//! passes through after it is read ([`crate::body::Body`]).
//!
//! The bucket is kept as a theoretical arrival time (GCRA, the virtual
//! scheduling form of a token bucket): each reservation of `n` bytes moves
//! it `n / rate` seconds on, and the reserving transfer sleeps until it is
//! less than [`BURST`] ahead of now. So, over any window of time, the
//! bytes released stay within `rate × window + rate × BURST + one quantum`,
//! whatever the number of transfers, and a transfer that wakes a little
//! late (timer granularity, a busy machine) loses nothing while it is
//! within [`BURST`].
//!
//! Fairness: transfers pay in whole quanta of [`Throttle::quantum`] bytes,
//! each reserved after the previous one's wait, so they queue behind each
//! other's quanta in arrival order, one quantum a turn: one that reads
//! 400 KiB chunks (HTTP/1.1 on a full socket) gets no more than one that
//! reads 4 KiB frames, which reads on until it owes a quantum. What a body
//! still owes when it ends is paid then ([`Throttle::settle`]), so many
//! small files are held to the rate too.
//!
//! Reading less is what slows the server: the socket's receive buffer
//! fills and TCP's flow control holds the sender back. Only bodies are
//! counted; request and response headers are not.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far the bucket may run ahead of the rate: a burst of `rate × BURST`
/// bytes, and the lateness a waking transfer may have without losing its
/// share of the rate.
pub const BURST: Duration = Duration::from_millis(50);
/// Quanta are about this long at the rate, within [`MIN_QUANTUM`] and
/// [`MAX_QUANTUM`]: 100 reservations a second at most, and short turns.
const QUANTUM_TIME: Duration = Duration::from_millis(10);
const MIN_QUANTUM: u64 = 4 << 10;
const MAX_QUANTUM: u64 = 64 << 10;

/// The run's bandwidth limit, shared by every transfer.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second, at least 1.
    rate: u64,
    quantum: u64,
    /// When the bytes reserved so far will have passed at the rate.
    due: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A limit of `rate` bytes per second (0 is taken as 1).
    pub fn new(rate: u64) -> Throttle {
        let rate = rate.max(1);
        let quantum = ((rate as f64 * QUANTUM_TIME.as_secs_f64()) as u64).clamp(MIN_QUANTUM, MAX_QUANTUM);
        Throttle { rate, quantum, due: Mutex::new(None) }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The most bytes one reservation pays for.
    pub fn quantum(&self) -> u64 {
        self.quantum
    }

    /// Whether the limit is what holds the transfers back now: bytes are
    /// reserved beyond this moment, so some transfer waits. More
    /// connections would not be faster then, only hold more bytes in
    /// their socket buffers beyond the limit.
    pub fn saturated(&self) -> bool {
        self.due.lock().expect("throttle lock").is_some_and(|due| due > Instant::now())
    }

    /// Pay for `bytes` just read by a transfer that owed `owed` bytes
    /// before: whole quanta are paid now, a quantum a turn; less than one
    /// stays owed, for the next read or [`Throttle::settle`].
    pub async fn pay(&self, owed: &mut u64, bytes: u64) {
        *owed += bytes;
        while *owed >= self.quantum {
            *owed -= self.quantum;
            self.wait(self.quantum).await;
        }
    }

    /// Pay what a transfer still owes, at the end of its body.
    pub async fn settle(&self, owed: &mut u64) {
        let bytes = std::mem::take(owed);
        if bytes > 0 {
            self.wait(bytes).await;
        }
    }

    async fn wait(&self, bytes: u64) {
        let now = Instant::now();
        let at = self.reserve(bytes, now);
        if at > now {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// Reserve `bytes` at `now`: when they may pass.
    fn reserve(&self, bytes: u64, now: Instant) -> Instant {
        let mut due = self.due.lock().expect("throttle lock");
        // Time not used is not saved up beyond BURST: a transfer that
        // comes after a pause starts from now.
        let from = due.filter(|&due| due > now).unwrap_or(now);
        let next = from + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        *due = Some(next);
        next.checked_sub(BURST).filter(|&at| at > now).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run readers of `chunks`-byte reads through `throttle` in virtual
    /// time for `seconds`, as [`Throttle::pay`] does: each reads on until
    /// it owes a quantum, then pays one, and reads again once paid. The
    /// bytes each received, and the times (since the start) at which each
    /// quantum was released.
    fn simulate(throttle: &Throttle, chunks: &[u64], seconds: f64) -> (Vec<u64>, Vec<(f64, u64)>) {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        // (when it may act next, owed bytes of its current chunk, reader)
        let mut ready: Vec<(Instant, u64, usize)> = (0..chunks.len()).map(|i| (start, 0, i)).collect();
        let mut got = vec![0; chunks.len()];
        let mut released = Vec::new();
        loop {
            ready.sort();
            let (now, owed, i) = ready[0];
            if now >= end {
                break;
            }
            let mut owed = owed;
            while owed < throttle.quantum() {
                got[i] += chunks[i];
                owed += chunks[i];
            }
            let n = throttle.quantum();
            let at = throttle.reserve(n, now);
            released.push(((at - start).as_secs_f64(), n));
            ready[0] = (at, owed - n, i);
        }
        (got, released)
    }

    #[test]
    fn the_rate_holds_over_time_at_any_scale() {
        for rate in [1 << 10, 1 << 20, 100 << 20] {
            let throttle = Throttle::new(rate);
            let (got, _) = simulate(&throttle, &[400 << 10, 16 << 10, 64 << 10], 10.0);
            let total: u64 = got.iter().sum();
            let expected = rate as f64 * 10.0;
            // The first reads are taken before they are paid for.
            let slack = rate as f64 * BURST.as_secs_f64() + (480 << 10) as f64;
            assert!(
                (total as f64) <= expected + slack && total as f64 >= expected * 0.99,
                "{rate}: {total} in 10 s"
            );
        }
    }

    #[test]
    fn no_window_passes_the_rate_plus_a_burst() {
        let rate = 1 << 20;
        let throttle = Throttle::new(rate);
        let (_, released) = simulate(&throttle, &[400 << 10, 16 << 10, 1 << 10], 5.0);
        let burst = rate as f64 * BURST.as_secs_f64() + throttle.quantum() as f64;
        for (i, &(from, _)) in released.iter().enumerate() {
            let mut bytes = 0;
            for &(at, n) in &released[i..] {
                bytes += n;
                let window = at - from;
                assert!(bytes as f64 <= rate as f64 * window + burst, "{bytes} in {window} s from {from}");
            }
        }
    }

    #[test]
    fn readers_share_the_rate_whatever_their_chunk_size() {
        let throttle = Throttle::new(1 << 20);
        let (got, _) = simulate(&throttle, &[400 << 10, 16 << 10, 4 << 10], 20.0);
        let (min, max) = (got.iter().min().unwrap(), got.iter().max().unwrap());
        // The large reader's last chunk is read before it is paid for.
        assert!(max - min <= (400 << 10) + throttle.quantum(), "{got:?}");
    }

    #[test]
    fn idle_time_is_not_saved_up() {
        let throttle = Throttle::new(1 << 20);
        let start = Instant::now();
        assert_eq!(throttle.reserve(1 << 10, start), start);
        let later = start + Duration::from_secs(10);
        // A second of bytes after ten idle seconds waits most of a second.
        let at = throttle.reserve(1 << 20, later);
        assert_eq!(at, later + Duration::from_secs(1) - BURST);
    }

    #[test]
    fn quanta_are_short_at_every_rate() {
        assert_eq!(Throttle::new(0).rate(), 1);
        assert_eq!(Throttle::new(1).quantum(), MIN_QUANTUM);
        assert_eq!(Throttle::new(1 << 20).quantum(), (1 << 20) / 100);
        assert_eq!(Throttle::new(1 << 30).quantum(), MAX_QUANTUM);
    }
}
