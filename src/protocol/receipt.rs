//! Payment receipts (kind 7001), signed by the provider once its invoice has settled. They tie
//! request, result, buyer, amount and invoice together, and carry the preimage: anyone can check
//! `sha256(preimage) = payment hash` and that the invoice is the one the result asked for.
//!
//! A preimage alone proves nothing (the payee always knows its own), so a receipt also carries
//! the settling hub's [`Attestation`] when the wallet gave one: the hub's signature, with the
//! node key that signed the invoice, that the invoice was paid.

use nostr_sdk::{Event, EventBuilder, EventId, Keys, PublicKey, Tag, TagStandard, Timestamp};
use serde::Serialize;

use super::kinds;
use super::nip90::ProtocolError;
use super::settlement::{Attestation, AttestationError};
use super::tags;

/// The receipt tag carrying the settlement attestation.
const SETTLEMENT_TAG: &str = "settlement";

/// A receipt's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// Event id (absent before signing).
    pub id: Option<EventId>,
    /// The provider (signer).
    pub provider: Option<PublicKey>,
    /// The job.
    pub request_id: EventId,
    /// The result that was paid for.
    pub result_id: EventId,
    /// Who paid.
    pub buyer: PublicKey,
    /// Msats paid.
    pub amount_msats: u64,
    /// The invoice paid.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: String,
    /// Proof of payment.
    pub preimage: String,
    /// The settling hub's signed statement, when the wallet gave one.
    pub settlement: Option<Attestation>,
    /// When.
    pub created_at: Option<Timestamp>,
}

