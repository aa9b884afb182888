//! NIP-89 announcements (kind 31990): what a provider sells and at what price. Found by
//! `{"kinds":[31990],"#k":["5960"]}`.

use std::collections::BTreeMap;

use nostr_sdk::{Event, EventBuilder, Keys, PublicKey, Tag, Timestamp};
use serde::{Deserialize, Serialize};

use super::kinds;
use super::nip90::ProtocolError;
use super::tags;

/// Marks events published by Pylon nodes (`["t", "pylon"]`), so dashboards can tell them apart.
pub const PYLON_TAG: &str = "pylon";

/// The JSON content of an announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProviderInfo {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default)]
    pub about: String,
    /// Software and version.
    #[serde(default)]
    pub version: String,
    /// Execution backends (e.g. `tree-sitter`, `ollama`).
    #[serde(default)]
    pub backends: Vec<String>,
    /// Models served, for text generation.
    #[serde(default)]
    pub models: Vec<String>,
    /// Price per request kind, msats (keys are kind numbers as text).
    #[serde(default)]
    pub prices: BTreeMap<String, u64>,
    /// Encryption schemes accepted for job inputs.
    #[serde(default)]
    pub encryption: Vec<String>,
    /// `after` (result first) or `before` (pay first).
    #[serde(default)]
    pub payment: String,
    /// The `param` tags each kind reads (keys are kind numbers as text), so a client that did
    /// not write the provider knows what it may send.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Vec<ParamDoc>>,
}

/// One job parameter a provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ParamDoc {
    /// The `param` tag's first value.
    #[serde(default)]
    pub name: String,
    /// What it does and what happens without it.
    #[serde(default)]
    pub about: String,
    /// The values it takes, when they are a closed set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl ParamDoc {
    /// A parameter with its description and (possibly empty) closed set of values.
    pub fn new(name: &str, about: &str, values: &[&str]) -> Self {
        Self {
            name: name.into(),
            about: about.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// A parsed announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announcement {
    /// The provider.
    pub provider: PublicKey,
    /// The `d` identifier.
    pub d: String,
    /// Request kinds served (`k` tags).
    pub kinds: Vec<u16>,
    /// Content.
    pub info: ProviderInfo,
    /// Whether it carries the Pylon marker.
    pub pylon: bool,
    /// When.
    pub created_at: Timestamp,
}

impl Announcement {
    /// Signs an announcement.
    pub fn to_event(
        keys: &Keys,
        d: &str,
        kinds: &[u16],
        info: &ProviderInfo,
    ) -> Result<Event, ProtocolError> {
        let mut t = vec![Tag::identifier(d), Tag::hashtag(PYLON_TAG)];
        t.extend(kinds.iter().map(|k| tags::custom("k", [k.to_string()])));
        let content =
            serde_json::to_string(info).map_err(|e| ProtocolError::Sign(e.to_string()))?;
        EventBuilder::new(kinds::ANNOUNCE, content)
            .tags(t)
            .sign_with_keys(keys)
            .map_err(|e| ProtocolError::Sign(e.to_string()))
    }

    /// Parses an announcement; content that is not our JSON leaves `info` empty (other DVMs
    /// write other shapes).
    pub fn from_event(event: &Event) -> Result<Self, ProtocolError> {
        if event.kind != kinds::ANNOUNCE {
            return Err(ProtocolError::WrongKind(
                event.kind.as_u16(),
                "announcement",
            ));
        }
        let d = tags::first(event, "d")
            .ok_or(ProtocolError::MissingTag("d"))?
            .to_string();
        Ok(Self {
            provider: event.pubkey,
            d,
            kinds: tags::all(event, "k")
                .filter_map(|v| v.first()?.parse().ok())
                .collect(),
            info: serde_json::from_str(&event.content).unwrap_or_default(),
            pylon: tags::all(event, "t").any(|v| v.first().map(String::as_str) == Some(PYLON_TAG)),
            created_at: event.created_at,
        })
    }

    /// The announced price for `kind`, msats.
    pub fn price(&self, kind: u16) -> Option<u64> {
        self.info.prices.get(&kind.to_string()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_content() {
        let k = Keys::generate();
        let info = ProviderInfo {
            name: "n".into(),
            prices: [("5960".to_string(), 1000)].into(),
            ..Default::default()
        };
        let ev = Announcement::to_event(&k, "pylon", &[5960, 5050], &info).expect("event");
        let a = Announcement::from_event(&ev).expect("parse");
        assert_eq!(a.kinds, vec![5960, 5050]);
        assert_eq!(a.price(5960), Some(1000));
        assert!(a.pylon);
        let foreign = EventBuilder::new(kinds::ANNOUNCE, "{\"name\": 5}")
            .tags([
                Tag::identifier("x"),
                tags::custom("k", ["5050"]),
                tags::custom("k", ["nope"]),
            ])
            .sign_with_keys(&k)
            .expect("sign");
        let a = Announcement::from_event(&foreign).expect("parse");
        assert_eq!(a.kinds, vec![5050]);
        assert_eq!(a.info, ProviderInfo::default());
        assert!(!a.pylon);
    }
}
