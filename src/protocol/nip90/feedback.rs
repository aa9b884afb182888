//! Job feedback (kind 7000): claims, payment requests, errors with a failure code.

use nostr_sdk::{Event, EventBuilder, EventId, Keys, PublicKey, Tag, Timestamp};
use serde::Serialize;

use super::{Amount, ProtocolError};
use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::tags;

/// NIP-90 feedback statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Pay first (an `amount` tag carries the invoice).
    PaymentRequired,
    /// Claimed and running.
    Processing,
    /// Failed (with a [`FailureCode`]).
    Error,
    /// Done.
    Success,
    /// Partial output.
    Partial,
    /// A status this version does not know.
    Other(String),
}

impl JobStatus {
    fn parse(s: &str) -> Self {
        match s {
            "payment-required" => Self::PaymentRequired,
            "processing" => Self::Processing,
            "error" => Self::Error,
            "success" => Self::Success,
            "partial" => Self::Partial,
            other => Self::Other(other.chars().take(64).collect()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::PaymentRequired => "payment-required",
            Self::Processing => "processing",
            Self::Error => "error",
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Other(s) => s,
        }
    }
}

/// Feedback to build.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    /// The status.
    pub status: JobStatus,
    /// Human-readable detail.
    pub info: String,
    /// For errors: why.
    pub failure: Option<FailureCode>,
    /// For payment-required: the invoice.
    pub amount: Option<Amount>,
}

impl NewFeedback {
    /// Signs feedback on request `request_id` from `buyer`.
    pub fn to_event(
        &self,
        keys: &Keys,
        request_id: EventId,
        buyer: PublicKey,
    ) -> Result<Event, ProtocolError> {
        let mut t = vec![
            tags::custom("status", [self.status.as_str(), self.info.as_str()]),
            Tag::event(request_id),
            Tag::public_key(buyer),
        ];
        if let Some(code) = &self.failure {
            t.push(tags::custom("failure", [code.as_str()]));
        }
        if let Some(a) = &self.amount {
            t.push(a.to_tag());
        }
        EventBuilder::new(kinds::JOB_FEEDBACK, "")
            .tags(t)
            .sign_with_keys(keys)
            .map_err(|e| ProtocolError::Sign(e.to_string()))
    }
}

/// Parsed feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feedback {
    /// Event id.
    pub id: EventId,
    /// Who sent it.
    pub provider: PublicKey,
    /// The request it is about.
    pub request_id: EventId,
    /// The status.
    pub status: JobStatus,
    /// Human-readable detail.
    pub info: String,
    /// For errors: the failure code (`failure` tag, else a leading `code:` in the detail).
    pub failure: Option<FailureCode>,
    /// An invoice, for payment-required.
    pub amount: Option<Amount>,
    /// When.
    pub created_at: Timestamp,
}

impl Feedback {
    /// Parses kind-7000 feedback.
    pub fn from_event(event: &Event) -> Result<Self, ProtocolError> {
        if event.kind != kinds::JOB_FEEDBACK {
            return Err(ProtocolError::WrongKind(
                event.kind.as_u16(),
                "job feedback",
            ));
        }
        let status_values =
            tags::values(event, "status").ok_or(ProtocolError::MissingTag("status"))?;
        let status = JobStatus::parse(status_values.first().map(String::as_str).unwrap_or(""));
        let info = status_values
            .get(1)
            .cloned()
            .unwrap_or_else(|| event.content.clone());
        let e = tags::first(event, "e").ok_or(ProtocolError::MissingTag("e"))?;
        let request_id =
            EventId::from_hex(e).map_err(|err| ProtocolError::BadTag("e", err.to_string()))?;
        let failure = match tags::first(event, "failure") {
            Some(code) => Some(FailureCode::parse(code)),
            None if status == JobStatus::Error => info
                .split_once(':')
                .map(|(code, _)| FailureCode::parse(code))
                .filter(|c| !matches!(c, FailureCode::Other(_))),
            None => None,
        };
        Ok(Self {
            id: event.id,
            provider: event.pubkey,
            request_id,
            status,
            info,
            failure,
            amount: Amount::from_event(event)?,
            created_at: event.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use nostr_sdk::Kind;

    use super::*;

    #[test]
    fn round_trip_each_status() {
        let k = Keys::generate();
        let buyer = Keys::generate().public_key();
        let id = EventId::all_zeros();
        for (status, failure) in [
            (JobStatus::Processing, None),
            (JobStatus::Error, Some(FailureCode::BidTooLow)),
            (JobStatus::Success, None),
            (JobStatus::PaymentRequired, None),
        ] {
            let ev = NewFeedback {
                status: status.clone(),
                info: "detail".into(),
                failure: failure.clone(),
                amount: None,
            }
            .to_event(&k, id, buyer)
            .expect("event");
            let fb = Feedback::from_event(&ev).expect("parse");
            assert_eq!(
                (fb.status, fb.failure, fb.request_id),
                (status, failure, id)
            );
        }
    }

    #[test]
    fn unknown_statuses_and_codes_in_text() {
        let k = Keys::generate();
        let mk = |tags: Vec<Tag>| {
            EventBuilder::new(Kind::Custom(7000), "")
                .tags(tags)
                .sign_with_keys(&k)
                .expect("sign")
        };
        let ev = mk(vec![
            tags::custom("status", ["thinking-hard"]),
            Tag::event(EventId::all_zeros()),
        ]);
        assert_eq!(
            Feedback::from_event(&ev).expect("parse").status,
            JobStatus::Other("thinking-hard".into())
        );
        let ev = mk(vec![
            tags::custom("status", ["error", "timeout: took too long"]),
            Tag::event(EventId::all_zeros()),
        ]);
        assert_eq!(
            Feedback::from_event(&ev).expect("parse").failure,
            Some(FailureCode::Timeout)
        );
        assert_eq!(
            Feedback::from_event(&mk(vec![])),
            Err(ProtocolError::MissingTag("status"))
        );
    }
}
