//! Choosing providers for microjobs: discovered from live announcements and heartbeats, then
//! picked per job by load (theirs and ours) and by how they have done in this run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nostr_sdk::{Alphabet, Filter, PublicKey, SingleLetterTag, Timestamp, ToBech32};

use crate::protocol::heartbeat::Heartbeat;
use crate::protocol::kinds;
use crate::protocol::nip89::Announcement;
use crate::relay::client::ClientError;
use crate::relay::MarketClient;

/// A provider that can take code-analysis jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its key.
    pub pubkey: PublicKey,
    /// Its announced price, msats.
    pub price_msats: u64,
    /// Jobs waiting at it, per its heartbeat.
    pub queue_depth: u32,
}

/// Why a provider that announces code analysis cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Its announcement has no price for kind 5960 in Pylon's `prices` (another framework's
    /// DVM, which prices per job in its invoice): the coordinator cannot budget it.
    NoPrice,
    /// Its price (msats) is above `--max-price-msats`.
    TooExpensive(u64),
    /// No heartbeat of it is online now.
    Offline,
    /// Named by `--providers` but it announces no code analysis at all.
    NotAnnounced,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoPrice => f.write_str(
                "announces code analysis without a price in Pylon's `prices` (not a Pylon node?), so the map cannot budget it",
            ),
            Self::TooExpensive(p) => write!(f, "asks {p} msats per file, above --max-price-msats"),
            Self::Offline => f.write_str("has no live heartbeat (offline, or it never beats)"),
            Self::NotAnnounced => f.write_str("announces no code analysis (kind 5960) on these relays"),
        }
    }
}

/// What discovery found: the providers to use, and why the others cannot be.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Usable, cheapest first.
    pub candidates: Vec<Candidate>,
    /// Passed over, with the reason, in key order.
    pub passed_over: Vec<(PublicKey, Unusable)>,
}

impl Discovery {
    /// One line per provider passed over, for a user who asked for them or got none.
    pub fn explain(&self) -> Vec<String> {
        self.passed_over
            .iter()
            .map(|(pk, why)| {
                let name = pk.to_bech32().unwrap_or_else(|_| pk.to_hex());
                format!("{name} {why}")
            })
            .collect()
    }
}

/// Online providers of kind 5960 whose price is at most `max_price` (restricted to `only` when
/// given), cheapest first.
pub async fn discover(
    relay: &MarketClient,
    max_price: u64,
    only: &[PublicKey],
) -> Result<Vec<Candidate>, ClientError> {
    Ok(discover_all(relay, max_price, only).await?.candidates)
}

/// [`discover`], and why each other provider of kind 5960 (or named in `only`) is not usable.
pub async fn discover_all(
    relay: &MarketClient,
    max_price: u64,
    only: &[PublicKey],
) -> Result<Discovery, ClientError> {
    let kind = kinds::CODE_ANALYSIS.to_string();
    let announces = relay
        .fetch(
            Filter::new()
                .kind(kinds::ANNOUNCE)
                .custom_tag(SingleLetterTag::lowercase(Alphabet::K), kind)
                .limit(5000),
            Duration::from_secs(5),
        )
        .await?;
    let mut price: HashMap<PublicKey, Option<u64>> = HashMap::new();
    for e in announces.iter() {
        if let Ok(a) = Announcement::from_event(e) {
            let p = a.price(kinds::CODE_ANALYSIS);
            // A provider's newer announcement without a price does not hide an older one's.
            let slot = price.entry(a.provider).or_default();
            *slot = p.or(*slot);
        }
    }
    let beats = relay
        .fetch(
            Filter::new()
                .kind(kinds::HEARTBEAT)
                .authors(price.keys().copied())
                .limit(5000),
            Duration::from_secs(5),
        )
        .await?;
    let now = Timestamp::now();
    let mut online: HashMap<PublicKey, Heartbeat> = HashMap::new();
    for e in beats.iter() {
        if let Ok(h) = Heartbeat::from_event(e) {
            if h.is_online(now)
                && online
                    .get(&h.provider)
                    .is_none_or(|old| old.created_at < h.created_at)
            {
                online.insert(h.provider, h);
            }
        }
    }
    let only: HashSet<&PublicKey> = only.iter().collect();
    let mut found = Discovery::default();
    for (pk, p) in &price {
        if !only.is_empty() && !only.contains(pk) {
            continue;
        }
        let why = match (p, online.get(pk)) {
            (None, _) => Unusable::NoPrice,
            (Some(p), _) if *p > max_price => Unusable::TooExpensive(*p),
            (Some(_), None) => Unusable::Offline,
            (Some(p), Some(h)) => {
                found.candidates.push(Candidate {
                    pubkey: *pk,
                    price_msats: *p,
                    // A foreign node that states no queue is taken as idle: its price and
                    // record still rank it.
                    queue_depth: h.info.queue_depth.unwrap_or(0) + h.info.running.unwrap_or(0),
                });
                continue;
            }
        };
        found.passed_over.push((*pk, why));
    }
    found.passed_over.extend(
        only.iter()
            .filter(|pk| !price.contains_key(pk))
            .map(|pk| (**pk, Unusable::NotAnnounced)),
    );
    found.passed_over.sort_by_key(|p| p.0);
    found.candidates.sort_by(|a, b| {
        a.price_msats
            .cmp(&b.price_msats)
            .then(a.pubkey.cmp(&b.pubkey))
    });
    Ok(found)
}

