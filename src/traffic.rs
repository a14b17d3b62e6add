//! Traffic per host: bytes received and transfers in flight, by
//! `host:port`. The split rule in [`crate::segments`] reads them: a file is
//! compared with the others from its host, because a host that caps each
//! connection slows only its own files, while what all hosts share (CPU,
//! disk, the local link) slows every file alike. Nothing here is shown.
//!
//! Invariants: a transfer counts as in flight exactly while its
//! [`HostTraffic`] handle lives; a host's counters live while one handle
//! for it does, so transfers that overlap share them (and the bytes of
//! those that ran alongside). Hosts whose last transfer has ended are
//! pruned as the map doubles, so it stays within twice the hosts in use
//! (plus `HOSTS_KEPT`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The map is not pruned below this many hosts.
const HOSTS_KEPT: usize = 64;

/// What one host's transfers under way have received.
#[derive(Debug, Default)]
struct Traffic {
    bytes: AtomicU64,
    /// [`HostTraffic`] handles alive for this host.
    transfers: AtomicU64,
}

/// Hosts with transfers under way.
#[derive(Debug, Default)]
pub struct Hosts {
    map: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    traffic: HashMap<String, Weak<Traffic>>,
    prune_above: usize,
}

impl Hosts {
    /// A transfer from `host` (`host:port`) begins: in flight until the
    /// handle is dropped.
    pub fn transfer(&self, host: &str) -> HostTraffic {
        let traffic = self.map.lock().expect("hosts").traffic(host);
        traffic.transfers.fetch_add(1, Ordering::Relaxed);
        HostTraffic { traffic }
    }
}

impl Map {
    fn traffic(&mut self, host: &str) -> Arc<Traffic> {
        if let Some(traffic) = self.traffic.get(host).and_then(Weak::upgrade) {
            return traffic;
        }
        let traffic = Arc::new(Traffic::default());
        self.traffic.insert(host.to_owned(), Arc::downgrade(&traffic));
        if self.traffic.len() > self.prune_above {
            self.traffic.retain(|_, t| t.strong_count() > 0);
            self.prune_above = (2 * self.traffic.len()).max(HOSTS_KEPT);
        }
        traffic
    }
}

/// One transfer's share of its host's traffic.
#[derive(Debug)]
pub struct HostTraffic {
    traffic: Arc<Traffic>,
}

impl HostTraffic {
    /// `bytes` more received from the host.
    pub fn received(&self, bytes: u64) {
        self.traffic.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes received from the host by the transfers under way (and by
    /// those that ran alongside them), and how many are under way.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.traffic.bytes.load(Ordering::Relaxed), self.traffic.transfers.load(Ordering::Relaxed))
    }
}

impl Drop for HostTraffic {
    fn drop(&mut self) {
        self.traffic.transfers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_share_traffic_and_ended_ones_are_pruned() {
        let mut hosts = Map::default();
        let a = hosts.traffic("a:1");
        assert!(Arc::ptr_eq(&a, &hosts.traffic("a:1")));
        assert!(!Arc::ptr_eq(&a, &hosts.traffic("a:2")));
        // Many hosts one after the other: the map stays small.
        for i in 0..100_000 {
            drop(hosts.traffic(&format!("h{i}")));
            assert!(hosts.traffic.len() <= 2 * HOSTS_KEPT + 1, "{} at {i}", hosts.traffic.len());
        }
        assert!(Arc::ptr_eq(&a, &hosts.traffic("a:1")), "a live host was pruned");
    }

    #[test]
    fn a_transfer_is_in_flight_while_its_handle_lives() {
        let hosts = Hosts::default();
        let first = hosts.transfer("a:1");
        let second = hosts.transfer("a:1");
        let other = hosts.transfer("b:1");
        first.received(10);
        second.received(5);
        other.received(100);
        assert_eq!(first.snapshot(), (15, 2));
        drop(second);
        assert_eq!(first.snapshot(), (15, 1));
        assert_eq!(other.snapshot(), (100, 1));
    }
}
