//! Concurrency bounds of a run.
//!
//! A transfer holds a [`Slot`]: one of the run's `--jobs`, and one of its
//! host's `--per-host`, taken together, in the order of the [`Ticket`]s
//! (manifest order for entries). Segmented downloads (one file over several
//! connections) take further slots from the same [`Limits`], so the global
//! bounds hold however the work is split.
//!
//! Each host's slots also follow its health ([`crate::hosts`]): a paused
//! or down host gets none until it may have one again, and a gone host's
//! tickets are refused. Its state lives here, beside the counts it governs,
//! for hosts that had trouble (or a `--max-rate`); a host without history
//! costs nothing but its count of slots in use.
//!
//! [`Keyed`] serializes entries of one run that share a destination.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

use crate::hosts::{Health, Policy, Record, State, Trouble};

mod keyed;
mod line;

pub use keyed::{Keyed, KeyedPermit};

/// The run's concurrency limits: `--jobs` slots, at most `--per-host` of
/// them for one host (fewer while it is troubled), handed out in the order
/// tickets were taken.
///
/// The dispatcher takes a ticket for each entry as it reads it, so entries
/// start in manifest order, whichever task the runtime polls first. A
/// ticket whose host has all its slots, or is paused or down, waits without
/// holding up tickets of other hosts; one still being prepared (its task
/// has not asked yet) holds up the tickets after it, which is brief:
/// nothing is awaited before it asks (see [`crate::download`]).
///
/// Out of file descriptors, the run goes on with fewer slots ([`Limits::lower`]).
#[derive(Debug)]
pub struct Limits {
    line: Arc<Mutex<Line>>,
    /// Whether any host has a health record yet: until then the calls
    /// every entry makes ([`Limits::gate`], [`Limits::answered`],
    /// [`Limits::blocked_waiters`]) answer without taking the lock.
    health_seen: Arc<AtomicBool>,
    /// The run has been told that it runs fewer at once than asked.
    told: AtomicBool,
    /// Told when a host may take requests again, or is gone.
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct Line {
    /// Slots in all, and in use.
    jobs: usize,
    in_use: usize,
    /// How many times `jobs` was lowered.
    generation: u64,
    per_host: Option<usize>,
    policy: Policy,
    /// Hosts with slots in use, or with a history.
    hosts: HashMap<String, Host>,
    /// Hosts with a health record.
    troubled: usize,
    /// Tickets not yet served, in the order they were taken.
    waiting: BTreeMap<u64, Waiter>,
    next: u64,
    /// When a timer will serve the line again, if one is set.
    timer: Option<Instant>,
    changed: Arc<Notify>,
    health_seen: Arc<AtomicBool>,
    /// This line, for the timer task.
    me: Weak<Mutex<Line>>,
}

/// One host's slots in use, and its health once it had trouble.
#[derive(Debug, Default)]
struct Host {
    busy: usize,
    health: Option<Health>,
    /// Its last trouble, in words.
    last: String,
}

#[derive(Debug)]
struct Waiter {
    host: String,
    /// `None` until the ticket's holder asks for its slot.
    /// Sent the host's episode of trouble when served.
    wake: Option<oneshot::Sender<Result<u64, Unavailable>>>,
}

/// A host that was troubled for longer than `--host-timeout`: no request
/// goes to it again in this run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} has not answered since {} ({}), longer than --host-timeout; last: {last}", clock(*since), ago(*since))]
pub struct Unavailable {
    pub host: String,
    pub since: SystemTime,
    /// The last failure it showed.
    pub last: String,
}

/// Where a host stands, as a new entry for it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Paused or down: the entry waits aside.
    Blocked,
    /// Down, with no request out or waiting: one entry may go, to probe it.
    Probe,
    Gone(Unavailable),
}

/// A troubled host, for the display and the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Troubled {
    pub host: String,
    pub state: State,
    pub cap: usize,
    pub record: Record,
}

/// A place in line for a [`Slot`]; dropping it gives the place up.
#[derive(Debug)]
pub struct Ticket {
    line: Arc<Mutex<Line>>,
    number: u64,
    host: String,
    /// The slot has been handed over: the ticket is spent.
    served: bool,
}

/// Permits that let one transfer run.
#[derive(Debug)]
pub struct Slot {
    line: Arc<Mutex<Line>>,
    host: String,
    /// Its host's episode of trouble when it was handed out.
    episode: u64,
}

impl Slot {
    /// Its host's episode of trouble when it was handed out: a failure
    /// of a request started before the host's current trouble is part of it.
    pub fn episode(&self) -> u64 {
        self.episode
    }

