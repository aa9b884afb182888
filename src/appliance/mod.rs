//! The appliance: a whole market in one process — embedded relay, regtest hub with faucet, and
//! any number of provider nodes, each with its own identity and wallet. `pylon up`, `pylon swarm`,
//! `pylon demo` and the benchmarks are built on it.

pub mod demo;
pub mod swarm;
pub mod up;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Keys, PublicKey, RelayUrl};

use crate::bench::wan_proxy::{WanProfile, WanProxy};
use crate::buyer::Buyer;
use crate::executors::Registry;
use crate::hub::{self, FaucetLimits, HubSettings, Ledger, RunningHub, Service};
use crate::provider::{Node, NodeOptions};
use crate::relay::{EmbeddedRelay, MarketClient, Reachability, RelaySettings};
use crate::store::Store;
use crate::wallet::NwcWallet;

/// Errors building the appliance.
#[derive(Debug, thiserror::Error)]
#[error("appliance: {0}")]
pub struct ApplianceError(pub String);

fn err(e: impl std::fmt::Display) -> ApplianceError {
    ApplianceError(e.to_string())
}

/// Hub limits for a self-contained market: the faucet and rate limits out of the way.
pub fn open_hub_settings() -> HubSettings {
    HubSettings {
        faucet: FaucetLimits {
            max_msat_per_request: u64::MAX / 4,
            max_msat_per_day: u64::MAX / 4,
            max_requests_per_minute: u32::MAX,
        },
        requests_per_second: 1_000_000,
        request_burst: 1_000_000,
        ..HubSettings::default()
    }
}

