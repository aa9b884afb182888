//! Job requests (kinds 5000–5999).

use nostr_sdk::{Event, EventBuilder, EventId, Keys, Kind, PublicKey, Tag, Timestamp};
use serde::{Deserialize, Serialize};

use super::{payload_encryption, ProtocolError};
use crate::protocol::kinds;
use crate::protocol::nip47::Encryption;
use crate::protocol::tags;

/// What an `i` tag's data is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Literal text.
    Text,
    /// Data to fetch.
    Url,
    /// Another event, by id.
    Event,
    /// Another job's output, by id.
    Job,
    /// A prompt (seen in the wild for text generation; treated as text).
    Prompt,
    /// Anything else.
    Other(String),
}

impl InputType {
    fn parse(s: &str) -> Self {
        match s {
            "text" | "" => Self::Text,
            "url" => Self::Url,
            "event" => Self::Event,
            "job" => Self::Job,
            "prompt" => Self::Prompt,
            other => Self::Other(other.to_string()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Text => "text",
            Self::Url => "url",
            Self::Event => "event",
            Self::Job => "job",
            Self::Prompt => "prompt",
            Self::Other(s) => s,
        }
    }
}

/// One `["i", data, type, relay, marker]` tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInput {
    /// The data.
    pub data: String,
    /// Its type.
    pub input_type: InputType,
    /// Relay hint for event/job inputs.
    pub relay: Option<String>,
    /// Marker.
    pub marker: Option<String>,
}

impl JobInput {
    /// A text input.
    pub fn text(data: impl Into<String>) -> Self {
        Self {
            data: data.into(),
            input_type: InputType::Text,
            relay: None,
            marker: None,
        }
    }

    /// A URL input.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            input_type: InputType::Url,
            ..Self::text(url)
        }
    }

    fn from_values(v: &[String]) -> Option<Self> {
        let data = v.first()?.clone();
        let opt = |i: usize| v.get(i).filter(|s| !s.is_empty()).cloned();
        Some(Self {
            data,
            input_type: InputType::parse(v.get(1).map(String::as_str).unwrap_or("")),
            relay: opt(2),
            marker: opt(3),
        })
    }

    fn to_tag(&self) -> Tag {
        let mut v = vec![self.data.clone(), self.input_type.as_str().to_string()];
        if self.relay.is_some() || self.marker.is_some() {
            v.push(self.relay.clone().unwrap_or_default());
        }
        if let Some(m) = &self.marker {
            v.push(m.clone());
        }
        tags::custom("i", v)
    }
}

/// The most relays of a request's `relays` tag a Pylon provider answers on (and a Pylon buyer
/// names): a stranger's list must not fan one job out to a hundred connections.
pub const MAX_RELAYS: usize = 5;

/// A request to build.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// Request kind (5000–5999).
    pub kind: u16,
    /// Inputs.
    pub inputs: Vec<JobInput>,
    /// `param` tags.
    pub params: Vec<(String, String)>,
    /// Expected output MIME type.
    pub output: Option<String>,
    /// Most the buyer pays, msats.
    pub bid_msats: Option<u64>,
    /// Providers asked (`p` tags); empty = anyone.
    pub providers: Vec<PublicKey>,
    /// Relays where results should go.
    pub relays: Vec<String>,
    /// Encrypt inputs and params to the (single) provider.
    pub encrypt: Option<Encryption>,
    /// NIP-40 expiration.
    pub expiration: Option<Timestamp>,
}

impl NewJob {
    /// Signs the request with the buyer's keys.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        if !kinds::JOB_REQUESTS.contains(&self.kind) {
            return Err(ProtocolError::WrongKind(self.kind, "job request"));
        }
        let mut private: Vec<Tag> = self.inputs.iter().map(JobInput::to_tag).collect();
        private.extend(
            self.params
                .iter()
                .map(|(k, v)| tags::custom("param", [k.as_str(), v.as_str()])),
        );
        let mut public: Vec<Tag> = Vec::new();
        if let Some(o) = &self.output {
            public.push(tags::custom("output", [o.as_str()]));
        }
        if let Some(b) = self.bid_msats {
            public.push(tags::custom("bid", [b.to_string()]));
        }
        if !self.relays.is_empty() {
            public.push(tags::custom("relays", self.relays.clone()));
        }
        public.extend(self.providers.iter().map(|p| Tag::public_key(*p)));
        if let Some(at) = self.expiration {
            public.push(Tag::expiration(at));
        }
        let content = match self.encrypt {
            None => {
                public.extend(private);
                String::new()
            }
            Some(enc) => {
                let provider = sole_provider(self.providers.iter())?;
                let json = serde_json::to_string(&private)
                    .map_err(|e| ProtocolError::Sign(e.to_string()))?;
                public.push(tags::custom("encrypted", Vec::<String>::new()));
                enc.encrypt(keys, &provider, &json)
                    .map_err(|e| ProtocolError::Encrypted(e.to_string()))?
            }
        };
        EventBuilder::new(Kind::Custom(self.kind), content)
            .tags(public)
            .sign_with_keys(keys)
            .map_err(|e| ProtocolError::Sign(e.to_string()))
    }
}

