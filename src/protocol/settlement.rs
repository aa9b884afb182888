//! Settlement attestations: the settling party's signed word that an invoice was paid.
//!
//! In Lightning a payee always knows its own preimage, so a receipt signed by the payee with a
//! matching preimage proves nothing. What does prove a payment is the word of whoever moved the
//! money: the hub (or any wallet that settles) signs, with the same node key that signed the
//! invoice, the payment hash, the amount, the time, and commitments to the payer's and payee's
//! accounts. A verifier checks that signature against the invoice's signer and accepts it only
//! from hub keys it trusts.
//!
//! The account commitments are per payment (`sha256(tag ‖ account ‖ payment hash)`), so anyone
//! who knows an account can check it was the payer or payee, while strangers cannot link two
//! payments of the same account.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{ecdsa, All, Message, PublicKey, Secp256k1, SecretKey};
use serde::{Deserialize, Serialize};

/// Domain separation for the signed statement; bump the version when its fields change.
const STATEMENT_TAG: &str = "pylon-settlement-v1";
/// Domain separation for account commitments.
const ACCOUNT_TAG: &str = "pylon-account-v1";

/// A hub's signed statement that one invoice settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The invoice's payment hash (hex).
    pub payment_hash: String,
    /// Msats settled (the invoice's amount).
    pub amount_msat: u64,
    /// Unix seconds.
    pub settled_at: u64,
    /// Commitment to the paying account (hex sha256).
    pub payer: String,
    /// Commitment to the paid account (hex sha256).
    pub payee: String,
    /// The signing node key (compressed, hex): must be the invoice's signer.
    #[serde(default)]
    pub node: String,
    /// Compact ECDSA signature over the statement (hex, 64 bytes); empty until sealed.
    #[serde(default)]
    pub sig: String,
}

/// Why an attestation does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// Not signed at all.
    #[error("the settlement attestation is not signed")]
    Unsigned,
    /// The node key is not a public key.
    #[error("the settlement attestation names no valid node key")]
    NodeKey,
    /// The signature is malformed or does not verify.
    #[error("the settlement attestation's signature is invalid")]
    Signature,
    /// It is about another payment.
    #[error("the settlement attestation is for another {0}")]
    Mismatch(&'static str),
}

impl Attestation {
    /// The unsigned statement for a settled invoice between two accounts.
    pub fn statement(
        payment_hash: &str,
        amount_msat: u64,
        settled_at: u64,
        payer_account: &str,
        payee_account: &str,
    ) -> Self {
        let payment_hash = payment_hash.to_lowercase();
        Self {
            payer: commitment(payer_account, &payment_hash),
            payee: commitment(payee_account, &payment_hash),
            payment_hash,
            amount_msat,
            settled_at,
            node: String::new(),
            sig: String::new(),
        }
    }

    /// Signs the statement with the settling node's key.
    pub fn seal(&mut self, node_key: &SecretKey) {
        let secp = context();
        self.node = PublicKey::from_secret_key(secp, node_key).to_string();
        let sig = secp.sign_ecdsa(&self.digest(), node_key);
        self.sig = hex(&sig.serialize_compact());
    }

    /// Whether [`seal`](Self::seal) has run.
    pub fn is_sealed(&self) -> bool {
        !self.sig.is_empty()
    }

    /// Checks the signature under [`node`](Self::node). Whether that node is trusted, and is the
    /// invoice's signer, is the caller's question (see [`Self::check_invoice`]).
    pub fn verify(&self) -> Result<(), AttestationError> {
        if self.sig.is_empty() {
            return Err(AttestationError::Unsigned);
        }
        let node: PublicKey = self.node.parse().map_err(|_| AttestationError::NodeKey)?;
        let bytes = unhex(&self.sig).ok_or(AttestationError::Signature)?;
        let sig =
            ecdsa::Signature::from_compact(&bytes).map_err(|_| AttestationError::Signature)?;
        context()
            .verify_ecdsa(&self.digest(), &sig, &node)
            .map_err(|_| AttestationError::Signature)
    }

    /// Checks the signature and that the attestation is about the invoice with `payment_hash`,
    /// `amount_msat` and signer `invoice_node` (the invoice's payee key).
    pub fn check_invoice(
        &self,
        payment_hash: &str,
        amount_msat: u64,
        invoice_node: &str,
    ) -> Result<(), AttestationError> {
        self.verify()?;
        if !self.payment_hash.eq_ignore_ascii_case(payment_hash) {
            return Err(AttestationError::Mismatch("payment hash"));
        }
        if self.amount_msat != amount_msat {
            return Err(AttestationError::Mismatch("amount"));
        }
        if !self.node.eq_ignore_ascii_case(invoice_node) {
            return Err(AttestationError::Mismatch(
                "node key than the one that signed the invoice",
            ));
        }
        Ok(())
    }

