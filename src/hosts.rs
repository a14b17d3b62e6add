//! Per-host health: what one host (scheme, host and port) has shown of
//! itself, and what that allows: how many requests at once, from when, and
//! whether at all. Pure: [`crate::pool`] keeps one [`Health`] per troubled
//! host and asks it before it hands out a slot; [`crate::net`] tells it how
//! each request went.
//!
//! - A host that asks for less (`429`, `503`, or any `Retry-After`) is
//!   paused: no request to it starts before its `Retry-After` (capped by
//!   `--retry-max-delay`), or, when it asks again with no answer in between,
//!   the host's backoff (`--retry-delay`, doubling). A `429` is a rate
//!   limit: the host's requests are then paced at the rate it allowed since
//!   its last `429` (a token bucket), growing slowly until the next one. A
//!   `503`, a `502`, a `504` or a read timeout is overload: the host's
//!   concurrency drops to one below what was in flight (at most once a
//!   round of answers) and grows back slowly past that point, fast
//!   (doubling) below it: additive increase, multiplicative decrease, never
//!   above `--per-host`/`--jobs`.
//! - A host that does not answer at all (refused, connect timeout, reset
//!   before a response, a resolver that cannot answer) with no success since
//!   its trouble began is down: one probe at a time tests it, with a backoff
//!   between probes (`--retry-delay` doubling, at most 5 s); the
//!   first answer reopens it, at one request at a time.
//! - A host troubled without a success for longer than `--host-timeout` is
//!   gone for the rest of the run: its entries fail at once.
//! - `--max-rate` caps the pace of a host's requests the same way.

use std::time::{Duration, Instant, SystemTime};

/// The longest wait between two probes of a down host (or
/// `--retry-max-delay`, if shorter): a probe costs one connection attempt,
/// and a host that comes back is found within this.
const PROBE_MAX: Duration = Duration::from_secs(5);

