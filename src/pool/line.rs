//! The line itself: who gets the next free slot, and when to look again.

use std::time::{Instant, SystemTime};

use super::{Health, Host, Line, State, Unavailable, lock};
use crate::hosts::Admit;

impl Line {
    /// Hand free slots to the waiting tickets, in order: a ticket whose host
    /// is full, paused or down is passed over, one of a gone host refused,
    /// one not asked for yet stops the round. Sets a timer for the earliest
    /// time a host passed over may take one, or expires.
    pub(super) fn serve(&mut self) {
        let now = Instant::now();
        let mut served = Vec::new();
        let mut refused = Vec::new();
        let mut wake: Option<Instant> = None;
        for (&number, waiter) in &self.waiting {
            if self.in_use >= self.jobs {
                break;
            }
            let host = self.hosts.get(&waiter.host);
            let busy = host.map_or(0, |h| h.busy);
            let admit = match host.and_then(|h| h.health.as_ref()) {
                Some(health) => health.admits(busy, now),
                None if self.per_host.is_some_and(|cap| busy >= cap) => Admit::Later,
                None => Admit::Now,
            };
            match admit {
                Admit::Now => {}
                Admit::At(at) => {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    continue;
                }
                Admit::Later => continue,
                Admit::Gone { since } => {
                    if waiter.wake.is_some() {
                        refused.push((number, self.unavailable(&waiter.host, since)));
                    }
                    continue;
                }
            }
            if self.per_host.is_some_and(|cap| busy >= cap) {
                continue;
            }
            if waiter.wake.is_none() {
                break;
            }
            self.in_use += 1;
            let policy = self.policy;
            if !self.hosts.contains_key(&waiter.host) {
                self.hosts.insert(waiter.host.clone(), Host::default());
            }
            let host = self.hosts.get_mut(&waiter.host).expect("inserted above");
            host.busy += 1;
            if policy.max_rate.is_some() && host.health.is_none() {
                host.health = Some(Health::new(policy));
                self.troubled += 1;
                self.health_seen.store(true, std::sync::atomic::Ordering::Release);
            }
            let episode = host.health.as_mut().map_or(0, |health| health.start(now));
            served.push((number, episode));
        }
        for (number, episode) in served {
            let waiter = self.waiting.remove(&number).expect("served from the line");
            if let Some(wake) = waiter.wake {
                // A receiver gone means the ticket is being dropped; its
                // drop finds it out of line and releases the slot.
                let _ = wake.send(Ok(episode));
            }
        }
        for (number, unavailable) in refused {
            let waiter = self.waiting.remove(&number).expect("refused from the line");
            if let Some(wake) = waiter.wake {
                let _ = wake.send(Err(unavailable));
            }
        }
        // Also when a pause ends or a trouble expires: the dispatcher may
        // hold entries for the host.
        for health in self.hosts.values().filter_map(|h| h.health.as_ref()) {
            let until = match health.state() {
                State::Paused { until, .. } if until > now => Some(until),
                _ => None,
            };
            for at in [health.expires_at(), until].into_iter().flatten() {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        if let Some(at) = wake {
            self.wake_at(at);
        }
    }

    /// Serve the line again at `at`, unless a timer will before.
    pub(super) fn wake_at(&mut self, at: Instant) {
        if self.timer.is_some_and(|t| t <= at && t > Instant::now()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        self.timer = Some(at);
        let me = self.me.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let Some(line) = me.upgrade() else { return };
            let mut line = lock(&line);
            line.timer = None;
            let now = Instant::now();
            for health in line.hosts.values_mut().filter_map(|h| h.health.as_mut()) {
                health.expire(now);
            }
            line.changed.notify_one();
            line.serve();
        });
    }

    pub(super) fn unavailable(&self, host: &str, since: SystemTime) -> Unavailable {
        let last = self.hosts.get(host).map_or_else(String::new, |h| h.last.clone());
        Unavailable { host: host.to_owned(), since, last }
    }

    pub(super) fn release(&mut self, host: &str) {
        self.in_use -= 1;
        let Some(entry) = self.hosts.get_mut(host) else { return };
        entry.busy -= 1;
        if let Some(health) = &mut entry.health {
            health.released();
        }
        if entry.busy == 0 && entry.health.as_ref().is_none_or(Health::is_pristine) {
            let had = self.hosts.remove(host).is_some_and(|h| h.health.is_some());
            self.troubled -= usize::from(had);
        }
    }
}