/// Why a receipt does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// sha256(preimage) is not the payment hash.
    #[error("preimage does not hash to the payment hash")]
    Preimage,
    /// The invoice cannot be decoded.
    #[error("invoice: {0}")]
    Invoice(String),
    /// The invoice's hash or amount differs from the receipt's.
    #[error("invoice does not match the receipt: {0}")]
    Mismatch(&'static str),
    /// The settlement attestation is invalid or about something else.
    #[error(transparent)]
    Settlement(#[from] AttestationError),
}

impl Receipt {
    /// Signs the receipt as the provider.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        let mut t = vec![
            Tag::from_standardized(TagStandard::Event {
                event_id: self.request_id,
                relay_url: None,
                marker: None,
                public_key: None,
                uppercase: false,
            }),
            tags::custom(
                "e",
                [self.result_id.to_hex(), String::new(), "result".into()],
            ),
            Tag::public_key(self.buyer),
            tags::custom(
                "amount",
                [self.amount_msats.to_string(), self.bolt11.clone()],
            ),
            tags::custom("payment_hash", [self.payment_hash.as_str()]),
            tags::custom("preimage", [self.preimage.as_str()]),
        ];
        if let Some(a) = &self.settlement {
            t.push(tags::custom(SETTLEMENT_TAG, a.to_tag_values()));
        }
        EventBuilder::new(kinds::RECEIPT, "")
            .tags(t)
            .sign_with_keys(keys)
            .map_err(|e| ProtocolError::Sign(e.to_string()))
    }

    /// Parses a receipt: the first `e` is the request, the one marked `result` the result.
    pub fn from_event(event: &Event) -> Result<Self, ProtocolError> {
        if event.kind != kinds::RECEIPT {
            return Err(ProtocolError::WrongKind(event.kind.as_u16(), "receipt"));
        }
        let ids: Vec<&[String]> = tags::all(event, "e").collect();
        let id_at = |v: &[String]| v.first().and_then(|h| EventId::from_hex(h).ok());
        let request_id = ids
            .first()
            .and_then(|v| id_at(v))
            .ok_or(ProtocolError::MissingTag("e"))?;
        let result_id = ids
            .iter()
            .find(|v| v.get(2).map(String::as_str) == Some("result"))
            .and_then(|v| id_at(v))
            .ok_or(ProtocolError::MissingTag("e (result)"))?;
        let buyer = tags::first(event, "p")
            .and_then(|p| PublicKey::from_hex(p).ok())
            .ok_or(ProtocolError::MissingTag("p"))?;
        let amount = tags::values(event, "amount").ok_or(ProtocolError::MissingTag("amount"))?;
        let amount_msats = amount
            .first()
            .and_then(|a| tags::parse_msats(a))
            .ok_or_else(|| ProtocolError::BadTag("amount", "not a number of msats".into()))?;
        let bolt11 = amount
            .get(1)
            .cloned()
            .ok_or(ProtocolError::MissingTag("amount (bolt11)"))?;
        let text = |name: &'static str| {
            tags::first(event, name)
                .map(str::to_string)
                .ok_or(ProtocolError::MissingTag(name))
        };
        let payment_hash = text("payment_hash")?;
        let settlement = match tags::values(event, SETTLEMENT_TAG) {
            Some(values) => Some(
                Attestation::from_tag_values(values, &payment_hash, amount_msats).ok_or_else(
                    || ProtocolError::BadTag("settlement", "not a settlement attestation".into()),
                )?,
            ),
            None => None,
        };
        Ok(Self {
            id: Some(event.id),
            provider: Some(event.pubkey),
            request_id,
            result_id,
            buyer,
            amount_msats,
            bolt11,
            payment_hash,
            preimage: text("preimage")?,
            settlement,
            created_at: Some(event.created_at),
        })
    }

    /// Checks what the receipt itself can prove: preimage ↔ hash, the invoice's hash and amount,
    /// and — when present — that the settlement attestation is signed by the invoice's signer
    /// and is about this invoice. Whether that signer is a trusted hub is the verifier's call.
    pub fn verify(&self) -> Result<(), ReceiptError> {
        if !crate::bolt11::preimage_matches(&self.preimage, &self.payment_hash) {
            return Err(ReceiptError::Preimage);
        }
        let inv = crate::bolt11::decode(&self.bolt11)
            .map_err(|e| ReceiptError::Invoice(e.to_string()))?;
        if inv.payment_hash != self.payment_hash.to_lowercase() {
            return Err(ReceiptError::Mismatch("payment hash"));
        }
        if inv.amount_msat != Some(self.amount_msats) {
            return Err(ReceiptError::Mismatch("amount"));
        }
        if let Some(a) = &self.settlement {
            a.check_invoice(&self.payment_hash, self.amount_msats, &inv.payee)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bolt11::{create, Purpose};

    #[test]
    fn round_trip_and_verify() {
        let node = bitcoin::secp256k1::SecretKey::from_slice(&[9u8; 32]).expect("key");
        let inv = create(
            &node,
            2_000,
            &Purpose::Description("pylon job x".into()),
            60,
        )
        .expect("invoice");
        let provider = Keys::generate();
        let r = Receipt {
            id: None,
            provider: None,
            request_id: EventId::all_zeros(),
            result_id: EventId::from_slice(&[1u8; 32]).expect("id"),
            buyer: Keys::generate().public_key(),
            amount_msats: 2_000,
            bolt11: inv.bolt11.clone(),
            payment_hash: inv.payment_hash.clone(),
            preimage: inv.preimage.clone(),
            settlement: Some(sealed(&node, &inv.payment_hash, 2_000)),
            created_at: None,
        };
        let ev = r.to_event(&provider).expect("event");
        let back = Receipt::from_event(&ev).expect("parse");
        assert_eq!(back.request_id, r.request_id);
        assert_eq!(back.result_id, r.result_id);
        assert_eq!(back.provider, Some(provider.public_key()));
        back.verify().expect("valid");
        let lying = Receipt {
            preimage: "00".repeat(32),
            ..back.clone()
        };
        assert_eq!(lying.verify(), Err(ReceiptError::Preimage));
        let inflated = Receipt {
            amount_msats: 3_000,
            ..back.clone()
        };
        assert_eq!(inflated.verify(), Err(ReceiptError::Mismatch("amount")));
        // An attestation signed by another node than the invoice's is refused.
        let other = bitcoin::secp256k1::SecretKey::from_slice(&[4u8; 32]).expect("key");
        let forged = Receipt {
            settlement: Some(sealed(&other, &inv.payment_hash, 2_000)),
            ..back
        };
        assert!(matches!(
            forged.verify(),
            Err(ReceiptError::Settlement(AttestationError::Mismatch(_)))
        ));
    }

    #[test]
    fn a_malformed_settlement_tag_is_an_error_not_a_panic() {
        let node = bitcoin::secp256k1::SecretKey::from_slice(&[9u8; 32]).expect("key");
        let inv = create(&node, 1_000, &Purpose::Description("x".into()), 60).expect("invoice");
        let r = Receipt {
            id: None,
            provider: None,
            request_id: EventId::all_zeros(),
            result_id: EventId::from_slice(&[1u8; 32]).expect("id"),
            buyer: Keys::generate().public_key(),
            amount_msats: 1_000,
            bolt11: inv.bolt11,
            payment_hash: inv.payment_hash,
            preimage: inv.preimage,
            settlement: None,
            created_at: None,
        };
        let ev = r.to_event(&Keys::generate()).expect("event");
        for bad in [
            vec!["settlement"],
            vec!["settlement", "02aa", "not-a-number", "p", "q", "sig"],
            vec!["settlement", "n", "1", "p", "q", "s", "pylon-settlement-v9"],
        ] {
            let mut tags: Vec<Tag> = ev.tags.clone().to_vec();
            tags.push(Tag::parse(bad.clone()).expect("tag"));
            let forged = EventBuilder::new(kinds::RECEIPT, "")
                .tags(tags)
                .sign_with_keys(&Keys::generate())
                .expect("sign");
            assert!(
                matches!(
                    Receipt::from_event(&forged),
                    Err(ProtocolError::BadTag("settlement", _))
                ),
                "{bad:?}"
            );
        }
    }

    fn sealed(node: &bitcoin::secp256k1::SecretKey, hash: &str, msat: u64) -> Attestation {
        let mut a = Attestation::statement(hash, msat, 1, "payer", "payee");
        a.seal(node);
        a
    }
}
