//! A byte-rate limit for background work (recovery, scrub), so client I/O keeps its share of
//! the disk and the network.

use std::time::{Duration, Instant};

/// At most this much unused time is banked: a pass that spent a while listing must not then
/// write an unthrottled burst.
const MAX_CREDIT: Duration = Duration::from_secs(1);

pub struct Throttle {
    started: Instant,
    bytes: u64,
    rate: u64,
}

impl Throttle {
    /// `rate` in bytes per second (0 is taken as 1).
    pub fn new(rate: u64) -> Self {
        Self {
            started: Instant::now(),
            bytes: 0,
            rate: rate.max(1),
        }
    }

    /// Records `bytes` read or written and waits until the work is back under its rate: this
    /// pause is the rate limit itself.
    pub async fn spent(&mut self, bytes: u64) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let allowed = (elapsed - MAX_CREDIT.as_secs_f64()) * self.rate as f64;
        if allowed > self.bytes as f64 {
            self.bytes = allowed as u64;
        }
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttle_holds_the_rate() {
        let mut t = Throttle::new(1000);
        let start = Instant::now();
        t.spent(100).await;
        assert!(start.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test]
    async fn idle_time_banks_at_most_a_second() {
        // Started ten seconds ago and idle since: that buys one second of credit, not ten, so
        // 1.5 s worth of bytes waits about half a second.
        let mut t = Throttle {
            started: Instant::now() - Duration::from_secs(10),
            bytes: 0,
            rate: 100_000,
        };
        let before = Instant::now();
        t.spent(150_000).await;
        let waited = before.elapsed();
        assert!(
            waited >= Duration::from_millis(450) && waited <= Duration::from_millis(900),
            "{waited:?}"
        );
    }
}
