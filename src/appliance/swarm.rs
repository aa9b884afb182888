//! Many provider nodes in one process (`pylon swarm`, the demo, the swarm benchmark): each with
//! fresh keys, its own connections, its own store and its own wallet account on a hub, funded
//! from the hub's faucet. Memory is read from the kernel, so the figures are what the process
//! really holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Keys, PublicKey, RelayUrl};
use serde::Serialize;

use super::{err, ApplianceError};
use crate::executors::Registry;
use crate::memory::resident_bytes;
use crate::provider::{Node, NodeOptions};
use crate::relay::{MarketClient, Reachability};
use crate::store::Store;
use crate::wallet::nwc::{NwcOptions, NwcWallet};

/// Nodes started at once: enough to hide round trips, few enough not to flood the hub.
const START_CONCURRENCY: usize = 16;

/// How to build the swarm.
#[derive(Clone)]
pub struct SwarmOptions {
    /// Nodes.
    pub providers: usize,
    /// How each sells (the name is replaced by one per node).
    pub node: NodeOptions,
    /// What each sells.
    pub registry: Registry,
    /// Sats each wallet gets from the faucet (0: none).
    pub fund_sats: u64,
}

/// Running nodes.
pub struct Swarm {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    /// Their public keys.
    pub keys: Vec<PublicKey>,
    /// Seconds the start took.
    pub start_secs: f64,
    _dir: Option<tempfile::TempDir>,
}

impl Swarm {
    /// Starts the nodes on `relays`, paid through the hub `hub`, with stores under `dir` (a
    /// temporary directory when `None`). `progress` hears how many are up.
    pub async fn start(
        relays: &[RelayUrl],
        hub: PublicKey,
        dir: Option<&Path>,
        options: &SwarmOptions,
        progress: impl Fn(usize),
    ) -> Result<Self, ApplianceError> {
        let temp = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().map_err(err)?),
        };
        let root: PathBuf = dir
            .map(Path::to_path_buf)
            .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
            .ok_or_else(|| err("no data directory"))?;
        let started = Instant::now();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let nodes: Vec<Node> = stream::iter(0..options.providers)
            .map(|i| {
                let root = root.join(format!("node{i}"));
                let done = &done;
                let progress = &progress;
                async move {
                    let node = start_one(relays, hub, &root, options).await?;
                    progress(done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1);
                    Ok::<_, ApplianceError>(node)
                }
            })
            .buffered(START_CONCURRENCY)
            .try_collect()
            .await?;
        let keys = nodes.iter().map(Node::public_key).collect();
        Ok(Self {
            nodes,
            keys,
            start_secs: started.elapsed().as_secs_f64(),
            _dir: temp,
        })
    }

    /// Nodes with a job running or queued now.
    pub async fn busy(&self) -> usize {
        let mut n = 0;
        for node in &self.nodes {
            let s = node.status().await;
            n += usize::from(s.running + s.queue_depth > 0);
        }
        n
    }

    /// Stops every node gracefully, all at once (see [`crate::provider::stop_all`]).
    pub async fn stop(self) {
        crate::provider::stop_all(self.nodes).await;
    }
}

async fn start_one(
    relays: &[RelayUrl],
    hub: PublicKey,
    dir: &Path,
    options: &SwarmOptions,
) -> Result<Node, ApplianceError> {
    let keys = Keys::generate();
    let wallet_client = Keys::generate();
    let uri = NostrWalletConnectURI::new(
        hub,
        relays.to_vec(),
        wallet_client.secret_key().clone(),
        None,
    );
    let relay = Arc::new(
        MarketClient::connect_buffered(
            keys.clone(),
            relays,
            Duration::from_secs(5),
            Reachability::OneShot,
            crate::relay::client::NODE_NOTIFICATION_BUFFER,
        )
        .await
        .map_err(err)?,
    );
    let wallet = NwcWallet::connect_on(relay.clone(), &uri, NwcOptions::default())
        .await
        .map_err(err)?;
    if options.fund_sats > 0 {
        wallet
            .top_up(options.fund_sats * 1000, "swarm node funding")
            .await
            .map_err(err)?;
    }
    let node_options = NodeOptions {
        name: format!("swarm-{}", &keys.public_key().to_hex()[..8]),
        ..options.node.clone()
    };
    Node::start(
        keys,
        relay,
        Arc::new(wallet),
        Arc::new(Store::open(dir).map_err(err)?),
        options.registry.clone(),
        node_options,
    )
    .await
    .map_err(err)
}

/// A memory reading of a running swarm.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MemoryReport {
    /// Nodes.
    pub nodes: usize,
    /// Nodes with work now.
    pub busy: usize,
    /// Resident memory of the whole process, MiB.
    pub resident_mib: f64,
    /// (resident with idle nodes − before the nodes) ÷ nodes, MiB.
    pub per_idle_node_mib: f64,
    /// Per busy node: its idle share plus the growth since idle spread over the busy nodes, MiB
    /// (`None` when none is busy).
    pub per_busy_node_mib: Option<f64>,
}

impl MemoryReport {
    /// Reads the process now, given the readings before the nodes and with them idle (bytes).
    pub fn now(nodes: usize, busy: usize, before: u64, idle: u64) -> Self {
        let now = resident_bytes().unwrap_or(0);
        let mib = |b: f64| crate::bench::round3(b / (1024.0 * 1024.0));
        let per_idle = idle.saturating_sub(before) as f64 / nodes.max(1) as f64;
        Self {
            nodes,
            busy,
            resident_mib: mib(now as f64),
            per_idle_node_mib: mib(per_idle),
            per_busy_node_mib: (busy > 0)
                .then(|| mib(per_idle + now.saturating_sub(idle) as f64 / busy as f64)),
        }
    }
}
