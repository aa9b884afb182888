//! A payment is made once or not at all, and the payer finds out which — with the real processes:
//! a `pylon hub` that is frozen (SIGSTOP) while a payment is in flight, and a buyer killed
//! between sending a payment and hearing the answer.

use std::time::{Duration, Instant};

use nostr_sdk::{Filter, Keys, Kind, RelayPoolNotification};
use pylon::relay::{MarketClient, Reachability};
use serde_json::Value;

use crate::common::{
    init_home, pylon, start_hub_process, start_node_process, stderr, stdout, Home, RelayProcess,
    PASS,
};

/// `pylon hub audit` in the hub's home says every invariant of the books holds.
fn assert_books_balance(op: &std::path::Path) {
    let audit = json(
        &pylon(op)
            .args(["hub", "audit", "--json"])
            .output()
            .expect("audit"),
    );
    assert_eq!(audit["ok"], true, "{audit}");
}

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// A live view of the events matching `filter` on `url` (ephemeral ones included, which no
/// stored query returns).
struct Watch {
    client: MarketClient,
    notes: tokio::sync::broadcast::Receiver<RelayPoolNotification>,
    kind: Kind,
}

impl Watch {
    async fn start(url: &str, kind: Kind, filter: Filter) -> Self {
        let client = MarketClient::connect(
            Keys::generate(),
            &[url.parse().expect("url")],
            Duration::from_secs(5),
            Reachability::OneShot,
        )
        .await
        .expect("watcher");
        let notes = client.notifications();
        client
            .sdk()
            .subscribe(filter.kind(kind), None)
            .await
            .expect("subscribe");
        Self {
            client,
            notes,
            kind,
        }
    }

