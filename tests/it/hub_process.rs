//! The hub as a process: the wallet CLI as a user runs it, and a payment storm with the hub killed
//! by SIGKILL and restarted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Keys, PublicKey, RelayUrl};
use pylon::protocol::nip47::{ErrorCode, MakeInvoiceParams, TransactionState};
use pylon::wallet::nwc::NwcOptions;
use pylon::wallet::{NwcWallet, Wallet};
use serde_json::Value;

use crate::common::{init_home, pylon, start_hub_process, stderr, stdout, RelayProcess, PASS};

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "command failed: {}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn wallet_cmd(home: &std::path::Path, relay: &str, args: &[&str]) -> std::process::Output {
    pylon(home)
        .args(["--relay", relay, "wallet"])
        .args(args)
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn")
}

#[test]
fn wallet_cli_flow_over_the_embedded_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (op, alice, bob) = (
        dir.path().join("op"),
        dir.path().join("alice"),
        dir.path().join("bob"),
    );
    for h in [&op, &alice, &bob] {
        init_home(h);
    }
    let relay = RelayProcess::start(&op, &op.join("relay"));
    let (_hub, hub_pubkey) = start_hub_process(&op, &relay.url);
    let url = relay.url.as_str();

    let granted = json_of(&wallet_cmd(&alice, url, &["faucet", "5000", "--json"]));
    assert_eq!(granted["balance_sats"], 5000);
    let balance = json_of(&wallet_cmd(&alice, url, &["balance", "--json"]));
    assert_eq!(balance["balance_sats"], 5000);
    assert_eq!(balance["balance_msats"], 5_000_000);
    assert_eq!(balance["wallet"]["source"], "discovered_hub");
    assert_eq!(balance["wallet"]["wallet"], hub_pubkey.as_str());

    let invoice = json_of(&wallet_cmd(
        &bob,
        url,
        &["receive", "1234", "--memo", "job x", "--json"],
    ));
    let bolt11 = invoice["bolt11"].as_str().expect("bolt11").to_string();
    assert!(bolt11.starts_with("lnbcrt"));
    let paid = json_of(&wallet_cmd(&alice, url, &["send", &bolt11, "--json"]));
    let preimage = paid["preimage"].as_str().expect("preimage");
    assert!(pylon::bolt11::preimage_matches(
        preimage,
        invoice["payment_hash"].as_str().expect("hash")
    ));
    let again = wallet_cmd(&alice, url, &["send", &bolt11]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already paid"),
        "{}",
        stderr(&again)
    );
    let bad = wallet_cmd(&alice, url, &["send", "lnbc1notaninvoice"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid") || stderr(&bad).contains("not"),
        "{}",
        stderr(&bad)
    );

    let bob_balance = json_of(&wallet_cmd(&bob, url, &["balance", "--json"]));
    assert_eq!(bob_balance["balance_sats"], 1234);
    let history = json_of(&wallet_cmd(&alice, url, &["history", "--json"]));
    let kinds: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["outgoing", "incoming"], "newest first");

    let connect = json_of(&wallet_cmd(&alice, url, &["connect", "--json"]));
    let uri =
        NostrWalletConnectURI::parse(connect["uri"].as_str().expect("uri")).expect("valid NWC URI");
    assert_eq!(uri.public_key.to_hex(), hub_pubkey);

    let audit = pylon(&op)
        .args(["hub", "audit", "--json"])
        .output()
        .expect("audit");
    let report = json_of(&audit);
    assert_eq!(report["ok"], true);
    assert_eq!(report["total_issued_msat"], 5_000_000);
    assert_eq!(report["total_balance_msat"], 5_000_000);
}

#[test]
fn faucet_and_hub_refuse_other_networks() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_home(dir.path());
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("network = \"regtest\"", "network = \"signet\""),
    )
    .expect("write");
    let out = pylon(dir.path())
        .args(["wallet", "faucet"])
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("regtest"), "{}", stderr(&out));
    let out = pylon(dir.path())
        .arg("hub")
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("regtest"), "{}", stderr(&out));
}