    /// The host it is a slot of.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Limits {
    pub fn new(jobs: usize, per_host: Option<usize>, policy: Policy) -> Limits {
        let changed = Arc::new(Notify::new());
        let health_seen = Arc::new(AtomicBool::new(false));
        let line = Arc::new_cyclic(|me| {
            Mutex::new(Line {
                jobs,
                in_use: 0,
                generation: 0,
                per_host,
                policy: Policy { max: per_host.unwrap_or(jobs).min(jobs).max(1), ..policy },
                hosts: HashMap::new(),
                troubled: 0,
                waiting: BTreeMap::new(),
                next: 0,
                timer: None,
                changed: changed.clone(),
                health_seen: health_seen.clone(),
                me: me.clone(),
            })
        });
        Limits { line, health_seen, told: AtomicBool::new(false), changed }
    }

    /// Slots in all (fewer than `--jobs` once [`Limits::lower`]ed).
    pub fn jobs(&self) -> usize {
        lock(&self.line).jobs
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        lock(&self.line).in_use
    }

    /// The number of times the slots were lowered so far: what a transfer
    /// that may run out of descriptors notes before it starts.
    pub fn generation(&self) -> u64 {
        lock(&self.line).generation
    }

    /// Fewer slots, after a transfer that started in `generation` ran out
    /// of file descriptors. The failures of one generation (a burst, as the
    /// descriptors ran out for all at once) lower the slots once. Returns
    /// the new number of slots when it changed.
    pub fn lower(&self, generation: u64) -> Option<usize> {
        let mut line = lock(&self.line);
        if line.generation != generation {
            return None;
        }
        let jobs = lowered(line.jobs, line.in_use);
        if jobs == line.jobs {
            return None;
        }
        line.jobs = jobs;
        line.generation += 1;
        Some(jobs)
    }

    /// True the first time it is asked: whether to tell the user that the
    /// run goes at fewer downloads at once than `--jobs`.
    pub fn first_to_tell(&self) -> bool {
        !self.told.swap(true, Ordering::Relaxed)
    }

    /// A place in line for a slot for `host`, behind every ticket taken before.
    pub fn ticket(&self, host: &str) -> Ticket {
        let mut line = lock(&self.line);
        let number = line.next;
        line.next += 1;
        line.waiting.insert(number, Waiter { host: host.to_owned(), wake: None });
        Ticket { line: self.line.clone(), number, host: host.to_owned(), served: false }
    }

    /// Wait for a slot for `host`, behind every ticket taken before.
    pub async fn slot(&self, host: &str) -> Result<Slot, Unavailable> {
        self.ticket(host).slot().await
    }

    /// Where `host` stands for a new entry. A down host with no request
    /// out or waiting is open to one: someone has to probe it.
    pub fn gate(&self, host: &str) -> Gate {
        if !self.health_seen.load(Ordering::Acquire) {
            return Gate::Open;
        }
        let mut line = lock(&self.line);
        let now = Instant::now();
        let Some(entry) = line.hosts.get_mut(host) else { return Gate::Open };
        let busy = entry.busy;
        let Some(health) = entry.health.as_mut() else { return Gate::Open };
        health.expire(now);
        let (state, blocked) = (health.state(), health.is_blocked(now));
        match state {
            State::Gone { since } => Gate::Gone(line.unavailable(host, since)),
            State::Down { .. } if busy == 0 && !line.waiting.values().any(|w| w.host == host) => Gate::Probe,
            _ if blocked => Gate::Blocked,
            _ => Gate::Open,
        }
    }

    /// Tickets waiting for a host that is paused, down or gone: the
    /// dispatcher does not count their entries against its lookahead.
    pub fn blocked_waiters(&self) -> usize {
        if !self.health_seen.load(Ordering::Acquire) {
            return 0;
        }
        let line = lock(&self.line);
        if line.troubled == 0 {
            return 0;
        }
        let now = Instant::now();
        let blocked = |host: &str| {
            line.hosts.get(host).and_then(|h| h.health.as_ref()).is_some_and(|h| h.is_blocked(now))
        };
        line.waiting.values().filter(|w| w.wake.is_some() && blocked(&w.host)).count()
    }

    /// Resolves when a host may have changed for the better, or is gone.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// A response from `host` arrived that does not ask for less; true
    /// when that reopened the host.
    pub fn answered(&self, host: &str) -> bool {
        if !self.health_seen.load(Ordering::Acquire) {
            return false;
        }
        let mut line = lock(&self.line);
        let Some(health) = line.hosts.get_mut(host).and_then(|h| h.health.as_mut()) else { return false };
        let closed = health.state() != State::Open;
        health.answered_at(Instant::now());
        // A request that started before a pause may answer during it.
        let reopened = closed && health.state() == State::Open;
        if reopened {
            self.changed.notify_one();
        }
        line.serve();
        reopened
    }

