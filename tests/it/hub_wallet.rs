//! The regtest hub and the NWC client, over the real embedded relay: money moves exactly once,
//! refusals carry NIP-47 codes, and hostile input never hurts the hub.

use std::collections::HashSet;
use std::time::Duration;

use nostr_sdk::{EventBuilder, Keys, Kind, Tag, TagKind, Timestamp};
use pylon::protocol::nip47::{
    self, Encryption, ErrorCode, ListTransactionsParams, MakeInvoiceParams, Request, Response,
    TransactionType,
};
use pylon::wallet::{NwcWallet, Wallet};

use crate::common::{Market, RawClient};

fn invoice_params(msat: u64, memo: &str) -> MakeInvoiceParams {
    MakeInvoiceParams {
        amount: msat,
        description: Some(memo.into()),
        description_hash: None,
        expiry: None,
    }
}

async fn bolt11(w: &NwcWallet, msat: u64) -> String {
    w.make_invoice(invoice_params(msat, "test"))
        .await
        .expect("invoice")
        .invoice
        .expect("bolt11")
}

#[tokio::test]
async fn pay_moves_exact_amounts_and_notifies_both_sides() {
    let m = Market::start().await;
    let alice = m.funded_wallet(100).await;
    let bob = m.wallet().await;
    assert_eq!(
        alice.encryption(),
        Encryption::Nip44V2,
        "NIP-44 when the hub offers it"
    );
    let mut bob_notes = bob.notifications();
    let mut alice_notes = alice.notifications();

    let inv = bob
        .make_invoice(invoice_params(21_500, "job 1"))
        .await
        .expect("invoice");
    let bolt11 = inv.invoice.clone().expect("bolt11");
    assert!(bolt11.starts_with("lnbcrt"));
    let paid = alice.pay_invoice(bolt11.clone(), None).await.expect("paid");
    assert!(pylon::bolt11::preimage_matches(
        &paid.preimage,
        &inv.payment_hash
    ));
    assert_eq!(
        alice.balance_msat().await.expect("balance"),
        100_000 - 21_500
    );
    assert_eq!(bob.balance_msat().await.expect("balance"), 21_500);

    let received = tokio::time::timeout(Duration::from_secs(30), bob_notes.recv())
        .await
        .expect("payee notified")
        .expect("notification");
    assert_eq!(received.notification_type, nip47::PAYMENT_RECEIVED);
    assert_eq!(received.notification.payment_hash, inv.payment_hash);
    assert_eq!(received.notification.amount, 21_500);
    let sent = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = alice_notes.recv().await.expect("notification");
            if n.notification_type == nip47::PAYMENT_SENT {
                return n;
            }
        }
    })
    .await
    .expect("payer notified");
    assert_eq!(sent.notification.payment_hash, inv.payment_hash);

    // Paying again: refused, no second debit.
    let again = alice
        .pay_invoice(bolt11, None)
        .await
        .expect_err("double pay");
    assert_eq!(again.code(), Some(&ErrorCode::PaymentFailed));
    assert_eq!(
        alice.balance_msat().await.expect("balance"),
        100_000 - 21_500
    );

    // Lookups: each side sees its own view; a stranger sees nothing.
    let theirs = bob
        .lookup_invoice(inv.payment_hash.clone())
        .await
        .expect("payee lookup");
    assert_eq!(theirs.kind, TransactionType::Incoming);
    let mine = alice
        .lookup_invoice(inv.payment_hash.clone())
        .await
        .expect("payer lookup");
    assert_eq!(mine.kind, TransactionType::Outgoing);
    let stranger = m.wallet().await;
    let err = stranger
        .lookup_invoice(inv.payment_hash.clone())
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Some(&ErrorCode::NotFound));

    let info = alice.get_info().await.expect("info");
    assert_eq!(info.network, "regtest");
    assert!(info.methods.contains(&"pay_invoice".to_string()));
    assert!(m.audit().ok);
}

