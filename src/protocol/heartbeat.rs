//! Provider heartbeats (kind 11998, replaceable): status, queue and counters, with a NIP-40
//! expiration about three intervals ahead. "Online" means an unexpired heartbeat.

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

/// Heartbeat content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HeartbeatInfo {
    /// State.
    #[serde(default)]
    pub state: NodeState,
    /// Jobs waiting.
    #[serde(default)]
    pub queue_depth: u32,
    /// Jobs running.
    #[serde(default)]
    pub running: u32,
    /// Jobs completed since start.
    #[serde(default)]
    pub jobs_served: u64,
    /// Jobs failed since start.
    #[serde(default)]
    pub jobs_failed: u64,
    /// Seconds between heartbeats.
    #[serde(default)]
    pub interval_secs: u64,
    /// Seconds since the node started.
    #[serde(default)]
    pub uptime_secs: u64,
}

/// A parsed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// The provider.
    pub provider: PublicKey,
    /// Content (defaults when unreadable).
    pub info: HeartbeatInfo,
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
        let expires = at + info.interval_secs.max(1) * 3;
        let mut t = vec![
            Tag::expiration(expires),
            tags::custom("status", [state_name(info.state)]),
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
            info: serde_json::from_str(&event.content).unwrap_or_default(),
            expires_at: super::nip47::expiration(event),
            kinds: tags::all(event, "k")
                .filter_map(|v| v.first()?.parse().ok())
                .collect(),
            created_at: event.created_at,
        })
    }

    /// Online = has an expiration that has not passed. A heartbeat without one is never trusted.
    pub fn is_online(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at > now)
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
            interval_secs: 10,
            jobs_served: 3,
            ..Default::default()
        };
        let hb = Heartbeat::from_event(&Heartbeat::to_event(&k, &info, &[5960]).expect("event"))
            .expect("parse");
        assert_eq!(hb.info.jobs_served, 3);
        assert_eq!(hb.kinds, vec![5960]);
        assert!(hb.is_online(Timestamp::now()));
        assert!(!hb.is_online(Timestamp::now() + 31));
        let bare = EventBuilder::new(kinds::HEARTBEAT, "not json")
            .sign_with_keys(&k)
            .expect("sign");
        let hb = Heartbeat::from_event(&bare).expect("parse");
        assert!(!hb.is_online(Timestamp::now()), "no expiration, not online");
    }
}
