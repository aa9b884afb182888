//! Per-buyer limits, so one buyer cannot grief a provider: jobs per minute and jobs in flight
//! ([`BuyerLimits`]), url fetches at once ([`FetchGate`]), and work done on credit for buyers who
//! never paid this node ([`Credit`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nostr_sdk::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Url fetches run outside the execution slots, under their own limits: a few at once over all
/// buyers, and fewer still per buyer, so slow URLs from one key (or many) hold no job slot and
/// cannot starve other buyers' fetches for long.
#[derive(Debug)]
pub(super) struct FetchGate {
    all: Arc<Semaphore>,
    per_buyer: Mutex<HashMap<PublicKey, Arc<Semaphore>>>,
    each: usize,
}

/// Permission to fetch; dropping it lets the next fetch start.
#[derive(Debug)]
pub(super) struct FetchPass {
    _buyer: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

/// Per-buyer semaphores are pruned (those nobody holds or waits on) past this many.
const FETCH_GATE_PRUNE: usize = 256;

impl FetchGate {
    pub(super) fn new(all: usize, each: u32) -> Self {
        Self {
            all: Arc::new(Semaphore::new(all.max(1))),
            per_buyer: Mutex::new(HashMap::new()),
            each: each.max(1) as usize,
        }
    }

    /// Waits for a fetch slot of `buyer`'s, then for one of all; `None` once closed.
    pub(super) async fn enter(&self, buyer: PublicKey) -> Option<FetchPass> {
        let mine = {
            let mut map = self.per_buyer.lock().ok()?;
            if map.len() > FETCH_GATE_PRUNE {
                // The map's own reference is the only one left for idle buyers.
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            map.entry(buyer)
                .or_insert_with(|| Arc::new(Semaphore::new(self.each)))
                .clone()
        };
        let buyer = mine.acquire_owned().await.ok()?;
        let all = self.all.clone().acquire_owned().await.ok()?;
        Some(FetchPass {
            _buyer: buyer,
            _all: all,
        })
    }
}

/// What a buyer's history at this node says about the next job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Terms {
    /// The buyer has paid this node before: the normal flow.
    Trusted,
    /// Not proven, but under the limit: runs now, paid after; counted until it ends.
    Credit,
    /// Not proven and at the limit: pay first.
    PayFirst,
}

/// Work on credit for unproven buyers: a key that has never paid this node may have at most
/// `max` jobs running or awaiting payment at once. Fresh keys cost nothing, so without this an
/// unfunded key gets any number of providers to work and invoice for nothing.
#[derive(Debug)]
pub(super) struct Credit {
    max: u32,
    running: HashMap<PublicKey, u32>,
    /// Buyers seen paying (never forgotten: they paid, so there are few of them).
    proven: HashSet<PublicKey>,
}

impl Credit {
    pub(super) fn new(max: u32) -> Self {
        Self {
            max,
            running: HashMap::new(),
            proven: HashSet::new(),
        }
    }

    /// Whether `buyer` is known to have paid; `paid` asks the store when the cache does not know.
    pub(super) fn is_proven(&mut self, buyer: PublicKey, paid: impl FnOnce() -> bool) -> bool {
        if self.proven.contains(&buyer) {
            return true;
        }
        if paid() {
            self.proven.insert(buyer);
            return true;
        }
        false
    }

    /// The terms of `buyer`'s next job. `paid` asks the store whether the buyer ever paid here;
    /// `outstanding` how many of their invoices here are unpaid and unexpired. A
    /// [`Terms::Credit`] job must be [`Self::release`]d when it ends.
    pub(super) fn terms(
        &mut self,
        buyer: PublicKey,
        paid: impl FnOnce() -> bool,
        outstanding: impl FnOnce() -> u64,
    ) -> Terms {
        if self.is_proven(buyer, paid) {
            return Terms::Trusted;
        }
        let running = u64::from(self.running.get(&buyer).copied().unwrap_or(0));
        if running + outstanding() >= u64::from(self.max) {
            return Terms::PayFirst;
        }
        *self.running.entry(buyer).or_default() += 1;
        Terms::Credit
    }

    /// Ends a [`Terms::Credit`] job (its invoice, if any, is in the store by now).
    pub(super) fn release(&mut self, buyer: &PublicKey) {
        if let Some(n) = self.running.get_mut(buyer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(buyer);
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

    #[test]
    fn unproven_buyers_get_limited_credit() {
        let mut c = Credit::new(2);
        let b = Keys::generate().public_key();
        assert_eq!(c.terms(b, || false, || 0), Terms::Credit);
        assert_eq!(c.terms(b, || false, || 0), Terms::Credit);
        assert_eq!(c.terms(b, || false, || 0), Terms::PayFirst, "two running");
        c.release(&b);
        assert_eq!(
            c.terms(b, || false, || 1),
            Terms::PayFirst,
            "one running and one invoice outstanding"
        );
        assert_eq!(c.terms(b, || false, || 0), Terms::Credit);
        let other = Keys::generate().public_key();
        assert_eq!(c.terms(other, || false, || 0), Terms::Credit, "per buyer");
        // Once paid: trusted, remembered, and no longer counted.
        assert_eq!(c.terms(b, || true, || 99), Terms::Trusted);
        assert_eq!(c.terms(b, || false, || 99), Terms::Trusted);
        assert!(c.is_proven(b, || false));
        assert_eq!(
            Credit::new(0).terms(other, || false, || 0),
            Terms::PayFirst,
            "0: every unproven buyer pays first"
        );
    }

    #[tokio::test]
    async fn fetches_are_limited_per_buyer_and_overall() {
        let gate = FetchGate::new(2, 1);
        let (a, b, c) = (
            Keys::generate().public_key(),
            Keys::generate().public_key(),
            Keys::generate().public_key(),
        );
        use futures_util::FutureExt as _;
        let first = gate.enter(a).await.expect("open");
        assert!(
            gate.enter(a).now_or_never().is_none(),
            "one fetch per buyer"
        );
        let second = gate
            .enter(b)
            .now_or_never()
            .flatten()
            .expect("another buyer");
        assert!(gate.enter(c).now_or_never().is_none(), "two overall");
        drop(first);
        assert!(
            gate.enter(c).now_or_never().flatten().is_some(),
            "a slot came free"
        );
        drop(second);
    }
}
