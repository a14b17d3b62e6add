//! Semaphores by key that forget a key once nobody holds or waits for it,
//! so memory follows what is in flight, not how many destinations the
//! manifest names. They serialize entries of one run that share a
//! destination (one permit per path).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = tokio::task::yield_now() => None,
        }
    }
}