/// A running in-process market.
pub struct Appliance {
    /// The embedded relay, when the market runs on it (none on an outside relay).
    pub relay: Option<EmbeddedRelay>,
    /// The market's relay URL.
    pub url: RelayUrl,
    /// The hub.
    pub hub: RunningHub,
    /// The hub's service keys.
    pub hub_keys: Keys,
    /// Provider nodes started here.
    pub nodes: Vec<Node>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Appliance {
    /// Starts a relay (with `settings`) and a hub, storing under `dir` (a temporary directory when
    /// `None`). The hub uses `hub_keys` and `node_key` (random when `None`).
    pub async fn start(
        settings: &RelaySettings,
        dir: Option<&Path>,
        hub_identity: Option<(Keys, bitcoin::secp256k1::SecretKey)>,
        hub_settings: HubSettings,
    ) -> Result<Self, ApplianceError> {
        let temp = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().map_err(err)?),
        };
        let dir = dir
            .map(Path::to_path_buf)
            .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
            .ok_or_else(|| err("no data directory"))?;
        let relay = EmbeddedRelay::start(settings, &dir.join("relay"))
            .await
            .map_err(err)?;
        let url = relay.url();
        Self::start_on(
            url,
            None,
            Some(relay),
            dir,
            temp,
            hub_identity,
            hub_settings,
        )
        .await
    }

    /// Like [`start`](Self::start) in a temporary directory, but every role reaches the relay
    /// through a [`WanProxy`] dialled to `profile` (the relay itself stays in this process):
    /// the market as it runs with a relay far away. The proxy is returned so its counters can
    /// be read; dropping it cuts the roles off.
    pub async fn start_behind_proxy(
        settings: &RelaySettings,
        hub_identity: Option<(Keys, bitcoin::secp256k1::SecretKey)>,
        hub_settings: HubSettings,
        profile: WanProfile,
    ) -> Result<(Self, WanProxy), ApplianceError> {
        let temp = tempfile::tempdir().map_err(err)?;
        let dir = temp.path().to_path_buf();
        let relay = EmbeddedRelay::start(settings, &dir.join("relay"))
            .await
            .map_err(err)?;
        let proxy = WanProxy::start(relay.local_addr(), profile)
            .await
            .map_err(err)?;
        let url = RelayUrl::parse(&proxy.url()).map_err(err)?;
        let market = Self::start_on(
            url,
            None,
            Some(relay),
            dir,
            Some(temp),
            hub_identity,
            hub_settings,
        )
        .await?;
        Ok((market, proxy))
    }

    /// Starts a hub on the relay at `url` (`embedded` when this process serves it), storing
    /// under `dir`. The hub itself connects to `hub_url` when given: the same relay by another
    /// path (a hub running beside the relay while its clients are far away).
    pub async fn on_relay(
        url: RelayUrl,
        hub_url: Option<RelayUrl>,
        embedded: Option<EmbeddedRelay>,
        dir: &Path,
        hub_identity: Option<(Keys, bitcoin::secp256k1::SecretKey)>,
        hub_settings: HubSettings,
    ) -> Result<Self, ApplianceError> {
        Self::start_on(
            url,
            hub_url,
            embedded,
            dir.to_path_buf(),
            None,
            hub_identity,
            hub_settings,
        )
        .await
    }

    async fn start_on(
        url: RelayUrl,
        hub_url: Option<RelayUrl>,
        relay: Option<EmbeddedRelay>,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        hub_identity: Option<(Keys, bitcoin::secp256k1::SecretKey)>,
        hub_settings: HubSettings,
    ) -> Result<Self, ApplianceError> {
        let (hub_keys, node_key) = hub_identity.unwrap_or_else(|| {
            (
                Keys::generate(),
                bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng()),
            )
        });
        std::fs::create_dir_all(dir.join("hub")).map_err(err)?;
        let ledger = Ledger::open(&dir.join("hub").join("ledger.db")).map_err(err)?;
        let service = Service::new(hub_keys.clone(), node_key, ledger, hub_settings);
        let hub_client = connect(&hub_keys, hub_url.as_ref().unwrap_or(&url)).await?;
        let hub = hub::start(service, Arc::new(hub_client))
            .await
            .map_err(err)?;
        Ok(Self {
            relay,
            url,
            hub,
            hub_keys,
            nodes: Vec::new(),
            dir,
            _temp: temp,
        })
    }

    /// The connection URI of `client`'s account on this hub.
    pub fn wallet_uri(&self, client: &Keys) -> NostrWalletConnectURI {
        NostrWalletConnectURI::new(
            self.hub_keys.public_key(),
            vec![self.url.clone()],
            client.secret_key().clone(),
            None,
        )
    }

    /// A wallet client for `client`'s account.
    pub async fn wallet(&self, client: &Keys) -> Result<NwcWallet, ApplianceError> {
        NwcWallet::connect(&self.wallet_uri(client), Default::default())
            .await
            .map_err(err)
    }

    /// Starts `n` provider nodes with the built-in executors, each with fresh keys, its own
    /// wallet account and store.
    pub async fn add_providers(
        &mut self,
        n: usize,
        options: &NodeOptions,
    ) -> Result<Vec<PublicKey>, ApplianceError> {
        let mut keys_out = Vec::with_capacity(n);
        for _ in 0..n {
            keys_out.push(self.add_node(Registry::builtin(), options).await?);
        }
        Ok(keys_out)
    }

    /// Starts one provider node serving `registry`, with fresh keys, wallet account and store.
    pub async fn add_node(
        &mut self,
        registry: Registry,
        options: &NodeOptions,
    ) -> Result<PublicKey, ApplianceError> {
        let store_dir = self
            .dir
            .join("nodes")
            .join(format!("node{}", self.nodes.len()));
        let store = Arc::new(Store::open(&store_dir).map_err(err)?);
        let keys = Keys::generate();
        self.add_node_as(&keys, &Keys::generate(), store, registry, options)
            .await?;
        Ok(keys.public_key())
    }

    /// Starts a provider node as `keys`, paid into the hub account of `wallet_client`.
    pub async fn add_node_as(
        &mut self,
        keys: &Keys,
        wallet_client: &Keys,
        store: Arc<Store>,
        registry: Registry,
        options: &NodeOptions,
    ) -> Result<(), ApplianceError> {
        let relay = Arc::new(connect_node(keys, &self.url).await?);
        let wallet = NwcWallet::connect_on(
            relay.clone(),
            &self.wallet_uri(wallet_client),
            Default::default(),
        )
        .await
        .map_err(err)?;
        let options = NodeOptions {
            name: format!("pylon-{}", &keys.public_key().to_hex()[..8]),
            ..options.clone()
        };
        let node = Node::start(
            keys.clone(),
            relay,
            Arc::new(wallet),
            store,
            registry,
            options,
        )
        .await
        .map_err(err)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Where this appliance keeps its data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A buyer with `msats` from the faucet, its store under this appliance's directory.
    pub async fn funded_buyer(
        &self,
        keys: &Keys,
        msats: u64,
    ) -> Result<(Arc<Buyer>, Arc<Store>), ApplianceError> {
        let wallet = self.wallet(&Keys::generate()).await?;
        wallet.top_up(msats, "faucet").await.map_err(err)?;
        let store = Arc::new(
            Store::open(
                &self
                    .dir
                    .join("buyers")
                    .join(&keys.public_key().to_hex()[..16]),
            )
            .map_err(err)?,
        );
        let buyer = Buyer::start(
            keys.clone(),
            Arc::new(connect(keys, &self.url).await?),
            Some(Arc::new(wallet)),
            store.clone(),
            // A market that funds its own buyers: their caps are what the faucet gave them.
            crate::buyer::SpendLimits::unlimited(),
        )
        .await
        .map_err(err)?;
        Ok((Arc::new(buyer), store))
    }

    /// Verifiers in this process trust the hub it runs (and only that one).
    pub fn trusted_hubs(&self) -> crate::provenance::TrustedHubs {
        let mut t = crate::provenance::TrustedHubs::none();
        t.add_node(self.hub.service().node_pubkey());
        t
    }

    /// The hub's audit.
    pub fn audit(&self) -> Result<hub::AuditReport, ApplianceError> {
        let ledger = self.hub.service().ledger();
        let guard = ledger.lock().map_err(|_| err("ledger lock poisoned"))?;
        guard.audit().map_err(err)
    }

    /// Stops nodes (gracefully), the hub and the relay.
    pub async fn stop(mut self) {
        crate::provider::stop_all(std::mem::take(&mut self.nodes)).await;
        self.hub.stop().await;
        if let Some(relay) = self.relay {
            relay.shutdown().await;
        }
    }
}

/// A provider node's connection to `url`: a lean buffer (see [`NODE_NOTIFICATION_BUFFER`]).
///
/// [`NODE_NOTIFICATION_BUFFER`]: crate::relay::client::NODE_NOTIFICATION_BUFFER
pub async fn connect_node(keys: &Keys, url: &RelayUrl) -> Result<MarketClient, ApplianceError> {
    MarketClient::connect_buffered(
        keys.clone(),
        std::slice::from_ref(url),
        Duration::from_secs(5),
        Reachability::OneShot,
        crate::relay::client::NODE_NOTIFICATION_BUFFER,
    )
    .await
    .map_err(err)
}

/// A one-shot client connection to `url` for `keys`.
pub async fn connect(keys: &Keys, url: &RelayUrl) -> Result<MarketClient, ApplianceError> {
    MarketClient::connect(
        keys.clone(),
        std::slice::from_ref(url),
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .map_err(err)
}
