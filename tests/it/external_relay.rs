//! The wallet flow through nostr-rs-relay 0.8.12, an external relay that never sends `OK` for
//! ephemeral events: a client that waited for one would stall 10 s per call. Ours must not.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Keys, RelayUrl};
use pylon::hub::{HubSettings, Ledger, Service};
use pylon::protocol::nip47::MakeInvoiceParams;
use pylon::relay::{MarketClient, Reachability};
use pylon::wallet::{NwcWallet, Wallet};

/// Where scripts/test.sh installs it; `NOSTR_RS_RELAY` overrides.
fn nostr_rs_relay_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NOSTR_RS_RELAY") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("a home directory");
    let bin = home.join("bin").join("nostr-rs-relay");
    assert!(
        bin.exists(),
        "nostr-rs-relay is not installed at {}: run ./scripts/test.sh, which installs it",
        bin.display()
    );
    bin
}

struct ExternalRelay {
    child: Child,
    url: RelayUrl,
    _dir: tempfile::TempDir,
}

impl Drop for ExternalRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_nostr_rs_relay() -> ExternalRelay {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::common::closed_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[info]\nrelay_url = \"ws://127.0.0.1:{port}/\"\nname = \"test\"\n\
             [database]\ndata_directory = \"{}\"\n\
             [network]\naddress = \"127.0.0.1\"\nport = {port}\n",
            dir.path().display()
        ),
    )
    .expect("config");
    let child = Command::new(nostr_rs_relay_bin())
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(dir.path())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nostr-rs-relay");
    // Ready when it accepts TCP.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nostr-rs-relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = RelayUrl::parse(&format!("ws://127.0.0.1:{port}")).expect("url");
    ExternalRelay {
        child,
        url,
        _dir: dir,
    }
}

#[tokio::test]
async fn wallet_flow_through_nostr_rs_relay_never_waits_for_ephemeral_oks() {
    let relay = start_nostr_rs_relay().await;
    // First, the trap itself: this relay accepts an ephemeral event without ever saying OK.
    let mut raw = crate::common::RawClient::connect(relay.url.as_str()).await;
    let probe = nostr_sdk::EventBuilder::new(nostr_sdk::Kind::from(23194), "probe")
        .sign_with_keys(&Keys::generate())
        .expect("sign");
    raw.send(serde_json::json!(["EVENT", probe])).await;
    assert!(
        raw.recv_within(Duration::from_secs(1)).await.is_none(),
        "nostr-rs-relay answered an ephemeral EVENT; the trap this test guards against is gone"
    );
    let hub_keys = Keys::generate();
    let node_key = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::new(
        hub_keys.clone(),
        node_key,
        Ledger::open(&dir.path().join("ledger.db")).expect("ledger"),
        HubSettings::default(),
    );
    let hub_client = MarketClient::connect(
        hub_keys.clone(),
        std::slice::from_ref(&relay.url),
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("hub connects to nostr-rs-relay");
    let hub = pylon::hub::start(service, std::sync::Arc::new(hub_client))
        .await
        .expect("hub starts");

    let uri = |k: &Keys| {
        NostrWalletConnectURI::new(
            hub_keys.public_key(),
            vec![relay.url.clone()],
            k.secret_key().clone(),
            None,
        )
    };
    let alice = NwcWallet::connect(&uri(&Keys::generate()), Default::default())
        .await
        .expect("alice");
    let bob = NwcWallet::connect(&uri(&Keys::generate()), Default::default())
        .await
        .expect("bob");
    let params = |msat| MakeInvoiceParams {
        amount: msat,
        description: Some("x".into()),
        description_hash: None,
        expiry: None,
    };

    let grant = alice
        .make_invoice(params(50_000))
        .await
        .expect("invoice")
        .invoice
        .expect("bolt11");
    alice
        .faucet(grant)
        .await
        .expect("faucet through nostr-rs-relay");
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let inv = bob.make_invoice(params(1_000 + i)).await.expect("invoice");
        let started = Instant::now();
        let paid = alice
            .pay_invoice(inv.invoice.expect("bolt11"), None)
            .await
            .expect("pay");
        slowest = slowest.max(started.elapsed());
        assert!(pylon::bolt11::preimage_matches(
            &paid.preimage,
            &inv.payment_hash
        ));
    }
    // Waiting for an OK that never comes would cost the client's 10 s timeout on every call.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest pay took {slowest:?}"
    );
    assert_eq!(bob.balance_msat().await.expect("balance"), 5_010);
    assert_eq!(alice.balance_msat().await.expect("balance"), 50_000 - 5_010);
    let ledger = hub.service().ledger();
    assert!(ledger.lock().expect("lock").audit().expect("audit").ok);
    hub.stop().await;
}
