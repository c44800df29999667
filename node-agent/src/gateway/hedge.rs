//! When a stripe read asks more members than it strictly needs.
//!
//! A full-stripe read asks k + `read_hedge` members at once and decodes from the first k
//! answers, so one slow member costs a decode instead of its delay. A read of part of a
//! stripe needs fewer than k data shards, and asking k+1 members for them would multiply its
//! traffic; it asks only for those, and asks everyone else once they are late: later than a
//! few times the recent typical shard fetch, or after any failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// No hedge sooner than this: below it, asking more members costs more than it saves.
const MIN_DELAY: Duration = Duration::from_millis(10);
/// A fetch is late at this multiple of the typical one.
const LATE_FACTOR: u32 = 3;

/// A moving average of how long shard fetches from peers take.
#[derive(Default)]
pub struct LatencyTracker {
    /// Exponentially weighted mean in microseconds; 0 until the first observation.
    mean_us: AtomicU64,
}

impl LatencyTracker {
    pub fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Weight 1/8: a few slow fetches move it, one does not. Races between observers
        // only lose a sample.
        let old = self.mean_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.mean_us.store(new.max(1), Ordering::Relaxed);
    }

    /// How long to wait for the shards a read asked for before asking the others.
    pub fn hedge_delay(&self) -> Duration {
        let mean = Duration::from_micros(self.mean_us.load(Ordering::Relaxed));
        (mean * LATE_FACTOR).max(MIN_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_typical_fetches_but_not_one_outlier() {
        let t = LatencyTracker::default();
        assert_eq!(t.hedge_delay(), MIN_DELAY);
        for _ in 0..50 {
            t.observe(Duration::from_millis(20));
        }
        let typical = t.hedge_delay();
        assert!(
            typical >= Duration::from_millis(55) && typical <= Duration::from_millis(65),
            "{typical:?}"
        );
        t.observe(Duration::from_secs(30));
        let after = t.hedge_delay();
        assert!(
            after > typical && after < Duration::from_secs(12),
            "{after:?}"
        );
    }
}
