//! Job results (kinds 6000–6999).

use nostr_sdk::{Event, EventBuilder, EventId, JsonUtil, Keys, PublicKey, Tag, Timestamp};
use serde::Serialize;

use super::{payload_encryption, Amount, JobRequest, ProtocolError};
use crate::protocol::kinds;
use crate::protocol::tags;

/// A parsed result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobResult {
    /// Event id.
    pub id: EventId,
    /// Who produced it.
    pub provider: PublicKey,
    /// Result kind.
    pub kind: u16,
    /// The request answered (`e` tag).
    pub request_id: EventId,
    /// The buyer (`p` tag), if present.
    pub buyer: Option<PublicKey>,
    /// The embedded request (`request` tag), when present and valid.
    #[serde(skip)]
    pub request: Option<Box<Event>>,
    /// The output (decrypted if it was encrypted to us).
    pub content: String,
    /// What the provider asks to be paid.
    pub amount: Option<Amount>,
    /// Whether the output was encrypted.
    pub encrypted: bool,
    /// When.
    pub created_at: Timestamp,
}

impl JobResult {
    /// Builds a result for `request_event` (already parsed as `request`). Inputs of an encrypted
    /// request are never copied, and the output is encrypted back to the buyer.
    pub fn to_event(
        keys: &Keys,
        request_event: &Event,
        request: &JobRequest,
        content: &str,
        amount: Option<&Amount>,
    ) -> Result<Event, ProtocolError> {
        let mut tags = vec![
            tags::custom("request", [request_event.as_json()]),
            Tag::event(request.id),
            Tag::public_key(request.buyer),
        ];
        let content = match request.encrypted {
            Some(enc) => {
                tags.push(tags::custom("encrypted", Vec::<String>::new()));
                enc.encrypt(keys, &request.buyer, content)
                    .map_err(|e| ProtocolError::Encrypted(e.to_string()))?
            }
            None => {
                tags.extend(tags::all(request_event, "i").map(|v| tags::custom("i", v.to_vec())));
                content.to_string()
            }
        };
        if let Some(a) = amount {
            tags.push(a.to_tag());
        }
        EventBuilder::new(kinds::result_kind(request.kind), content)
            .tags(tags)
            .sign_with_keys(keys)
            .map_err(|e| ProtocolError::Sign(e.to_string()))
    }

