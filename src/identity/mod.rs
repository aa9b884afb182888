//! A node's identity: one BIP39 mnemonic from which every key is derived.
//!
//! - the Nostr key by NIP-06 (`m/44'/1237'/0'/0/0`), which signs every market event;
//! - the Lightning node key by BIP32 (LND's node-key path, `m/1017'/1'/6'/0/0` on test networks),
//!   which signs invoices.
//!
//! The mnemonic is the only secret stored; [`sealed`] keeps it encrypted at rest.

mod derive;
pub mod sealed;

use nostr_sdk::nostr::bip39::Mnemonic;
use nostr_sdk::{Keys, PublicKey, ToBech32};
use serde::Serialize;
use zeroize::Zeroizing;

pub use derive::{NodeKey, NODE_KEY_PATH};

/// Errors from creating or reading an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The words are not a valid BIP39 mnemonic.
    #[error("invalid mnemonic: {0} (expected 12, 15, 18, 21 or 24 English BIP39 words)")]
    Mnemonic(String),
    /// A key could not be derived (practically unreachable for a valid mnemonic).
    #[error("key derivation failed: {0}")]
    Derivation(String),
}

/// A loaded identity: the mnemonic and the keys derived from it.
pub struct Identity {
    mnemonic: Zeroizing<String>,
    seed: Zeroizing<[u8; 64]>,
    nostr: Keys,
    node: NodeKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the mnemonic or secret keys, even in debug logs.
        f.debug_struct("Identity")
            .field("pubkey", &self.nostr.public_key().to_hex())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Creates a fresh identity from 256 bits of OS randomness (a 24-word mnemonic).
    pub fn generate() -> Result<Self, IdentityError> {
        let entropy: [u8; 32] = rand::random();
        let mnemonic =
            Mnemonic::from_entropy(&entropy).map_err(|e| IdentityError::Mnemonic(e.to_string()))?;
        Self::from_mnemonic(&mnemonic.to_string())
    }

    /// Restores an identity from its words. Whitespace and case are normalised.
    pub fn from_mnemonic(words: &str) -> Result<Self, IdentityError> {
        let normalised: Zeroizing<String> = Zeroizing::new(
            words
                .split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" "),
        );
        let mnemonic = Mnemonic::parse_normalized(&normalised)
            .map_err(|e| IdentityError::Mnemonic(e.to_string()))?;
        let nostr = derive::nostr_keys(&normalised)?;
        let seed = Zeroizing::new(mnemonic.to_seed(""));
        let node = NodeKey::derive(&seed[..])?;
        Ok(Self {
            mnemonic: normalised,
            seed,
            nostr,
            node,
        })
    }

    /// The mnemonic words. Shown to the user once, at `init`, and sealed on disk.
    pub fn mnemonic(&self) -> &str {
        &self.mnemonic
    }

    /// The Nostr signing keys (NIP-06).
    pub fn nostr_keys(&self) -> &Keys {
        &self.nostr
    }

    /// The Lightning node key.
    pub fn node_key(&self) -> &NodeKey {
        &self.node
    }

    /// The secret this node uses as a Nostr Wallet Connect client: its account on a hub.
    /// Derived, so the same mnemonic always reaches the same account.
    pub fn wallet_client_keys(&self) -> Keys {
        derive::purpose_keys(&self.seed[..], "nwc-client")
    }

    /// The keys of the wallet service this identity runs with `pylon hub`.
    pub fn hub_keys(&self) -> Keys {
        derive::purpose_keys(&self.seed[..], "hub-service")
    }

    /// The Nostr keys and wallet-client keys of the `i`-th extra provider this identity runs
    /// (`pylon up --providers N`, `pylon swarm`): derived, so a restart brings back the same
    /// providers with the same accounts.
    pub fn swarm_keys(&self, i: usize) -> (Keys, Keys) {
        (
            derive::purpose_keys(&self.seed[..], &format!("swarm-node/{i}")),
            derive::purpose_keys(&self.seed[..], &format!("swarm-node/{i}/nwc-client")),
        )
    }

    /// The public half, safe to print and share.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity::new(self.nostr.public_key(), self.node.public_hex())
    }
}

