//! What the embedded relay refuses, and why: size, allow- and deny-lists, proof of work on job
//! requests, dates in the future, and (in the session, per connection) a rate limit.
//!
//! Every refusal carries a NIP-01 machine-readable prefix so clients can act on it: a client
//! told `rate-limited:` slows down, one told `invalid:` fixes its event, one told
//! `auth-required:` authenticates.

use std::collections::HashSet;
use std::fmt;

use nostr_sdk::{Event, JsonUtil, PublicKey, Timestamp};

use super::settings::RelaySettings;

/// The NIP-01 machine-readable prefixes the relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// The event is already stored.
    Duplicate,
    /// Not enough proof of work.
    Pow,
    /// The author or content is not accepted here.
    Blocked,
    /// Too much, too fast.
    RateLimited,
    /// The message or event is malformed or breaks a limit.
    Invalid,
    /// The relay failed.
    Error,
    /// Authenticate first (NIP-42).
    AuthRequired,
    /// Authenticated, but not allowed.
    Restricted,
}

impl Prefix {
    /// The prefix as written on the wire, without the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Pow => "pow",
            Self::Blocked => "blocked",
            Self::RateLimited => "rate-limited",
            Self::Invalid => "invalid",
            Self::Error => "error",
            Self::AuthRequired => "auth-required",
            Self::Restricted => "restricted",
        }
    }
}

/// A refusal: prefix and human reason, written as `prefix: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The machine-readable part.
    pub prefix: Prefix,
    /// The human part.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `prefix`.
    pub fn new(prefix: Prefix, reason: impl Into<String>) -> Self {
        Self {
            prefix,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.prefix.as_str(), self.reason)
    }
}

/// The static write policy of the embedded relay (the per-connection rate limit lives in the
/// session, which owns its token bucket).
#[derive(Debug)]
pub struct MarketPolicy {
    max_event_bytes: usize,
    max_content_chars: usize,
    max_event_tags: usize,
    max_future_secs: u64,
    allow_pubkeys: HashSet<PublicKey>,
    allow_kinds: HashSet<u16>,
    deny_kinds: HashSet<u16>,
    min_pow_job_requests: u8,
    exempt: HashSet<PublicKey>,
}

impl MarketPolicy {
    /// Builds the policy from the relay settings.
    pub fn new(settings: &RelaySettings) -> Self {
        Self {
            max_event_bytes: settings.max_event_bytes,
            max_content_chars: settings.max_content_chars,
            max_event_tags: settings.max_event_tags,
            max_future_secs: settings.max_future_seconds,
            allow_pubkeys: settings.allow_pubkeys.iter().copied().collect(),
            allow_kinds: settings.allow_kinds.iter().copied().collect(),
            deny_kinds: settings.deny_kinds.iter().copied().collect(),
            min_pow_job_requests: settings.min_pow_job_requests,
            exempt: settings.rate_limit_exempt.iter().copied().collect(),
        }
    }

    /// Whether `author`'s events skip the per-connection rate limit.
    pub fn is_exempt(&self, author: &PublicKey) -> bool {
        self.exempt.contains(author)
    }

