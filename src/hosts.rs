//! Per-host health: what one host (scheme, host and port) has shown of
//! itself, and what that allows: how many requests at once, from when, and
//! whether at all. Pure: [`crate::pool`] keeps one [`Health`] per troubled
//! host and asks it before it hands out a slot; [`crate::net`] tells it how
//! each request went.
//!
//! - A host that asks for less (`429`, `503`, or any `Retry-After`) is
//!   paused: no request to it starts before the later of its `Retry-After`
//!   (capped by `--retry-max-delay`) and the host's own backoff, and its
//!   concurrency halves (at most once a pause). A `502`, a `504` or a read
//!   timeout lowers the concurrency too (at most once a second). After
//!   `cap` successes in a row the concurrency grows by one (doubling, after
//!   an outage, until the previous level): additive increase, multiplicative
//!   decrease, never above `--per-host`/`--jobs`.
//! - A host that does not answer at all (refused, connect timeout, reset
//!   before a response, a resolver that cannot answer) with no success since
//!   its trouble began is down: one probe at a time tests it, with the
//!   host's backoff between probes; the first answer reopens it, at one
//!   request at a time.
//! - A host troubled without a success for longer than `--host-timeout` is
//!   gone for the rest of the run: its entries fail at once.
//! - `--max-rate` spaces the requests to a host by a token bucket of one.

use std::time::{Duration, Instant, SystemTime};

/// How a request showed its host in trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The server asks for less: `429`, `503`, or any response with
    /// `Retry-After` (its status here).
    Busy(u16),
    /// Strain under load: `502`, `504`, or a response too slow to arrive.
    Strained,
    /// No response at all.
    Unreachable,
}

/// What governs every host of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The host's first backoff, doubled per trouble without a success in
    /// between (`--retry-delay`) up to `max_delay` (`--retry-max-delay`).
    pub delay: Duration,
    pub max_delay: Duration,
    /// `--host-timeout`.
    pub host_timeout: Duration,
    /// `--max-rate`: requests per second.
    pub max_rate: Option<f64>,
    /// The most requests at once (`--per-host`, else `--jobs`).
    pub max: usize,
}

/// Where a host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// Nothing starts before `until`; `status` asked for it.
    Paused {
        until: Instant,
        status: u16,
    },
    /// Unreachable since `since`; the next probe may start at `probe_at`.
    Down {
        since: SystemTime,
        probe_at: Instant,
        probing: bool,
    },
    /// Troubled for longer than `--host-timeout`: nothing starts again.
    Gone {
        since: SystemTime,
    },
}

/// Whether a request to the host may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Now,
    /// Not before then.
    At(Instant),
    /// Not until a request to it ends (its concurrency is full, or its probe
    /// is out).
    Later,
    /// Never: the host is gone.
    Gone {
        since: SystemTime,
    },
}

/// What one host went through, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Responses that asked for less (`429`, `503`, `Retry-After`).
    pub busy: u64,
    pub pauses: u64,
    /// Times it went down, and its longest outage so far.
    pub outages: u64,
    pub longest_outage: Duration,
}

#[derive(Debug, Clone)]
pub struct Health {
    policy: Policy,
    state: State,
    /// Requests at once it allows now.
    cap: usize,
    /// Below this the concurrency doubles when it grows (after an outage).
    threshold: usize,
    /// Successes since the concurrency last changed.
    streak: usize,
    /// The next pause or probe interval.
    backoff: Duration,
    /// Its trouble began then, with no success since.
    trouble_since: Option<(Instant, SystemTime)>,
    last_decrease: Option<Instant>,
    /// Requests that got an answer, all told.
    answered: u64,
    /// `--max-rate`: the next request may start then.
    next_token: Option<Instant>,
    record: Record,
}