#[tokio::test]
async fn refusals_carry_nip47_codes() {
    let m = Market::start().await;
    let poor = m.funded_wallet(1).await;
    let rich = m.wallet().await;
    let big = bolt11(&rich, 5_000).await;
    let err = poor.pay_invoice(big, None).await.expect_err("too poor");
    assert_eq!(err.code(), Some(&ErrorCode::InsufficientBalance));

    let short = rich
        .make_invoice(MakeInvoiceParams {
            expiry: Some(1),
            ..invoice_params(10, "short-lived")
        })
        .await
        .expect("invoice");
    // Wait for the clock to pass the invoice's expiry (a condition, not a guess).
    let expires_at = short.expires_at.expect("expiry");
    while Timestamp::now().as_secs() <= expires_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = poor
        .pay_invoice(short.invoice.expect("bolt11"), None)
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Some(&ErrorCode::PaymentFailed));

    let own = bolt11(&poor, 10).await;
    assert_eq!(
        poor.pay_invoice(own, None).await.expect_err("self").code(),
        Some(&ErrorCode::PaymentFailed)
    );
    assert_eq!(
        poor.pay_invoice("lnbcrt1garbage".into(), None)
            .await
            .expect_err("junk")
            .code(),
        Some(&ErrorCode::Other)
    );
    let err = rich
        .make_invoice(invoice_params(0, "zero"))
        .await
        .expect_err("zero amount");
    assert_eq!(err.code(), Some(&ErrorCode::Other));
    assert_eq!(poor.balance_msat().await.expect("balance"), 1_000);
    assert!(m.audit().ok);
}

#[tokio::test]
async fn faucet_enforces_its_limits() {
    let mut settings = pylon::hub::HubSettings::default();
    settings.faucet.max_msat_per_request = 50_000;
    settings.faucet.max_msat_per_day = 80_000;
    let m = Market::start_with(settings).await;
    let w = m.wallet().await;
    let too_big = bolt11(&w, 60_000).await;
    assert_eq!(
        w.faucet(too_big).await.expect_err("cap").code(),
        Some(&ErrorCode::QuotaExceeded)
    );
    w.faucet(bolt11(&w, 50_000).await)
        .await
        .expect("first grant");
    let over_day = bolt11(&w, 40_000).await;
    assert_eq!(
        w.faucet(over_day).await.expect_err("daily").code(),
        Some(&ErrorCode::QuotaExceeded)
    );
    assert_eq!(w.balance_msat().await.expect("balance"), 50_000);
    let other = m.wallet().await;
    let someone_elses = bolt11(&other, 1_000).await;
    assert_eq!(
        w.faucet(someone_elses).await.expect_err("not mine").code(),
        Some(&ErrorCode::Restricted)
    );
    let audit = m.audit();
    assert!(audit.ok, "{audit:?}");
    assert_eq!(audit.total_issued_msat, 50_000);
}

#[tokio::test]
async fn a_foreign_nip04_client_makes_and_pays_invoices() {
    // rust-nostr's `nwc` crate speaks NIP-04 only and waits for relay OKs: a client that is not ours.
    let m = Market::start().await;
    let payer_keys = Keys::generate();
    let ours_for_payer = NwcWallet::connect(&m.uri(&payer_keys), Default::default())
        .await
        .expect("connect");
    ours_for_payer
        .faucet(bolt11(&ours_for_payer, 50_000).await)
        .await
        .expect("fund");
    let theirs = nwc::NWC::new(m.uri(&payer_keys));
    let payee = nwc::NWC::new(m.uri(&Keys::generate()));
    let made = payee
        .make_invoice(nostr_sdk::nips::nip47::MakeInvoiceRequest {
            amount: 7_000,
            description: Some("from a foreign client".into()),
            description_hash: None,
            expiry: None,
        })
        .await
        .expect("foreign make_invoice");
    let paid = theirs
        .pay_invoice(nostr_sdk::nips::nip47::PayInvoiceRequest::new(
            made.invoice.clone(),
        ))
        .await
        .expect("foreign pay_invoice");
    assert!(pylon::bolt11::preimage_matches(
        &paid.preimage,
        made.payment_hash.as_deref().expect("payment hash")
    ));
    assert_eq!(payee.get_balance().await.expect("balance"), 7_000);
    assert_eq!(theirs.get_balance().await.expect("balance"), 43_000);
    theirs.shutdown().await;
    payee.shutdown().await;
    assert!(m.audit().ok);
}

