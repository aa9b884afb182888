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
    buckets: HashMap<K, TokenBucket>,
    calls: u64,
}

/// One bucket: refilled at `rate` tokens per second, holding at most `burst`. A relay session owns
/// one directly (no map, no lock): the connection is the key.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(now)
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
