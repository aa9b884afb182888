//! What the embedded relay refuses, and why: size, allow-lists, proof of work on job requests,
//! and a per-connection rate limit.
//!
//! nostr-relay-builder's own limiter is replaced (set to unlimited) because it only refills when a
//! client pauses for a whole second, so a busy node publishing steadily is starved after 60 events.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use nostr_relay_builder::builder::{PolicyResult, WritePolicy};
use nostr_sdk::nostr::util::BoxedFuture;
use nostr_sdk::{Event, JsonUtil, PublicKey};

use super::settings::RelaySettings;
use crate::ratelimit::TokenBuckets;

/// The write policy installed on the embedded relay.
#[derive(Debug)]
pub struct MarketPolicy {
    max_event_bytes: usize,
    max_event_tags: usize,
    allow_pubkeys: HashSet<PublicKey>,
    allow_kinds: HashSet<u16>,
    min_pow_job_requests: u8,
    exempt: HashSet<PublicKey>,
    limiter: Mutex<TokenBuckets<SocketAddr>>,
}

impl MarketPolicy {
    /// Builds the policy from the relay settings.
    pub fn new(settings: &RelaySettings) -> Self {
        Self {
            max_event_bytes: settings.max_event_bytes,
            max_event_tags: settings.max_event_tags,
            allow_pubkeys: settings.allow_pubkeys.iter().copied().collect(),
            allow_kinds: settings.allow_kinds.iter().copied().collect(),
            min_pow_job_requests: settings.min_pow_job_requests,
            exempt: settings.rate_limit_exempt.iter().copied().collect(),
            limiter: Mutex::new(TokenBuckets::new(
                f64::from(settings.events_per_second),
                f64::from(settings.event_burst),
            )),
        }
    }

    /// Decides on one event from the connection at `addr`. `Err` holds the reason sent in `OK`.
    pub fn check(&self, event: &Event, addr: SocketAddr, now: Instant) -> Result<(), String> {
        if !self.exempt.contains(&event.pubkey) && !self.take_token(addr, now) {
            return Err("rate-limited: slow down".into());
        }
        if event.tags.len() > self.max_event_tags {
            return Err(format!(
                "too many tags: {} (max {})",
                event.tags.len(),
                self.max_event_tags
            ));
        }
        let size = event.as_json().len();
        if size > self.max_event_bytes {
            return Err(format!(
                "event too large: {size} bytes (max {})",
                self.max_event_bytes
            ));
        }
        if !self.allow_pubkeys.is_empty() && !self.allow_pubkeys.contains(&event.pubkey) {
            return Err("author not on this relay's allow-list".into());
        }
        let kind = event.kind.as_u16();
        if !self.allow_kinds.is_empty() && !self.allow_kinds.contains(&kind) {
            return Err(format!("kind {kind} not accepted by this relay"));
        }
        if self.min_pow_job_requests > 0
            && (5000..=5999).contains(&kind)
            && !event.id.check_pow(self.min_pow_job_requests)
        {
            return Err(format!(
                "pow: job requests need NIP-13 difficulty {}",
                self.min_pow_job_requests
            ));
        }
        Ok(())
    }

    fn take_token(&self, addr: SocketAddr, now: Instant) -> bool {
        // A poisoned lock only means another thread panicked mid-update; the counts are still usable.
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(addr, now)
    }
}

impl WritePolicy for MarketPolicy {
    fn admit_event<'a>(
        &'a self,
        event: &'a Event,
        addr: &'a SocketAddr,
    ) -> BoxedFuture<'a, PolicyResult> {
        Box::pin(async move {
            match self.check(event, *addr, Instant::now()) {
                Ok(()) => PolicyResult::Accept,
                Err(reason) => PolicyResult::Reject(reason),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nostr_sdk::{EventBuilder, Keys, Kind, Tag};

    use super::*;

    fn settings(extra: &str) -> RelaySettings {
        RelaySettings::with_overrides(extra.parse().expect("toml")).expect("valid")
    }

    fn note(keys: &Keys, kind: u16, content: &str) -> Event {
        EventBuilder::new(Kind::from(kind), content)
            .sign_with_keys(keys)
            .expect("sign")
    }

    const ADDR: &str = "127.0.0.1:5000";

    #[test]
    fn burst_then_steady_rate() {
        let policy = MarketPolicy::new(&settings("events_per_second = 10\nevent_burst = 5"));
        let keys = Keys::generate();
        let ev = note(&keys, 1, "x");
        let addr: SocketAddr = ADDR.parse().expect("addr");
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(policy.check(&ev, addr, t0).is_ok(), "burst event {i}");
        }
        let refused = policy.check(&ev, addr, t0).expect_err("bucket empty");
        assert!(refused.starts_with("rate-limited"), "{refused}");
        // Another connection has its own bucket.
        let other: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
        assert!(policy.check(&ev, other, t0).is_ok());
        // 100 ms at 10/s refills one token: a steady sender is never starved.
        let mut t = t0;
        for _ in 0..50 {
            t += Duration::from_millis(100);
            assert!(policy.check(&ev, addr, t).is_ok());
        }
    }

    #[test]
    fn exempt_authors_skip_the_limit() {
        let hub = Keys::generate();
        let policy = MarketPolicy::new(&settings(&format!(
            "events_per_second = 1\nevent_burst = 1\nrate_limit_exempt = [\"{}\"]",
            hub.public_key().to_hex()
        )));
        let addr: SocketAddr = ADDR.parse().expect("addr");
        let t = Instant::now();
        for _ in 0..100 {
            assert!(policy.check(&note(&hub, 1, "x"), addr, t).is_ok());
        }
    }

    #[test]
    fn size_tags_allow_lists_and_pow() {
        let keys = Keys::generate();
        let addr: SocketAddr = ADDR.parse().expect("addr");
        let t = Instant::now();
        let policy = MarketPolicy::new(&settings("max_event_tags = 3"));
        let big = note(&keys, 1, &"a".repeat(600 * 1024));
        assert!(policy
            .check(&big, addr, t)
            .expect_err("big")
            .contains("too large"));
        let tagged = EventBuilder::new(Kind::from(1), "")
            .tags((0..4).map(|i| Tag::hashtag(format!("t{i}"))))
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(policy
            .check(&tagged, addr, t)
            .expect_err("tags")
            .contains("too many tags"));

        let other = Keys::generate();
        let policy = MarketPolicy::new(&settings(&format!(
            "allow_pubkeys = [\"{}\"]\nallow_kinds = [1, 5960]",
            keys.public_key().to_hex()
        )));
        assert!(policy.check(&note(&keys, 1, "ok"), addr, t).is_ok());
        assert!(policy.check(&note(&other, 1, "no"), addr, t).is_err());
        assert!(policy
            .check(&note(&keys, 7, "no"), addr, t)
            .expect_err("kind")
            .contains("kind 7"));

        let policy = MarketPolicy::new(&settings("min_pow_job_requests = 8"));
        let unmined = (0..)
            .map(|i| note(&keys, 5960, &format!("job {i}")))
            .find(|e| !e.id.check_pow(8))
            .expect("an event without work");
        let refused = policy.check(&unmined, addr, t).expect_err("no work");
        assert!(refused.starts_with("pow:"), "{refused}");
        let mined = EventBuilder::new(Kind::from(5960), "job")
            .pow(8)
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(policy.check(&mined, addr, t).is_ok());
        // Non-job kinds need no work.
        assert!(policy.check(&note(&keys, 1, "chat"), addr, t).is_ok());
    }
}
