//! Which wallet a node uses: an explicit NWC URI, else a pinned hub, else — on regtest only — a
//! Pylon hub found on the node's relays, so swarms need no wiring.

use std::time::Duration;

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Alphabet, Filter, Keys, PublicKey, RelayUrl, SingleLetterTag};
use serde::Serialize;

use super::nwc::{NwcOptions, NwcWallet};
use super::WalletError;
use crate::config::Config;
use crate::identity::Identity;
use crate::protocol::kinds;
use crate::protocol::nip47::{WalletInfo, HUB_MARKER};
use crate::relay::{MarketClient, Reachability};

/// Where the wallet came from, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", content = "wallet", rename_all = "snake_case")]
pub enum WalletSource {
    /// `wallet.nwc_uri` or `--nwc`.
    NwcUri(String),
    /// `wallet.hub`.
    PinnedHub(String),
    /// Found on the relays (regtest).
    DiscoveredHub(String),
}

/// Finds the newest Pylon regtest hub announced on `relays`.
pub async fn find_hub(
    relays: &[RelayUrl],
    timeout: Duration,
) -> Result<Option<WalletInfo>, WalletError> {
    let client =
        MarketClient::connect(Keys::generate(), relays, timeout, Reachability::OneShot).await?;
    let filter = Filter::new()
        .kind(kinds::NWC_INFO)
        .custom_tag(SingleLetterTag::lowercase(Alphabet::T), HUB_MARKER)
        .limit(50);
    let found = client.fetch(filter, timeout).await;
    client.shutdown().await;
    Ok(found?
        .into_iter()
        .filter_map(|ev| WalletInfo::from_event(&ev))
        .filter(|info| info.pylon_hub_network.as_deref() == Some("regtest"))
        .max_by_key(|info| info.created_at))
}

/// The connection URI for `identity`'s account on the hub `hub`, reached through `relays`.
pub fn hub_uri(identity: &Identity, hub: PublicKey, relays: &[RelayUrl]) -> NostrWalletConnectURI {
    NostrWalletConnectURI::new(
        hub,
        relays.to_vec(),
        identity.wallet_client_keys().secret_key().clone(),
        None,
    )
}

/// Resolves the wallet URI for `identity` under `config` (see the module documentation). A hub is
/// reached, and looked for, through `relays` (the relays the caller actually uses).
pub async fn resolve_uri(
    identity: &Identity,
    config: &Config,
    relays: &[RelayUrl],
) -> Result<(NostrWalletConnectURI, WalletSource), WalletError> {
    if let Some(uri) = &config.wallet.nwc_uri {
        let parsed = NostrWalletConnectURI::parse(uri)
            .map_err(|e| WalletError::NotConfigured(format!("wallet.nwc_uri: {e}")))?;
        let source = WalletSource::NwcUri(parsed.public_key.to_hex());
        return Ok((parsed, source));
    }
    if let Some(hub) = config.wallet.hub {
        return Ok((
            hub_uri(identity, hub, relays),
            WalletSource::PinnedHub(hub.to_hex()),
        ));
    }
    if !config.network.is_regtest() {
        return Err(WalletError::NotConfigured(format!(
            "no wallet for {:?}: set wallet.nwc_uri (or --nwc) to a NIP-47 wallet",
            config.network
        )));
    }
    let timeout = crate::relay::client::ONE_SHOT_TIMEOUT.max(Duration::from_secs(3));
    match find_hub(relays, timeout).await? {
        Some(info) => Ok((
            hub_uri(identity, info.service, relays),
            WalletSource::DiscoveredHub(info.service.to_hex()),
        )),
        None => Err(WalletError::NotConfigured(
            "no wallet: no Pylon hub announces itself on the relays. Start one with `pylon hub` \
             (or `pylon up`), pin one with wallet.hub, or set wallet.nwc_uri"
                .into(),
        )),
    }
}

/// Resolves and connects the wallet, reaching a hub through `relays`.
pub async fn connect(
    identity: &Identity,
    config: &Config,
    relays: &[RelayUrl],
) -> Result<(NwcWallet, WalletSource), WalletError> {
    let (uri, source) = resolve_uri(identity, config, relays).await?;
    let options = NwcOptions {
        request_timeout: Duration::from_secs(config.wallet.timeout_secs),
        ..NwcOptions::default()
    };
    Ok((NwcWallet::connect(&uri, options).await?, source))
}
