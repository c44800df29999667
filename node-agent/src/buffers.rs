//! Reusable stripe buffers, so a steady stream of puts allocates nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Keeps up to `max_kept` idle buffers per size. Sizes are few (one per pool
/// geometry), so a map from size to a free list is enough.
pub struct BufferPool {
    free: Mutex<HashMap<usize, Vec<BytesMut>>>,
    max_kept: usize,
}

impl BufferPool {
    pub fn new(max_kept: usize) -> Self {
        Self {
            free: Mutex::new(HashMap::new()),
            max_kept,
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified) and whether it
    /// had to be allocated.
    pub fn take(&self, len: usize) -> (BytesMut, bool) {
        let reused = match self.free.lock() {
            Ok(mut g) => g.get_mut(&len).and_then(|v| v.pop()),
            Err(_) => None,
        };
        match reused {
            Some(b) => (b, false),
            None => (BytesMut::zeroed(len), true),
        }
    }

    /// Returns a buffer once every slice of it is gone; a buffer still shared
    /// (a late peer send) is simply dropped.
    pub fn give_back(&self, b: Bytes) {
        let Ok(b) = b.try_into_mut() else { return };
        if let Ok(mut g) = self.free.lock() {
            let list = g.entry(b.len()).or_default();
            if list.len() < self.max_kept {
                list.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_only_when_unshared() {
        let pool = BufferPool::new(2);
        let (b, fresh) = pool.take(64);
        assert!(fresh);
        let frozen = b.freeze();
        let slice = frozen.slice(0..8);
        pool.give_back(frozen.clone());
        assert!(pool.take(64).1, "a shared buffer must not be reused");
        drop(slice);
        pool.give_back(frozen);
        let (again, fresh) = pool.take(64);
        assert!(!fresh);
        assert_eq!(again.len(), 64);
    }
}
