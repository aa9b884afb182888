//! The embedded relay's settings: defaults compiled in from `relay/defaults.toml`, overridden by
//! the `[relay]` table of `config.toml`.

use std::net::SocketAddr;

use nostr_sdk::PublicKey;
use serde::{Deserialize, Deserializer, Serialize};

/// The documented defaults file, embedded so the binary needs nothing beside it.
pub const DEFAULTS_TOML: &str = include_str!("../../relay/defaults.toml");

/// Errors in relay settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A key is unknown, a value has the wrong type, or the TOML is malformed.
    #[error("invalid [relay] settings: {0}")]
    Invalid(String),
    /// A value is out of range.
    #[error("invalid [relay] settings: {0}")]
    OutOfRange(String),
}

/// Everything that shapes the embedded relay. See `relay/defaults.toml` for what each key means.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// Listen address.
    pub bind: SocketAddr,
    /// NIP-11 name.
    pub name: String,
    /// NIP-11 description.
    pub description: String,
    /// Largest event, bytes of JSON.
    pub max_event_bytes: usize,
    /// Largest event content, in characters.
    pub max_content_chars: usize,
    /// Largest WebSocket message.
    pub max_message_bytes: usize,
    /// Most tags per event.
    pub max_event_tags: usize,
    /// Token refill rate per connection.
    pub events_per_second: u32,
    /// Token bucket size per connection.
    pub event_burst: u32,
    /// Authors exempt from the rate limit.
    #[serde(deserialize_with = "pubkeys", serialize_with = "pubkeys_hex")]
    pub rate_limit_exempt: Vec<PublicKey>,
    /// Open subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest filter `limit` honoured.
    pub max_filter_limit: usize,
    /// Limit for filters without one.
    pub default_filter_limit: usize,
    /// Most filters in one REQ or COUNT.
    pub max_filters: usize,
    /// Longest subscription id, in characters.
    pub max_subid_length: usize,
    /// Threads running stored-event queries at once (0: one per core, at least two).
    pub query_threads: usize,
    /// How far in the future an event's `created_at` may be, in seconds.
    pub max_future_seconds: u64,
    /// Live events a subscriber may fall behind by before its subscriptions are closed.
    pub live_buffer_events: usize,
    /// Simultaneous connections.
    pub max_connections: usize,
    /// NIP-42 authentication mode.
    pub auth: AuthMode,
    /// If non-empty, the only accepted authors.
    #[serde(deserialize_with = "pubkeys", serialize_with = "pubkeys_hex")]
    pub allow_pubkeys: Vec<PublicKey>,
    /// If non-empty, the only accepted kinds.
    pub allow_kinds: Vec<u16>,
    /// Kinds always refused, even when `allow_kinds` lists them.
    pub deny_kinds: Vec<u16>,
    /// Seconds a connection may send nothing before it is closed (0: never).
    pub idle_timeout_secs: u64,
    /// NIP-13 difficulty required of job requests (kinds 5000–5999).
    pub min_pow_job_requests: u8,
}

/// When the relay asks clients to authenticate (NIP-42).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Never required (a challenge is still sent when a protected event needs it).
    #[default]
    Off,
    /// Publishing needs an authenticated connection.
    Writes,
    /// Publishing, REQ and COUNT need an authenticated connection.
    Required,
}

impl AuthMode {
    /// Whether publishing needs AUTH.
    pub fn for_writes(self) -> bool {
        matches!(self, Self::Writes | Self::Required)
    }

    /// Whether reading needs AUTH.
    pub fn for_reads(self) -> bool {
        matches!(self, Self::Required)
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        // The embedded file is part of the build and covered by a test; failing here is a build defect.
        Self::with_overrides(toml::Table::new()).expect("relay/defaults.toml is valid")
    }
}

