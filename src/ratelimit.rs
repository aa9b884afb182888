//! Token buckets keyed by anything hashable: per connection in the relay, per client in the hub.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Forget a key's bucket after this many seconds without a request.
const IDLE_SECS: u64 = 300;

/// One bucket per key: refilled at `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBuckets<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
    calls: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl<K: Hash + Eq> TokenBuckets<K> {
    /// Buckets refilled at `rate`/s up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: HashMap::new(),
            calls: 0,
        }
    }

    /// Takes one token for `key` at `now`; false when its bucket is empty.
    pub fn take(&mut self, key: K, now: Instant) -> bool {
        self.calls += 1;
        if self.calls % 4096 == 0 {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last).as_secs() < IDLE_SECS);
        }
        let burst = self.burst;
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill_per_key() {
        let mut b = TokenBuckets::new(10.0, 3.0);
        let t = Instant::now();
        assert!((0..3).all(|_| b.take("a", t)));
        assert!(!b.take("a", t));
        assert!(b.take("b", t), "keys are independent");
        assert!(
            b.take("a", t + Duration::from_millis(100)),
            "refilled one token"
        );
        assert!(!b.take("a", t + Duration::from_millis(100)));
    }
}
