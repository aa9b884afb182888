//! Provider heartbeats (kind 11998, replaceable): status, queue and counters, with a NIP-40
//! expiration about three intervals ahead. "Online" means a heartbeat within its horizon (see
//! [`Heartbeat::online_until`]).
//!
//! Other DVM frameworks publish the same kind with other content (nostr-dvm writes the text
//! "Alive and kicking" and a free-text `status`), so every figure read from a heartbeat is an
//! `Option`: a field a node did not state is unknown, never zero.

use nostr_sdk::{Event, EventBuilder, Keys, PublicKey, Tag, Timestamp};
use serde::{Deserialize, Serialize};

use super::kinds;
use super::nip89::PYLON_TAG;
use super::nip90::ProtocolError;
use super::tags;

/// What a provider is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Taking jobs.
    #[default]
    Online,
    /// At capacity.
    Busy,
    /// Finishing its jobs before stopping.
    Draining,
}

/// A heartbeat with neither an expiration nor a stated interval counts as online this long
/// after it was made.
pub const DEFAULT_ONLINE_SECS: u64 = 180;

/// However far ahead a heartbeat's expiration is set, it keeps a node online at most this long
/// after it was made: a node that died is shown offline within the hour.
pub const MAX_ONLINE_SECS: u64 = 3_600;

/// A heartbeat dated further ahead than this is not believed at all (a clock that wrong, or a
/// node trying to stay "online" for good).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Heartbeat content. Pylon writes every field; a field absent, or of another type, in a
/// foreign heartbeat is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HeartbeatInfo {
    /// State.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodeState>,
    /// Jobs waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// Jobs running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    /// Jobs completed since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_served: Option<u64>,
    /// Jobs failed since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_failed: Option<u64>,
    /// Seconds between heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Seconds since the node started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
}

impl HeartbeatInfo {
    /// Reads what it can from a heartbeat's content, field by field: content that is not a
    /// JSON object states nothing, and one field of an unexpected type or value (a state
    /// Pylon does not know) leaves only that field unknown.
    pub fn parse_lenient(content: &str) -> Self {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(content) else {
            return Self::default();
        };
        fn field<T: serde::de::DeserializeOwned>(
            map: &serde_json::Map<String, serde_json::Value>,
            name: &str,
        ) -> Option<T> {
            serde_json::from_value(map.get(name)?.clone()).ok()
        }
        Self {
            state: field(&map, "state"),
            queue_depth: field(&map, "queue_depth"),
            running: field(&map, "running"),
            jobs_served: field(&map, "jobs_served"),
            jobs_failed: field(&map, "jobs_failed"),
            interval_secs: field::<u64>(&map, "interval_secs").filter(|&i| i > 0),
            uptime_secs: field(&map, "uptime_secs"),
        }
    }
}

/// A parsed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// The provider.
    pub provider: PublicKey,
    /// Content; what the node did not state is `None`.
    pub info: HeartbeatInfo,
    /// Whether it carries the Pylon marker (`["t", "pylon"]`).
    pub pylon: bool,
    /// NIP-40 expiration.
    pub expires_at: Option<Timestamp>,
    /// Request kinds served.
    pub kinds: Vec<u16>,
    /// When.
    pub created_at: Timestamp,
}

impl Heartbeat {
    /// Signs a heartbeat expiring `3 × interval` from now.
    pub fn to_event(
        keys: &Keys,
        info: &HeartbeatInfo,
        kinds_served: &[u16],
    ) -> Result<Event, ProtocolError> {
        Self::to_event_at(keys, info, kinds_served, Timestamp::now())
    }

    /// Signs a heartbeat dated `at`, expiring `3 × interval` later. The kind is replaceable and
    /// relays keep the newest by date, so a node beating twice in one second dates the second
    /// beat a second later.
    pub fn to_event_at(
        keys: &Keys,
        info: &HeartbeatInfo,
        kinds_served: &[u16],
        at: Timestamp,
    ) -> Result<Event, ProtocolError> {
        let expires = at + info.interval_secs.unwrap_or(1).max(1) * 3;
        let mut t = vec![
            Tag::expiration(expires),
            tags::custom("status", [state_name(info.state.unwrap_or_default())]),
            Tag::hashtag(PYLON_TAG),
        ];
        t.extend(
            kinds_served
                .iter()
                .map(|k| tags::custom("k", [k.to_string()])),
        );
        let content =
            serde_json::to_string(info).map_err(|e| ProtocolError::Sign(e.to_string()))?;
        EventBuilder::new(kinds::HEARTBEAT, content)
            .tags(t)
            .custom_created_at(at)
            .sign_with_keys(keys)
            .map_err(|e| ProtocolError::Sign(e.to_string()))
    }

    /// Parses a heartbeat.
    pub fn from_event(event: &Event) -> Result<Self, ProtocolError> {
        if event.kind != kinds::HEARTBEAT {
            return Err(ProtocolError::WrongKind(event.kind.as_u16(), "heartbeat"));
        }
        Ok(Self {
            provider: event.pubkey,
            info: HeartbeatInfo::parse_lenient(&event.content),
            pylon: tags::all(event, "t").any(|v| v.first().map(String::as_str) == Some(PYLON_TAG)),
            expires_at: super::nip47::expiration(event),
            kinds: tags::all(event, "k")
                .filter_map(|v| v.first()?.parse().ok())
                .collect(),
            created_at: event.created_at,
        })
    }