impl RelaySettings {
    /// The compiled-in defaults with `overrides` (a `[relay]` table) laid on top.
    pub fn with_overrides(overrides: toml::Table) -> Result<Self, SettingsError> {
        let mut table: toml::Table = DEFAULTS_TOML.parse().map_err(|e: toml::de::Error| {
            SettingsError::Invalid(format!("built-in defaults: {e}"))
        })?;
        for (key, value) in overrides {
            table.insert(key, value);
        }
        let settings: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| SettingsError::Invalid(e.message().to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let fail = |m: String| Err(SettingsError::OutOfRange(m));
        if self.max_event_bytes < 128 * 1024 {
            return fail(format!(
                "max_event_bytes = {} is below 128 KiB, which wallet and file jobs need",
                self.max_event_bytes
            ));
        }
        if self.max_message_bytes < self.max_event_bytes + 1024 {
            return fail("max_message_bytes must exceed max_event_bytes by at least 1024".into());
        }
        if self.events_per_second == 0 || self.event_burst == 0 {
            return fail("events_per_second and event_burst must be at least 1".into());
        }
        if self.max_subscriptions == 0 || self.max_connections == 0 {
            return fail("max_subscriptions and max_connections must be at least 1".into());
        }
        if self.default_filter_limit > self.max_filter_limit {
            return fail("default_filter_limit must not exceed max_filter_limit".into());
        }
        if self.max_filters == 0 || self.max_subid_length == 0 || self.max_content_chars == 0 {
            return fail(
                "max_filters, max_subid_length and max_content_chars must be at least 1".into(),
            );
        }
        if self.live_buffer_events < 16 {
            return fail(format!(
                "live_buffer_events = {} is below 16: every subscriber would be closed as too slow",
                self.live_buffer_events
            ));
        }
        Ok(())
    }

    /// Threads that may run stored-event queries at once.
    pub fn query_threads(&self) -> usize {
        if self.query_threads > 0 {
            return self.query_threads;
        }
        std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
    }
}

fn pubkeys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PublicKey>, D::Error> {
    let raw: Vec<String> = Vec::deserialize(d)?;
    raw.iter()
        .map(|s| {
            PublicKey::parse(s).map_err(|e| {
                serde::de::Error::custom(format!("`{s}` is not a public key (hex or npub): {e}"))
            })
        })
        .collect()
}

fn pubkeys_hex<S: serde::Serializer>(keys: &[PublicKey], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|k| k.to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_suit_a_market() {
        let s = RelaySettings::default();
        assert_eq!(s.bind, "127.0.0.1:7777".parse().expect("addr"));
        assert_eq!(s.name, "pylon");
        assert!(s.max_event_bytes >= 128 * 1024);
        assert!(s.allow_pubkeys.is_empty() && s.allow_kinds.is_empty());
        assert!(s.deny_kinds.is_empty());
        assert_eq!(
            s.idle_timeout_secs, 0,
            "idle connections are kept by default"
        );
        assert_eq!(s.min_pow_job_requests, 0);
    }

    #[test]
    fn overrides_apply_and_unknown_keys_are_named() {
        let t: toml::Table = "min_pow_job_requests = 8\nallow_kinds = [5960]"
            .parse()
            .expect("toml");
        let s = RelaySettings::with_overrides(t).expect("valid");
        assert_eq!(s.min_pow_job_requests, 8);
        assert_eq!(s.allow_kinds, vec![5960]);

        let t: toml::Table = "max_evnt_bytes = 1".parse().expect("toml");
        let err = RelaySettings::with_overrides(t)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("max_evnt_bytes"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let t: toml::Table = "max_event_bytes = 1000".parse().expect("toml");
        let err = RelaySettings::with_overrides(t)
            .expect_err("too small")
            .to_string();
        assert!(err.contains("128 KiB"), "{err}");
        let t: toml::Table = "allow_pubkeys = [\"nope\"]".parse().expect("toml");
        let err = RelaySettings::with_overrides(t)
            .expect_err("bad key")
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