impl Health {
    pub fn new(policy: Policy) -> Health {
        Health {
            policy,
            state: State::Open,
            cap: policy.max.max(1),
            threshold: policy.max.max(1),
            streak: 0,
            backoff: policy.delay,
            trouble_since: None,
            last_decrease: None,
            answered: 0,
            next_token: None,
            record: Record::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn record(&self) -> Record {
        self.record
    }

    /// Requests to it that got an answer so far: an entry that fails twice
    /// with this unchanged failed only with its host.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Whether it is as a host without history: nothing to keep.
    pub fn is_pristine(&self) -> bool {
        self.state == State::Open
            && self.cap == self.policy.max.max(1)
            && self.trouble_since.is_none()
            && self.next_token.is_none()
            && self.record == Record::default()
    }

    /// Whether one more request, beside `busy` in flight, may start at `now`.
    pub fn admits(&self, busy: usize, now: Instant) -> Admit {
        let admit = match self.state {
            State::Gone { since } => return Admit::Gone { since },
            State::Paused { until, .. } if now < until => return Admit::At(until),
            State::Down { probing: true, .. } => return Admit::Later,
            State::Down { .. } if busy > 0 => return Admit::Later,
            State::Down { probe_at, .. } if now < probe_at => return Admit::At(probe_at),
            _ if busy >= self.cap => return Admit::Later,
            _ => Admit::Now,
        };
        match self.next_token {
            Some(at) if now < at => Admit::At(at),
            _ => admit,
        }
    }

    /// Whether new entries for it should wait aside rather than start:
    /// paused, down or gone.
    pub fn is_blocked(&self, now: Instant) -> bool {
        match self.state {
            State::Open => false,
            State::Paused { until, .. } => now < until,
            State::Down { .. } | State::Gone { .. } => true,
        }
    }

    /// A request to it starts at `now` (after [`Health::admits`] said so).
    pub fn start(&mut self, now: Instant) {
        if let State::Paused { until, .. } = self.state
            && now >= until
        {
            self.state = State::Open;
        }
        if let State::Down { probing, .. } = &mut self.state {
            *probing = true;
        }
        if let Some(rate) = self.policy.max_rate {
            let gap = Duration::from_secs_f64(1.0 / rate);
            self.next_token = Some(self.next_token.map_or(now, |at| at.max(now)) + gap);
        }
    }

    /// A request to it ended without telling anything (the entry stopped
    /// for its own reasons): a probe out is back.
    pub fn released(&mut self) {
        if let State::Down { probing, .. } = &mut self.state {
            *probing = false;
        }
    }

    /// A response arrived that does not ask for less.
    pub fn answered_at(&mut self, now: Instant) {
        self.answered += 1;
        self.trouble_since = None;
        self.backoff = self.policy.delay;
        if let State::Down { since, .. } = self.state {
            self.end_outage(since);
            // Back at one at a time, doubling up to half where it was.
            self.threshold = (self.cap / 2).max(1);
            self.cap = 1;
            self.streak = 0;
            self.state = State::Open;
            return;
        }
        if matches!(self.state, State::Paused { until, .. } if now >= until) {
            self.state = State::Open;
        }
        self.streak += 1;
        if self.streak >= self.cap && self.cap < self.policy.max {
            self.cap =
                if self.cap < self.threshold { (self.cap * 2).min(self.threshold) } else { self.cap + 1 };
            self.cap = self.cap.min(self.policy.max);
            self.streak = 0;
        }
    }

    /// A request failed with `trouble` at `now`; `retry_after` is the
    /// server's word.
    pub fn failed(&mut self, trouble: Trouble, retry_after: Option<Duration>, now: Instant) {
        let wall = SystemTime::now();
        let (since, since_wall) = *self.trouble_since.get_or_insert((now, wall));
        match trouble {
            Trouble::Busy(status) => {
                self.record.busy += 1;
                let paused = matches!(self.state, State::Paused { until, .. } if until > now);
                if !paused {
                    self.decrease(now);
                    self.record.pauses += 1;
                }
                let wait =
                    retry_after.map_or(Duration::ZERO, |w| w.min(self.policy.max_delay)).max(self.backoff);
                let until = now + wait;
                if !matches!(self.state, State::Down { .. }) {
                    let later = match self.state {
                        State::Paused { until: old, .. } => old.max(until),
                        _ => until,
                    };
                    self.state = State::Paused { until: later, status };
                }
                if !paused {
                    self.grow_backoff();
                }
            }
            Trouble::Strained => {
                if self.last_decrease.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                    self.decrease(now);
                }
            }
            Trouble::Unreachable => match self.state {
                // The probe failed: the next one waits longer.
                State::Down { since, probing: true, .. } => {
                    self.state = State::Down { since, probe_at: now + self.backoff, probing: false };
                    self.grow_backoff();
                }
                // Requests out before it went down, failing now.
                State::Down { .. } | State::Gone { .. } => {}
                _ => {
                    self.record.outages += 1;
                    self.state =
                        State::Down { since: since_wall, probe_at: now + self.backoff, probing: false };
                    self.grow_backoff();
                }
            },
        }
        if now.duration_since(since) >= self.policy.host_timeout {
            if let State::Down { since, .. } = self.state {
                self.end_outage(since);
            }
            self.state = State::Gone { since: since_wall };
        }
    }

    /// Gone if its trouble has lasted longer than `--host-timeout` by `now`
    /// (checked when nothing else happens to it).
    pub fn expire(&mut self, now: Instant) -> bool {
        let Some((since, wall)) = self.trouble_since else { return false };
        if matches!(self.state, State::Gone { .. }) || now.duration_since(since) < self.policy.host_timeout {
            return false;
        }
        if let State::Down { since, .. } = self.state {
            self.end_outage(since);
        }
        self.state = State::Gone { since: wall };
        true
    }

    /// When [`Health::expire`] would next change something.
    pub fn expires_at(&self) -> Option<Instant> {
        let (since, _) = self.trouble_since?;
        (!matches!(self.state, State::Gone { .. })).then(|| since + self.policy.host_timeout)
    }

    fn decrease(&mut self, now: Instant) {
        self.cap = (self.cap / 2).max(1);
        self.threshold = self.cap;
        self.streak = 0;
        self.last_decrease = Some(now);
    }

    fn grow_backoff(&mut self) {
        self.backoff = (self.backoff * 2).min(self.policy.max_delay);
    }

    fn end_outage(&mut self, since: SystemTime) {
        let lasted = SystemTime::now().duration_since(since).unwrap_or_default();
        self.record.longest_outage = self.record.longest_outage.max(lasted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize) -> Policy {
        Policy {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            host_timeout: Duration::from_secs(600),
            max_rate: None,
            max,
        }
    }

    #[test]
    fn a_busy_answer_pauses_and_halves_once_per_pause() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        assert_eq!(h.admits(15, t0), Admit::Now);
        assert_eq!(h.admits(16, t0), Admit::Later);
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(3)), t0);
        assert_eq!(h.cap(), 8);
        assert_eq!(h.admits(0, t0), Admit::At(t0 + Duration::from_secs(3)));
        assert!(h.is_blocked(t0));
        // The other requests of the same burst do not halve it again.
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(3)), t0 + Duration::from_millis(5));
        assert_eq!(h.cap(), 8);
        assert_eq!(h.record().pauses, 1);
        assert_eq!(h.record().busy, 2);
        // Retry-After is capped; the host's backoff is the floor.
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(h.admits(0, t1), Admit::Now);
        h.start(t1);
        h.failed(Trouble::Busy(503), None, t1);
        assert_eq!(h.admits(0, t1), Admit::At(t1 + Duration::from_secs(2)), "backoff doubled");
        assert_eq!(h.cap(), 4);
    }

    #[test]
    fn successes_grow_the_concurrency_by_one_per_round() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(8));
        h.failed(Trouble::Busy(429), None, t0);
        assert_eq!(h.cap(), 4);
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..4 {
            h.answered_at(t1);
        }
        assert_eq!(h.cap(), 5);
        for _ in 0..5 + 6 + 7 + 8 {
            h.answered_at(t1);
        }
        assert_eq!(h.cap(), 8, "never above the maximum");
        assert_eq!(h.state(), State::Open);
    }

    #[test]
    fn an_unreachable_host_is_probed_one_at_a_time_and_reopens_at_one() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        h.failed(Trouble::Unreachable, None, t0);
        assert!(matches!(h.state(), State::Down { .. }));
        assert_eq!(h.admits(0, t0), Admit::At(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(h.admits(1, t1), Admit::Later, "not while others are out");
        assert_eq!(h.admits(0, t1), Admit::Now);
        h.start(t1);
        assert_eq!(h.admits(0, t1), Admit::Later, "one probe at a time");
        h.failed(Trouble::Unreachable, None, t1);
        assert_eq!(h.admits(0, t1), Admit::At(t1 + Duration::from_secs(2)), "probes back off");
        let t2 = t1 + Duration::from_secs(2);
        h.start(t2);
        h.answered_at(t2);
        assert_eq!(h.state(), State::Open);
        assert_eq!(h.cap(), 1);
        h.answered_at(t2);
        assert_eq!(h.cap(), 2);
        h.answered_at(t2);
        h.answered_at(t2);
        assert_eq!(h.cap(), 4);
        assert_eq!(h.record().outages, 1);
    }

    #[test]
    fn trouble_longer_than_the_host_timeout_makes_it_gone() {
        let t0 = Instant::now();
        let mut h = Health::new(Policy { host_timeout: Duration::from_secs(10), ..policy(4) });
        h.failed(Trouble::Unreachable, None, t0);
        assert!(!h.expire(t0 + Duration::from_secs(9)));
        assert_eq!(h.expires_at(), Some(t0 + Duration::from_secs(10)));
        assert!(h.expire(t0 + Duration::from_secs(10)));
        assert!(matches!(h.admits(0, t0 + Duration::from_secs(11)), Admit::Gone { .. }));
        // A success in between starts the clock over.
        let mut h = Health::new(Policy { host_timeout: Duration::from_secs(10), ..policy(4) });
        h.failed(Trouble::Busy(429), None, t0);
        h.answered_at(t0 + Duration::from_secs(5));
        h.failed(Trouble::Busy(429), None, t0 + Duration::from_secs(12));
        assert!(!matches!(h.state(), State::Gone { .. }));
    }

    #[test]
    fn strain_lowers_the_concurrency_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        h.failed(Trouble::Strained, None, t0);
        h.failed(Trouble::Strained, None, t0 + Duration::from_millis(10));
        assert_eq!(h.cap(), 8);
        assert_eq!(h.state(), State::Open, "strain does not pause");
        h.failed(Trouble::Strained, None, t0 + Duration::from_secs(1));
        assert_eq!(h.cap(), 4);
    }

    #[test]
    fn max_rate_spaces_requests() {
        let t0 = Instant::now();
        let mut h = Health::new(Policy { max_rate: Some(10.0), ..policy(16) });
        assert_eq!(h.admits(0, t0), Admit::Now);
        h.start(t0);
        assert_eq!(h.admits(1, t0), Admit::At(t0 + Duration::from_millis(100)));
        h.start(t0 + Duration::from_millis(100));
        assert_eq!(h.admits(1, t0 + Duration::from_millis(150)), Admit::At(t0 + Duration::from_millis(200)));
        assert!(!h.is_pristine());
    }
}