/// What `--max-rate` and a learned pace let through at once, in time.
const BUCKET: Duration = Duration::from_millis(50);

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
    /// The next probe interval of a down host.
    backoff: Duration,
    /// Times it asked for less with nothing else out and no answer in
    /// between: the host's backoff grows with them.
    busy_in_a_row: u32,
    /// Counts the episodes of trouble: a failure of a request that started
    /// before the current one began is part of it (a burst fails together)
    /// and changes nothing more.
    episode: u64,
    /// The pace learned from its `429`s, in requests per second.
    learned_rate: Option<f64>,
    /// When the current rate cycle began (the last `429`), the count of
    /// answers when its pause ended, and how long that pause was.
    cycle: (Instant, u64, Duration),
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
            busy_in_a_row: 0,
            episode: 0,
            learned_rate: None,
            cycle: (Instant::now(), 0, Duration::ZERO),
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
            && self.learned_rate.is_none()
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

    /// A request to it starts at `now` (after [`Health::admits`] said so);
    /// the episode it starts in, for [`Health::failed`].
    pub fn start(&mut self, now: Instant) -> u64 {
        if let State::Paused { until, .. } = self.state
            && now >= until
        {
            self.end_pause();
        }
        if let State::Down { probing, .. } = &mut self.state {
            *probing = true;
        }
        if let Some(rate) = self.rate() {
            // A bucket of 50 ms worth of tokens (at least one): a request
            // that starts a little late, as timers do, costs no pace.
            let gap = Duration::from_secs_f64(1.0 / rate);
            let slack = gap.mul_f64((rate * BUCKET.as_secs_f64()).max(1.0) - 1.0);
            let floor = now.checked_sub(slack).unwrap_or(now);
            self.next_token = Some(self.next_token.map_or(now, |at| at.max(floor)) + gap);
        }
        self.episode
    }

    /// The pace of its requests: `--max-rate`, or slower if it asked.
    fn rate(&self) -> Option<f64> {
        match (self.policy.max_rate, self.learned_rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
        self.busy_in_a_row = 0;
        if let Some(rate) = &mut self.learned_rate {
            // About 0.5% a second faster, until the next 429 says otherwise.
            *rate *= 1.0 + 0.005 / *rate;
        }
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
            self.end_pause();
        }
        self.streak += 1;
        // Back to where it was, a round of answers at a time; past it, one
        // more after eight rounds, so that a server at its limit sees few
        // requests beyond it.
        let round = if self.cap < self.threshold { self.cap } else { 8 * self.cap };
        if self.streak >= round && self.cap < self.policy.max {
            self.cap =
                if self.cap < self.threshold { (self.cap * 2).min(self.threshold) } else { self.cap + 1 };
            self.cap = self.cap.min(self.policy.max);
            self.streak = 0;
        }
    }

    /// A request that started in episode `started` failed with `trouble`
    /// at `now`, with `busy` requests to it in flight (this one included);
    /// `retry_after` is the server's word.
    pub fn failed(
        &mut self,
        trouble: Trouble,
        retry_after: Option<Duration>,
        busy: usize,
        started: u64,
        now: Instant,
    ) {
        let wall = SystemTime::now();
        let (since, since_wall) = *self.trouble_since.get_or_insert((now, wall));
        let fresh = started >= self.episode && trouble != Trouble::Unreachable;
        if fresh {
            self.episode += 1;
        }
        match trouble {
            Trouble::Busy(status) => {
                self.record.busy += 1;
                if fresh {
                    self.record.pauses += 1;
                    // With others out, an overloaded server is at work:
                    // fewer at once is the remedy, not a pause of its own.
                    // A rate limit is not lifted by fewer at once.
                    if busy <= 1 || status == 429 {
                        self.busy_in_a_row += 1;
                    }
                    if status == 429 {
                        self.learn_rate(now);
                    }
                }
                if status != 429 {
                    self.decrease(busy, now);
                }
                // Asked again with no answer in between: the host's backoff.
                let backoff = match self.busy_in_a_row {
                    0 | 1 => Duration::ZERO,
                    n => (self.policy.delay * 2u32.saturating_pow(n - 2)).min(self.policy.max_delay),
                };
                let wait = retry_after.map_or(Duration::ZERO, |w| w.min(self.policy.max_delay)).max(backoff);
                if fresh && status == 429 {
                    self.cycle.2 = wait;
                }
                if !matches!(self.state, State::Down { .. }) && !wait.is_zero() {
                    let until = match self.state {
                        State::Paused { until: old, .. } => old.max(now + wait),
                        _ => now + wait,
                    };
                    self.state = State::Paused { until, status };
                }
            }
            Trouble::Strained => self.decrease(busy, now),
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

    /// Overload with `busy` in flight: one below that, the level the
    /// server took. Each request of a burst it refused takes one more off:
    /// from 16 at once against a server that takes 4, the 12 refused bring
    /// it to 4.
    fn decrease(&mut self, busy: usize, now: Instant) {
        self.cap = busy.min(self.cap).saturating_sub(1).max(1);
        self.threshold = self.cap;
        self.streak = 0;
        self.last_decrease = Some(now);
    }

    /// A pause ends: the rate cycle counts the answers from here on, not
    /// the late ones of requests sent before the 429.
    fn end_pause(&mut self) {
        self.state = State::Open;
        self.cycle.1 = self.answered;
    }

    /// A `429` after a cycle of answers: pace at the rate they came, a
    /// little under it. The cycle runs from the end of the last 429's pause
    /// (but lasts at least that pause: the server's window) and counts the
    /// answers after the pause. A 429 right after a pause (a Retry-After
    /// shorter than the server's window) has none and teaches nothing.
    fn learn_rate(&mut self, now: Instant) {
        let (began, answered, pause) = self.cycle;
        // The time it took them, or the pause if longer: after a pause as
        // long as the server's window, a burst of answers spends its
        // allowance in a moment, and the window is the time that counts.
        let active = now.saturating_duration_since(began + pause);
        let seconds = active.max(pause).as_secs_f64();
        let answers = self.answered - answered;
        if answers > 0 && seconds >= 0.05 {
            let allowed = answers as f64 / seconds;
            self.learned_rate = Some(allowed * 0.98);
        }
        self.cycle = (now, self.answered, Duration::ZERO);
        self.next_token = None;
    }

    fn grow_backoff(&mut self) {
        self.backoff = (self.backoff * 2).min(self.policy.max_delay).min(PROBE_MAX);
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
    fn a_busy_answer_pauses_for_its_retry_after_and_only_the_first_of_a_burst_counts() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        assert_eq!(h.admits(15, t0), Admit::Now);
        assert_eq!(h.admits(16, t0), Admit::Later);
        let started = h.start(t0);
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(3)), 16, started, t0);
        assert_eq!(h.admits(0, t0), Admit::At(t0 + Duration::from_secs(3)));
        assert!(h.is_blocked(t0));
        // Another request of the same burst (started before it) adds a
        // 429 to the record, not a pause.
        h.failed(
            Trouble::Busy(429),
            Some(Duration::from_secs(3)),
            15,
            started,
            t0 + Duration::from_millis(5),
        );
        assert_eq!((h.record().pauses, h.record().busy), (1, 2));
        // Retry-After is capped at --retry-max-delay.
        let t1 = t0 + Duration::from_secs(4);
        let started = h.start(t1);
        h.failed(Trouble::Busy(503), Some(Duration::from_secs(3600)), 1, started, t1);
        assert_eq!(h.admits(0, t1), Admit::At(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn asked_again_with_nothing_else_out_and_no_answer_the_host_backs_off() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        let mut at = t0;
        let mut pauses = Vec::new();
        for _ in 0..4 {
            let started = h.start(at);
            h.failed(Trouble::Busy(503), None, 1, started, at);
            let until = match h.admits(0, at) {
                Admit::At(until) => until,
                _ => at,
            };
            pauses.push(until - at);
            at = until;
        }
        let s = Duration::from_secs;
        assert_eq!(pauses, [s(0), s(1), s(2), s(4)]);
        // An answer starts it over.
        h.answered_at(at);
        let started = h.start(at);
        h.failed(Trouble::Busy(503), None, 1, started, at);
        assert_eq!(h.admits(0, at), Admit::Now);
    }

    #[test]
    fn a_429_without_retry_after_asked_again_pauses_even_with_others_out() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        let started = h.start(t0);
        h.failed(Trouble::Busy(429), None, 16, started, t0);
        assert_eq!(h.admits(0, t0), Admit::Now, "the first asks for no wait");
        let started = h.start(t0);
        h.failed(Trouble::Busy(429), None, 16, started, t0);
        assert_eq!(h.admits(0, t0), Admit::At(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn late_answers_of_requests_sent_before_a_429_teach_no_rate() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        let started = h.start(t0);
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(1)), 16, started, t0);
        // Four late answers come in during the pause; right after it the
        // server (whose window is longer than its Retry-After) says 429.
        for _ in 0..4 {
            h.answered_at(t0 + Duration::from_millis(500));
        }
        let t1 = t0 + Duration::from_secs(1);
        let started = h.start(t1);
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(1)), 1, started, t1);
        assert_eq!(h.rate(), None, "4 answers a second is not what it allows");
    }

    #[test]
    fn overload_takes_one_off_per_refusal_and_grows_back_slowly_past_it() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        // 16 out against a server that takes 4: 12 refused.
        let started = h.start(t0);
        for busy in (5..=16).rev() {
            h.failed(Trouble::Busy(503), None, busy, started, t0);
        }
        assert_eq!(h.cap(), 4);
        assert_eq!(h.state(), State::Open, "others are out: no pause");
        // Past the level it found, one more after eight rounds of answers.
        for _ in 0..31 {
            h.answered_at(t0);
        }
        assert_eq!(h.cap(), 4);
        h.answered_at(t0);
        assert_eq!(h.cap(), 5);
        let started = h.start(t0);
        h.failed(Trouble::Strained, None, 5, started, t0);
        assert_eq!(h.cap(), 4);
    }

    #[test]
    fn a_429_paces_the_host_at_the_rate_it_allowed() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        let started = h.start(t0);
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(1)), 16, started, t0);
        // 100 answers in the next second, then a 429 again.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..100 {
            h.start(t1);
            h.answered_at(t1);
        }
        let started = h.start(t1);
        h.failed(Trouble::Busy(429), Some(Duration::from_secs(1)), 16, started, t1);
        let t2 = t1 + Duration::from_secs(1);
        // 98 a second: about 10 ms apart, after a bucket of 50 ms.
        let mut starts = 0;
        let mut at = t2;
        while at < t2 + Duration::from_secs(1) {
            match h.admits(0, at) {
                Admit::Now => {
                    h.start(at);
                    starts += 1;
                }
                Admit::At(next) => at = next,
                other => panic!("{other:?}"),
            }
        }
        assert!((95..=105).contains(&starts), "{starts} in a second");
    }

    #[test]
    fn an_unreachable_host_is_probed_one_at_a_time_and_reopens_at_one() {
        let t0 = Instant::now();
        let mut h = Health::new(policy(16));
        h.failed(Trouble::Unreachable, None, 16, 0, t0);
        assert!(matches!(h.state(), State::Down { .. }));
        assert_eq!(h.admits(0, t0), Admit::At(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(h.admits(1, t1), Admit::Later, "not while others are out");
        assert_eq!(h.admits(0, t1), Admit::Now);
        h.start(t1);
        assert_eq!(h.admits(0, t1), Admit::Later, "one probe at a time");
        h.failed(Trouble::Unreachable, None, 16, 0, t1);
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
        h.failed(Trouble::Unreachable, None, 16, 0, t0);
        assert!(!h.expire(t0 + Duration::from_secs(9)));
        assert_eq!(h.expires_at(), Some(t0 + Duration::from_secs(10)));
        assert!(h.expire(t0 + Duration::from_secs(10)));
        assert!(matches!(h.admits(0, t0 + Duration::from_secs(11)), Admit::Gone { .. }));
        // A success in between starts the clock over.
        let mut h = Health::new(Policy { host_timeout: Duration::from_secs(10), ..policy(4) });
        h.failed(Trouble::Busy(429), None, 16, 0, t0);
        h.answered_at(t0 + Duration::from_secs(5));
        h.failed(Trouble::Busy(429), None, 16, 1, t0 + Duration::from_secs(12));
        assert!(!matches!(h.state(), State::Gone { .. }));
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