/// The one provider an encrypted job is for: its inputs are encrypted to that key alone.
fn sole_provider<'a>(
    mut named: impl Iterator<Item = &'a PublicKey>,
) -> Result<PublicKey, ProtocolError> {
    match (named.next(), named.next()) {
        (Some(provider), None) => Ok(*provider),
        _ => Err(ProtocolError::BadTag(
            "p",
            "an encrypted job names exactly one provider".into(),
        )),
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRequest {
    /// Event id = job id.
    pub id: EventId,
    /// Who asked.
    pub buyer: PublicKey,
    /// Request kind.
    pub kind: u16,
    /// When.
    pub created_at: Timestamp,
    /// Inputs (decrypted if it was encrypted to us).
    pub inputs: Vec<JobInput>,
    /// Params, in order.
    pub params: Vec<(String, String)>,
    /// Expected output type.
    pub output: Option<String>,
    /// The bid, when readable.
    pub bid_msats: Option<u64>,
    /// Providers asked; empty = anyone.
    pub providers: Vec<PublicKey>,
    /// Result relays.
    pub relays: Vec<String>,
    /// The scheme, when the inputs were encrypted.
    pub encrypted: Option<Encryption>,
    /// NIP-40 expiration.
    pub expiration: Option<Timestamp>,
}

impl JobRequest {
    /// Parses a request. An encrypted one needs `keys` of the provider it was encrypted to, or
    /// of the buyer who wrote it (both sides of a NIP-04/NIP-44 conversation share one key).
    pub fn from_event(event: &Event, keys: Option<&Keys>) -> Result<Self, ProtocolError> {
        let kind = event.kind.as_u16();
        if !kinds::JOB_REQUESTS.contains(&kind) {
            return Err(ProtocolError::WrongKind(kind, "job request"));
        }
        let encrypted = tags::values(event, "encrypted").is_some();
        let (private_tags, encryption): (Vec<Vec<String>>, Option<Encryption>) = if encrypted {
            let keys =
                keys.ok_or_else(|| ProtocolError::Encrypted("no key to decrypt with".into()))?;
            let enc = payload_encryption(&event.content);
            let counterparty = if keys.public_key() == event.pubkey {
                // The buyer reading its own request: the other side is the one provider.
                sole_provider(event.tags.public_keys())?
            } else {
                event.pubkey
            };
            let json = enc
                .decrypt(keys, &counterparty, &event.content)
                .map_err(|e| ProtocolError::Encrypted(e.to_string()))?;
            let parsed: Vec<Vec<String>> = serde_json::from_str(&json)
                .map_err(|e| ProtocolError::Encrypted(format!("payload is not a tag list: {e}")))?;
            (parsed, Some(enc))
        } else {
            (Vec::new(), None)
        };
        let private = |name: &'static str| {
            private_tags
                .iter()
                .filter(move |t| t.first().map(String::as_str) == Some(name))
                .map(|t| t[1..].to_vec())
        };
        let mut inputs: Vec<JobInput> = tags::all(event, "i")
            .filter_map(JobInput::from_values)
            .collect();
        inputs.extend(private("i").filter_map(|v| JobInput::from_values(&v)));
        let mut params: Vec<(String, String)> = tags::all(event, "param")
            .filter_map(|v| Some((v.first()?.clone(), v.get(1).cloned().unwrap_or_default())))
            .collect();
        params.extend(
            private("param")
                .filter_map(|v| Some((v.first()?.clone(), v.get(1).cloned().unwrap_or_default()))),
        );
        let bid_msats = match tags::first(event, "bid") {
            None => None,
            Some(raw) => Some(tags::parse_msats(raw).ok_or_else(|| {
                ProtocolError::BadTag("bid", format!("`{raw}` is not a number of msats"))
            })?),
        };
        Ok(Self {
            id: event.id,
            buyer: event.pubkey,
            kind,
            created_at: event.created_at,
            inputs,
            params,
            output: tags::first(event, "output").map(str::to_string),
            bid_msats,
            providers: event.tags.public_keys().copied().collect(),
            relays: tags::values(event, "relays")
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            encrypted: encryption,
            expiration: crate::protocol::nip47::expiration(event),
        })
    }

    /// The first value of param `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `provider` may take this job: it names no provider, or names this one.
    pub fn is_for(&self, provider: &PublicKey) -> bool {
        self.providers.is_empty() || self.providers.contains(provider)
    }

    /// Whether the request's NIP-40 expiration has passed.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expiration.is_some_and(|at| at < now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(encrypt: Option<Encryption>, provider: &Keys) -> NewJob {
        NewJob {
            kind: kinds::CODE_ANALYSIS,
            inputs: vec![JobInput::text("fn main() {}")],
            params: vec![("path".into(), "src/main.rs".into())],
            output: Some("application/json".into()),
            bid_msats: Some(5_000),
            providers: vec![provider.public_key()],
            relays: vec!["ws://127.0.0.1:7777".into()],
            encrypt,
            expiration: None,
        }
    }

    #[test]
    fn round_trip_plain_and_encrypted() {
        let buyer = Keys::generate();
        let provider = Keys::generate();
        for enc in [None, Some(Encryption::Nip44V2), Some(Encryption::Nip04)] {
            let ev = job(enc, &provider).to_event(&buyer).expect("event");
            let parsed = JobRequest::from_event(&ev, Some(&provider)).expect("parses");
            assert_eq!(parsed.inputs, vec![JobInput::text("fn main() {}")]);
            assert_eq!(parsed.param("path"), Some("src/main.rs"));
            assert_eq!(parsed.bid_msats, Some(5_000));
            assert_eq!(parsed.encrypted, enc);
            assert!(parsed.is_for(&provider.public_key()));
            assert!(!parsed.is_for(&buyer.public_key()));
            if enc.is_some() {
                assert!(
                    !ev.content.contains("fn main"),
                    "inputs are not in the clear"
                );
                assert!(tags::values(&ev, "i").is_none());
                assert!(
                    JobRequest::from_event(&ev, Some(&Keys::generate())).is_err(),
                    "someone else cannot read it"
                );
                assert!(JobRequest::from_event(&ev, None).is_err());
                // The buyer reads back its own request (to record and follow it).
                let own = JobRequest::from_event(&ev, Some(&buyer)).expect("the author reads it");
                assert_eq!(own.inputs, parsed.inputs);
                assert_eq!(own.param("path"), Some("src/main.rs"));
            }
        }
    }

    #[test]
    fn messy_requests_from_the_wild() {
        let k = Keys::generate();
        let mk = |tags: Vec<Tag>| {
            EventBuilder::new(Kind::Custom(5050), "")
                .tags(tags)
                .sign_with_keys(&k)
                .expect("sign")
        };
        // A `prompt` input type and a missing type.
        let ev = mk(vec![
            tags::custom("i", ["hello", "prompt"]),
            tags::custom("i", ["bare"]),
        ]);
        let r = JobRequest::from_event(&ev, None).expect("parses");
        assert_eq!(r.inputs[0].input_type, InputType::Prompt);
        assert_eq!(r.inputs[1].input_type, InputType::Text);
        // No `i` at all is a parseable request (the executor decides it is invalid input).
        assert!(JobRequest::from_event(&mk(vec![]), None)
            .expect("parses")
            .inputs
            .is_empty());
        // A non-numeric bid is an error, not a guess.
        let err = JobRequest::from_event(&mk(vec![tags::custom("bid", ["100_000"])]), None)
            .expect_err("bad bid");
        assert!(matches!(err, ProtocolError::BadTag("bid", _)));
        // An empty tag and odd tags don't panic.
        let ev = mk(vec![
            tags::custom("i", Vec::<String>::new()),
            tags::custom("param", Vec::<String>::new()),
        ]);
        assert!(JobRequest::from_event(&ev, None)
            .expect("parses")
            .inputs
            .is_empty());
        // Not a request kind.
        let note = EventBuilder::new(Kind::Custom(1), "hi")
            .sign_with_keys(&k)
            .expect("sign");
        assert!(matches!(
            JobRequest::from_event(&note, None),
            Err(ProtocolError::WrongKind(1, _))
        ));
    }

    #[test]
    fn encrypted_jobs_need_exactly_one_provider() {
        let buyer = Keys::generate();
        let mut j = job(Some(Encryption::Nip44V2), &buyer);
        j.providers.clear();
        assert!(j.to_event(&buyer).is_err());
    }
}
