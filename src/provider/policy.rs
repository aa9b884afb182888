//! Per-buyer limits, so one buyer cannot grief a provider: jobs per minute and jobs in flight.

use std::collections::HashMap;
use std::time::Instant;

use nostr_sdk::PublicKey;

use crate::protocol::failure::FailureCode;
use crate::ratelimit::TokenBuckets;

/// Rate and concurrency per buyer.
#[derive(Debug)]
pub(super) struct BuyerLimits {
    rate: TokenBuckets<PublicKey>,
    in_flight: HashMap<PublicKey, u32>,
    max_in_flight: u32,
}

impl BuyerLimits {
    pub(super) fn new(per_minute: u32, max_in_flight: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Self {
            rate: TokenBuckets::new(per_minute / 60.0, per_minute),
            in_flight: HashMap::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Admits one job of `buyer`, or says why not. An admitted job must be [`Self::release`]d.
    pub(super) fn admit(
        &mut self,
        buyer: PublicKey,
        now: Instant,
    ) -> Result<(), (FailureCode, String)> {
        let running = self.in_flight.get(&buyer).copied().unwrap_or(0);
        if running >= self.max_in_flight {
            return Err((
                FailureCode::RateLimited,
                format!("{running} of your jobs are already in flight here; wait for them"),
            ));
        }
        if !self.rate.take(buyer, now) {
            return Err((
                FailureCode::RateLimited,
                "too many jobs per minute from you; slow down".into(),
            ));
        }
        *self.in_flight.entry(buyer).or_default() += 1;
        Ok(())
    }

    /// Ends an admitted job.
    pub(super) fn release(&mut self, buyer: &PublicKey) {
        if let Some(n) = self.in_flight.get_mut(buyer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(buyer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nostr_sdk::Keys;

    use super::*;

    #[test]
    fn concurrency_and_rate() {
        let mut l = BuyerLimits::new(3, 2);
        let b = Keys::generate().public_key();
        let t = Instant::now();
        assert!(l.admit(b, t).is_ok());
        assert!(l.admit(b, t).is_ok());
        assert_eq!(
            l.admit(b, t).expect_err("in flight").0,
            FailureCode::RateLimited
        );
        l.release(&b);
        assert!(l.admit(b, t).is_ok(), "third of three per minute");
        l.release(&b);
        l.release(&b);
        assert!(l.admit(b, t).is_err(), "per-minute budget spent");
        assert!(
            l.admit(Keys::generate().public_key(), t).is_ok(),
            "other buyers unaffected"
        );
    }
}
