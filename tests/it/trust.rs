//! Every trust claim, attacked with real parts: a payee that makes up a payment, a provider that
//! asks too much, a stranger that answers first or without claiming, a buyer with no money.
//! The relay and hub are real (in-process), providers are real nodes or hostile keys speaking
//! the protocol by hand, buyers are the library and the spawned CLI.

use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::{Event, EventId, Filter, Keys, Kind};
use pylon::bolt11::{self, Purpose};
use pylon::buyer::{Buyer, SpendLimits, WaitOptions};
use pylon::protocol::failure::FailureCode;
use pylon::protocol::nip47::MakeInvoiceParams;
use pylon::protocol::nip90::{
    Amount, JobInput, JobRequest, JobResult, JobStatus, NewFeedback, NewJob,
};
use pylon::protocol::payment_link;
use pylon::protocol::receipt::Receipt;
use pylon::protocol::settlement::Attestation;
use pylon::relay::{MarketClient, Reachability};
use pylon::store::{JobState, Store};
use pylon::wallet::{NwcWallet, Wallet};
use serde_json::Value;

use crate::common::{pylon_at, request_of, start_node_process, stderr, Home, Market};

async fn client(m: &Market, keys: &Keys) -> MarketClient {
    MarketClient::connect(
        keys.clone(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("relay")
}

async fn buyer_with(
    m: &Market,
    sats: u64,
    limits: SpendLimits,
) -> (Buyer, Arc<NwcWallet>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate();
    let wallet = Arc::new(m.funded_wallet(sats).await);
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let w: Arc<dyn Wallet> = wallet.clone();
    let b = Buyer::start(
        keys.clone(),
        Arc::new(client(m, &keys).await),
        Some(w),
        store,
        limits,
    )
    .await
    .expect("buyer");
    (b, wallet, dir)
}

/// Runs `job` on `b` in the background, auto-paying, for `secs` at most.
fn auto_paid(
    b: &Arc<Buyer>,
    job: NewJob,
    secs: u64,
) -> tokio::task::JoinHandle<Result<pylon::buyer::Outcome, pylon::buyer::BuyerError>> {
    let b = b.clone();
    tokio::spawn(async move {
        b.run(
            &job,
            WaitOptions {
                timeout: Duration::from_secs(secs),
                auto_pay: true,
                max_msats: None,
            },
        )
        .await
    })
}

/// A hostile (or honest, scripted) provider: its keys, relay client and hub wallet.
struct Actor {
    keys: Keys,
    relay: MarketClient,
    wallet: NwcWallet,
}

impl Actor {
    async fn new(m: &Market) -> Self {
        let keys = Keys::generate();
        Self {
            relay: client(m, &keys).await,
            wallet: m.wallet().await,
            keys,
        }
    }

    async fn invoice(&self, job: &EventId, msats: u64) -> pylon::protocol::nip47::Transaction {
        self.wallet
            .make_invoice(MakeInvoiceParams {
                amount: msats,
                description: Some(payment_link::description(job, &self.keys.public_key())),
                description_hash: None,
                expiry: Some(600),
            })
            .await
            .expect("invoice")
    }

    async fn claim(&self, request: &Event) {
        let ev = NewFeedback {
            status: JobStatus::Processing,
            info: "claimed".into(),
            failure: None,
            amount: None,
        }
        .to_event(&self.keys, request.id, request.pubkey)
        .expect("feedback");
        self.relay.publish(&ev).await.expect("publish claim");
    }

    async fn answer(&self, request: &Event, content: &str, amount: Amount) -> Event {
        let parsed = JobRequest::from_event(request, None).expect("parse");
        let ev = JobResult::to_event(&self.keys, request, &parsed, content, Some(&amount))
            .expect("result");
        self.relay.publish(&ev).await.expect("publish result");
        ev
    }
}

fn amount(tx: &pylon::protocol::nip47::Transaction) -> Amount {
    Amount {
        msats: tx.amount,
        bolt11: tx.invoice.clone(),
    }
}

fn open_job(bid_msats: Option<u64>) -> NewJob {
    NewJob {
        kind: 5960,
        inputs: vec![JobInput::text("fn f() {}\n")],
        params: vec![("path".into(), "f.rs".into())],
        bid_msats,
        ..Default::default()
    }
}

/// The honest analysis of [`open_job`]'s file: what the buyer checks a result against.
fn valid() -> String {
    serde_json::to_string(&pylon::executors::code::analyze("f.rs", "fn f() {}\n")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payee_cannot_prove_a_payment_that_never_happened() {
    let m = Market::start().await;
    let p = Actor::new(&m).await;
    // A made-up buyer "asks" for a job (the provider signs it with a key it made).
    let fake_buyer = Keys::generate();
    let request = open_job(Some(2_000))
        .to_event(&fake_buyer)
        .expect("request");
    p.relay.publish(&request).await.expect("publish");
    p.claim(&request).await;
    // The hub does not tell the payee its preimage before the invoice settles.
    let tx = p.invoice(&request.id, 1_000).await;
    assert!(tx.preimage.is_none(), "make_invoice revealed the preimage");
    let looked = p
        .wallet
        .lookup_invoice(tx.payment_hash.clone())
        .await
        .expect("lookup");
    assert!(looked.preimage.is_none() && looked.attestation().is_none());
    let result = p.answer(&request, &valid(), amount(&tx)).await;

    let trace = |trust: pylon::provenance::TrustedHubs| {
        let (m, id) = (&m, request.id);
        async move {
            let auditor = client(m, &Keys::generate()).await;
            let t = pylon::provenance::trace(&auditor, id, Duration::from_secs(5), &trust)
                .await
                .expect("trace");
            auditor.shutdown().await;
            t
        }
    };
    let receipt =
        |bolt11: String, hash: String, preimage: String, settlement: Option<Attestation>| Receipt {
            id: None,
            provider: None,
            request_id: request.id,
            result_id: result.id,
            buyer: fake_buyer.public_key(),
            amount_msats: 1_000,
            bolt11,
            payment_hash: hash,
            preimage,
            settlement,
            created_at: None,
        };
    // 1. The hub's invoice with a guessed preimage.
    let forged = receipt(
        tx.invoice.clone().expect("bolt11"),
        tx.payment_hash.clone(),
        "11".repeat(32),
        None,
    )
    .to_event(&p.keys)
    .expect("receipt");
    p.relay.publish(&forged).await.expect("publish");
    let t = trace(m.trust()).await;
    assert!(!t.verified, "a guessed preimage verified");
    assert!(
        t.reason.as_deref().unwrap_or("").contains("preimage"),
        "{:?}",
        t.reason
    );

    // 2. An invoice of its own making (it knows that preimage), no attestation.
    let own_node = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    let own = bolt11::create(
        &own_node,
        1_000,
        &Purpose::Description(payment_link::description(&request.id, &p.keys.public_key())),
        600,
    )
    .expect("invoice");
    let own_result = p
        .answer(
            &request,
            &valid(),
            Amount {
                msats: 1_000,
                bolt11: Some(own.bolt11.clone()),
            },
        )
        .await;
    let mut r = receipt(
        own.bolt11.clone(),
        own.payment_hash.clone(),
        own.preimage.clone(),
        None,
    );
    r.result_id = own_result.id;
    p.relay
        .publish(&r.to_event(&p.keys).expect("receipt"))
        .await
        .expect("publish");
    // 3. The same, with an attestation it signed itself as its own "hub".
    let mut self_attested = Attestation::statement(&own.payment_hash, 1_000, 1, "a", "b");
    self_attested.seal(&own_node);
    r.settlement = Some(self_attested);
    p.relay
        .publish(&r.to_event(&p.keys).expect("receipt"))
        .await
        .expect("publish");
    let t = trace(m.trust()).await;
    assert!(!t.verified, "a self-made payment verified: {t:?}");
    let warnings = t.warnings.join("\n");
    assert!(warnings.contains("no settlement attestation"), "{warnings}");
    assert!(warnings.contains("unknown hub"), "{warnings}");
    assert!(warnings.contains("preimage"), "{warnings}");
    assert_eq!(
        t.timeline.iter().filter(|s| s.what == "receipt").count(),
        0,
        "no receipt counted"
    );

    // The real thing: somebody pays the hub's invoice. Only now does the payee learn the
    // preimage, with the hub's signed word, and a receipt built from them verifies.
    let payer = m.funded_wallet(10).await;
    payer
        .pay_invoice(tx.invoice.clone().expect("bolt11"), None)
        .await
        .expect("pay");
    let settled = p
        .wallet
        .lookup_invoice(tx.payment_hash.clone())
        .await
        .expect("lookup");
    let proof = settled
        .attestation()
        .cloned()
        .expect("an attestation once settled");
    proof
        .check_invoice(
            &tx.payment_hash,
            1_000,
            &bolt11::decode(tx.invoice.as_deref().expect("bolt11"))
                .expect("decode")
                .payee,
        )
        .expect("signed by the invoice's node key");
    assert!(
        proof.paid_by(&payer.client_pubkey().to_hex()),
        "commits to the payer"
    );
    assert!(
        proof.paid_to(&p.wallet.client_pubkey().to_hex()),
        "commits to the payee"
    );
    let honest = receipt(
        tx.invoice.clone().expect("bolt11"),
        tx.payment_hash.clone(),
        settled.preimage.clone().expect("preimage"),
        Some(proof),
    )
    .to_event(&p.keys)
    .expect("receipt");
    p.relay.publish(&honest).await.expect("publish");
    let t = trace(m.trust()).await;
    assert!(t.verified, "{:?} {:#?}", t.reason, t.warnings);
    // … but only for a verifier who trusts this hub.
    let t = trace(pylon::provenance::TrustedHubs::none()).await;
    assert!(!t.verified);
    assert!(
        t.reason.as_deref().unwrap_or("").contains("unknown hub"),
        "{:?}",
        t.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_pay_without_a_bid_is_capped_and_an_open_job_survives_a_greedy_answer() {
    let m = Market::start().await;
    let (b, view, _dir) = buyer_with(&m, 100, SpendLimits::default()).await;
    let b = Arc::new(b);
    let before = view.balance_msat().await.expect("balance");
    let greedy = Actor::new(&m).await;
    let honest = Actor::new(&m).await;
    let follower = auto_paid(&b, open_job(None), 20);
    let request = request_of(&greedy.relay, b.public_key(), &[]).await;
    // 50,000 sats for one file, instantly.
    greedy.claim(&request).await;
    let tx = greedy.invoice(&request.id, 50_000_000).await;
    greedy.answer(&request, &valid(), amount(&tx)).await;
    // An honest answer at 2 sats follows.
    honest.claim(&request).await;
    let fair = honest.invoice(&request.id, 2_000).await;
    honest.answer(&request, &valid(), amount(&fair)).await;
    let o = follower.await.expect("task").expect("run");
    assert!(
        matches!(o.status, JobState::Paid | JobState::Done),
        "the honest answer is paid: {o:?}"
    );
    assert_eq!(o.provider, Some(honest.keys.public_key().to_hex()));
    assert_eq!(
        o.payment.as_ref().map(|p| p.payment_hash.clone()),
        Some(fair.payment_hash.clone())
    );
    let after = view.balance_msat().await.expect("balance");
    assert_eq!(
        before - after,
        2_000,
        "exactly the honest price left the wallet"
    );
    let greedy_invoice = greedy
        .wallet
        .lookup_invoice(tx.payment_hash.clone())
        .await
        .expect("lookup");
    assert!(!greedy_invoice.is_settled(), "the greedy invoice was paid");

    // With only the greedy answer, the job ends unpaid and says why.
    let follower = auto_paid(&b, open_job(None), 8);
    let request = loop {
        let r = request_of(&greedy.relay, b.public_key(), &[]).await;
        if r.id != EventId::from_hex(&o.job_id).expect("id") {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    greedy.claim(&request).await;
    let tx = greedy.invoice(&request.id, 50_000_000).await;
    greedy.answer(&request, &valid(), amount(&tx)).await;
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert_eq!(o.failure, Some(FailureCode::PaymentFailed), "{o:?}");
    assert!(
        o.message.as_deref().unwrap_or("").contains("max_job_sats"),
        "{o:?}"
    );
    assert_eq!(
        view.balance_msat().await.expect("balance"),
        after,
        "nothing paid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_job_pays_only_a_key_that_claimed_it() {
    let m = Market::start().await;
    let (b, view, _dir) = buyer_with(&m, 100, SpendLimits::default()).await;
    let b = Arc::new(b);
    let honest = Actor::new(&m).await;
    let jumper = Actor::new(&m).await;
    let follower = auto_paid(&b, open_job(Some(5_000)), 20);
    let request = request_of(&honest.relay, b.public_key(), &[]).await;
    honest.claim(&request).await;
    // A key that never claimed answers first, at a valid price, with a valid invoice.
    let cheeky = jumper.invoice(&request.id, 1_000).await;
    jumper.answer(&request, &valid(), amount(&cheeky)).await;
    // And an invoice naming the honest provider cannot be re-used by the jumper either.
    let stolen = honest.invoice(&request.id, 1_000).await;
    jumper.answer(&request, &valid(), amount(&stolen)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fair = honest.invoice(&request.id, 2_000).await;
    honest.answer(&request, &valid(), amount(&fair)).await;
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.provider, Some(honest.keys.public_key().to_hex()), "{o:?}");
    assert_eq!(
        o.payment.as_ref().map(|p| p.payment_hash.clone()),
        Some(fair.payment_hash.clone()),
        "{o:?}"
    );
    for hash in [&cheeky.payment_hash, &stolen.payment_hash] {
        let owner = if *hash == cheeky.payment_hash {
            &jumper
        } else {
            &honest
        };
        let tx = owner
            .wallet
            .lookup_invoice(hash.clone())
            .await
            .expect("lookup");
        assert!(
            !tx.is_settled(),
            "an invoice of the jumper's answers was paid"
        );
    }
    assert_eq!(view.balance_msat().await.expect("balance"), 98_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daily_cap_holds_across_jobs_and_a_paid_job_is_never_paid_twice() {
    let m = Market::start().await;
    let limits = SpendLimits {
        max_job_msats: Some(10_000),
        max_daily_msats: Some(2_500),
    };
    let (b, view, _dir) = buyer_with(&m, 100, limits).await;
    let b = Arc::new(b);
    let p = Actor::new(&m).await;
    let mut outcomes = Vec::new();
    let mut seen: Vec<EventId> = Vec::new();
    for _ in 0..3 {
        let follower = auto_paid(&b, open_job(Some(2_000)), 10);
        let request = request_of(&p.relay, b.public_key(), &seen).await;
        seen.push(request.id);
        p.claim(&request).await;
        let tx = p.invoice(&request.id, 1_000).await;
        p.answer(&request, &valid(), amount(&tx)).await;
        outcomes.push(follower.await.expect("task").expect("run"));
    }
    let paid = outcomes.iter().filter(|o| o.payment.is_some()).count();
    assert_eq!(
        paid, 2,
        "2 × 1 sat fit a 2.5 sat day, the third does not: {outcomes:?}"
    );
    let third = &outcomes[2];
    assert!(
        third.message.as_deref().unwrap_or("").contains("daily cap"),
        "{third:?}"
    );
    assert_eq!(view.balance_msat().await.expect("balance"), 98_000);
    // Paying a paid job again pays nothing and hands back the proof.
    let first = EventId::from_hex(&outcomes[0].job_id).expect("id");
    let again = b.pay_job(&first, None).await.expect("pay again");
    assert!(again.already_paid);
    assert_eq!(
        Some(again.preimage.clone()),
        outcomes[0].payment.as_ref().map(|p| p.preimage.clone())
    );
    assert_eq!(view.balance_msat().await.expect("balance"), 98_000);
}

#[test]
fn the_cli_refuses_unbounded_auto_pay_and_an_unfunded_repo_map() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let m = rt.block_on(Market::start());
    let url = m.relay.url().to_string();
    let root = tempfile::tempdir().expect("tempdir");
    let provider = Home::new(root.path().join("provider"));
    let _node = start_node_process(&provider.path, &[&url], &[]);
    let buyer = Home::new(root.path().join("buyer"));
    // No default cap and no bid: refused before anyone works.
    let config = buyer.path.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.contains("max_job_sats = 10"),
        "the default cap is written: {text}"
    );
    std::fs::write(
        &config,
        text.replace("max_job_sats = 10", "max_job_sats = 0"),
    )
    .expect("write");
    let out = pylon_at(
        &buyer.path,
        &url,
        &[
            "job",
            "submit",
            "code-analysis",
            "--input",
            "fn f() {}",
            "--wait",
            "--auto-pay",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--auto-pay needs a spending limit"),
        "{}",
        stderr(&out)
    );
    let shown = pylon_at(&buyer.path, &url, &["config", "show", "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["buyer"]["max_job_sats"], 0, "{shown}");

    // A repo map with an empty wallet stops before the first job.
    let repo = tempfile::tempdir().expect("repo");
    std::fs::write(repo.path().join("a.rs"), "fn a() {}\n").expect("file");
    let out = pylon_at(
        &buyer.path,
        &url,
        &[
            "repomap",
            &repo.path().display().to_string(),
            "--out",
            &root.path().join("out").display().to_string(),
            "--budget",
            "500",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("balance 0 sats < budget 2 sats") && err.contains("pylon wallet faucet"),
        "{err}"
    );
    let buyer_key = buyer.identity.nostr_keys().public_key();
    let requests = rt.block_on(async {
        let c = client(&m, &Keys::generate()).await;
        c.fetch(
            Filter::new().kind(Kind::from(5960)).author(buyer_key),
            Duration::from_secs(2),
        )
        .await
        .expect("fetch")
    });
    assert_eq!(requests.len(), 0, "no job was posted");

    // A trusted hub that is no key at all is named, before any relay is asked.
    let out = pylon_at(
        &buyer.path,
        &url,
        &["job", "trace", &"ab".repeat(32), "--trust-hub", "nope"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--trust-hub nope"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_the_wallet_cannot_pay_says_how_to_fund_it() {
    let m = Market::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate();
    let empty: Arc<dyn Wallet> = Arc::new(m.wallet().await);
    let b = Arc::new(
        Buyer::start(
            keys.clone(),
            Arc::new(client(&m, &keys).await),
            Some(empty),
            Arc::new(Store::open(dir.path()).expect("store")),
            SpendLimits::default(),
        )
        .await
        .expect("buyer"),
    );
    let p = Actor::new(&m).await;
    let follower = auto_paid(&b, open_job(Some(2_000)), 10);
    let request = request_of(&p.relay, b.public_key(), &[]).await;
    p.claim(&request).await;
    let tx = p.invoice(&request.id, 1_000).await;
    p.answer(&request, &valid(), amount(&tx)).await;
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.failure, Some(FailureCode::PaymentFailed), "{o:?}");
    let message = o.message.unwrap_or_default();
    assert!(
        message.contains("balance 0 sats < 1 sats asked")
            && message.contains("pylon wallet faucet 1000"),
        "{message}"
    );
    // A refusal is known not to have moved money: the job may be paid once funded.
    let journaled = b.payment_of(&request.id).expect("journal");
    assert!(
        journaled.is_none(),
        "a refused payment does not block the job: {journaled:?}"
    );
}
