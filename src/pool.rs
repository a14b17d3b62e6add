//! Concurrency bounds of a run.
//!
//! A transfer holds a [`Slot`]: one of the run's `--jobs`, and one of its
//! host's `--per-host`, taken together, in the order of the [`Ticket`]s
//! (manifest order for entries). Segmented downloads (one file over several
//! connections) take further slots from the same [`Limits`], so the global
//! bounds hold however the work is split.
//!
//! [`Keyed`] is a set of semaphores by key that forgets a key once nobody
//! holds or waits for it, so memory follows what is in flight, not how many
//! destinations the manifest names. It serializes entries of one run that
//! share a destination (one permit per path).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// The run's concurrency limits: `--jobs` slots, at most `--per-host` of
/// them for one host, handed out in the order tickets were taken.
///
/// The dispatcher takes a ticket for each entry as it reads it, so entries
/// start in manifest order, whichever task the runtime polls first. A
/// ticket whose host has all its slots waits without holding up tickets of
/// other hosts; one still being prepared (its task has not asked yet) holds
/// up the tickets after it, which is brief: nothing is awaited before it
/// asks (see [`crate::download`]).
///
/// Out of file descriptors, the run goes on with fewer slots ([`Limits::lower`]).
#[derive(Debug)]
pub struct Limits {
    line: Arc<Mutex<Line>>,
    /// The run has been told that it runs fewer at once than asked.
    told: AtomicBool,
}

#[derive(Debug)]
struct Line {
    /// Slots in all, and in use.
    jobs: usize,
    in_use: usize,
    /// How many times `jobs` was lowered.
    generation: u64,
    per_host: Option<usize>,
    /// Slots in use by host, for hosts that have any.
    busy: HashMap<String, usize>,
    /// Tickets not yet served, in the order they were taken.
    waiting: BTreeMap<u64, Waiter>,
    next: u64,
}

#[derive(Debug)]
struct Waiter {
    host: String,
    /// `None` until the ticket's holder asks for its slot.
    wake: Option<oneshot::Sender<()>>,
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
}