#[test]
fn audit_without_a_ledger_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args(["hub", "audit"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("never run `pylon hub`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_killed_mid_storm_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let op = dir.path().join("op");
    init_home(&op);
    let relay = RelayProcess::start(&op, &op.join("relay"));
    let (hub, hub_hex) = start_hub_process(&op, &relay.url);
    let hub_pk = PublicKey::from_hex(&hub_hex).expect("hub key");
    let relay_url = RelayUrl::parse(&relay.url).expect("url");
    let options = NwcOptions {
        request_timeout: Duration::from_secs(30),
        resend_every: Duration::from_millis(500),
        ..NwcOptions::default()
    };
    let mut wallets = Vec::new();
    for _ in 0..8 {
        let uri = NostrWalletConnectURI::new(
            hub_pk,
            vec![relay_url.clone()],
            Keys::generate().secret_key().clone(),
            None,
        );
        let w = NwcWallet::connect(&uri, options).await.expect("connect");
        let inv = w
            .make_invoice(MakeInvoiceParams {
                amount: 50_000_000,
                description: None,
                description_hash: None,
                expiry: None,
            })
            .await
            .expect("invoice");
        w.faucet(inv.invoice.expect("bolt11")).await.expect("fund");
        wallets.push(Arc::new(w));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..wallets.len() {
        let (payer, payee, done) = (
            wallets[i].clone(),
            wallets[(i + 1) % wallets.len()].clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut settled = Vec::new();
            for n in 0..25u64 {
                let Ok(inv) = payee
                    .make_invoice(MakeInvoiceParams {
                        amount: 1_000 + n,
                        description: None,
                        description_hash: None,
                        expiry: None,
                    })
                    .await
                else {
                    continue;
                };
                match payer
                    .pay_invoice(inv.invoice.clone().expect("bolt11"), None)
                    .await
                {
                    Ok(paid) => settled.push((
                        payee.client_pubkey().to_hex(),
                        inv.payment_hash,
                        paid.preimage,
                    )),
                    Err(e) => assert!(
                        e.code().is_none() || e.code() == Some(&ErrorCode::PaymentFailed),
                        "unexpected refusal {e}"
                    ),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            settled
        }));
    }
    // Kill the hub once the storm is under way (a condition, not a timer).
    while done.load(Ordering::SeqCst) < 40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = hub.signal("KILL");
    assert!(!status.success(), "killed, not exited");
    let (_hub, again) = start_hub_process(&op, &relay.url);
    assert_eq!(again, hub_hex, "same hub identity after restart");

    let mut settled = Vec::new();
    for t in tasks {
        settled.extend(t.await.expect("storm task"));
    }
    assert!(
        settled.len() > 40,
        "payments went through: {}",
        settled.len()
    );

    let ledger = pylon::hub::Ledger::open(&op.join("hub").join("ledger.db")).expect("ledger");
    for (payee, hash, preimage) in &settled {
        let tx = ledger
            .lookup(payee, hash)
            .expect("lookup")
            .expect("invoice exists");
        assert_eq!(
            tx.state,
            Some(TransactionState::Settled),
            "every returned preimage is settled"
        );
        assert_eq!(tx.preimage.as_deref(), Some(preimage.as_str()));
    }
    let audit = pylon(&op)
        .args(["hub", "audit", "--json"])
        .output()
        .expect("audit");
    let report = json_of(&audit);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["total_issued_msat"], 8 * 50_000_000u64);
}

#[test]
fn bench_wallet_prints_its_figures_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args([
            "bench",
            "wallet",
            "--sequential",
            "5",
            "--payments",
            "20",
            "--clients",
            "2",
            "--json",
        ])
        .output()
        .expect("spawn");
    let report = json_of(&out);
    assert_eq!(report["audit_ok"], true);
    assert!(report["relay"]["events_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(
        report["relay"]["round_trip_ms"]["p50"]
            .as_f64()
            .expect("p50")
            > 0.0
    );
    assert_eq!(report["pay_round_trip_ms"]["samples"], 5);
    assert!(report["payments_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(stderr(&out).contains("bench:"), "progress on stderr");
}