    /// Until when this heartbeat shows its node online: its NIP-40 expiration; without one,
    /// two of the intervals it states; without either, [`DEFAULT_ONLINE_SECS`]. Never more than
    /// [`MAX_ONLINE_SECS`] after it was made.
    pub fn online_until(&self) -> Timestamp {
        let made = self.created_at.as_secs();
        let stated = match (self.expires_at, self.info.interval_secs) {
            (Some(at), _) => at.as_secs(),
            (None, Some(interval)) => made.saturating_add(interval.saturating_mul(2)),
            (None, None) => made.saturating_add(DEFAULT_ONLINE_SECS),
        };
        Timestamp::from(stated.min(made.saturating_add(MAX_ONLINE_SECS)))
    }

    /// Online at `now`: within [`online_until`](Self::online_until), and not dated more than
    /// [`MAX_CLOCK_SKEW_SECS`] ahead of `now`.
    pub fn is_online(&self, now: Timestamp) -> bool {
        self.created_at.as_secs() <= now.as_secs().saturating_add(MAX_CLOCK_SKEW_SECS)
            && self.online_until() > now
    }
}

fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Online => "online",
        NodeState::Busy => "busy",
        NodeState::Draining => "draining",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_until_expiry() {
        let k = Keys::generate();
        let info = HeartbeatInfo {
            interval_secs: Some(10),
            jobs_served: Some(3),
            ..Default::default()
        };
        let hb = Heartbeat::from_event(&Heartbeat::to_event(&k, &info, &[5960]).expect("event"))
            .expect("parse");
        assert_eq!(hb.info.jobs_served, Some(3));
        assert_eq!(hb.kinds, vec![5960]);
        assert!(hb.pylon);
        assert!(hb.is_online(Timestamp::now()));
        assert!(!hb.is_online(Timestamp::now() + 31));
    }

    fn beat(content: &str, tags: Vec<Tag>, at: Timestamp) -> Heartbeat {
        let event = EventBuilder::new(kinds::HEARTBEAT, content)
            .tags(tags)
            .custom_created_at(at)
            .sign_with_keys(&Keys::generate())
            .expect("sign");
        Heartbeat::from_event(&event).expect("parse")
    }

    #[test]
    fn a_foreign_heartbeat_states_nothing_it_did_not_say() {
        let now = Timestamp::now();
        // nostr-dvm's shape: text content, a free-text status, an expiration 300 s ahead.
        let dvm = beat(
            "Alive and kicking",
            vec![
                tags::custom("status", ["My heart keeps beating like a hammer"]),
                Tag::identifier("dvm"),
                Tag::expiration(now + 300),
            ],
            now,
        );
        assert_eq!(dvm.info, HeartbeatInfo::default());
        assert_eq!(dvm.info.uptime_secs, None, "unknown, not 0");
        assert!(!dvm.pylon);
        assert!(dvm.is_online(now + 299));
        assert!(!dvm.is_online(now + 300));
        // One odd field leaves the others readable.
        let odd = beat(
            r#"{"state":"sleeping","uptime_secs":"long","jobs_served":7,"queue_depth":-1}"#,
            vec![],
            now,
        );
        assert_eq!(odd.info.state, None);
        assert_eq!(odd.info.uptime_secs, None);
        assert_eq!(odd.info.queue_depth, None);
        assert_eq!(odd.info.jobs_served, Some(7));
    }

    #[test]
    fn without_an_expiration_a_heartbeat_lasts_two_intervals_or_the_default() {
        let now = Timestamp::now();
        let stated = beat(r#"{"interval_secs":20}"#, vec![], now);
        assert_eq!(stated.online_until(), now + 40);
        assert!(stated.is_online(now + 39) && !stated.is_online(now + 40));
        let bare = beat("not json", vec![], now);
        assert_eq!(bare.online_until(), now + DEFAULT_ONLINE_SECS);
        let zero = beat(r#"{"interval_secs":0}"#, vec![], now);
        assert_eq!(
            zero.online_until(),
            now + DEFAULT_ONLINE_SECS,
            "0 is not an interval"
        );
    }

    #[test]
    fn a_heartbeat_cannot_keep_a_node_online_for_good() {
        let now = Timestamp::now();
        let far = beat("{}", vec![Tag::expiration(now + 365 * 86_400)], now);
        assert_eq!(far.online_until(), now + MAX_ONLINE_SECS);
        assert!(!far.is_online(now + MAX_ONLINE_SECS));
        // Dated a day ahead, expiring a day and a minute ahead: not believed now.
        let future = beat("{}", vec![Tag::expiration(now + 86_460)], now + 86_400);
        assert!(!future.is_online(now));
        // A small clock skew is tolerated.
        let skewed = beat("{}", vec![Tag::expiration(now + 90)], now + 30);
        assert!(skewed.is_online(now));
    }
}
