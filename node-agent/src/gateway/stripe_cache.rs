//! Recently read stripes, so that an object read through this agent by many clients is
//! fetched from its shard holders once, not once per reader.
//!
//! Object versions never change (a new version gets a new object id), so an entry never goes
//! stale; entries of deleted versions simply age out. The cache holds a stripe's k data shards
//! and is bounded by their bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;

type Key = ([u8; 16], u64);

pub struct StripeCache {
    budget: usize,
    inner: Mutex<Inner>,
    /// Stripes being fetched for the cache right now, so that readers of one stripe wait for
    /// the first one's fetch instead of each asking the holders.
    fills: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while this reader fetches a stripe for the cache (see [`StripeCache::fill_guard`]).
pub struct FillGuard<'a> {
    cache: &'a StripeCache,
    key: Key,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut fills) = self.cache.fills.lock() {
            // The map, this guard's handle and its lock guard: nobody else waits.
            if Arc::strong_count(&self.lock) <= 3 {
                fills.remove(&self.key);
            }
        }
    }
}

struct Inner {
    lru: LruCache<Key, Vec<Bytes>>,
    bytes: usize,
}

impl StripeCache {
    /// A cache of at most `budget` bytes of shard data; 0 turns it off.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            fills: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no other reader of this agent is fetching stripe `stripe` of object `id`
    /// and returns a guard: the caller looks in the cache again and, on a miss, fetches the
    /// stripe and puts it before dropping the guard. Readers of a popular object move in
    /// step, so without this each of them would miss the same stripe at once and fetch it
    /// from the holders. `None` when the cache is off.
    pub async fn fill_guard(&self, id: &[u8; 16], stripe: u64) -> Option<FillGuard<'_>> {
        if self.budget == 0 {
            return None;
        }
        let key = (*id, stripe);
        let lock = {
            let mut fills = self.fills.lock().ok()?;
            fills.entry(key).or_default().clone()
        };
        let held = lock.clone().lock_owned().await;
        Some(FillGuard {
            cache: self,
            key,
            lock,
            _held: held,
        })
    }

    /// The data shards of stripe `stripe` of object `id`, when cached.
    pub fn get(&self, id: &[u8; 16], stripe: u64) -> Option<Vec<Bytes>> {
        if self.budget == 0 {
            return None;
        }
        let mut inner = self.inner.lock().ok()?;
        inner.lru.get(&(*id, stripe)).cloned()
    }

    /// Keeps a stripe's data shards, evicting the least recently read stripes beyond the
    /// budget. A stripe larger than an eighth of the budget is not kept: it would push out
    /// many smaller ones for one object.
    pub fn put(&self, id: &[u8; 16], stripe: u64, shards: Vec<Bytes>) {
        let size: usize = shards.iter().map(Bytes::len).sum();
        if self.budget == 0 || size > self.budget / 8 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(old) = inner.lru.put((*id, stripe), shards) {
            inner.bytes -= old.iter().map(Bytes::len).sum::<usize>();
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            match inner.lru.pop_lru() {
                Some((_, gone)) => inner.bytes -= gone.iter().map(Bytes::len).sum::<usize>(),
                None => break,
            }
        }
    }

    /// Bytes of shard data held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map(|i| i.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe(n: usize) -> Vec<Bytes> {
        vec![Bytes::from(vec![7u8; n]); 4]
    }

    #[test]
    fn stays_within_its_budget_and_evicts_the_least_recently_read() {
        let c = StripeCache::new(8 * 4000);
        c.put(&[1; 16], 0, stripe(1000));
        c.put(&[1; 16], 1, stripe(1000));
        assert!(
            c.get(&[1; 16], 0).is_some(),
            "read again: now the most recent"
        );
        for s in 2..9 {
            c.put(&[1; 16], s, stripe(1000));
        }
        assert!(c.bytes() <= 8 * 4000);
        assert!(c.get(&[1; 16], 0).is_some(), "recently read stripes stay");
        assert!(
            c.get(&[1; 16], 1).is_none(),
            "the least recently read went first"
        );
        assert!(
            c.get(&[2; 16], 0).is_none(),
            "another version is another key"
        );
    }

    #[test]
    fn oversize_stripes_and_a_zero_budget_are_not_kept() {
        let c = StripeCache::new(8 * 4000);
        c.put(&[1; 16], 0, stripe(1001));
        assert!(c.get(&[1; 16], 0).is_none());
        let off = StripeCache::new(0);
        off.put(&[1; 16], 0, stripe(1));
        assert!(off.get(&[1; 16], 0).is_none());
    }

    #[tokio::test]
    async fn one_reader_fills_a_stripe_at_a_time() {
        let c = StripeCache::new(1 << 20);
        let first = c.fill_guard(&[1; 16], 0).await.expect("cache on");
        // Another stripe is not held up.
        drop(c.fill_guard(&[1; 16], 1).await.expect("cache on"));
        let waiter = c.fill_guard(&[1; 16], 0);
        tokio::pin!(waiter);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), waiter.as_mut());
        assert!(
            early.await.is_err(),
            "the second reader waits for the first"
        );
        drop(first);
        drop(waiter.await.expect("cache on"));
        assert!(c.fills.lock().unwrap().is_empty(), "no fill left behind");
        assert!(StripeCache::new(0).fill_guard(&[1; 16], 0).await.is_none());
    }
}