    /// Parses a result; `keys` (the buyer's) decrypt an encrypted output. Checks that the embedded
    /// request, when present, is validly signed and is the request the `e` tag names.
    pub fn from_event(event: &Event, keys: Option<&Keys>) -> Result<Self, ProtocolError> {
        let kind = event.kind.as_u16();
        if !kinds::JOB_RESULTS.contains(&kind) {
            return Err(ProtocolError::WrongKind(kind, "job result"));
        }
        let e = tags::first(event, "e").ok_or(ProtocolError::MissingTag("e"))?;
        let request_id =
            EventId::from_hex(e).map_err(|err| ProtocolError::BadTag("e", err.to_string()))?;
        let request = match tags::first(event, "request") {
            None => None,
            Some(json) => {
                let embedded = Event::from_json(json)
                    .map_err(|err| ProtocolError::BadTag("request", err.to_string()))?;
                if embedded.id != request_id {
                    return Err(ProtocolError::RequestMismatch {
                        e: request_id.to_hex(),
                        embedded: embedded.id.to_hex(),
                    });
                }
                embedded.verify().map_err(|err| {
                    ProtocolError::BadTag("request", format!("embedded request is forged: {err}"))
                })?;
                Some(Box::new(embedded))
            }
        };
        let buyer = tags::first(event, "p").and_then(|p| PublicKey::from_hex(p).ok());
        let encrypted = tags::values(event, "encrypted").is_some();
        let content = if encrypted {
            let keys =
                keys.ok_or_else(|| ProtocolError::Encrypted("no key to decrypt with".into()))?;
            payload_encryption(&event.content)
                .decrypt(keys, &event.pubkey, &event.content)
                .map_err(|err| ProtocolError::Encrypted(err.to_string()))?
        } else {
            event.content.clone()
        };
        Ok(Self {
            id: event.id,
            provider: event.pubkey,
            kind,
            request_id,
            buyer,
            request,
            content,
            amount: Amount::from_event(event)?,
            encrypted,
            created_at: event.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use nostr_sdk::Kind;

    use super::*;
    use crate::protocol::nip47::Encryption;
    use crate::protocol::nip90::{JobInput, NewJob};

    fn request(buyer: &Keys, provider: &Keys, encrypt: Option<Encryption>) -> (Event, JobRequest) {
        let ev = NewJob {
            kind: kinds::CODE_ANALYSIS,
            inputs: vec![JobInput::text("secret source")],
            providers: vec![provider.public_key()],
            encrypt,
            ..Default::default()
        }
        .to_event(buyer)
        .expect("request");
        let parsed = JobRequest::from_event(&ev, Some(provider)).expect("parse");
        (ev, parsed)
    }

    #[test]
    fn round_trip_with_amount() {
        let (buyer, provider) = (Keys::generate(), Keys::generate());
        let (ev, req) = request(&buyer, &provider, None);
        let amount = Amount {
            msats: 1_000,
            bolt11: Some("lnbcrt10n1xyz".into()),
        };
        let res = JobResult::to_event(&provider, &ev, &req, "{\"ok\":true}", Some(&amount))
            .expect("result");
        assert_eq!(res.kind, Kind::Custom(6960));
        let parsed = JobResult::from_event(&res, None).expect("parse");
        assert_eq!(parsed.request_id, ev.id);
        assert_eq!(parsed.buyer, Some(buyer.public_key()));
        assert_eq!(parsed.amount, Some(amount));
        assert_eq!(parsed.request.as_deref(), Some(&ev));
        assert!(tags::values(&res, "i").is_some(), "plain inputs are echoed");
    }

    #[test]
    fn encrypted_requests_get_encrypted_results_without_inputs() {
        let (buyer, provider) = (Keys::generate(), Keys::generate());
        let (ev, req) = request(&buyer, &provider, Some(Encryption::Nip44V2));
        let res = JobResult::to_event(&provider, &ev, &req, "the output", None).expect("result");
        assert!(
            tags::values(&res, "i").is_none(),
            "inputs of an encrypted job never leak"
        );
        assert!(!res.content.contains("the output"));
        assert_eq!(
            JobResult::from_event(&res, Some(&buyer))
                .expect("parse")
                .content,
            "the output"
        );
        assert!(JobResult::from_event(&res, None).is_err());
    }

    #[test]
    fn mismatched_or_forged_embedded_requests_are_rejected() {
        let (buyer, provider) = (Keys::generate(), Keys::generate());
        let (ev, _) = request(&buyer, &provider, None);
        let (other, _) = request(&Keys::generate(), &provider, None);
        let mismatched = EventBuilder::new(Kind::Custom(6960), "x")
            .tags([
                tags::custom("request", [other.as_json()]),
                Tag::event(ev.id),
            ])
            .sign_with_keys(&provider)
            .expect("sign");
        assert!(matches!(
            JobResult::from_event(&mismatched, None),
            Err(ProtocolError::RequestMismatch { .. })
        ));
        let mut forged: serde_json::Value = serde_json::from_str(&ev.as_json()).expect("json");
        forged["content"] = "changed".into();
        let forged_ev = EventBuilder::new(Kind::Custom(6960), "x")
            .tags([
                tags::custom("request", [forged.to_string()]),
                Tag::event(ev.id),
            ])
            .sign_with_keys(&provider)
            .expect("sign");
        assert!(JobResult::from_event(&forged_ev, None).is_err());
        let no_e = EventBuilder::new(Kind::Custom(6960), "x")
            .sign_with_keys(&provider)
            .expect("sign");
        assert_eq!(
            JobResult::from_event(&no_e, None),
            Err(ProtocolError::MissingTag("e"))
        );
    }

    #[test]
    fn messy_amounts_are_refused_not_guessed() {
        let provider = Keys::generate();
        let mk = |values: Vec<&str>| {
            EventBuilder::new(Kind::Custom(6050), "out")
                .tags([
                    Tag::event(EventId::all_zeros()),
                    tags::custom("amount", values),
                ])
                .sign_with_keys(&provider)
                .expect("sign")
        };
        assert!(matches!(
            JobResult::from_event(&mk(vec!["100_000", "name@domain"]), None),
            Err(ProtocolError::BadTag("amount", _))
        ));
        assert!(JobResult::from_event(&mk(vec!["1000", "name@domain"]), None).is_err());
        let ok = JobResult::from_event(&mk(vec!["1000"]), None).expect("amount without invoice");
        assert_eq!(
            ok.amount,
            Some(Amount {
                msats: 1000,
                bolt11: None
            })
        );
    }
}