    /// How many hosts are down, when every host with work (a request out
    /// or a ticket waiting) is down and there are more than one: then it
    /// is the network rather than the hosts.
    pub fn all_down(&self) -> Option<usize> {
        let line = lock(&self.line);
        let down = |h: &Host| h.health.as_ref().is_some_and(|h| matches!(h.state(), State::Down { .. }));
        let waiting = |host: &str| line.waiting.values().any(|w| w.host == host);
        let mut working = line.hosts.iter().filter(|(host, h)| h.busy > 0 || down(h) || waiting(host));
        let count = line.hosts.values().filter(|h| down(h)).count();
        let others = line.waiting.values().any(|w| !line.hosts.get(&w.host).is_some_and(down));
        (count > 1 && !others && working.all(|(_, h)| down(h))).then_some(count)
    }

    /// A request to `host` failed with `trouble`; the new state when it
    /// changed.
    pub fn failed(
        &self,
        host: &str,
        trouble: Trouble,
        retry_after: Option<Duration>,
        error: &dyn std::fmt::Display,
        started: u64,
    ) -> Option<State> {
        let mut line = lock(&self.line);
        let policy = line.policy;
        let entry = line.hosts.entry(host.to_owned()).or_default();
        entry.last = error.to_string();
        let new = entry.health.is_none();
        let busy = entry.busy;
        let health = entry.health.get_or_insert_with(|| Health::new(policy));
        let before = health.state();
        health.failed(trouble, retry_after, busy, started, Instant::now());
        let after = health.state();
        line.troubled += usize::from(new);
        self.health_seen.store(true, Ordering::Release);
        line.serve();
        let changed = std::mem::discriminant(&before) != std::mem::discriminant(&after);
        if changed {
            // Gone: the dispatcher fails what it holds for the host.
            self.changed.notify_one();
        }
        changed.then_some(after)
    }

    /// How long `host` stays paused from now, if it is.
    pub fn paused_for(&self, host: &str) -> Option<Duration> {
        let line = lock(&self.line);
        match line.hosts.get(host)?.health.as_ref()?.state() {
            // In whole milliseconds, rounded up: a wait is never short.
            State::Paused { until, .. } => {
                let left = until.saturating_duration_since(Instant::now());
                Some(Duration::from_millis(left.as_micros().div_ceil(1000) as u64))
            }
            _ => None,
        }
    }

    /// Responses `host` gave so far that did not ask for less.
    pub fn answers(&self, host: &str) -> u64 {
        let line = lock(&self.line);
        line.hosts.get(host).and_then(|h| h.health.as_ref()).map_or(0, Health::answered)
    }

    /// Hosts that had trouble in this run.
    pub fn troubled(&self) -> Vec<Troubled> {
        let line = lock(&self.line);
        let mut hosts: Vec<Troubled> = line
            .hosts
            .iter()
            .filter_map(|(host, h)| {
                let health = h.health.as_ref()?;
                Some(Troubled {
                    host: host.clone(),
                    state: health.state(),
                    cap: health.cap(),
                    record: health.record(),
                })
            })
            .filter(|t| t.record != Record::default() || t.state != State::Open)
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        hosts
    }
}

impl Ticket {
    /// The host it is a place in line for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Wait for this ticket's turn; refused when its host is gone.
    pub async fn slot(mut self) -> Result<Slot, Unavailable> {
        let (tx, rx) = oneshot::channel();
        {
            let mut line = lock(&self.line);
            line.waiting.get_mut(&self.number).expect("a ticket is in line until served").wake = Some(tx);
            line.serve();
        }
        // The sender is only dropped after it has sent: when served, the
        // ticket has left the line and the slot is ours (counted in `serve`).
        let served = rx.await.unwrap_or(Ok(0));
        self.served = true;
        let episode = served?;
        Ok(Slot { line: self.line.clone(), host: std::mem::take(&mut self.host), episode })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut line = lock(&self.line);
        if line.waiting.remove(&self.number).is_none() {
            // Served while the wait was being dropped: give the slot back.
            line.release(&self.host);
        }
        line.serve();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut line = lock(&self.line);
        line.release(&self.host);
        line.serve();
    }
}