/// Sends one raw request event and returns the decrypted response, if any came within `wait`.
async fn raw_request(
    m: &Market,
    client: &Keys,
    event: &nostr_sdk::Event,
    encryption: Encryption,
    wait: Duration,
) -> Option<Response> {
    let mut c = RawClient::connect(m.relay.url().as_str()).await;
    c.send(serde_json::json!([
        "REQ",
        "r",
        {"kinds": [23195], "#e": [event.id.to_hex()]}
    ]))
    .await;
    assert_eq!(c.recv().await[0], "EOSE");
    c.publish(event).await;
    loop {
        let msg = c.recv_within(wait).await?;
        if msg[0] == "EVENT" {
            let ev: nostr_sdk::Event = serde_json::from_value(msg[2].clone()).expect("event");
            let json = encryption
                .decrypt(client, &m.hub_keys.public_key(), &ev.content)
                .expect("decrypt response");
            return Some(Response::parse(&json).expect("response"));
        }
    }
}

#[tokio::test]
async fn hostile_requests_are_answered_or_dropped_and_the_hub_keeps_serving() {
    let m = Market::start().await;
    let client = Keys::generate();
    let hub = m.hub_keys.public_key();
    // Answers are awaited with a deadline for a stuck hub (it ends at the answer); the absence
    // of an answer can only be watched for a while.
    let wait = Duration::from_secs(30);
    let silence = Duration::from_secs(2);

    // Unknown method → NOT_IMPLEMENTED, named.
    let content = Encryption::Nip44V2
        .encrypt(
            &client,
            &hub,
            r#"{"method":"pay_keysend","params":{"amount":1}}"#,
        )
        .expect("encrypt");
    let ev = EventBuilder::new(Kind::from(23194), content)
        .tags([
            Tag::public_key(hub),
            Tag::custom(TagKind::custom("encryption"), ["nip44_v2"]),
        ])
        .sign_with_keys(&client)
        .expect("sign");
    let resp = raw_request(&m, &client, &ev, Encryption::Nip44V2, wait)
        .await
        .expect("answered");
    assert_eq!(resp.error.expect("error").code, ErrorCode::NotImplemented);
    assert_eq!(resp.result_type, "pay_keysend");

    // Not JSON → OTHER.
    let content = Encryption::Nip04
        .encrypt(&client, &hub, "{{{{")
        .expect("encrypt");
    let ev = EventBuilder::new(Kind::from(23194), content)
        .tag(Tag::public_key(hub))
        .sign_with_keys(&client)
        .expect("sign");
    let resp = raw_request(&m, &client, &ev, Encryption::Nip04, wait)
        .await
        .expect("answered");
    assert_eq!(resp.error.expect("error").code, ErrorCode::Other);

    // An encryption we do not speak → UNSUPPORTED_ENCRYPTION (sent in NIP-04).
    let ev = EventBuilder::new(Kind::from(23194), "whatever")
        .tags([
            Tag::public_key(hub),
            Tag::custom(TagKind::custom("encryption"), ["nip44_v9"]),
        ])
        .sign_with_keys(&client)
        .expect("sign");
    let resp = raw_request(&m, &client, &ev, Encryption::Nip04, wait)
        .await
        .expect("answered");
    assert_eq!(
        resp.error.expect("error").code,
        ErrorCode::UnsupportedEncryption
    );

    // Undecryptable garbage and expired requests are dropped without an answer.
    let garbage = EventBuilder::new(Kind::from(23194), "bm90IGEgY2lwaGVydGV4dA==")
        .tag(Tag::public_key(hub))
        .sign_with_keys(&client)
        .expect("sign");
    assert!(
        raw_request(&m, &client, &garbage, Encryption::Nip44V2, silence)
            .await
            .is_none()
    );
    let expired = nip47::request_event(
        &client,
        &hub,
        Encryption::Nip44V2,
        &Request::GetBalance,
        Some(Timestamp::now() - 60),
    )
    .expect("event");
    assert!(
        raw_request(&m, &client, &expired, Encryption::Nip44V2, silence)
            .await
            .is_none()
    );

    // And it still serves a well-formed request.
    let good = nip47::request_event(
        &client,
        &hub,
        Encryption::Nip44V2,
        &Request::GetBalance,
        None,
    )
    .expect("event");
    let resp = raw_request(&m, &client, &good, Encryption::Nip44V2, wait)
        .await
        .expect("answered");
    assert!(resp.error.is_none(), "{resp:?}");
}

