//! Concurrency bounds and the one HTTP client of a run.
//!
//! A download holds, in this order, a permit for its host (`--per-host`) and
//! one of the run's `--jobs` permits; always taking them in that order keeps
//! waits free of cycles. Segmented downloads (one file over several
//! connections) take further permits from the same semaphores, so the global
//! bounds hold however the work is split.
//!
//! [`Keyed`] is a set of semaphores by key that forgets a key once nobody
//! holds or waits for it, so memory follows what is in flight, not how many
//! hosts or destinations the manifest names. It also serializes entries of
//! one run that share a destination (one permit per path).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// The run's HTTP clients: connection pooling, HTTP/2 by ALPN, system
/// proxies, no automatic decompression (not compiled in), no redirects
/// (followed in [`crate::transfer`] to control which headers cross hosts).
///
/// Plain `http` URLs have a client of their own that never loads the
/// system's CA certificates; the `https` one is built at its first use.
/// Loading them reads every file of `/etc/ssl/certs`: 20 ms of a run's start
/// when they are not cached, for a manifest that may hold no `https` URL.
#[derive(Debug)]
pub struct Clients {
    plain: reqwest::Client,
    tls: OnceLock<reqwest::Client>,
    settings: Settings,
}

/// What both clients are built with.
#[derive(Debug)]
struct Settings {
    user_agent: String,
    connect_timeout: std::time::Duration,
    read_timeout: std::time::Duration,
    insecure: bool,
}

impl Settings {
    fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .user_agent(self.user_agent.clone())
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
    }
}

impl Clients {
    pub fn new(config: &Config) -> reqwest::Result<Clients> {
        // reqwest is built without a bundled crypto provider; ring is ours. An
        // error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = Settings {
            user_agent: config.user_agent.clone(),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            insecure: config.insecure,
        };
        // No roots: this client is never asked to verify a certificate.
        let plain = settings.builder().tls_certs_only(Vec::new()).build()?;
        Ok(Clients { plain, tls: OnceLock::new(), settings })
    }

    /// The client for `url`'s scheme.
    pub fn for_url(&self, url: &reqwest::Url) -> reqwest::Result<&reqwest::Client> {
        if url.scheme() != "https" {
            return Ok(&self.plain);
        }
        if let Some(client) = self.tls.get() {
            return Ok(client);
        }
        // Two first uses at once may both build; one client is kept.
        let built =
            self.settings.builder().tls_danger_accept_invalid_certs(self.settings.insecure).build()?;
        Ok(self.tls.get_or_init(|| built))
    }
}

/// The run's concurrency limits.
#[derive(Debug)]
pub struct Limits {
    jobs: Arc<Semaphore>,
    per_host: Option<Keyed<String>>,
}

/// Permits that let one transfer run.
#[derive(Debug)]
pub struct Slot {
    _job: OwnedSemaphorePermit,
    _host: Option<KeyedPermit<String>>,
}

impl Limits {
    pub fn new(jobs: usize, per_host: Option<usize>) -> Limits {
        Limits { jobs: Arc::new(Semaphore::new(jobs)), per_host: per_host.map(Keyed::new) }
    }

    /// Wait for a host permit, then a job permit.
    pub async fn slot(&self, host: &str) -> Slot {
        let host = match &self.per_host {
            Some(keyed) => Some(keyed.acquire(host.to_owned()).await),
            None => None,
        };
        let job = self.jobs.clone().acquire_owned().await.expect("semaphore never closed");
        Slot { _job: job, _host: host }
    }
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

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = tokio::task::yield_now() => None,
        }
    }
}
