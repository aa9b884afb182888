//! Which settling hubs a verifier believes.
//!
//! A receipt is only as good as the settlement attestation in it, and an attestation only as
//! good as the key that signed it: anyone can run a "hub" that attests to anything. So a
//! verifier pins the hubs it trusts, by the hub's Nostr service key (resolved to its node key
//! through the hub's signed NIP-47 info event) or by the node key itself. Nothing found on the
//! relays is trusted by default.

use std::collections::BTreeSet;
use std::time::Duration;

use nostr_sdk::{Filter, PublicKey};

use crate::protocol::kinds;
use crate::protocol::nip47::WalletInfo;
use crate::relay::client::ClientError;
use crate::relay::MarketClient;

/// A trusted-hub entry that is neither kind of key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a hub key: give the hub's npub (or 64-hex Nostr key), or its 66-hex node key"
)]
pub struct TrustError(pub String);

/// The hubs whose settlement attestations a verifier accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedHubs {
    /// Node keys (compressed hex, lowercase) accepted as settlement signers.
    nodes: BTreeSet<String>,
    /// Hub service keys still to be resolved to node keys.
    services: BTreeSet<PublicKey>,
}

impl TrustedHubs {
    /// Trusts nobody (every receipt is then `unknown hub`).
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses user-given entries: npub / 64-hex service keys, or 66-hex node keys.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, TrustError> {
        let mut t = Self::default();
        for entry in entries {
            t.add(entry.as_ref())?;
        }
        Ok(t)
    }

    /// Adds one entry (see [`Self::parse`]).
    pub fn add(&mut self, entry: &str) -> Result<(), TrustError> {
        let e = entry.trim();
        if e.len() == 66
            && (e.starts_with("02") || e.starts_with("03"))
            && e.parse::<bitcoin::secp256k1::PublicKey>().is_ok()
        {
            self.nodes.insert(e.to_lowercase());
            return Ok(());
        }
        let key = PublicKey::parse(e).map_err(|_| TrustError(entry.to_string()))?;
        self.services.insert(key);
        Ok(())
    }

    /// Trusts a hub service key.
    pub fn add_service(&mut self, key: PublicKey) {
        self.services.insert(key);
    }

    /// Trusts a node key directly (a hub this process runs knows its own).
    pub fn add_node(&mut self, node_hex: &str) {
        self.nodes.insert(node_hex.to_lowercase());
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.services.is_empty()
    }

    /// Whether `node` (hex) is a trusted settlement signer. Service keys count only once
    /// [`Self::resolve`] has turned them into node keys.
    pub fn trusts(&self, node: &str) -> bool {
        self.nodes.contains(&node.to_lowercase())
    }

    /// The trusted node keys.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    /// Resolves service keys to node keys through the hubs' own signed info events (kind 13194)
    /// on `client`'s relays. A hub whose info is missing stays unresolved (its receipts are then
    /// reported as from an unknown hub, never silently accepted).
    pub async fn resolve(
        &mut self,
        client: &MarketClient,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        if self.services.is_empty() {
            return Ok(());
        }
        let infos = client
            .fetch(
                Filter::new()
                    .kind(kinds::NWC_INFO)
                    .authors(self.services.iter().copied()),
                timeout,
            )
            .await?;
        for ev in infos.iter() {
            if ev.verify().is_err() || !self.services.contains(&ev.pubkey) {
                continue;
            }
            if let Some(node) = WalletInfo::from_event(ev).and_then(|i| i.node) {
                self.nodes.insert(node);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nostr_sdk::{Keys, ToBech32};

    use super::*;

    #[test]
    fn parses_service_and_node_keys() {
        let service = Keys::generate().public_key();
        let node = bitcoin::secp256k1::SecretKey::from_slice(&[9u8; 32])
            .expect("key")
            .public_key(&bitcoin::secp256k1::Secp256k1::signing_only())
            .to_string();
        let t =
            TrustedHubs::parse(&[service.to_bech32().expect("npub"), node.clone()]).expect("valid");
        assert!(t.trusts(&node));
        assert!(!t.trusts(&service.to_hex()), "service keys need resolving");
        assert!(TrustedHubs::parse(&["nope"]).is_err());
        assert!(TrustedHubs::parse(&[format!("02{}", "ff".repeat(32))]).is_err());
        assert!(TrustedHubs::none().is_empty());
    }
}