    /// Whether `account` is the payer this attestation commits to.
    pub fn paid_by(&self, account: &str) -> bool {
        commitment(account, &self.payment_hash) == self.payer
    }

    /// Whether `account` is the payee this attestation commits to.
    pub fn paid_to(&self, account: &str) -> bool {
        commitment(account, &self.payment_hash) == self.payee
    }

    /// The values of a receipt's `settlement` tag, in order.
    pub fn to_tag_values(&self) -> [String; 6] {
        [
            self.node.clone(),
            self.settled_at.to_string(),
            self.payer.clone(),
            self.payee.clone(),
            self.sig.clone(),
            STATEMENT_TAG.to_string(),
        ]
    }

    /// Parses a `settlement` tag's values (see [`Self::to_tag_values`]); the payment hash and
    /// amount come from the receipt that carries it.
    pub fn from_tag_values(
        values: &[String],
        payment_hash: &str,
        amount_msat: u64,
    ) -> Option<Self> {
        let [node, settled_at, payer, payee, sig, ..] = values else {
            return None;
        };
        if values.get(5).is_some_and(|v| v != STATEMENT_TAG) {
            return None;
        }
        Some(Self {
            payment_hash: payment_hash.to_lowercase(),
            amount_msat,
            settled_at: crate::protocol::tags::parse_msats(settled_at)?,
            payer: payer.clone(),
            payee: payee.clone(),
            node: node.clone(),
            sig: sig.clone(),
        })
    }

    fn digest(&self) -> Message {
        let text = format!(
            "{STATEMENT_TAG}\n{}\n{}\n{}\n{}\n{}",
            self.payment_hash.to_lowercase(),
            self.amount_msat,
            self.settled_at,
            self.payer,
            self.payee
        );
        Message::from_digest(sha256::Hash::hash(text.as_bytes()).to_byte_array())
    }
}

/// A per-payment commitment to an account (hex).
pub fn commitment(account: &str, payment_hash: &str) -> String {
    let text = format!(
        "{ACCOUNT_TAG}\n{}\n{}",
        account.to_lowercase(),
        payment_hash.to_lowercase()
    );
    sha256::Hash::hash(text.as_bytes()).to_string()
}

/// One verification context for the process: building one costs more than using it.
fn context() -> &'static Secp256k1<All> {
    static CONTEXT: std::sync::OnceLock<Secp256k1<All>> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(Secp256k1::new)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_slice(&[b; 32]).expect("key")
    }

    #[test]
    fn sealed_statements_verify_and_bind_their_fields() {
        let hash = "ab".repeat(32);
        let mut a = Attestation::statement(&hash, 2_000, 1_700_000_000, "payer", "payee");
        assert_eq!(a.verify(), Err(AttestationError::Unsigned));
        a.seal(&key(7));
        a.verify().expect("valid");
        assert!(a.paid_by("payer") && a.paid_to("payee"));
        assert!(!a.paid_by("payee") && !a.paid_to("someone"));
        let node = a.node.clone();
        a.check_invoice(&hash, 2_000, &node).expect("matches");
        assert_eq!(
            a.check_invoice(&hash, 2_001, &node),
            Err(AttestationError::Mismatch("amount"))
        );
        assert!(a.check_invoice(&"cd".repeat(32), 2_000, &node).is_err());
        let other = PublicKey::from_secret_key(&Secp256k1::signing_only(), &key(8)).to_string();
        assert!(a.check_invoice(&hash, 2_000, &other).is_err());

        // Any changed field breaks the signature.
        for tampered in [
            Attestation {
                amount_msat: 20_000,
                ..a.clone()
            },
            Attestation {
                settled_at: 1,
                ..a.clone()
            },
            Attestation {
                payer: commitment("me", &hash),
                ..a.clone()
            },
            Attestation {
                node: other.clone(),
                ..a.clone()
            },
            Attestation {
                sig: "00".repeat(64),
                ..a.clone()
            },
        ] {
            assert!(tampered.verify().is_err(), "{tampered:?}");
        }
    }

    #[test]
    fn tag_round_trip() {
        let hash = "01".repeat(32);
        let mut a = Attestation::statement(&hash, 5, 9, "x", "y");
        a.seal(&key(3));
        let values = a.to_tag_values();
        let back = Attestation::from_tag_values(&values, &hash, 5).expect("parses");
        assert_eq!(back, a);
        back.verify().expect("still valid");
        assert!(Attestation::from_tag_values(&values[..3], &hash, 5).is_none());
        let mut wrong_version = values.to_vec();
        wrong_version[5] = "pylon-settlement-v0".into();
        assert!(Attestation::from_tag_values(&wrong_version, &hash, 5).is_none());
    }
}
