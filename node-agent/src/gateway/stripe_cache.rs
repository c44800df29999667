//! Recently read stripes, so that an object read through this agent by many clients is
//! fetched from its shard holders once, not once per reader.
//!
//! Object versions never change (a new version gets a new object id), so an entry never goes
//! stale; entries of deleted versions simply age out. The cache holds a stripe's k data shards
//! and is bounded by their bytes.

use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

type Key = ([u8; 16], u64);

pub struct StripeCache {
    budget: usize,
    inner: Mutex<Inner>,
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
        }
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
}
