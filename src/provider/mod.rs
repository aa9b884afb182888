//! The provider node: announce, heartbeat, take jobs, run them, invoice, watch for payment,
//! publish receipts.
//!
//! - [`intake`] — requests from the live subscription and from look-ups, each handled once;
//! - [`job`] — one request, from claim to result;
//! - [`terms`] — pay after or pay first, and credit for buyers who never paid here;
//! - [`inputs`] — `url` inputs fetched before a job takes a slot;
//! - [`settle`] — settlement watching, expiry and receipts;
//! - [`policy`] — per-buyer limits: rate, jobs in flight, url fetches, credit for unproven buyers;
//! - this file — options, start, status, graceful stop.

mod inputs;
mod intake;
mod job;
mod policy;
pub mod reply;
mod settle;
mod terms;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr_sdk::{Filter, Keys, Kind, Timestamp, ToBech32};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::executors::Registry;
use crate::protocol::heartbeat::{Heartbeat, HeartbeatInfo, NodeState};
use crate::protocol::nip89::{Announcement, ProviderInfo};
use crate::relay::{FallbackInfo, MarketClient};
use crate::store::{ProviderTotals, Store};
use crate::wallet::Wallet;

/// When a buyer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PaymentMode {
    /// Result first, with an invoice; payment after (the default).
    #[default]
    After,
    /// `payment-required` first; the job runs once paid.
    Before,
}

/// How a node behaves.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Display name in the announcement.
    pub name: String,
    /// Price per kind, msats. Kinds without a price are not served.
    pub prices: BTreeMap<u16, u64>,
    /// Jobs run at once.
    pub max_concurrent: usize,
    /// When buyers pay.
    pub payment: PaymentMode,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Invoice lifetime.
    pub invoice_expiry_secs: u64,
    /// Longest a job may run.
    pub job_timeout: Duration,
    /// Jobs one buyer may send per minute.
    pub buyer_jobs_per_minute: u32,
    /// Jobs of one buyer running or queued at once.
    pub buyer_max_concurrent: u32,
    /// Refuse buyers with expired unpaid invoices.
    pub refuse_unpaid: bool,
    /// How long `stop` waits for running jobs.
    pub drain_timeout: Duration,
    /// How often the settlement watcher wakes to look up pending invoices (besides
    /// notifications).
    pub settlement_poll: Duration,
    /// An invoice is looked up only after waiting this long for a notification, and then at most
    /// this often.
    pub invoice_poll_after: Duration,
    /// Fetch `url` inputs from loopback, private and other special addresses too. Off by
    /// default: a buyer must not be able to read the provider's own network through a job.
    pub allow_private_urls: bool,
    /// Also answer on request-named relays (the `relays` tag) whose host is a loopback,
    /// private or other special address. Off by default: a request must not make the node
    /// connect into its own network.
    pub allow_private_relays: bool,
    /// Longest fetching one job's `url` inputs may take, redirects included.
    pub fetch_timeout: Duration,
    /// Url fetches at once over all buyers (they run outside the job slots).
    pub max_fetches: usize,
    /// Url fetches at once for one buyer.
    pub buyer_max_fetches: u32,
    /// Jobs running or awaiting payment at once for a buyer who never paid this node; beyond
    /// that, a job is pay-first. `0`: every unproven buyer pays first.
    pub max_unpaid_jobs_unproven: u32,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            name: "pylon".into(),
            prices: [(crate::protocol::kinds::CODE_ANALYSIS, 1_000)].into(),
            max_concurrent: 4,
            payment: PaymentMode::After,
            heartbeat_interval: Duration::from_secs(10),
            invoice_expiry_secs: 600,
            job_timeout: Duration::from_secs(60),
            buyer_jobs_per_minute: 600,
            buyer_max_concurrent: 64,
            refuse_unpaid: true,
            drain_timeout: Duration::from_secs(10),
            settlement_poll: Duration::from_secs(2),
            invoice_poll_after: Duration::from_secs(5),
            allow_private_urls: false,
            allow_private_relays: false,
            fetch_timeout: Duration::from_secs(10),
            max_fetches: 8,
            buyer_max_fetches: 1,
            max_unpaid_jobs_unproven: 2,
        }
    }
}

