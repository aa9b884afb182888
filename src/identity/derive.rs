//! Key derivation from the mnemonic: NIP-06 for Nostr, BIP32 for the Lightning node key.

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use nostr_sdk::nips::nip06::FromMnemonic;
use nostr_sdk::Keys;

use super::IdentityError;

/// Where the Lightning node key lives: LND's key family 6 (node identity), coin type 1 (test networks).
/// Using an established path means a standard Lightning implementation restored from the same
/// mnemonic could recover the same node key.
pub const NODE_KEY_PATH: &str = "m/1017'/1'/6'/0/0";

/// Derives the Nostr keys at NIP-06's `m/44'/1237'/0'/0/0` with an empty BIP39 passphrase.
pub(super) fn nostr_keys(words: &str) -> Result<Keys, IdentityError> {
    Keys::from_mnemonic(words, None).map_err(|e| IdentityError::Derivation(e.to_string()))
}

/// The Lightning node's secp256k1 key pair.
#[derive(Clone)]
pub struct NodeKey {
    secret: SecretKey,
    public: PublicKey,
}

impl NodeKey {
    /// Derives the node key at [`NODE_KEY_PATH`] from a BIP39 seed.
    pub(super) fn derive(seed: &[u8]) -> Result<Self, IdentityError> {
        let secp = Secp256k1::new();
        let err = |e: bitcoin::bip32::Error| IdentityError::Derivation(e.to_string());
        let master = Xpriv::new_master(bitcoin::NetworkKind::Test, seed).map_err(err)?;
        let path: DerivationPath = NODE_KEY_PATH.parse().map_err(err)?;
        let child = master.derive_priv(&secp, &path).map_err(err)?;
        let secret = child.private_key;
        Ok(Self {
            public: secret.public_key(&secp),
            secret,
        })
    }

    /// The secret key, for signing invoices.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The public key as 66 hex characters (compressed point).
    pub fn public_hex(&self) -> String {
        self.public.to_string()
    }
}

/// Keys for one purpose (e.g. the NWC client secret), derived as
/// `sha256("pylon/" || purpose || counter || seed)`: independent of the NIP-06 and BIP32 paths, so
/// no standard wallet derives the same key by accident. The counter only moves past the
/// negligible chance of a digest outside the curve order.
pub(super) fn purpose_keys(seed: &[u8], purpose: &str) -> Keys {
    let mut counter: u8 = 0;
    loop {
        let mut data = Vec::with_capacity(6 + purpose.len() + 1 + seed.len());
        data.extend_from_slice(b"pylon/");
        data.extend_from_slice(purpose.as_bytes());
        data.push(counter);
        data.extend_from_slice(seed);
        let digest = zeroize::Zeroizing::new(sha256::Hash::hash(&data).to_byte_array());
        zeroize::Zeroize::zeroize(&mut data);
        if let Ok(secret) = nostr_sdk::SecretKey::from_slice(&digest[..]) {
            return Keys::new(secret);
        }
        counter = counter.wrapping_add(1);
    }
}
