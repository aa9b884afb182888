// Copyright (c) 2022-2023 Yuki Kishimoto
// Copyright (c) 2023-2025 Rust Nostr Developers
// Distributed under the MIT software license

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use nostr::hashes::{sha256, Hash, HashEngine};
use nostr::prelude::IntoNostrSigner;
use nostr::{Event, NostrSigner};
use nostr_database::{IntoNostrDatabase, MemoryDatabase, NostrDatabase};
use tokio::sync::RwLock;

use crate::monitor::Monitor;
use crate::policy::AdmitPolicy;
use crate::transport::websocket::{DefaultWebsocketTransport, WebSocketTransport};

// PYLON-PATCH (4): one cache of verified events per process, not an `LruCache<EventId, ()>` per
// client, and a hit still checks the id. See PYLON-PATCH.md.
const MAX_VERIFICATION_CACHE_SIZE: usize = 128_000;

/// Events whose signature was checked, as 128-bit digests of `id ‖ sig`, oldest first out.
///
/// Both collections are sized once, so the cache never reallocates: its memory is reached early
/// and stays flat, where the old per-client `LruCache` allocated one node per event and grew
/// for the first 128,000 events of every client.
struct VerifiedEvents {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl VerifiedEvents {
    fn new() -> Self {
        Self {
            set: HashSet::with_capacity(MAX_VERIFICATION_CACHE_SIZE),
            order: VecDeque::with_capacity(MAX_VERIFICATION_CACHE_SIZE),
        }
    }

    fn insert(&mut self, key: u128) {
        if !self.set.insert(key) {
            return;
        }
        if self.order.len() == MAX_VERIFICATION_CACHE_SIZE {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(key);
    }
}

/// A signature's validity is a property of the event's bytes, not of the client that received
/// it, so every client of the process shares one cache: an event heard by 300 in-process nodes
/// is checked once, and the memory is paid once.
fn verified_events() -> &'static StdMutex<VerifiedEvents> {
    static CACHE: OnceLock<StdMutex<VerifiedEvents>> = OnceLock::new();
    CACHE.get_or_init(|| StdMutex::new(VerifiedEvents::new()))
}

/// The cache key: the id alone would let a relay pass off other content, another author or a
/// bad signature under an id seen before. With `id ‖ sig` hashed, and the id re-computed from
/// the content on every lookup, a hit means these exact bytes were verified.
fn verified_key(event: &Event) -> u128 {
    let mut engine = sha256::Hash::engine();
    engine.input(event.id.as_bytes());
    engine.input(&event.sig.serialize());
    let digest = sha256::Hash::from_engine(engine).to_byte_array();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(key)
}

#[derive(Debug)]
pub enum SharedStateError {
    SignerNotConfigured,
}

impl std::error::Error for SharedStateError {}

impl fmt::Display for SharedStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SignerNotConfigured => f.write_str("signer not configured"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SharedState {
    pub(crate) database: Arc<dyn NostrDatabase>,
    pub(crate) transport: Arc<dyn WebSocketTransport>,
    pub(crate) signer: Arc<RwLock<Option<Arc<dyn NostrSigner>>>>,
    pub(crate) nip42_auto_authentication: Arc<AtomicBool>,
    pub(crate) admit_policy: Option<Arc<dyn AdmitPolicy>>,
    pub(crate) monitor: Option<Monitor>,
}

impl Default for SharedState {
    fn default() -> Self {
        Self::new(
            MemoryDatabase::new().into_nostr_database(),
            Arc::new(DefaultWebsocketTransport),
            None,
            None,
            true,
            None,
        )
    }
}

impl SharedState {
    pub fn new(
        database: Arc<dyn NostrDatabase>,
        transport: Arc<dyn WebSocketTransport>,
        signer: Option<Arc<dyn NostrSigner>>,
        admit_policy: Option<Arc<dyn AdmitPolicy>>,
        nip42_auto_authentication: bool,
        monitor: Option<Monitor>,
    ) -> Self {
        Self {
            database,
            transport,
            signer: Arc::new(RwLock::new(signer)),
            nip42_auto_authentication: Arc::new(AtomicBool::new(nip42_auto_authentication)),
            admit_policy,
            monitor,
        }
    }

    /// Check if auto authentication to relays is enabled
    #[inline]
    pub fn is_auto_authentication_enabled(&self) -> bool {
        self.nip42_auto_authentication.load(Ordering::SeqCst)
    }

    /// Auto authenticate to relays
    ///
    /// <https://github.com/nostr-protocol/nips/blob/master/42.md>
    pub fn automatic_authentication(&self, enable: bool) {
        self.nip42_auto_authentication
            .store(enable, Ordering::SeqCst);
    }

    /// Get database
    #[inline]
    pub fn database(&self) -> &Arc<dyn NostrDatabase> {
        &self.database
    }

    /// Check if signer is configured
    pub async fn has_signer(&self) -> bool {
        let signer = self.signer.read().await;
        signer.is_some()
    }

    /// Get current nostr signer
    ///
    /// Rise error if it not set.
    pub async fn signer(&self) -> Result<Arc<dyn NostrSigner>, SharedStateError> {
        let signer = self.signer.read().await;
        signer.clone().ok_or(SharedStateError::SignerNotConfigured)
    }

    /// Set nostr signer
    pub async fn set_signer<T>(&self, signer: T)
    where
        T: IntoNostrSigner,
    {
        let mut s = self.signer.write().await;
        *s = Some(signer.into_nostr_signer());
    }

    /// Unset nostr signer
    pub async fn unset_signer(&self) {
        let mut s = self.signer.write().await;
        *s = None;
    }

    /// Check if the event was already verified or verify it.
    ///
    /// This is useful if someone continues to send the same invalid event:
    /// since invalid events aren't stored in the database,
    /// skipping this check would result in the re-verification of the event.
    /// This may also be useful to avoid double verification if the event is received at the exact same time by many different Relay instances.
    ///
    /// This is important since event signature verification is a heavy job!
    pub(crate) async fn verify_and_cache(&self, event: &Event) -> Result<(), nostr::event::Error> {
        // PYLON-PATCH (4): upstream returned `Ok` for any event whose *id* was cached, so a
        // relay could send other content or another author under an id the client had verified
        // (forged events with a known id passed without a check). The id is re-computed here
        // every time (a hash, cheap); only the signature check is cached, by `id ‖ sig`.
        if !event.verify_id() {
            return Err(nostr::event::Error::InvalidId);
        }
        let key = verified_key(event);
        if verified_events()
            .lock()
            .map(|cache| cache.set.contains(&key))
            .unwrap_or(false)
        {
            return Ok(());
        }

        // Checked outside the lock: the cache is shared by every client of the process.
        // If the event verification fails, the cache is not populated
        if !event.verify_signature() {
            return Err(nostr::event::Error::InvalidSignature);
        }

        if let Ok(mut cache) = verified_events().lock() {
            cache.insert(key);
        }

        Ok(())
    }
}
