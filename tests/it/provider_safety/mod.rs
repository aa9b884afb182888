//! A provider is safe to run on a laptop and resists griefing: url inputs cannot reach its own
//! network, and slow URLs hold no job slot. Real relay, hub and nodes in-process, real HTTP
//! servers on loopback.

mod fetch;

use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::{Keys, PublicKey};
use pylon::buyer::{Buyer, WaitOptions};
use pylon::protocol::kinds;
use pylon::protocol::nip90::{JobInput, NewJob};
use pylon::provider::{Node, NodeOptions};
use pylon::relay::{MarketClient, Reachability};
use pylon::store::Store;
use pylon::wallet::{NwcWallet, Wallet};

use crate::common::Market;

/// A relay connection for `keys` on the market's relay.
async fn connect(m: &Market, keys: &Keys) -> Arc<MarketClient> {
    Arc::new(
        MarketClient::connect(
            keys.clone(),
            &[m.relay.url()],
            Duration::from_secs(5),
            Reachability::OneShot,
        )
        .await
        .expect("relay"),
    )
}

/// A provider node as `pylon node up` runs it, with its own keys, store in `dir` and the hub
/// account of `wallet_keys` (so a test can watch its wallet requests on the relay).
async fn start_node(
    m: &Market,
    keys: &Keys,
    wallet_keys: &Keys,
    dir: &std::path::Path,
    options: NodeOptions,
) -> Node {
    let wallet: Arc<dyn Wallet> = Arc::new(
        NwcWallet::connect(&m.uri(wallet_keys), Default::default())
            .await
            .expect("wallet"),
    );
    Node::start(
        keys.clone(),
        connect(m, keys).await,
        wallet,
        Arc::new(Store::open(dir).expect("store")),
        pylon::executors::Registry::builtin(),
        options,
    )
    .await
    .expect("node starts")
}

/// A node with fresh keys and wallet account; its store lives as long as the returned dir.
async fn node(m: &Market, options: NodeOptions) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(m, &Keys::generate(), &Keys::generate(), dir.path(), options).await;
    (node, dir)
}

/// A buyer with a fresh key: funded from the faucet with `sats`, or with no wallet at all.
async fn buyer(m: &Market, sats: Option<u64>) -> (Buyer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet: Option<Arc<dyn Wallet>> = match sats {
        Some(sats) => Some(Arc::new(m.funded_wallet(sats).await)),
        None => None,
    };
    let keys = Keys::generate();
    let b = Buyer::start(
        keys.clone(),
        connect(m, &keys).await,
        wallet,
        Arc::new(Store::open(dir.path()).expect("store")),
    )
    .await
    .expect("buyer");
    (b, dir)
}

fn code_job(input: JobInput, path: &str, provider: PublicKey) -> NewJob {
    NewJob {
        kind: kinds::CODE_ANALYSIS,
        inputs: vec![input],
        params: vec![("path".into(), path.into())],
        bid_msats: Some(5_000),
        providers: vec![provider],
        ..Default::default()
    }
}

fn wait(auto_pay: bool) -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(30),
        auto_pay,
        max_msats: None,
    }
}