/// How a provider has done in this run.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Jobs we have in flight at it.
    pub in_flight: u32,
    /// Valid results.
    pub successes: u32,
    /// Failures and timeouts.
    pub failures: u32,
    /// Sent a wrong result: never used again.
    pub banned: bool,
}

/// The pool the dispatcher picks from.
#[derive(Debug)]
pub struct Pool {
    candidates: Vec<Candidate>,
    records: HashMap<PublicKey, Record>,
}

impl Pool {
    /// A pool over `candidates`.
    pub fn new(candidates: Vec<Candidate>) -> Self {
        Self {
            records: candidates
                .iter()
                .map(|c| (c.pubkey, Record::default()))
                .collect(),
            candidates,
        }
    }

    /// Providers in the pool.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The least loaded usable provider not in `avoid` (falling back to one in `avoid` if no
    /// other is left), and marks a job in flight there.
    pub fn take(&mut self, avoid: &HashSet<PublicKey>) -> Option<Candidate> {
        let usable = |c: &&Candidate| !self.records.get(&c.pubkey).is_some_and(|r| r.banned);
        let score = |c: &Candidate| {
            let r = self.records.get(&c.pubkey).cloned().unwrap_or_default();
            // Load first (ours and theirs), then reliability, then price.
            (
                r.in_flight + c.queue_depth,
                r.failures.saturating_sub(r.successes),
                c.price_msats,
                c.pubkey,
            )
        };
        let pick = self
            .candidates
            .iter()
            .filter(usable)
            .filter(|c| !avoid.contains(&c.pubkey))
            .min_by_key(|c| score(c))
            .or_else(|| {
                self.candidates
                    .iter()
                    .filter(usable)
                    .min_by_key(|c| score(c))
            })
            .cloned()?;
        if let Some(r) = self.records.get_mut(&pick.pubkey) {
            r.in_flight += 1;
        }
        Some(pick)
    }

    /// Records how a job at `provider` ended.
    pub fn settle(&mut self, provider: &PublicKey, outcome: Ended) {
        if let Some(r) = self.records.get_mut(provider) {
            r.in_flight = r.in_flight.saturating_sub(1);
            match outcome {
                Ended::Success => r.successes += 1,
                Ended::Failure => r.failures += 1,
                Ended::Cheated => {
                    r.failures += 1;
                    r.banned = true;
                }
                Ended::Abandoned => {}
            }
        }
    }

    /// Providers that returned at least one valid result.
    pub fn used(&self) -> usize {
        self.records.values().filter(|r| r.successes > 0).count()
    }
}

/// How one attempt ended, for the pool's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A valid result.
    Success,
    /// An error or timeout.
    Failure,
    /// A result that failed verification.
    Cheated,
    /// Dropped because another attempt won.
    Abandoned,
}

#[cfg(test)]
mod tests {
    use nostr_sdk::Keys;

    use super::*;

    #[test]
    fn least_loaded_first_and_cheaters_never_again() {
        let c: Vec<Candidate> = (0..3)
            .map(|i| Candidate {
                pubkey: Keys::generate().public_key(),
                price_msats: 1000,
                queue_depth: i,
            })
            .collect();
        let mut pool = Pool::new(c.clone());
        let none = HashSet::new();
        let first = pool.take(&none).expect("one");
        assert_eq!(first.pubkey, c[0].pubkey, "idle provider first");
        let second = pool.take(&none).expect("two");
        assert_ne!(
            second.pubkey, c[2].pubkey,
            "the busiest provider comes last"
        );
        pool.settle(&second.pubkey, Ended::Abandoned);
        pool.settle(&first.pubkey, Ended::Cheated);
        for _ in 0..5 {
            let p = pool.take(&none).expect("some");
            assert_ne!(p.pubkey, first.pubkey, "banned");
            pool.settle(&p.pubkey, Ended::Success);
        }
        let avoid: HashSet<PublicKey> = [c[1].pubkey].into();
        assert_eq!(pool.take(&avoid).expect("other").pubkey, c[2].pubkey);
    }
}
