//! The provider node: announce, heartbeat, take jobs, run them, invoice, watch for payment,
//! publish receipts.
//!
//! - [`job`] — one request, from claim to result;
//! - [`terms`] — pay after or pay first, and credit for buyers who never paid here;
//! - [`inputs`] — `url` inputs fetched before a job takes a slot;
//! - [`settle`] — settlement watching, expiry and receipts;
//! - [`policy`] — per-buyer limits: rate, jobs in flight, url fetches, credit for unproven buyers;
//! - this file — options, start, status, graceful stop.

mod inputs;
mod job;
mod policy;
mod settle;
mod terms;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr_sdk::{Filter, Keys, Kind, RelayPoolNotification, Timestamp, ToBech32};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::executors::Registry;
use crate::protocol::heartbeat::{Heartbeat, HeartbeatInfo, NodeState};
use crate::protocol::nip89::{Announcement, ProviderInfo};
use crate::relay::{FallbackInfo, MarketClient};
use crate::store::{ProviderTotals, Store};
use crate::wallet::Wallet;

/// How often a node looks back for requests its live subscription may have missed.
const CATCH_UP: Duration = Duration::from_secs(5);

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
            drain_timeout: Duration::from_secs(30),
            settlement_poll: Duration::from_secs(2),
            invoice_poll_after: Duration::from_secs(5),
            allow_private_urls: false,
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
    /// Work on credit for buyers who never paid here.
    credit: Mutex<policy::Credit>,
    /// Woken whenever a payment is recorded (pay-first jobs of unproven buyers wait on it).
    payments: Notify,
    pending: Mutex<HashMap<String, settle::Pending>>,
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
            state: self.state(),
            queue_depth: self.queued.load(Ordering::SeqCst) as u32,
            running: self.running.load(Ordering::SeqCst) as u32,
            jobs_served: self.served.load(Ordering::SeqCst),
            jobs_failed: self.failed.load(Ordering::SeqCst),
            interval_secs: self.options.heartbeat_interval.as_secs().max(1),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// Publishes a heartbeat. The first one waits for the relay's `OK`, so a node is
    /// discoverable as online once `start` returns; later ones are fire-and-forget.
    async fn heartbeat(&self, confirm: bool) {
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
                let sent = if confirm {
                    self.relay.publish(&ev).await
                } else {
                    self.relay.publish_nowait(&ev).await
                };
                if let Err(e) = sent {
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
        let shared = Arc::new(Shared {
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
            started: Instant::now(),
            started_at: Timestamp::now(),
        });
        settle::resume(&shared)?;
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
        shared.heartbeat(true).await;

        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(dispatch(shared.clone(), stopped.clone())),
            tokio::spawn(heartbeats(shared.clone(), stopped.clone())),
            tokio::spawn(settle::watch(shared.clone(), stopped)),
        ];
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

    /// Graceful stop: stop taking jobs, let running ones finish (up to the drain timeout), release
    /// queued ones with `error: shutting-down`, publish a short-lived heartbeat, and return.
    pub async fn stop(self) {
        let s = self.shared.clone();
        s.draining.store(true, Ordering::SeqCst);
        s.heartbeat(true).await;
        let deadline = Instant::now() + s.options.drain_timeout;
        while (s.running.load(Ordering::SeqCst) > 0 || s.queued.load(Ordering::SeqCst) > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("node stopped");
    }
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
        payment: match s.options.payment {
            PaymentMode::After => "after".into(),
            PaymentMode::Before => "before".into(),
        },
    }
}

async fn dispatch(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut notes = s.relay.notifications();
    let kinds = s.executors.kinds();
    // Relays drop live events under load; requests are stored, so a periodic look back catches
    // what the subscription missed (the store makes a second sighting a no-op).
    let mut catch_up = tokio::time::interval(CATCH_UP);
    catch_up.tick().await;
    let mut since = s.started_at;
    // Jobs live in this set: if the node is killed (this task aborted), they die with it, as in
    // a crash; a graceful stop lets them finish.
    let mut jobs = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
            _ = catch_up.tick() => {
                let now = Timestamp::now();
                let filter = Filter::new()
                    .kinds(kinds.iter().copied().map(Kind::from))
                    .since(since)
                    .limit(1000);
                if let Ok(found) = s.relay.fetch(filter, Duration::from_secs(2)).await {
                    for event in found {
                        jobs.spawn(job::handle(s.clone(), event));
                    }
                    since = Timestamp::from(now.as_secs().saturating_sub(CATCH_UP.as_secs() * 2).max(s.started_at.as_secs()));
                }
            }
            note = notes.recv() => match note {
                Ok(RelayPoolNotification::Event { event, .. }) if kinds.contains(&event.kind.as_u16()) => {
                    jobs.spawn(job::handle(s.clone(), *event));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("node fell behind and missed {n} relay messages");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    jobs.detach_all();
}

async fn heartbeats(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(s.options.heartbeat_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => s.heartbeat(false).await,
        }
    }
}

/// A one-shot channel used to wake a pay-first job when its invoice settles.
pub(crate) type PaidSignal = oneshot::Sender<settle::Settled>;