/// `since` as the time of day, UTC.
fn clock(since: SystemTime) -> String {
    let secs = since.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// How long ago `since` was, in whole seconds.
fn ago(since: SystemTime) -> String {
    let secs = SystemTime::now().duration_since(since).unwrap_or_default().as_secs();
    format!("{secs} s ago")
}

/// Slots after running out of descriptors with `in_use` of `jobs` taken:
/// a quarter fewer than were in use (the failed one's included), at least
/// one.
fn lowered(jobs: usize, in_use: usize) -> usize {
    ((jobs.min(in_use + 1) * 3) / 4).clamp(1, jobs)
}

fn lock(line: &Mutex<Line>) -> std::sync::MutexGuard<'_, Line> {
    line.lock().expect("slot line poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            host_timeout: Duration::from_secs(600),
            max_rate: None,
            max: 16,
        }
    }

    #[tokio::test]
    async fn a_paused_host_waits_without_holding_up_others_and_a_gone_one_is_refused() {
        let limits = Limits::new(4, None, Policy { host_timeout: Duration::from_millis(300), ..policy() });
        let slot = limits.slot("a").await.unwrap();
        limits.failed("a", Trouble::Busy(429), Some(Duration::from_secs(30)), &"HTTP 429", 0);
        assert_eq!(limits.gate("a"), Gate::Blocked);
        drop(slot);
        let a = tokio::spawn({
            let ticket = limits.ticket("a");
            ticket.slot()
        });
        // b's ticket is behind a's, and goes first.
        let _b = limits.slot("b").await.unwrap();
        assert!(!a.is_finished());
        // No answer from a for longer than --host-timeout: refused.
        let refused = tokio::time::timeout(Duration::from_secs(20), a).await.unwrap().unwrap();
        assert_eq!(refused.unwrap_err().host, "a");
        assert!(matches!(limits.gate("a"), Gate::Gone(_)));
        let troubled = limits.troubled();
        assert_eq!(troubled.len(), 1);
        assert_eq!(troubled[0].record.busy, 1);
    }

    #[tokio::test]
    async fn slots_go_to_tickets_in_order_passing_over_busy_hosts() {
        let limits = Limits::new(2, Some(1), policy());
        let a0 = limits.ticket("a");
        let a1 = limits.ticket("a");
        let b0 = limits.ticket("b");
        let b1 = limits.ticket("b");
        // b0 asks first, but a0 is ahead and has not asked yet.
        let b0 = tokio::spawn(b0.slot());
        tokio::task::yield_now().await;
        assert!(!b0.is_finished(), "a ticket ahead that has not asked holds the line");
        let a0 = a0.slot().await;
        let b0 = b0.await.unwrap();
        // Both slots taken: a1 and b1 wait; when a's slot frees, a1 gets it.
        let a1 = tokio::spawn(a1.slot());
        let b1 = tokio::spawn(b1.slot());
        tokio::task::yield_now().await;
        assert!(!a1.is_finished() && !b1.is_finished());
        drop(b0);
        let b1 = b1.await.unwrap();
        assert!(!a1.is_finished(), "host a is still busy");
        drop(a0);
        let a1 = a1.await.unwrap();
        // A ticket given up leaves the line; a slot dropped frees its host.
        let c = limits.ticket("a");
        let d = limits.ticket("b");
        drop(c);
        drop((a1, b1));
        let _d = d.slot().await;
        let _e = limits.slot("a").await;
    }

    #[test]
    fn out_of_descriptors_a_quarter_fewer_slots_than_were_in_use() {
        let cases = [(200, 40, 30), (200, 0, 1), (16, 16, 12), (4, 1, 1), (1, 0, 1), (10, 3, 3)];
        for (jobs, in_use, want) in cases {
            assert_eq!(lowered(jobs, in_use), want, "{jobs} with {in_use} in use");
        }
        let limits = Limits::new(8, None, policy());
        let generation = limits.generation();
        assert_eq!(limits.lower(generation), Some(1), "nothing in use: one slot");
        assert_eq!(limits.lower(generation), None, "one burst lowers once");
        assert!(limits.first_to_tell() && !limits.first_to_tell());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_slots_than_jobs_whatever_is_dropped() {
        use std::sync::atomic::AtomicUsize;
        let limits = Arc::new(Limits::new(2, None, policy()));
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..2000u64 {
            let ticket = limits.ticket(if i % 3 == 0 { "a" } else { "b" });
            let (holding, most) = (holding.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                match i % 4 {
                    // Given up before asking.
                    0 => drop(ticket),
                    // Given up while waiting.
                    1 => {
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_micros(50), ticket.slot()).await;
                    }
                    _ => {
                        let slot = ticket.slot().await;
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "{} slots at once", most.load(Ordering::SeqCst));
        assert_eq!(limits.in_use(), 0);
    }
}
