//! A provider is safe to run on a laptop and resists griefing: url inputs cannot reach its own
//! network, slow URLs hold no job slot, unproven buyers get limited credit, and expired invoices
//! stop being polled. Real relay, hub and nodes in-process, real HTTP servers on loopback.

mod credit;
mod expiry;
mod fetch;
mod intake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::{EventId, Filter, Keys, PublicKey};
use pylon::buyer::{Buyer, WaitOptions};
use pylon::protocol::kinds;
use pylon::protocol::nip90::{Feedback, JobInput, JobResult, JobStatus, NewJob};
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
    let (b, _relay, dir) = buyer_on(m, sats).await;
    (b, dir)
}

/// [`buyer`], with its relay connection (to read what the provider published).
async fn buyer_on(m: &Market, sats: Option<u64>) -> (Buyer, Arc<MarketClient>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet: Option<Arc<dyn Wallet>> = match sats {
        Some(sats) => Some(Arc::new(m.funded_wallet(sats).await)),
        None => None,
    };
    let keys = Keys::generate();
    let relay = connect(m, &keys).await;
    let b = Buyer::start(
        keys.clone(),
        relay.clone(),
        wallet,
        Arc::new(Store::open(dir.path()).expect("store")),
        pylon::buyer::SpendLimits::default(),
    )
    .await
    .expect("buyer");
    (b, relay, dir)
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

/// What the relay holds about one job: the provider's results and feedback.
#[derive(Debug, Default)]
struct Answers {
    results: Vec<JobResult>,
    feedback: Vec<Feedback>,
}

impl Answers {
    fn payment_required(&self) -> Option<&Feedback> {
        self.feedback
            .iter()
            .find(|f| f.status == JobStatus::PaymentRequired)
    }
}

/// Results and feedback for `jobs` stored on the relay now.
async fn answers(relay: &MarketClient, jobs: &[EventId]) -> Vec<Answers> {
    let filter = Filter::new()
        .kinds([
            kinds::JOB_FEEDBACK,
            kinds::result_kind(kinds::CODE_ANALYSIS),
        ])
        .events(jobs.iter().copied());
    let events = relay
        .fetch(filter, Duration::from_secs(5))
        .await
        .expect("fetch");
    let mut out: Vec<Answers> = jobs.iter().map(|_| Answers::default()).collect();
    for ev in events.iter() {
        if ev.kind == kinds::JOB_FEEDBACK {
            if let Ok(f) = Feedback::from_event(ev) {
                if let Some(i) = jobs.iter().position(|j| *j == f.request_id) {
                    out[i].feedback.push(f);
                }
            }
        } else if let Ok(r) = JobResult::from_event(ev, None) {
            if let Some(i) = jobs.iter().position(|j| *j == r.request_id) {
                out[i].results.push(r);
            }
        }
    }
    out
}

/// Waits (up to 30 s) until `done` holds for the answers to `jobs`, and returns them.
async fn answers_when(
    relay: &MarketClient,
    jobs: &[EventId],
    done: impl Fn(&[Answers]) -> bool,
) -> Vec<Answers> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = answers(relay, jobs).await;
        if done(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "condition not reached: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