impl NodeOptions {
    /// The limits every `url` fetch of this node runs under.
    pub fn fetch_policy(&self) -> crate::executors::fetch::FetchPolicy {
        crate::executors::fetch::FetchPolicy {
            allow_private: self.allow_private_urls,
            timeout: self.fetch_timeout,
            ..Default::default()
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A kind was asked for that this build cannot run.
    #[error("no executor for kind {0} in this build (available: {1})")]
    NoExecutor(u16, String),
    /// Relay trouble.
    #[error(transparent)]
    Relay(#[from] crate::relay::client::ClientError),
    /// Event building trouble.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::nip90::ProtocolError),
    /// Store trouble.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A point-in-time view of a node, for `node status` and heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Process id running the node.
    pub pid: u32,
    /// Nostr public key (hex).
    pub pubkey: String,
    /// Same, NIP-19.
    pub npub: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// online / busy / draining.
    pub state: NodeState,
    /// Relays in use.
    pub relays: Vec<String>,
    /// Set when running on the embedded fallback relay.
    pub fallback: Option<FallbackInfo>,
    /// Kinds served.
    pub kinds: Vec<u16>,
    /// Models served (text generation).
    #[serde(default)]
    pub models: Vec<String>,
    /// Prices, msats, by kind.
    pub prices: BTreeMap<String, u64>,
    /// When buyers pay.
    pub payment: PaymentMode,
    /// Jobs waiting for a slot.
    pub queue_depth: u64,
    /// Jobs running.
    pub running: u64,
    /// Results published since start.
    pub served: u64,
    /// Failures since start.
    pub failed: u64,
    /// Totals over the node's whole history (from jobs.db).
    pub totals: ProviderTotals,
    /// Invoices awaiting payment.
    pub awaiting_payment: u64,
    /// Results whose invoice expired unpaid (all time); they are no longer looked up.
    #[serde(default)]
    pub expired_unpaid: u64,
    /// Look-backs for requests the live subscription may have missed, since start.
    #[serde(default)]
    pub lookups: u64,
    /// Jobs refused as `overloaded` since start.
    #[serde(default)]
    pub shed: u64,
}

pub(crate) struct Shared {
    keys: Keys,
    relay: Arc<MarketClient>,
    wallet: Arc<dyn Wallet>,
    store: Arc<Store>,
    executors: Registry,
    options: NodeOptions,
    slots: Semaphore,
    queued: AtomicU64,
    running: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    draining: AtomicBool,
    /// Date of the last heartbeat (unix seconds), so the next one is always newer.
    last_beat: AtomicU64,
    buyers: Mutex<policy::BuyerLimits>,
    /// Url fetches, outside the slots.
    fetches: policy::FetchGate,
    /// Copies of feedback and results to the relays a request names.
    reply: Arc<reply::ReplyRelays>,
    /// Work on credit for buyers who never paid here.
    credit: Mutex<policy::Credit>,
    /// Woken whenever a payment is recorded (pay-first jobs of unproven buyers wait on it).
    payments: Notify,
    pending: Mutex<HashMap<String, settle::Pending>>,
    /// Requests already handled by this process (see [`intake`]).
    seen: Mutex<intake::Seen>,
    /// Moving average of how long a job runs, ms, and the jobs admitted and not finished: the
    /// basis of load shedding (see `job::Backlog`).
    exec_ms: AtomicU64,
    backlog: AtomicU64,
    /// Look-backs done, and jobs shed, since start (for status).
    lookups: AtomicU64,
    shed: AtomicU64,
    started: Instant,
    started_at: Timestamp,
}

impl Shared {
    fn state(&self) -> NodeState {
        if self.draining.load(Ordering::SeqCst) {
            NodeState::Draining
        } else if self.running.load(Ordering::SeqCst) as usize >= self.options.max_concurrent {
            NodeState::Busy
        } else {
            NodeState::Online
        }
    }

    fn heartbeat_info(&self) -> HeartbeatInfo {
        HeartbeatInfo {
            state: Some(self.state()),
            queue_depth: Some(self.queued.load(Ordering::SeqCst) as u32),
            running: Some(self.running.load(Ordering::SeqCst) as u32),
            jobs_served: Some(self.served.load(Ordering::SeqCst)),
            jobs_failed: Some(self.failed.load(Ordering::SeqCst)),
            interval_secs: Some(self.options.heartbeat_interval.as_secs().max(1)),
            uptime_secs: Some(self.started.elapsed().as_secs()),
        }
    }

    /// Publishes a heartbeat and waits for the relay's `OK` (so a node is discoverable as
    /// online once `start` returns, and a beat lost to a cut is sent again).
    async fn heartbeat(&self) {
        let now = Timestamp::now().as_secs();
        let last = self.last_beat.fetch_max(now, Ordering::SeqCst);
        let at = if last >= now {
            self.last_beat.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            now
        };
        let info = self.heartbeat_info();
        match Heartbeat::to_event_at(
            &self.keys,
            &info,
            &self.executors.kinds(),
            Timestamp::from(at),
        ) {
            Ok(ev) => {
                if let Err(e) = self.relay.publish(&ev).await {
                    tracing::warn!("heartbeat not published: {e}");
                }
            }
            Err(e) => tracing::error!("cannot build heartbeat: {e}"),
        }
    }
}

/// A running node. [`Node::stop`] drains it; dropping it aborts its tasks.
pub struct Node {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a node: announces, subscribes to its kinds from now on, and serves until stopped.
    pub async fn start(
        keys: Keys,
        relay: Arc<MarketClient>,
        wallet: Arc<dyn Wallet>,
        store: Arc<Store>,
        mut executors: Registry,
        options: NodeOptions,
    ) -> Result<Self, NodeError> {
        let wanted: Vec<u16> = options.prices.keys().copied().collect();
        for kind in &wanted {
            if executors.get(*kind).is_none() {
                let have: Vec<String> = executors.kinds().iter().map(u16::to_string).collect();
                return Err(NodeError::NoExecutor(*kind, have.join(", ")));
            }
        }
        executors.retain(&wanted);
        let reply =
            reply::ReplyRelays::start(relay.relay_urls().await, options.allow_private_relays);
        let shared = Arc::new(Shared {
            reply,
            slots: Semaphore::new(options.max_concurrent.max(1)),
            buyers: Mutex::new(policy::BuyerLimits::new(
                options.buyer_jobs_per_minute,
                options.buyer_max_concurrent,
            )),
            fetches: policy::FetchGate::new(options.max_fetches, options.buyer_max_fetches),
            credit: Mutex::new(policy::Credit::new(options.max_unpaid_jobs_unproven)),
            payments: Notify::new(),
            keys,
            relay,
            wallet,
            store,
            executors,
            options,
            queued: AtomicU64::new(0),
            running: AtomicU64::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            last_beat: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            seen: Mutex::new(intake::Seen::default()),
            exec_ms: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            started: Instant::now(),
            started_at: Timestamp::now(),
        });
        let pay_first = settle::resume(&shared)?;
        let announcement = Announcement::to_event(
            &shared.keys,
            "pylon",
            &shared.executors.kinds(),
            &provider_info(&shared),
        )?;
        shared.relay.publish(&announcement).await?;
        let kinds: Vec<Kind> = shared
            .executors
            .kinds()
            .into_iter()
            .map(Kind::from)
            .collect();
        shared
            .relay
            .subscribe(Filter::new().kinds(kinds).since(Timestamp::now()))
            .await?;
        shared.heartbeat().await;

        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(intake::run(shared.clone(), stopped.clone())),
            tokio::spawn(heartbeats(shared.clone(), stopped.clone())),
            tokio::spawn(settle::watch(shared.clone(), stopped)),
        ];
        for rec in pay_first {
            tasks.push(tokio::spawn(job::resume(shared.clone(), rec)));
        }
        tracing::info!(provider = %shared.keys.public_key(), kinds = ?shared.executors.kinds(), "node up");
        Ok(Self {
            shared,
            stop,
            tasks,
        })
    }

    /// The node's Nostr public key.
    pub fn public_key(&self) -> nostr_sdk::PublicKey {
        self.shared.keys.public_key()
    }

    /// A status snapshot.
    pub async fn status(&self) -> NodeStatus {
        let s = &self.shared;
        let (totals, expired_unpaid) = {
            let jobs = s.store.jobs();
            (
                jobs.provider_totals().unwrap_or_default(),
                jobs.expired_invoices().unwrap_or_default(),
            )
        };
        NodeStatus {
            pid: std::process::id(),
            pubkey: s.keys.public_key().to_hex(),
            npub: s.keys.public_key().to_bech32().unwrap_or_default(),
            started_at: s.started_at.as_secs(),
            uptime_secs: s.started.elapsed().as_secs(),
            state: s.state(),
            relays: s
                .relay
                .relay_urls()
                .await
                .iter()
                .map(|u| u.to_string())
                .collect(),
            fallback: s.relay.fallback().cloned(),
            kinds: s.executors.kinds(),
            models: s.executors.models(),
            prices: s
                .options
                .prices
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            payment: s.options.payment,
            queue_depth: s.queued.load(Ordering::SeqCst),
            running: s.running.load(Ordering::SeqCst),
            served: s.served.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            totals,
            awaiting_payment: s.pending.lock().map(|p| p.len() as u64).unwrap_or(0),
            expired_unpaid,
            lookups: s.lookups.load(Ordering::SeqCst),
            shed: s.shed.load(Ordering::SeqCst),
        }
    }

    /// Stops abruptly, as a crash would: no draining, no farewell heartbeat, the relay connection
    /// cut. For churn tests and demos.
    pub async fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.relay.sdk().disconnect().await;
    }

    /// Graceful stop, bounded in time even when the relay is gone: stop taking jobs, publish a
    /// "draining" heartbeat (waiting at most [`FAREWELL`] for it), let running jobs finish for up
    /// to the drain timeout, then end the node's tasks (a task still busy after
    /// [`TASK_GRACE`], e.g. waiting on a wallet that cannot answer, is aborted). Whatever was not
    /// sent by then is given up, with a log line saying so.
    pub async fn stop(self) {
        let s = self.shared.clone();
        s.draining.store(true, Ordering::SeqCst);
        if tokio::time::timeout(FAREWELL, s.heartbeat()).await.is_err() {
            tracing::warn!("farewell heartbeat unconfirmed after {FAREWELL:?}; is the relay up?");
        }
        let deadline = Instant::now() + s.options.drain_timeout;
        while (s.running.load(Ordering::SeqCst) > 0 || s.queued.load(Ordering::SeqCst) > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (running, queued) = (
            s.running.load(Ordering::SeqCst),
            s.queued.load(Ordering::SeqCst),
        );
        if running + queued > 0 {
            tracing::warn!(
                "drain timeout ({:?}) reached: giving up {running} running and {queued} queued jobs",
                s.options.drain_timeout
            );
        }
        let _ = self.stop.send(true);
        futures_util::future::join_all(self.tasks.into_iter().map(|mut t| async move {
            if tokio::time::timeout(TASK_GRACE, &mut t).await.is_err() {
                tracing::warn!("a node task was still busy after {TASK_GRACE:?}; aborted");
                t.abort();
            }
        }))
        .await;
        let pending = s.pending.lock().map(|p| p.len()).unwrap_or(0);
        if pending > 0 {
            tracing::info!(
                "{pending} invoices still await payment; the next start watches them again"
            );
        }
        tracing::info!("node stopped");
    }
}

/// Longest a stopping node waits for its farewell heartbeat to be confirmed.
pub const FAREWELL: Duration = Duration::from_secs(3);
/// Longest a stopping node waits for each of its tasks to notice the stop.
const TASK_GRACE: Duration = Duration::from_secs(2);

/// Stops several nodes at once, so stopping a swarm takes as long as its slowest node, not the
/// sum of them.
pub async fn stop_all(nodes: Vec<Node>) {
    futures_util::future::join_all(nodes.into_iter().map(Node::stop)).await;
}

fn provider_info(s: &Shared) -> ProviderInfo {
    ProviderInfo {
        name: s.options.name.clone(),
        about: "A Pylon node: NIP-90 jobs paid over Lightning, receipts on Nostr.".into(),
        version: format!("pylon {}", env!("CARGO_PKG_VERSION")),
        backends: s.executors.backends(),
        models: s.executors.models(),
        prices: s
            .options
            .prices
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        encryption: vec!["nip44_v2".into(), "nip04".into()],
        params: s.executors.params(),
        payment: match s.options.payment {
            PaymentMode::After => "after".into(),
            PaymentMode::Before => "before".into(),
        },
    }
}

async fn heartbeats(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(s.options.heartbeat_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        // Confirmed, not fire-and-forget: a beat sent into a connection that is being cut is
        // lost without a word, and two lost in a row (a reconnect takes seconds on a far relay)
        // showed a live node offline. The publish waits out the reconnect and sends it again;
        // one still unconfirmed at the next tick gives way to a fresh one.
        let beat = tokio::time::timeout(s.options.heartbeat_interval, s.heartbeat());
        tokio::select! {
            _ = stopped.changed() => break,
            sent = beat => if sent.is_err() {
                tracing::debug!("heartbeat unconfirmed within one interval; the next one replaces it");
            },
        }
    }
}

/// A one-shot channel used to wake a pay-first job when its invoice settles.
pub(crate) type PaidSignal = oneshot::Sender<settle::Settled>;