#[tokio::test]
async fn the_same_request_twice_pays_once_even_across_a_restart() {
    let mut m = Market::start().await;
    let payer = Keys::generate();
    let w = NwcWallet::connect(&m.uri(&payer), Default::default())
        .await
        .expect("connect");
    w.faucet(bolt11(&w, 10_000).await).await.expect("fund");
    let payee = m.wallet().await;
    let inv = bolt11(&payee, 3_000).await;
    let hub = m.hub_keys.public_key();
    let req = nip47::request_event(
        &payer,
        &hub,
        Encryption::Nip44V2,
        &Request::PayInvoice(nip47::PayInvoiceParams {
            invoice: inv,
            amount: None,
        }),
        None,
    )
    .expect("event");
    let first = raw_request(
        &m,
        &payer,
        &req,
        Encryption::Nip44V2,
        Duration::from_secs(5),
    )
    .await
    .expect("answered");
    assert!(first.error.is_none(), "{first:?}");

    // The hub restarts (its in-memory caches are gone); the client retries the very same request.
    m.restart_hub().await;
    let again = raw_request(
        &m,
        &payer,
        &req,
        Encryption::Nip44V2,
        Duration::from_secs(5),
    )
    .await
    .expect("answered after restart");
    assert_eq!(
        first, again,
        "a repeated request id gets the original answer"
    );
    assert_eq!(
        w.balance_msat().await.expect("balance"),
        7_000,
        "debited once"
    );
    assert!(m.audit().ok);
}

#[test]
fn the_service_answers_a_duplicate_from_memory() {
    use pylon::hub::{HubSettings, Ledger, Service};
    let hub = Keys::generate();
    let node = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    let svc = Service::new(
        hub.clone(),
        node,
        Ledger::in_memory().expect("ledger"),
        HubSettings::default(),
    );
    let client = Keys::generate();
    let req = nip47::request_event(
        &client,
        &hub.public_key(),
        Encryption::Nip44V2,
        &Request::MakeInvoice(invoice_params(1_000, "once")),
        None,
    )
    .expect("event");
    let first = svc.handle(&req);
    let second = svc.handle(&req);
    assert_eq!(first.publish.len(), 1);
    assert_eq!(second.publish.len(), 1);
    assert_eq!(
        first.publish[0].id, second.publish[0].id,
        "the cached answer is re-sent"
    );
    let ledger = svc.ledger();
    let audit = ledger.lock().expect("lock").audit().expect("audit");
    assert_eq!(audit.invoices, 1, "one invoice, not two");
}

#[tokio::test]
async fn twenty_accounts_fifty_concurrent_random_payments() {
    use rand::Rng;
    let m = Market::start().await;
    let mut wallets = Vec::new();
    for _ in 0..20 {
        wallets.push(std::sync::Arc::new(m.funded_wallet(1_000).await));
    }
    let mut rng = rand::thread_rng();
    let plan: Vec<(usize, usize, u64)> = (0..50)
        .map(|_| {
            let from = rng.gen_range(0..20);
            let to = (from + rng.gen_range(1..20)) % 20;
            (from, to, rng.gen_range(1..=100_000))
        })
        .collect();
    let mut tasks = Vec::new();
    for (from, to, msat) in plan.clone() {
        let (payer, payee) = (wallets[from].clone(), wallets[to].clone());
        tasks.push(tokio::spawn(async move {
            let inv = payee
                .make_invoice(invoice_params(msat, "storm"))
                .await
                .expect("invoice");
            let paid = payer.pay_invoice(inv.invoice.expect("bolt11"), None).await;
            (from, to, msat, inv.payment_hash, paid)
        }));
    }
    let mut expected = [1_000_000i64; 20];
    let mut hashes = Vec::new();
    for t in tasks {
        let (from, to, msat, hash, paid) = t.await.expect("task");
        match paid {
            Ok(_) => {
                expected[from] -= msat as i64;
                expected[to] += msat as i64;
                hashes.push((from, to, hash));
            }
            Err(e) => assert_eq!(e.code(), Some(&ErrorCode::InsufficientBalance), "{e}"),
        }
    }
    assert!(!hashes.is_empty());
    for (i, w) in wallets.iter().enumerate() {
        assert_eq!(
            w.balance_msat().await.expect("balance") as i64,
            expected[i],
            "wallet {i}"
        );
    }
    // Every payment is in both parties' history.
    let all = ListTransactionsParams {
        limit: Some(1000),
        ..Default::default()
    };
    let mut histories = Vec::new();
    for w in &wallets {
        let txs = w.list_transactions(all.clone()).await.expect("history");
        histories.push(txs);
    }
    for (from, to, hash) in &hashes {
        let out: HashSet<_> = histories[*from]
            .iter()
            .filter(|t| t.kind == TransactionType::Outgoing)
            .map(|t| &t.payment_hash)
            .collect();
        let inc: HashSet<_> = histories[*to]
            .iter()
            .filter(|t| t.kind == TransactionType::Incoming)
            .map(|t| &t.payment_hash)
            .collect();
        assert!(
            out.contains(hash) && inc.contains(hash),
            "payment {hash} in both histories"
        );
    }
    let audit = m.audit();
    assert!(audit.ok, "{audit:?}");
    assert_eq!(audit.total_issued_msat, 20 * 1_000_000);
}

