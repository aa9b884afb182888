//! `pylon up`: the market operator's process — relay, hub with faucet, dashboard and provider
//! nodes — on the embedded relay, or on a public relay with the embedded one as the fallback.
//!
//! Everything persists under the home: the relay's store, the ledger, and every node's jobs. The
//! providers' keys derive from the operator's mnemonic, so a restart brings back the same
//! providers with the same balances. The operator's wallet URI holds a secret: it is written to a
//! private file in the home ([`Home::nwc_uri_file`]), not handed to stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Keys, PublicKey, RelayUrl};

use super::{err, Appliance, ApplianceError};
use crate::executors::Registry;
use crate::home::{self, Home};
use crate::hub::HubSettings;
use crate::identity::Identity;
use crate::provider::NodeOptions;
use crate::relay::{EmbeddedRelay, MarketClient, Reachability, RelaySettings};
use crate::stats::LiveStats;
use crate::store::Store;
use crate::web::{self, RunningWeb, WebState};

/// What to run.
#[derive(Clone)]
pub struct UpOptions {
    /// The embedded relay (its `bind` is where it listens).
    pub relay: RelaySettings,
    /// Run the market on this relay instead, falling back to the embedded one.
    pub public_relay: Option<RelayUrl>,
    /// How long the public relay gets to answer.
    pub reach_timeout: Duration,
    /// The dashboard's address.
    pub web: SocketAddr,
    /// Provider nodes: the operator's own identity first, then derived ones.
    pub providers: usize,
    /// How they sell.
    pub node: NodeOptions,
    /// What they sell.
    pub registry: Registry,
    /// The hub's limits.
    pub hub: HubSettings,
}

/// A running market.
pub struct Up {
    /// Relay, hub and nodes.
    pub appliance: Appliance,
    /// The dashboard.
    pub web: RunningWeb,
    /// The dashboard's numbers.
    pub stats: Arc<LiveStats>,
    /// The dashboard's URL.
    pub dashboard: String,
    /// The operator's wallet on the hub, for any NWC wallet app. It holds the account's secret:
    /// show it only when asked.
    pub nwc_uri: NostrWalletConnectURI,
    /// The private file (mode 0600) `nwc_uri` was written to.
    pub nwc_uri_file: PathBuf,
    /// Providers started, the operator's own first.
    pub providers: Vec<PublicKey>,
    /// What went differently from what was asked (a fallback).
    pub notices: Vec<String>,
}

impl Up {
    /// Starts everything under `home` as `identity`, and writes the operator's wallet URI to
    /// [`Home::nwc_uri_file`] (mode 0600).
    pub async fn start(
        identity: &Identity,
        home: &Home,
        options: UpOptions,
    ) -> Result<Self, ApplianceError> {
        let mut notices = Vec::new();
        let (url, embedded) = match &options.public_relay {
            Some(public) => match reach(public, options.reach_timeout).await {
                Ok(()) => (public.clone(), None),
                Err(why) => {
                    let relay = start_embedded(&options.relay, home).await?;
                    let note = format!(
                        "public relay {public} unreachable ({why}); the market runs on the \
                         embedded relay {} instead",
                        relay.url()
                    );
                    tracing::warn!("{note}");
                    notices.push(note);
                    (relay.url(), Some(relay))
                }
            },
            None => {
                let relay = start_embedded(&options.relay, home).await?;
                (relay.url(), Some(relay))
            }
        };
        let hub_identity = Some((identity.hub_keys(), *identity.node_key().secret()));
        let mut appliance = Appliance::on_relay(
            url.clone(),
            None,
            embedded,
            home.root(),
            hub_identity,
            options.hub,
        )
        .await?;

        let home_store = Arc::new(Store::open(home.root()).map_err(err)?);
        let mut providers = Vec::new();
        if options.providers > 0 {
            let store = home_store.clone();
            let me = identity.nostr_keys();
            appliance
                .add_node_as(
                    me,
                    &identity.wallet_client_keys(),
                    store,
                    options.registry.clone(),
                    &options.node,
                )
                .await?;
            providers.push(me.public_key());
        }
        for i in 1..options.providers {
            let (keys, wallet) = identity.swarm_keys(i);
            let store = Arc::new(Store::open(&home.extra_node_dir(i)).map_err(err)?);
            appliance
                .add_node_as(
                    &keys,
                    &wallet,
                    store,
                    options.registry.clone(),
                    &options.node,
                )
                .await?;
            providers.push(keys.public_key());
        }

        let viewer = Arc::new(super::connect(&Keys::generate(), &url).await?);
        let stats = Arc::new(
            LiveStats::start(viewer.clone(), Duration::from_secs(24 * 3600))
                .await
                .map_err(err)?,
        );
        let state = Arc::new(WebState {
            stats: stats.clone(),
            client: viewer,
            store: Some(home_store),
            notices: notices.clone(),
            trust: appliance.trusted_hubs(),
        });
        let web = web::serve(options.web, state).await.map_err(err)?;
        let dashboard = format!("http://{}", web.local_addr());
        let nwc_uri = appliance.wallet_uri(&identity.wallet_client_keys());
        let nwc_uri_file = home.nwc_uri_file();
        home::write_private(&nwc_uri_file, format!("{nwc_uri}\n").as_bytes())
            .map_err(|e| ApplianceError(format!("cannot write {}: {e}", nwc_uri_file.display())))?;
        Ok(Self {
            appliance,
            web,
            stats,
            dashboard,
            nwc_uri,
            nwc_uri_file,
            providers,
            notices,
        })
    }

    /// The market's relay.
    pub fn relay_url(&self) -> &RelayUrl {
        &self.appliance.url
    }

    /// Stops the dashboard, then the nodes (gracefully), the hub and the relay.
    pub async fn stop(self) {
        self.web.stop().await;
        self.appliance.stop().await;
    }
}

async fn start_embedded(
    settings: &RelaySettings,
    home: &Home,
) -> Result<EmbeddedRelay, ApplianceError> {
    EmbeddedRelay::start(settings, &home.relay_dir())
        .await
        .map_err(|e| {
            ApplianceError(format!(
                "{e} (is another `pylon up` or `pylon relay` running? stop it, or choose --bind)"
            ))
        })
}

/// Whether `url` answers within `timeout`.
async fn reach(url: &RelayUrl, timeout: Duration) -> Result<(), String> {
    let probe = MarketClient::connect(
        Keys::generate(),
        std::slice::from_ref(url),
        timeout,
        Reachability::OneShot,
    )
    .await
    .map_err(|e| e.to_string())?;
    probe.shutdown().await;
    Ok(())
}