impl Limits {
    pub fn new(jobs: usize, per_host: Option<usize>) -> Limits {
        let line = Line {
            jobs,
            in_use: 0,
            generation: 0,
            per_host,
            busy: HashMap::new(),
            waiting: BTreeMap::new(),
            next: 0,
        };
        Limits { line: Arc::new(Mutex::new(line)), told: AtomicBool::new(false) }
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
    pub async fn slot(&self, host: &str) -> Slot {
        self.ticket(host).slot().await
    }
}

impl Ticket {
    /// Wait for this ticket's turn.
    pub async fn slot(mut self) -> Slot {
        let (tx, rx) = oneshot::channel();
        {
            let mut line = lock(&self.line);
            line.waiting.get_mut(&self.number).expect("a ticket is in line until served").wake = Some(tx);
            line.serve();
        }
        // The sender is only dropped after it has sent: when served, the
        // ticket has left the line and the slot is ours (counted in `serve`).
        let _ = rx.await;
        self.served = true;
        Slot { line: self.line.clone(), host: std::mem::take(&mut self.host) }
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

impl Line {
    /// Hand free slots to the waiting tickets, in order: a ticket whose host
    /// is full is passed over, one not asked for yet stops the round.
    fn serve(&mut self) {
        let mut served = Vec::new();
        for (&number, waiter) in &self.waiting {
            if self.in_use >= self.jobs {
                break;
            }
            // Hosts are counted only under --per-host: without it the
            // count would cost every entry a map lookup and a host string.
            if let Some(cap) = self.per_host
                && self.busy.get(&waiter.host).copied().unwrap_or(0) >= cap
            {
                continue;
            }
            if waiter.wake.is_none() {
                break;
            }
            self.in_use += 1;
            if self.per_host.is_some() {
                *self.busy.entry(waiter.host.clone()).or_default() += 1;
            }
            served.push(number);
        }
        for number in served {
            let waiter = self.waiting.remove(&number).expect("served from the line");
            if let Some(wake) = waiter.wake {
                // A receiver gone means the ticket is being dropped; its
                // drop finds it out of line and releases the slot.
                let _ = wake.send(());
            }
        }
    }

    fn release(&mut self, host: &str) {
        self.in_use -= 1;
        if let Some(busy) = self.busy.get_mut(host) {
            *busy -= 1;
            if *busy == 0 {
                self.busy.remove(host);
            }
        }
    }
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

/// Semaphores by key, each with the same number of permits, dropped from
/// the map when the last holder or waiter lets go.
#[derive(Debug)]
pub struct Keyed<K: Eq + Hash> {
    permits: usize,
    map: KeyMap<K>,
}

type KeyMap<K> = Arc<Mutex<HashMap<K, Arc<KeyState>>>>;

#[derive(Debug)]
struct KeyState {
    semaphore: Arc<Semaphore>,
    /// Set by a holder whose work for this key succeeded, for those waiting.
    done: AtomicBool,
}

#[derive(Debug)]
pub struct KeyedPermit<K: Eq + Hash> {
    key: Option<K>,
    state: Arc<KeyState>,
    permit: Option<OwnedSemaphorePermit>,
    map: KeyMap<K>,
}

impl<K: Eq + Hash + Clone> Keyed<K> {
    pub fn new(permits: usize) -> Self {
        Keyed { permits, map: Arc::default() }
    }

    pub async fn acquire(&self, key: K) -> KeyedPermit<K> {
        let state = {
            let mut map = self.map.lock().expect("keyed map poisoned");
            map.entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(KeyState {
                        semaphore: Arc::new(Semaphore::new(self.permits)),
                        done: AtomicBool::new(false),
                    })
                })
                .clone()
        };
        let permit = state.semaphore.clone().acquire_owned().await.expect("semaphore never closed");
        KeyedPermit { key: Some(key), state, permit: Some(permit), map: self.map.clone() }
    }

    /// The permit for `key` if nobody holds it, without waiting.
    pub fn try_acquire(&self, key: K) -> Option<KeyedPermit<K>> {
        let mut map = self.map.lock().expect("keyed map poisoned");
        let state = map
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeyState {
                    semaphore: Arc::new(Semaphore::new(self.permits)),
                    done: AtomicBool::new(false),
                })
            })
            .clone();
        let permit = state.semaphore.clone().try_acquire_owned().ok()?;
        Some(KeyedPermit { key: Some(key), state, permit: Some(permit), map: self.map.clone() })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl<K: Eq + Hash> KeyedPermit<K> {
    /// Tell later holders of this key that the work is done.
    pub fn mark_done(&self) {
        self.state.done.store(true, Ordering::Release);
    }

    /// Whether an earlier holder marked the work done while we waited.
    pub fn done(&self) -> bool {
        self.state.done.load(Ordering::Acquire)
    }
}

impl<K: Eq + Hash> Drop for KeyedPermit<K> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = self.map.lock().expect("keyed map poisoned");
        // Clones are only made under this lock: two references (the map's
        // and ours) mean nobody else holds or waits for this key.
        if Arc::strong_count(&self.state) == 2
            && let Some(key) = self.key.take()
        {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_forgets_idle_keys_and_bounds_holders() {
        let keyed = Keyed::new(1);
        let a = keyed.acquire("a").await;
        let _b = keyed.acquire("b").await;
        assert_eq!(keyed.len(), 2);
        let waiter = keyed.acquire("a");
        tokio::pin!(waiter);
        assert!(futures_poll_once(waiter.as_mut()).await.is_none(), "second holder of 'a' must wait");
        drop(a);
        let a2 = waiter.await;
        drop(a2);
        assert_eq!(keyed.len(), 1, "'a' is forgotten once idle");
    }

    #[tokio::test]
    async fn slots_go_to_tickets_in_order_passing_over_busy_hosts() {
        let limits = Limits::new(2, Some(1));
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
        let limits = Limits::new(8, None);
        let generation = limits.generation();
        assert_eq!(limits.lower(generation), Some(1), "nothing in use: one slot");
        assert_eq!(limits.lower(generation), None, "one burst lowers once");
        assert!(limits.first_to_tell() && !limits.first_to_tell());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_slots_than_jobs_whatever_is_dropped() {
        use std::sync::atomic::AtomicUsize;
        let limits = Arc::new(Limits::new(2, None));
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

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = tokio::task::yield_now() => None,
        }
    }
}