/// A page of settled transactions, each with its invoice and attestation, can pass what one
/// NIP-44 event carries (65,535 bytes): the hub returns the newest that fit and the client pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_history_pages_instead_of_going_unanswered() {
    let m = Market::start().await;
    let payer = m.funded_wallet(1_000).await;
    let payee = m.wallet().await;
    for i in 0..90 {
        let b = bolt11(&payee, 1_000 + i).await;
        payer.pay_invoice(b, None).await.expect("pay");
    }
    let page = |offset: u64| {
        payee.list_transactions(ListTransactionsParams {
            limit: Some(1000),
            offset: Some(offset),
            ..Default::default()
        })
    };
    let first = page(0).await.expect("answered, not timed out");
    assert!(
        !first.is_empty() && first.len() < 90,
        "one page cannot hold 90 attested transactions: {}",
        first.len()
    );
    let mut all = first.clone();
    while all.len() < 90 {
        let next = page(all.len() as u64).await.expect("page");
        assert!(!next.is_empty(), "paging stalled at {}", all.len());
        all.extend(next);
    }
    let hashes: HashSet<&str> = all.iter().map(|t| t.payment_hash.as_str()).collect();
    assert_eq!(hashes.len(), 90, "every transaction once");
    assert!(all
        .iter()
        .all(|t| t.attestation().is_some_and(|a| a.verify().is_ok())));
}

/// A wallet that never answers is asked again less and less often: with many payments waiting
/// on a slow wallet, a fixed cadence would flood a relay that limits events per connection and
/// starve the requests themselves.
#[tokio::test]
async fn a_silent_wallet_is_asked_again_less_and_less_often() {
    let m = Market::start().await;
    // A wallet key nobody serves.
    let silent = Keys::generate().public_key();
    let client = Keys::generate();
    let uri = nostr_sdk::nips::nip47::NostrWalletConnectURI::new(
        silent,
        vec![m.relay.url()],
        client.secret_key().clone(),
        None,
    );
    let mut watcher = RawClient::connect(m.relay.url().as_str()).await;
    watcher
        .send(serde_json::json!(["REQ", "asks", {"kinds": [23194], "#p": [silent.to_hex()]}]))
        .await;
    assert_eq!(watcher.recv().await[0], "EOSE");
    let options = pylon::wallet::NwcOptions {
        request_timeout: Duration::from_secs(8),
        resend_every: Duration::from_millis(250),
        ..Default::default()
    };
    let w = NwcWallet::connect(&uri, options).await.expect("connect");
    let err = w.balance_msat().await.expect_err("nobody answers");
    assert!(
        matches!(err, pylon::wallet::WalletError::Timeout(_)),
        "{err}"
    );
    let mut asked = 0;
    while let Some(msg) = watcher.recv_within(Duration::from_millis(500)).await {
        if msg[0] == "EVENT" {
            asked += 1;
        }
    }
    // Every 250 ms for 8 s would be 32 requests; doubling pauses (0.25, 0.5, 1, 2, 4 s…) ask
    // about six times.
    assert!((3..=10).contains(&asked), "asked {asked} times in 8 s");
}
