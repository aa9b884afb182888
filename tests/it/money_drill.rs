//! A payment is paid once or not at all, and the payer knows which.
//!
//! - a hub process frozen (SIGSTOP) past a client's deadline never pays late, and the client's
//!   report — paid, NOT paid, or unknown (`pylon wallet send` exit 3) — matches the ledger;
//! - the money drill: wallets (in-process `NwcWallet`s and `pylon wallet send` processes) pay each
//!   other through a real relay while the hub process is SIGKILLed and restarted; afterwards every
//!   client's view is reconciled with the ledger, payment by payment and sat by sat.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Event, Filter, Keys, PublicKey, RelayPoolNotification, RelayUrl};
use pylon::hub::Ledger;
use pylon::protocol::nip47::{
    Encryption, ErrorCode, MakeInvoiceParams, Request, Transaction, TransactionState,
};
use pylon::relay::{MarketClient, Reachability};
use pylon::wallet::nwc::NwcOptions;
use pylon::wallet::{NwcWallet, Wallet, WalletError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::{
    pylon, pylon_at, start_hub_process, stderr, stdout, Home, RelayProcess, Spawned,
};

/// A `pylon hub` process that the test stops, kills and restarts on the same home and relay.
struct HubProcess {
    home: PathBuf,
    relay: String,
    process: Option<Spawned>,
    pubkey: String,
}

impl HubProcess {
    fn start(home: &Path, relay: &str) -> Self {
        let (process, pubkey) = start_hub_process(home, relay);
        Self {
            home: home.to_path_buf(),
            relay: relay.to_string(),
            process: Some(process),
            pubkey,
        }
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().expect("hub running").child.id()
    }

    fn public_key(&self) -> PublicKey {
        PublicKey::from_hex(&self.pubkey).expect("hub key")
    }

    /// SIGSTOP, returning once the kernel reports the process stopped.
    fn freeze(&self) {
        signal(self.pid(), "STOP");
        let pid = self.pid();
        wait_for("the hub to stop", Duration::from_secs(5), || {
            process_state(pid) == Some('T')
        });
    }

    fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(&mut self) {
        let status = self.process.take().expect("hub running").signal("KILL");
        assert!(!status.success(), "killed, not exited");
    }

    /// SIGTERM, waiting for the exit: the hub finishes every request in hand first.
    fn terminate(&mut self) {
        let status = self.process.take().expect("hub running").signal("TERM");
        assert!(status.success(), "hub exits cleanly on SIGTERM: {status:?}");
    }

    /// Starts it again; returns once it answers.
    fn restart(&mut self) {
        assert!(self.process.is_none());
        let (process, pubkey) = start_hub_process(&self.home, &self.relay);
        assert_eq!(pubkey, self.pubkey, "same hub identity after restart");
        self.process = Some(process);
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The state letter in /proc/PID/stat (R, S, T, …).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Polls `done` until it holds; panics naming `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock")
}

fn uri(hub: &PublicKey, relay: &RelayUrl, client: &Keys) -> NostrWalletConnectURI {
    NostrWalletConnectURI::new(*hub, vec![relay.clone()], client.secret_key().clone(), None)
}

async fn invoice(payee: &NwcWallet, msat: u64) -> Result<Transaction, WalletError> {
    payee
        .make_invoice(MakeInvoiceParams {
            amount: msat,
            description: Some("drill".into()),
            description_hash: None,
            expiry: None,
        })
        .await
}

/// Watches the relay for `pay_invoice` requests to the hub from the given clients, decrypted with
/// their keys: the test reads each request's id and NIP-40 expiration as the hub will see them.
struct RequestWatch {
    client: MarketClient,
    clients: HashMap<PublicKey, Keys>,
    hub: PublicKey,
}

impl RequestWatch {
    async fn start(relay: &RelayUrl, hub: PublicKey, clients: &[&Keys]) -> Self {
        let client = MarketClient::connect(
            Keys::generate(),
            std::slice::from_ref(relay),
            Duration::from_secs(5),
            Reachability::OneShot,
        )
        .await
        .expect("watcher connects");
        client
            .sdk()
            .subscribe(
                Filter::new()
                    .kind(pylon::protocol::kinds::NWC_REQUEST)
                    .pubkey(hub),
                None,
            )
            .await
            .expect("subscribe");
        let clients = clients
            .iter()
            .map(|k| (k.public_key(), (*k).clone()))
            .collect();
        Self {
            client,
            clients,
            hub,
        }
    }

    /// The `pay_invoice` requests, one per `(client, payment hash)` in `wanted`, in that order.
    async fn payments(
        &self,
        notes: &mut tokio::sync::broadcast::Receiver<RelayPoolNotification>,
        wanted: &[(PublicKey, &str)],
    ) -> Vec<Event> {
        let mut found: HashMap<(PublicKey, String), Event> = HashMap::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while found.len() < wanted.len() {
            let note = tokio::time::timeout_at(until, notes.recv())
                .await
                .expect("the payment requests reach the relay")
                .expect("relay notifications");
            let RelayPoolNotification::Event { event, .. } = note else {
                continue;
            };
            let Some(keys) = self.clients.get(&event.pubkey) else {
                continue;
            };
            let Ok(json) = Encryption::Nip44V2.decrypt(keys, &self.hub, &event.content) else {
                continue;
            };
            if let Ok(Request::PayInvoice(p)) = Request::parse(&json) {
                let hash = pylon::bolt11::decode(&p.invoice)
                    .expect("bolt11")
                    .payment_hash;
                if wanted
                    .iter()
                    .any(|(pk, h)| *pk == event.pubkey && *h == hash)
                {
                    found.entry((event.pubkey, hash)).or_insert(*event);
                }
            }
        }
        wanted
            .iter()
            .map(|(pk, h)| found[&(*pk, h.to_string())].clone())
            .collect()
    }
}

fn expiration_of(event: &Event) -> u64 {
    pylon::protocol::nip47::expiration(event)
        .expect("a payment request carries an expiration")
        .as_secs()
}

/// The hub's log lines (its home's log files).
fn hub_log(home: &Path) -> String {
    let mut all = String::new();
    if let Ok(dir) = std::fs::read_dir(home.join("logs")) {
        for entry in dir.flatten() {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

fn settled_state(ledger: &Ledger, payee: &str, hash: &str) -> Option<TransactionState> {
    ledger
        .lookup(payee, hash)
        .expect("lookup")
        .expect("the invoice exists")
        .state
}

/// Item 1 of the money guarantee, against a real hub process frozen with SIGSTOP:
/// - frozen until after the client's deadline, resumed while the client still asks about the
///   payment → the expired request is dropped, never paid; the client reports NOT paid;
/// - frozen for the client's whole wait and look-up window → the client (and `pylon wallet send`,
///   exit 3) reports the outcome as unknown, and a later look-up resolves it: not paid;
/// - frozen briefly, well inside the deadline → paid once, with the ledger's preimage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_hub_never_pays_late_and_the_payer_knows_what_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let op = dir.path().join("op");
    crate::common::init_home(&op);
    let cli = Home::new(dir.path().join("cli"));
    set_wallet_timeout(&cli.path, 3);
    let relay = RelayProcess::start(&op, &op.join("relay"));
    let mut hub = HubProcess::start(&op, &relay.url);
    let relay_url = RelayUrl::parse(&relay.url).expect("url");
    let hub_pk = hub.public_key();

    let (alice_keys, bob_keys) = (Keys::generate(), Keys::generate());
    let cli_keys = cli.identity.wallet_client_keys();
    let quick = NwcOptions {
        request_timeout: Duration::from_secs(4),
        resend_every: Duration::from_millis(300),
        outcome_timeout: Duration::from_secs(15),
        ..NwcOptions::default()
    };
    let alice = NwcWallet::connect(&uri(&hub_pk, &relay_url, &alice_keys), quick)
        .await
        .expect("alice");
    let bob = NwcWallet::connect(&uri(&hub_pk, &relay_url, &bob_keys), quick)
        .await
        .expect("bob");
    let cli_wallet = NwcWallet::connect(&uri(&hub_pk, &relay_url, &cli_keys), quick)
        .await
        .expect("cli account");
    alice.top_up(100_000, "drill").await.expect("alice funded");
    cli_wallet
        .top_up(100_000, "drill")
        .await
        .expect("cli funded");
    let alice = Arc::new(alice);
    let watch = RequestWatch::start(&relay_url, hub_pk, &[&alice_keys, &cli_keys]).await;
    let mut notes = watch.client.notifications();
    let alice_pk = alice_keys.public_key();

    // 1. Frozen past the deadline, thawed while the client still asks: NOT paid, for sure.
    let first = invoice(&bob, 1_001).await.expect("invoice");
    hub.freeze();
    let pay = tokio::spawn({
        let (alice, bolt11) = (alice.clone(), first.invoice.clone().expect("bolt11"));
        async move { alice.pay_invoice(bolt11, None).await }
    });
    let req1 = watch
        .payments(&mut notes, &[(alice_pk, &first.payment_hash)])
        .await
        .remove(0);
    let expires = expiration_of(&req1);
    // Thaw during the expiration second itself, the last one a lenient reading of NIP-40 (like
    // nostr-sdk's relay client, which drops only events whose expiration is *before* now) lets
    // through: only the hub's own check stands between the request and a late payment. The
    // client is still waiting then (its wait ends after that second).
    while unix_now() < Duration::from_secs(expires) + Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        unix_now() < Duration::from_secs(expires) + Duration::from_millis(900),
        "thawed inside the expiration second"
    );
    assert!(!pay.is_finished(), "the client still waits for the payment");
    hub.thaw();
    match pay.await.expect("task") {
        Err(WalletError::NotPaid { payment_hash, .. }) => {
            assert_eq!(payment_hash, first.payment_hash)
        }
        other => panic!("expected a definite NOT paid, got {other:?}"),
    }

    // 2. Frozen for the whole wait and look-up window: the outcome is unknown — for a library
    //    caller and for `pylon wallet send` (exit 3) — and a later look-up resolves it.
    let brief = NwcWallet::connect(
        &uri(&hub_pk, &relay_url, &alice_keys),
        NwcOptions {
            outcome_timeout: Duration::from_secs(1),
            ..quick
        },
    )
    .await
    .expect("alice, impatient");
    let second = invoice(&bob, 1_002).await.expect("invoice");
    let third = invoice(&bob, 1_003).await.expect("invoice");
    hub.freeze();
    let pay = tokio::spawn({
        let bolt11 = second.invoice.clone().expect("bolt11");
        async move {
            let result = brief.pay_invoice(bolt11, None).await;
            brief.shutdown().await;
            result
        }
    });
    let send = tokio::task::spawn_blocking({
        let (home, relay, bolt11) = (
            cli.path.clone(),
            relay.url.clone(),
            third.invoice.clone().expect("bolt11"),
        );
        move || pylon_at(&home, &relay, &["wallet", "send", &bolt11, "--json"])
    });
    let reqs = watch
        .payments(
            &mut notes,
            &[
                (alice_pk, &second.payment_hash),
                (cli_keys.public_key(), &third.payment_hash),
            ],
        )
        .await;
    match pay.await.expect("task") {
        Err(WalletError::Unknown { payment_hash }) => {
            assert_eq!(payment_hash, second.payment_hash)
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    let sent = send.await.expect("task");
    assert_eq!(sent.status.code(), Some(3), "exit 3: {}", stderr(&sent));
    assert!(
        stderr(&sent).contains("outcome is unknown"),
        "{}",
        stderr(&sent)
    );
    let report: Value = serde_json::from_str(&stdout(&sent)).expect("send --json");
    assert_eq!(report["outcome"], "unknown");
    assert_eq!(report["payment_hash"], third.payment_hash.as_str());
    hub.thaw();
    match alice.lookup_invoice(second.payment_hash.clone()).await {
        Err(e) => assert_eq!(e.code(), Some(&ErrorCode::NotFound), "{e}"),
        Ok(tx) => panic!("the expired payment ran: {tx:?}"),
    }
    let looked = pylon_at(
        &cli.path,
        &relay.url,
        &["wallet", "history", "--hash", &third.payment_hash, "--json"],
    );
    assert_eq!(looked.status.code(), Some(1), "{}", stderr(&looked));
    let looked: Value = serde_json::from_str(&stdout(&looked)).expect("history --json");
    assert_eq!(looked["state"], "not_found");

    // 3. Frozen briefly, well inside the deadline: paid, once.
    let fourth = invoice(&bob, 1_004).await.expect("invoice");
    hub.freeze();
    let pay = tokio::spawn({
        let (alice, bolt11) = (alice.clone(), fourth.invoice.clone().expect("bolt11"));
        async move { alice.pay_invoice(bolt11, None).await }
    });
    let req4 = watch
        .payments(&mut notes, &[(alice_pk, &fourth.payment_hash)])
        .await
        .remove(0);
    assert!(unix_now() < Duration::from_secs(expiration_of(&req4)));
    hub.thaw();
    let paid = pay.await.expect("task").expect("paid after the thaw");
    assert!(pylon::bolt11::preimage_matches(
        &paid.preimage,
        &fourth.payment_hash
    ));

    // Stopping the hub finishes everything in hand; then the books must match every report.
    hub.terminate();
    let log = hub_log(&op);
    let refused = |id: &str, by: &str| log.lines().any(|l| l.contains(id) && l.contains(by));
    let id = req1.id.to_hex();
    assert!(
        refused(&id, "dropping expired request"),
        "the hub's service received and dropped expired request {id}"
    );
    // Thawed long after: refused on receipt (by the hub's relay client or its service).
    for req in &reqs {
        let id = req.id.to_hex();
        assert!(
            refused(&id, "xpired"),
            "the hub received and refused expired request {id}"
        );
    }
    let ledger = Ledger::open(&op.join("hub").join("ledger.db")).expect("ledger");
    let bob_hex = bob_keys.public_key().to_hex();
    for inv in [&first, &second, &third] {
        assert_eq!(
            settled_state(&ledger, &bob_hex, &inv.payment_hash),
            Some(TransactionState::Pending),
            "reported not paid or unknown-then-not-found, and not paid"
        );
    }
    let fourth_tx = ledger
        .lookup(&bob_hex, &fourth.payment_hash)
        .expect("lookup")
        .expect("invoice");
    assert_eq!(fourth_tx.state, Some(TransactionState::Settled));
    assert_eq!(fourth_tx.preimage.as_deref(), Some(paid.preimage.as_str()));
    assert_eq!(
        ledger.balance(&alice_pk.to_hex()).expect("balance"),
        100_000 - 1_004
    );
    assert_eq!(ledger.balance(&bob_hex).expect("balance"), 1_004);
    assert_eq!(
        ledger
            .balance(&cli_keys.public_key().to_hex())
            .expect("balance"),
        100_000
    );
    let audit = ledger.audit().expect("audit");
    assert!(audit.ok, "{audit:?}");
    assert_eq!(audit.total_issued_msat, 200_000);
    bob.shutdown().await;
    cli_wallet.shutdown().await;
}

/// What a payer was told about one payment.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    /// Paid, with this preimage.
    Paid(String),
    /// NOT paid (any error other than an unknown outcome).
    NotPaid(String),
    /// The outcome is unknown.
    Unknown,
}

/// One payment attempt, as its payer saw it.
#[derive(Debug, Clone)]
struct Attempt {
    payer: String,
    payee: String,
    hash: String,
    msat: u64,
    told: Told,
    /// Whether a `pylon wallet send` process made it.
    cli: bool,
    /// When the payment began and ended, seconds into the drill (for the report).
    window: (f32, f32),
}

/// What a later look-up said about a payment whose outcome was unknown.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Settled(String),
    NotSettled,
}

/// Progress counters the kill schedule follows.
struct Progress {
    began: Instant,
    done: AtomicUsize,
    /// Payments made by `pylon wallet send` processes.
    cli_done: AtomicUsize,
    in_flight: AtomicUsize,
    stop: AtomicBool,
}

const DRILL_WALLETS: usize = 12;
const DRILL_CLI_PAYERS: usize = 2;
const DRILL_KILLS: usize = 5;
const DRILL_FUNDING_MSAT: u64 = 2_000_000;

/// An in-process payer: pays random peers' invoices until told to stop.
async fn pay_peers(
    me: usize,
    wallets: Arc<Vec<Arc<NwcWallet>>>,
    progress: Arc<Progress>,
    seed: u64,
) -> Vec<Attempt> {
    let began = progress.began;
    let mut rng = StdRng::seed_from_u64(seed);
    let payer = &wallets[me];
    let mut attempts = Vec::new();
    while !progress.stop.load(Ordering::SeqCst) {
        let to = (me + rng.gen_range(1..wallets.len())) % wallets.len();
        let payee = &wallets[to];
        let msat = rng.gen_range(1_000..10_000);
        // During a hub outage this fails; the payer then has nothing to pay.
        let Ok(inv) = invoice(payee, msat).await else {
            continue;
        };
        let start = began.elapsed().as_secs_f32();
        progress.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = payer
            .pay_invoice(inv.invoice.clone().expect("bolt11"), None)
            .await;
        progress.in_flight.fetch_sub(1, Ordering::SeqCst);
        let told = match result {
            Ok(paid) => Told::Paid(paid.preimage),
            Err(WalletError::Unknown { payment_hash }) => {
                assert_eq!(payment_hash, inv.payment_hash);
                Told::Unknown
            }
            Err(e) => Told::NotPaid(e.to_string()),
        };
        attempts.push(Attempt {
            payer: payer.client_pubkey().to_hex(),
            payee: payee.client_pubkey().to_hex(),
            hash: inv.payment_hash,
            msat,
            told,
            cli: false,
            window: (start, began.elapsed().as_secs_f32()),
        });
        progress.done.fetch_add(1, Ordering::SeqCst);
    }
    attempts
}

/// A `pylon wallet send` payer: one process per payment, its exit code is what it was told.
async fn pay_peers_by_cli(
    home: PathBuf,
    account: String,
    relay: String,
    wallets: Arc<Vec<Arc<NwcWallet>>>,
    progress: Arc<Progress>,
    seed: u64,
) -> Vec<Attempt> {
    let began = progress.began;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut attempts = Vec::new();
    while !progress.stop.load(Ordering::SeqCst) {
        let payee = &wallets[rng.gen_range(0..wallets.len())];
        let msat = rng.gen_range(1_000..10_000);
        let Ok(inv) = invoice(payee, msat).await else {
            continue;
        };
        let bolt11 = inv.invoice.clone().expect("bolt11");
        let start = began.elapsed().as_secs_f32();
        progress.in_flight.fetch_add(1, Ordering::SeqCst);
        let out = tokio::task::spawn_blocking({
            let (home, relay) = (home.clone(), relay.clone());
            move || pylon_at(&home, &relay, &["wallet", "send", &bolt11, "--json"])
        })
        .await
        .expect("send task");
        progress.in_flight.fetch_sub(1, Ordering::SeqCst);
        let report: Option<Value> = serde_json::from_str(&stdout(&out)).ok();
        let told = match out.status.code() {
            Some(0) => {
                let report = report.expect("send --json on success");
                assert_eq!(report["outcome"], "paid");
                Told::Paid(report["preimage"].as_str().expect("preimage").to_string())
            }
            Some(3) => {
                let report = report.expect("send --json on an unknown outcome");
                assert_eq!(report["outcome"], "unknown");
                assert_eq!(report["payment_hash"], inv.payment_hash.as_str());
                Told::Unknown
            }
            Some(1) => Told::NotPaid(stderr(&out)),
            other => panic!("wallet send exited {other:?}: {}", stderr(&out)),
        };
        attempts.push(Attempt {
            payer: account.clone(),
            payee: payee.client_pubkey().to_hex(),
            hash: inv.payment_hash,
            msat,
            told,
            cli: true,
            window: (start, began.elapsed().as_secs_f32()),
        });
        progress.cli_done.fetch_add(1, Ordering::SeqCst);
        progress.done.fetch_add(1, Ordering::SeqCst);
    }
    attempts
}

/// Waits until `progress.done` reaches `target` and the CLI payers' count `cli_target`; panics
/// after `limit` (the storm stalled).
async fn until_done(progress: &Progress, target: usize, cli_target: usize, limit: Duration) {
    let until = tokio::time::Instant::now() + limit;
    while progress.done.load(Ordering::SeqCst) < target
        || progress.cli_done.load(Ordering::SeqCst) < cli_target
    {
        assert!(
            tokio::time::Instant::now() < until,
            "payments stalled at {} of {target} ({} of {cli_target} by the CLI)",
            progress.done.load(Ordering::SeqCst),
            progress.cli_done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hub-kill money drill. Twelve in-process wallets and two `pylon wallet send` payers, all
/// funded by the faucet, pay each other's invoices concurrently through a real relay process
/// while the hub process is SIGKILLed five times at random moments (some outages shorter than a
/// client's deadline, some longer) and restarted on the same home. Then: the audit is clean, and
/// every payer's view matches the ledger — paid ⇒ settled with that preimage; NOT paid ⇒ not
/// settled; unknown ⇒ resolved by a later look-up, which the ledger confirms; every invoice
/// settled at most once; every account's balance is exactly what the payers' views imply.
/// `PYLON_DRILL_SEED` replays a schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_drill_hub_killed_five_times_mid_storm() {
    let seed = std::env::var("PYLON_DRILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| unix_now().as_nanos() as u64);
    eprintln!("money drill: seed {seed} (PYLON_DRILL_SEED={seed} replays the schedule)");
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let op = dir.path().join("op");
    crate::common::init_home(&op);
    let cli_homes: Vec<Home> = (0..DRILL_CLI_PAYERS)
        .map(|i| {
            let home = Home::new(dir.path().join(format!("cli{i}")));
            set_wallet_timeout(&home.path, 5);
            home
        })
        .collect();
    let relay = RelayProcess::start(&op, &op.join("relay"));
    let mut hub = HubProcess::start(&op, &relay.url);
    let relay_url = RelayUrl::parse(&relay.url).expect("url");
    let hub_pk = hub.public_key();

    // Deadlines short against the outages, so payments end in every possible way.
    let options = NwcOptions {
        request_timeout: Duration::from_secs(3),
        resend_every: Duration::from_millis(300),
        outcome_timeout: Duration::from_millis(1_500),
        ..NwcOptions::default()
    };
    // Funding happens before any outage, with the default deadlines: the short ones are for the
    // drill, and on a loaded machine they can end a plain top-up as "not paid".
    let fund = |keys: Keys| {
        let (hub_pk, relay_url) = (hub_pk, relay_url.clone());
        async move {
            let w = NwcWallet::connect(&uri(&hub_pk, &relay_url, &keys), NwcOptions::default())
                .await
                .expect("funding wallet connects");
            w.top_up(DRILL_FUNDING_MSAT, "drill").await.expect("funded");
            w.shutdown().await;
        }
    };
    let mut wallets = Vec::new();
    for _ in 0..DRILL_WALLETS {
        let keys = Keys::generate();
        fund(keys.clone()).await;
        let w = NwcWallet::connect(&uri(&hub_pk, &relay_url, &keys), options)
            .await
            .expect("wallet connects");
        wallets.push(Arc::new(w));
    }
    let mut accounts: Vec<String> = wallets.iter().map(|w| w.client_pubkey().to_hex()).collect();
    for home in &cli_homes {
        let keys = home.identity.wallet_client_keys();
        fund(keys.clone()).await;
        accounts.push(keys.public_key().to_hex());
    }
    let wallets = Arc::new(wallets);
    let progress = Arc::new(Progress {
        began,
        done: AtomicUsize::new(0),
        cli_done: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for i in 0..DRILL_WALLETS {
        tasks.push(tokio::spawn(pay_peers(
            i,
            wallets.clone(),
            progress.clone(),
            seed.wrapping_add(i as u64),
        )));
    }
    for (i, home) in cli_homes.iter().enumerate() {
        tasks.push(tokio::spawn(pay_peers_by_cli(
            home.path.clone(),
            accounts[DRILL_WALLETS + i].clone(),
            relay.url.clone(),
            wallets.clone(),
            progress.clone(),
            seed.wrapping_add(100 + i as u64),
        )));
    }

    // The kill schedule: after a random number of payments since the last restart, a random
    // pause, then SIGKILL; down for a random time — kills 2 and 4 longer than any deadline.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut schedule = Vec::new();
    for k in 0..DRILL_KILLS {
        // Some undisturbed flow first, including a `pylon wallet send` or two.
        let target = progress.done.load(Ordering::SeqCst) + rng.gen_range(10..40);
        let cli_target = progress.cli_done.load(Ordering::SeqCst) + rng.gen_range(1..3);
        until_done(&progress, target, cli_target, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        let flying = progress.in_flight.load(Ordering::SeqCst);
        let killed_at = began.elapsed().as_secs_f32();
        tokio::task::block_in_place(|| hub.kill());
        let down = if k % 2 == 1 {
            rng.gen_range(4_000..5_000)
        } else {
            rng.gen_range(0..800)
        };
        tokio::time::sleep(Duration::from_millis(down)).await;
        tokio::task::block_in_place(|| hub.restart());
        eprintln!(
            "money drill: kill {} at {killed_at:.1} s with {flying} payments in flight, down \
             {down} ms, answering again at {:.1} s",
            k + 1,
            began.elapsed().as_secs_f32()
        );
        schedule.push((flying, down));
    }
    let target = progress.done.load(Ordering::SeqCst) + 10;
    let cli_target = progress.cli_done.load(Ordering::SeqCst) + 1;
    until_done(&progress, target, cli_target, Duration::from_secs(30)).await;
    progress.stop.store(true, Ordering::SeqCst);
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.extend(t.await.expect("payer task"));
    }
    let storm = began.elapsed();

    // Every unknown outcome must be resolvable now that the hub is back: by the payer's own
    // look-up (the library, or `pylon wallet history --hash`).
    let by_account: HashMap<String, Arc<NwcWallet>> = wallets
        .iter()
        .map(|w| (w.client_pubkey().to_hex(), w.clone()))
        .collect();
    let mut resolved: HashMap<String, Resolved> = HashMap::new();
    for a in attempts.iter().filter(|a| a.cli) {
        eprintln!(
            "money drill: cli {:.1}–{:.1} s {:?}",
            a.window.0,
            a.window.1,
            match &a.told {
                Told::Paid(_) => "paid",
                Told::NotPaid(_) => "not paid",
                Told::Unknown => "unknown",
            }
        );
    }
    for a in attempts.iter().filter(|a| a.told == Told::Unknown) {
        let answer = if a.cli {
            let home = &cli_homes[accounts[DRILL_WALLETS..]
                .iter()
                .position(|acct| *acct == a.payer)
                .expect("a cli payer")];
            let out = pylon_at(
                &home.path,
                &relay.url,
                &["wallet", "history", "--hash", &a.hash, "--json"],
            );
            let tx: Value = serde_json::from_str(&stdout(&out))
                .unwrap_or_else(|e| panic!("unresolvable {}: {e}: {}", a.hash, stderr(&out)));
            match tx["state"].as_str() {
                Some("settled") => {
                    Resolved::Settled(tx["preimage"].as_str().expect("preimage").to_string())
                }
                Some("not_found" | "pending" | "expired") => Resolved::NotSettled,
                other => panic!("unresolvable {}: state {other:?}", a.hash),
            }
        } else {
            let payer = &by_account[&a.payer];
            let mut answer = None;
            for _ in 0..3 {
                match payer.lookup_invoice(a.hash.clone()).await {
                    Ok(tx) if tx.state == Some(TransactionState::Settled) => {
                        answer = Some(Resolved::Settled(tx.preimage.expect("preimage")));
                    }
                    Ok(_) => answer = Some(Resolved::NotSettled),
                    Err(e) if e.code() == Some(&ErrorCode::NotFound) => {
                        answer = Some(Resolved::NotSettled)
                    }
                    Err(e) => {
                        eprintln!("money drill: look-up of {} failed ({e}); again", a.hash);
                        continue;
                    }
                }
                break;
            }
            answer.unwrap_or_else(|| panic!("unknown outcome of {} never resolved", a.hash))
        };
        resolved.insert(a.hash.clone(), answer);
    }

    // Stop the hub (it finishes what it holds), then hold every report against the books.
    hub.terminate();
    let audit_out = pylon(&op)
        .args(["hub", "audit", "--json"])
        .output()
        .expect("audit");
    assert!(audit_out.status.success(), "audit: {}", stdout(&audit_out));
    let audit: Value = serde_json::from_str(&stdout(&audit_out)).expect("audit --json");
    assert_eq!(audit["ok"], true, "{audit}");
    let funded = (DRILL_WALLETS + DRILL_CLI_PAYERS) as u64;
    assert_eq!(audit["total_issued_msat"], funded * DRILL_FUNDING_MSAT);
    assert_eq!(audit["total_balance_msat"], funded * DRILL_FUNDING_MSAT);

    let ledger = Ledger::open(&op.join("hub").join("ledger.db")).expect("ledger");
    let mut expected: BTreeMap<String, i64> = accounts
        .iter()
        .map(|a| (a.clone(), DRILL_FUNDING_MSAT as i64))
        .collect();
    let mut hashes = HashSet::new();
    let (mut paid, mut not_paid, mut unknown, mut unknown_settled) = (0u64, 0u64, 0u64, 0u64);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut moved = 0u64;
    for a in &attempts {
        assert!(hashes.insert(a.hash.clone()), "one attempt per invoice");
        let tx = ledger
            .lookup(&a.payee, &a.hash)
            .expect("lookup")
            .expect("every attempted invoice exists");
        let settled = tx.state == Some(TransactionState::Settled);
        let outgoing = ledger.lookup(&a.payer, &a.hash).expect("lookup");
        let preimage = match (&a.told, resolved.get(&a.hash)) {
            (Told::Paid(p), _) => {
                paid += 1;
                assert!(settled, "reported paid but not settled: {a:?}");
                Some(p.clone())
            }
            (Told::NotPaid(why), _) => {
                not_paid += 1;
                let why = why.trim().trim_start_matches("error: ");
                let why = why
                    .split([':', ';'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                *reasons.entry(why).or_default() += 1;
                assert!(!settled, "reported NOT paid but settled: {a:?}");
                None
            }
            (Told::Unknown, Some(Resolved::Settled(p))) => {
                unknown += 1;
                unknown_settled += 1;
                assert!(
                    settled,
                    "look-up said settled but the ledger does not: {a:?}"
                );
                Some(p.clone())
            }
            (Told::Unknown, Some(Resolved::NotSettled)) => {
                unknown += 1;
                assert!(
                    !settled,
                    "look-up said not paid but the ledger settled it: {a:?}"
                );
                None
            }
            (Told::Unknown, None) => unreachable!("every unknown was resolved above"),
        };
        if let Some(p) = preimage {
            assert_eq!(
                tx.preimage.as_deref(),
                Some(p.as_str()),
                "same preimage: {a:?}"
            );
            assert!(
                outgoing.is_some(),
                "settled by this payer, not someone else: {a:?}"
            );
            moved += a.msat;
            *expected.get_mut(&a.payer).expect("payer") -= a.msat as i64;
            *expected.get_mut(&a.payee).expect("payee") += a.msat as i64;
        }
    }
    // Exactly the settlements the payers know of happened: the faucet grants and their payments.
    assert_eq!(
        audit["settled_invoices"],
        funded + paid + unknown_settled,
        "no settlement a payer was not told of, none twice"
    );
    assert_eq!(audit["transfers"], funded + paid + unknown_settled);
    assert_eq!(
        audit["total_transferred_msat"],
        funded * DRILL_FUNDING_MSAT + moved,
        "exactly the amounts the payers were told of moved"
    );
    for (account, msat) in &expected {
        assert_eq!(
            ledger.balance(account).expect("balance") as i64,
            *msat,
            "balance of {account} is what its payments imply"
        );
    }
    let attempts_made = attempts.len() as u64;
    let by_cli = attempts.iter().filter(|a| a.cli).count();
    eprintln!(
        "money drill: {attempts_made} payments ({by_cli} by `pylon wallet send`): {paid} paid, \
         {not_paid} NOT paid {reasons:?}, {unknown} unknown then resolved ({unknown_settled} \
         settled); {} kills {schedule:?}; storm {storm:.1?}, total {:.1?}",
        schedule.len(),
        began.elapsed()
    );
    for a in attempts.iter().filter(|a| a.cli) {
        eprintln!(
            "money drill: cli {:.1}–{:.1} s {:?}",
            a.window.0,
            a.window.1,
            match &a.told {
                Told::Paid(_) => "paid",
                Told::NotPaid(_) => "not paid",
                Told::Unknown => "unknown",
            }
        );
    }
    for a in attempts.iter().filter(|a| a.told == Told::Unknown) {
        eprintln!(
            "money drill: unknown {} ({} msat, cli {}, {:.1}–{:.1} s) resolved {:?}",
            a.hash, a.msat, a.cli, a.window.0, a.window.1, resolved[&a.hash]
        );
    }
    assert_eq!(schedule.len(), DRILL_KILLS);
    assert!(
        schedule.iter().map(|(flying, _)| flying).sum::<usize>() > 0,
        "the hub was killed with payments in flight"
    );
    assert!(paid >= 50, "payments went through: {paid}");
    assert!(by_cli > 0, "the CLI paid too");
    assert!(
        not_paid + unknown > 0,
        "the outages interrupted payments (else the drill proves nothing)"
    );
    drop(by_account);
    if let Ok(wallets) = Arc::try_unwrap(wallets) {
        for w in wallets.into_iter().filter_map(|w| Arc::try_unwrap(w).ok()) {
            w.shutdown().await;
        }
    }
}

fn set_wallet_timeout(home: &Path, secs: u64) {
    let path = home.join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let replaced = text.replacen("timeout_secs = 20", &format!("timeout_secs = {secs}"), 1);
    assert_ne!(text, replaced, "the [wallet] timeout is in the config");
    std::fs::write(&path, replaced).expect("write config");
}
