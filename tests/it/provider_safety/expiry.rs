//! Expired unpaid invoices are marked once and never looked up again, also after a restart.
//! Observed where the requests go: the node's NIP-47 requests (kind 23194, signed by its wallet
//! key) on the relay.

use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use pylon::protocol::nip90::JobInput;
use pylon::provider::NodeOptions;
use pylon::store::{JobState, Role, Store};
use serde_json::json;

use super::{buyer, code_job, start_node, wait};
use crate::common::{Market, RawClient};

/// A live subscription to the wallet requests `wallet_keys` signs.
async fn watch_requests(m: &Market, wallet_keys: &Keys) -> RawClient {
    let mut c = RawClient::connect(m.relay.url().as_str()).await;
    c.send(json!([
        "REQ",
        "nwc",
        {"kinds": [23194], "authors": [wallet_keys.public_key().to_hex()]}
    ]))
    .await;
    loop {
        let msg = c.recv().await;
        if msg[0] == "EOSE" {
            return c;
        }
    }
}

/// Wallet requests seen within `window`.
async fn requests_within(c: &mut RawClient, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut n = 0;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match c.recv_within(left).await {
            Some(msg) if msg[0] == "EVENT" => n += 1,
            Some(_) => {}
            None => break,
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_invoices_stop_being_polled_also_after_a_restart() {
    let m = Market::start().await;
    let (keys, wallet_keys) = (Keys::generate(), Keys::generate());
    let dir = tempfile::tempdir().expect("tempdir");
    let options = NodeOptions {
        invoice_expiry_secs: 1,
        settlement_poll: Duration::from_millis(100),
        invoice_poll_after: Duration::from_millis(300),
        max_unpaid_jobs_unproven: 10,
        ..NodeOptions::default()
    };
    let node = start_node(&m, &keys, &wallet_keys, dir.path(), options.clone()).await;
    let (b, _bd) = buyer(&m, None).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let o = b
            .run(
                &code_job(
                    JobInput::text(format!("fn e{i}() {{}}\n")),
                    "e.rs",
                    node.public_key(),
                ),
                wait(false),
            )
            .await
            .expect("run");
        assert_eq!(o.status, JobState::Result, "taken, never paid: {o:?}");
        jobs.push(o.job_id);
    }
    let mut requests = watch_requests(&m, &wallet_keys).await;

    // Until the invoices expire and are marked, the node looks them up: the watch sees that.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut looked_up = 0;
    loop {
        let status = node.status().await;
        if status.expired_unpaid == 3 {
            assert_eq!(status.awaiting_payment, 0, "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never marked: {status:?}");
        looked_up += requests_within(&mut requests, Duration::from_millis(100)).await;
    }
    looked_up += requests_within(&mut requests, Duration::from_millis(100)).await;
    assert!(
        looked_up >= 3,
        "each invoice was looked up at least once more at expiry ({looked_up})"
    );

    // Marked: over many poll periods, not one more look-up.
    let window = options.invoice_poll_after * 6;
    assert_eq!(
        requests_within(&mut requests, window).await,
        0,
        "no polling"
    );
    node.stop().await;

    // Restarted on the same store: resume skips them.
    let store = Store::open(dir.path()).expect("store");
    for id in &jobs {
        let rec = store
            .jobs()
            .get(id, Role::Provider)
            .expect("get")
            .expect("row");
        assert_eq!(rec.state, Some(JobState::Expired), "{id}");
    }
    drop(store);
    let node = start_node(&m, &keys, &wallet_keys, dir.path(), options.clone()).await;
    assert_eq!(
        requests_within(&mut requests, window).await,
        0,
        "no polling after the restart"
    );
    let status = node.status().await;
    assert_eq!(status.expired_unpaid, 3, "{status:?}");
    assert_eq!(status.awaiting_payment, 0, "{status:?}");
    node.stop().await;
}