    /// Decides on one (already signature-checked) event. `authed` are the keys the connection
    /// authenticated as (NIP-42), which the allow-list also admits.
    pub fn check(
        &self,
        event: &Event,
        authed: &[PublicKey],
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let invalid = |m: String| Err(Refusal::new(Prefix::Invalid, m));
        if event.tags.len() > self.max_event_tags {
            return invalid(format!(
                "too many tags: {} (max {})",
                event.tags.len(),
                self.max_event_tags
            ));
        }
        let size = event.as_json().len();
        if size > self.max_event_bytes {
            return invalid(format!(
                "event too large: {size} bytes (max {})",
                self.max_event_bytes
            ));
        }
        // Counting characters only matters when the byte length could exceed the limit.
        if event.content.len() > self.max_content_chars {
            let chars = event.content.chars().count();
            if chars > self.max_content_chars {
                return invalid(format!(
                    "content too long: {chars} characters (max {})",
                    self.max_content_chars
                ));
            }
        }
        let ahead = event.created_at.as_secs().saturating_sub(now.as_secs());
        if ahead > self.max_future_secs {
            return invalid(format!(
                "created_at is {ahead} s in the future (max {} s): check the clock",
                self.max_future_secs
            ));
        }
        if !self.allow_pubkeys.is_empty()
            && !self.allow_pubkeys.contains(&event.pubkey)
            && !authed.iter().any(|k| self.allow_pubkeys.contains(k))
        {
            return Err(Refusal::new(
                if authed.is_empty() {
                    Prefix::Blocked
                } else {
                    Prefix::Restricted
                },
                "author not on this relay's allow-list",
            ));
        }
        let kind = event.kind.as_u16();
        // The deny list wins over the allow list, so an operator can carve a kind out of a range
        // it otherwise accepts; both answer `blocked:`, as for any kind this relay does not take.
        if self.deny_kinds.contains(&kind) {
            return Err(Refusal::new(
                Prefix::Blocked,
                format!("kind {kind} refused by this relay"),
            ));
        }
        if !self.allow_kinds.is_empty() && !self.allow_kinds.contains(&kind) {
            return Err(Refusal::new(
                Prefix::Blocked,
                format!("kind {kind} not accepted by this relay"),
            ));
        }
        if self.min_pow_job_requests > 0
            && (5000..=5999).contains(&kind)
            && !event.id.check_pow(self.min_pow_job_requests)
        {
            return Err(Refusal::new(
                Prefix::Pow,
                format!(
                    "job requests need NIP-13 difficulty {}",
                    self.min_pow_job_requests
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    fn check(policy: &MarketPolicy, event: &Event) -> Result<(), Refusal> {
        policy.check(event, &[], Timestamp::now())
    }

    #[test]
    fn exempt_authors_are_known() {
        let hub = Keys::generate();
        let policy = MarketPolicy::new(&settings(&format!(
            "rate_limit_exempt = [\"{}\"]",
            hub.public_key().to_hex()
        )));
        assert!(policy.is_exempt(&hub.public_key()));
        assert!(!policy.is_exempt(&Keys::generate().public_key()));
    }

    #[test]
    fn size_tags_content_and_future_dates() {
        let keys = Keys::generate();
        let policy = MarketPolicy::new(&settings("max_event_tags = 3\nmax_content_chars = 200000"));
        let big = note(&keys, 1, &"a".repeat(600 * 1024));
        let refused = check(&policy, &big).expect_err("big");
        assert_eq!(refused.prefix, Prefix::Invalid);
        assert!(refused.reason.contains("too large"), "{refused}");
        // 300,000 bytes but 100,000 characters: content is measured in characters.
        let wide = note(&keys, 1, &"\u{20ac}".repeat(100_000));
        assert!(check(&policy, &wide).is_ok());
        let long = note(&keys, 1, &"a".repeat(200_001));
        let refused = check(&policy, &long).expect_err("long");
        assert!(
            refused.to_string().starts_with("invalid: content too long"),
            "{refused}"
        );
        let tagged = EventBuilder::new(Kind::from(1), "")
            .tags((0..4).map(|i| Tag::hashtag(format!("t{i}"))))
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(check(&policy, &tagged)
            .expect_err("tags")
            .reason
            .contains("too many tags"));

        let now = Timestamp::now().as_secs();
        let dated = |at: u64| {
            EventBuilder::new(Kind::from(1), "later")
                .custom_created_at(Timestamp::from(at))
                .sign_with_keys(&keys)
                .expect("sign")
        };
        assert!(
            check(&policy, &dated(now + 600)).is_ok(),
            "10 min of clock skew"
        );
        let refused = check(&policy, &dated(now + 3600)).expect_err("an hour ahead");
        assert_eq!(refused.prefix, Prefix::Invalid);
        assert!(refused.reason.contains("future"), "{refused}");
        assert!(check(&policy, &dated(u64::MAX)).is_err(), "the end of time");
    }

    #[test]
    fn allow_lists_and_pow() {
        let keys = Keys::generate();
        let other = Keys::generate();
        let policy = MarketPolicy::new(&settings(&format!(
            "allow_pubkeys = [\"{}\"]\nallow_kinds = [1, 5960]",
            keys.public_key().to_hex()
        )));
        assert!(check(&policy, &note(&keys, 1, "ok")).is_ok());
        let refused = check(&policy, &note(&other, 1, "no")).expect_err("not listed");
        assert_eq!(refused.prefix, Prefix::Blocked);
        // A connection authenticated as a listed key may publish others' events (e.g. a hub's).
        let now = Timestamp::now();
        assert!(policy
            .check(&note(&other, 1, "relayed"), &[keys.public_key()], now)
            .is_ok());
        let refused = policy
            .check(&note(&other, 1, "no"), &[other.public_key()], now)
            .expect_err("authenticated, not listed");
        assert_eq!(refused.prefix, Prefix::Restricted);
        assert!(check(&policy, &note(&keys, 7, "no"))
            .expect_err("kind")
            .reason
            .contains("kind 7"));

        let policy = MarketPolicy::new(&settings("allow_kinds = [1, 7]\ndeny_kinds = [7, 5960]"));
        assert!(check(&policy, &note(&keys, 1, "ok")).is_ok());
        for kind in [7, 5960] {
            let refused = check(&policy, &note(&keys, kind, "no")).expect_err("denied");
            assert_eq!(refused.prefix, Prefix::Blocked);
            assert!(refused.reason.contains("refused"), "{refused}");
        }

        let policy = MarketPolicy::new(&settings("min_pow_job_requests = 8"));
        let unmined = (0..)
            .map(|i| note(&keys, 5960, &format!("job {i}")))
            .find(|e| !e.id.check_pow(8))
            .expect("an event without work");
        let refused = check(&policy, &unmined).expect_err("no work");
        assert!(refused.to_string().starts_with("pow: "), "{refused}");
        let mined = EventBuilder::new(Kind::from(5960), "job")
            .pow(8)
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(check(&policy, &mined).is_ok());
        // Non-job kinds need no work.
        assert!(check(&policy, &note(&keys, 1, "chat")).is_ok());
    }
}