    /// Waits until `n` more matching events have gone by.
    async fn until(&mut self, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {seen} of {n} {what} went by");
            if let Ok(Ok(RelayPoolNotification::Event { event, .. })) =
                tokio::time::timeout(left, self.notes.recv()).await
            {
                if event.kind == self.kind {
                    seen += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_killed_mid_payment_finds_it_paid_and_never_pays_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let op = root.path().join("op");
    init_home(&op);
    let relay = RelayProcess::start(&op, &op.join("relay"));
    let url = relay.url.clone();
    let (hub, hub_key) = start_hub_process(&op, &url);
    let provider = Home::new(root.path().join("provider"));
    let _node = start_node_process(&provider.path, &[&url], &[]);
    let buyer = Home::new(root.path().join("buyer"));
    let run = |args: &[&str]| crate::common::pylon_at(&buyer.path, &url, args);
    json(&run(&["wallet", "faucet", "100", "--json"]));
    let o = json(&run(&[
        "job",
        "submit",
        "code-analysis",
        "--input",
        "fn x() {}",
        "--param",
        "path=x.rs",
        "--bid",
        "2",
        "--wait",
        "--json",
    ]));
    assert_eq!(o["status"], "result", "{o}");
    let job = o["job_id"].as_str().expect("id").to_string();

    // Watch the buyer's wallet requests go by (they are ephemeral: only a live subscription
    // sees them).
    let mut watch = Watch::start(
        &url,
        Kind::from(23194),
        Filter::new().author(buyer.identity.wallet_client_keys().public_key()),
    )
    .await;

    // The hub freezes; the buyer asks it to pay and is killed before any answer can come.
    hub.send("STOP");
    let mut payer = pylon(&buyer.path)
        .args(["--relay", &url, "pay", "--job-id", &job])
        .env("PYLON_PASSPHRASE", PASS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn pay");
    watch.until(1, "payment requests").await;
    payer.kill().expect("kill the buyer");
    let _ = payer.wait();
    // The hub wakes up and executes the request it was handed: the money moves, with no one
    // listening for the answer.
    hub.send("CONT");

    // The restarted buyer finds out instead of paying again.
    let mut paid = None;
    for _ in 0..60 {
        let out = run(&["pay", "--job-id", &job, "--json"]);
        if out.status.success() {
            paid = Some(json(&out));
            break;
        }
        // While the outcome cannot be told it says so (exit 3) and sends nothing.
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    let paid = paid.expect("the payment's outcome became known");
    assert_eq!(paid["already_paid"], true, "{paid}");
    assert!(
        paid["preimage"].as_str().is_some_and(|p| p.len() == 64),
        "{paid}"
    );
    let again = run(&["pay", "--job-id", &job]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already paid"),
        "{}",
        stdout(&again)
    );

    // Exactly one payment left the buyer's wallet; the books balance.
    let balance = json(&run(&["wallet", "balance", "--json"]));
    assert_eq!(balance["balance_msats"], 99_000, "{balance}");
    let history = json(&run(&["wallet", "history", "--json"]));
    let outgoing = history
        .as_array()
        .expect("array")
        .iter()
        .filter(|t| t["type"] == "outgoing")
        .count();
    assert_eq!(outgoing, 1, "{history}");
    assert_books_balance(&op);
    // And the provider's receipt for it verifies for whoever trusts this hub.
    let mut verified = false;
    for _ in 0..50 {
        let t = run(&["job", "trace", &job, "--json", "--trust-hub", &hub_key]);
        let t: Value = serde_json::from_str(&stdout(&t)).expect("json");
        if t["verified"] == true {
            verified = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(verified, "the receipt of the one payment verifies");
    watch.client.shutdown().await;
}

/// The bug this guards against: a repo map with a 19 s hub outage re-dispatched files whose
/// payment had timed out but executed later, and paid them twice; its report undercounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_down_for_nineteen_seconds_mid_map_costs_no_double_payment() {
    const FILES: usize = 300;
    let root = tempfile::tempdir().expect("tempdir");
    let op = root.path().join("op");
    init_home(&op);
    let relay = RelayProcess::start(&op, &op.join("relay"));
    let url = relay.url.clone();
    let (hub, _) = start_hub_process(&op, &url);
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            let h = Home::new(root.path().join(format!("p{i}")));
            (start_node_process(&h.path, &[&url], &[]), h)
        })
        .collect();
    let buyer = Home::new(root.path().join("buyer"));
    let run = |args: &[&str]| crate::common::pylon_at(&buyer.path, &url, args);
    json(&run(&["wallet", "faucet", "1000", "--json"]));
    let repo = root.path().join("repo");
    pylon::fanout::sample::generate(&repo, FILES).expect("sample");

    // Count the buyer's receipts as they are published, to cut the hub mid-run.
    let mut watch = Watch::start(
        &url,
        Kind::from(7001),
        Filter::new().pubkey(buyer.identity.nostr_keys().public_key()),
    )
    .await;
    let map = pylon(&buyer.path)
        .args(["--relay", &url, "repomap"])
        .arg(&repo)
        .args(["--out"])
        .arg(root.path().join("out"))
        .args(["--budget", "600", "--min-providers", "3", "--json"])
        .env("PYLON_PASSPHRASE", PASS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn repomap");
    watch.until(20, "receipts").await;
    assert!(hub.signal("KILL").code().is_none(), "killed by a signal");
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(19)).await;
    let (_hub, _) = start_hub_process(&op, &url);
    let out = tokio::task::spawn_blocking(move || map.wait_with_output())
        .await
        .expect("join")
        .expect("repomap ends");
    assert!(
        killed_at.elapsed() > Duration::from_secs(19),
        "the map ran through the outage"
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let report = &report["report"];

    // What the wallet says left it is exactly what the report says, at most one payment a file.
    let history = json(&run(&["wallet", "history", "--limit", "10000", "--json"]));
    let outgoing: Vec<&Value> = history
        .as_array()
        .expect("array")
        .iter()
        .filter(|t| t["type"] == "outgoing")
        .collect();
    let paid: u64 = outgoing.iter().filter_map(|t| t["amount"].as_u64()).sum();
    eprintln!(
        "hub outage map: {} of {FILES} files, {} payments, {paid} msats, {} s, failed {}",
        report["mapped"],
        outgoing.len(),
        report["wall_secs"],
        report["failed"]
    );
    let mapped = report["mapped"].as_u64().expect("mapped") as usize;
    assert_eq!(
        outgoing.len(),
        mapped,
        "each mapped file paid exactly once: {report}"
    );
    assert_eq!(report["spent_msats"].as_u64(), Some(paid), "{report}");
    // Files given up are given up only for a payment still in doubt or for lack of time, never
    // paid on top of that.
    assert!(
        mapped >= FILES * 9 / 10,
        "the map survives the outage: {report}"
    );
    assert!(paid <= 600_000, "the budget held");
    assert_books_balance(&op);
    watch.client.shutdown().await;
    drop(nodes);
}
