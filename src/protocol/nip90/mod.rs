//! NIP-90 data-vending-machine jobs, as Pylon speaks them: requests, results and feedback.
//!
//! Builders produce exactly the tags DESIGN.md lists; parsers accept other implementations' events
//! and report what is wrong with them instead of failing on the first oddity. Notably results
//! never copy `i` tags of encrypted requests (rust-nostr's builder did, leaking the inputs).

mod feedback;
mod request;
mod result;

pub use feedback::{Feedback, JobStatus, NewFeedback};
pub use request::{InputType, JobInput, JobRequest, NewJob, MAX_RELAYS};
pub use result::JobResult;

use nostr_sdk::Event;

use super::nip47::Encryption;
use super::tags;

/// Why an event is not a usable job event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The kind is outside the expected range.
    #[error("kind {0} is not a {1}")]
    WrongKind(u16, &'static str),
    /// A required tag is absent or empty.
    #[error("missing `{0}` tag")]
    MissingTag(&'static str),
    /// A tag has a value that cannot be read.
    #[error("malformed `{0}` tag: {1}")]
    BadTag(&'static str, String),
    /// The result's embedded request is not the request its `e` tag names.
    #[error("result names request {e} but embeds request {embedded}")]
    RequestMismatch {
        /// The `e` tag.
        e: String,
        /// The embedded request's id.
        embedded: String,
    },
    /// Encrypted content we cannot read (not for us, or corrupt).
    #[error("encrypted content cannot be read: {0}")]
    Encrypted(String),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The `["amount", msats, bolt11]` tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Amount {
    /// Millisatoshis.
    pub msats: u64,
    /// The invoice to pay, when given.
    pub bolt11: Option<String>,
}

impl Amount {
    /// Reads the first `amount` tag. A present but malformed amount (`"100_000"`, a lightning
    /// address where the invoice belongs…) yields `Err`, so callers never pay a guess.
    pub fn from_event(event: &Event) -> Result<Option<Self>, ProtocolError> {
        let Some(values) = tags::values(event, "amount") else {
            return Ok(None);
        };
        let raw = values.first().map(String::as_str).unwrap_or("");
        let msats = tags::parse_msats(raw).ok_or_else(|| {
            ProtocolError::BadTag("amount", format!("`{raw}` is not a number of msats"))
        })?;
        let bolt11 = values
            .get(1)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(b) = &bolt11 {
            if !b.to_ascii_lowercase().starts_with("ln") {
                return Err(ProtocolError::BadTag(
                    "amount",
                    format!("`{b}` is not a BOLT11 invoice"),
                ));
            }
        }
        Ok(Some(Self { msats, bolt11 }))
    }

    /// The tag.
    pub fn to_tag(&self) -> nostr_sdk::Tag {
        let mut v = vec![self.msats.to_string()];
        if let Some(b) = &self.bolt11 {
            v.push(b.clone());
        }
        tags::custom("amount", v)
    }
}

/// The encryption of an encrypted job payload: NIP-04 payloads carry `?iv=`.
fn payload_encryption(content: &str) -> Encryption {
    if content.contains("?iv=") {
        Encryption::Nip04
    } else {
        Encryption::Nip44V2
    }
}