/// What `pylon wallet whoami` prints: public keys only.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublicIdentity {
    /// The Nostr public key, NIP-19 encoded.
    pub npub: String,
    /// The Nostr public key, hex (x-only, 32 bytes).
    pub pubkey: String,
    /// The Lightning node public key, hex (compressed secp256k1, 33 bytes).
    pub node_pubkey: String,
}

impl PublicIdentity {
    fn new(pubkey: PublicKey, node_pubkey: String) -> Self {
        Self {
            // Encoding a valid key as bech32 cannot fail; fall back to hex rather than panic.
            npub: pubkey.to_bech32().unwrap_or_else(|_| pubkey.to_hex()),
            pubkey: pubkey.to_hex(),
            node_pubkey,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two test vectors of NIP-06.
    #[test]
    fn nip06_vectors() {
        let cases = [
            (
                "leader monkey parrot ring guide accident before fence cannon height naive bean",
                "7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a",
                "17162c921dc4d2518f9a101db33695df1afb56ab82f5ff3e5da6eec3ca5cd917",
            ),
            (
                "what bleak badge arrange retreat wolf trade produce cricket blur garlic valid proud rude strong choose busy staff weather area salt hollow arm fade",
                "c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add",
                "d41b22899549e1f3d335a31002cfd382174006e166d3e658e3a5eecdb6463573",
            ),
        ];
        for (words, secret, public) in cases {
            let id = Identity::from_mnemonic(words).expect("valid vector");
            assert_eq!(id.nostr_keys().secret_key().to_secret_hex(), secret);
            assert_eq!(id.public().pubkey, public);
        }
    }

    #[test]
    fn normalises_case_and_spacing() {
        let a = Identity::from_mnemonic(
            "  Leader monkey PARROT ring guide accident before fence cannon height naive bean\n",
        )
        .expect("valid");
        assert_eq!(
            a.public().pubkey,
            "17162c921dc4d2518f9a101db33695df1afb56ab82f5ff3e5da6eec3ca5cd917"
        );
    }

    #[test]
    fn generated_identity_is_24_words_and_round_trips() {
        let id = Identity::generate().expect("generate");
        assert_eq!(id.mnemonic().split(' ').count(), 24);
        let again = Identity::from_mnemonic(id.mnemonic()).expect("restore");
        assert_eq!(id.public(), again.public());
        assert_eq!(again.public().node_pubkey.len(), 66);
    }

    #[test]
    fn rejects_bad_checksum_and_unknown_words() {
        let bad_checksum =
            "leader monkey parrot ring guide accident before fence cannon height naive naive";
        assert!(matches!(
            Identity::from_mnemonic(bad_checksum),
            Err(IdentityError::Mnemonic(_))
        ));
        assert!(Identity::from_mnemonic("not a mnemonic at all").is_err());
        assert!(Identity::from_mnemonic("").is_err());
    }

    #[test]
    fn purpose_keys_are_distinct_and_stable() {
        let id = Identity::from_mnemonic(
            "leader monkey parrot ring guide accident before fence cannon height naive bean",
        )
        .expect("valid");
        let again = Identity::from_mnemonic(id.mnemonic()).expect("valid");
        assert_eq!(
            id.wallet_client_keys().public_key(),
            again.wallet_client_keys().public_key()
        );
        let keys = [
            id.nostr_keys().public_key(),
            id.wallet_client_keys().public_key(),
            id.hub_keys().public_key(),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_ne!(keys[0], keys[2]);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let id = Identity::generate().expect("generate");
        let shown = format!("{id:?}");
        assert!(!shown.contains(id.mnemonic()));
        assert!(!shown.contains(&id.nostr_keys().secret_key().to_secret_hex()));
    }
}
