//! The market loop with real parts: the embedded relay and hub in-process, providers as spawned
//! `pylon node up` processes, and a buyer (library and CLI).

use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::Hash as _;
use nostr_sdk::{EventBuilder, JsonUtil, Keys, Kind, PublicKey, Tag};
use pylon::buyer::{Buyer, SpendLimits, WaitOptions};
use pylon::protocol::failure::FailureCode;
use pylon::protocol::nip90::{Amount, JobInput, JobRequest, JobResult, NewJob};
use pylon::relay::{MarketClient, Reachability};
use pylon::store::{JobState, Store};
use pylon::wallet::Wallet;
use serde_json::Value;

use crate::common::{
    pylon, request_of, start_node_process, stderr, stdout, Home, Market, Spawned, PASS,
};

/// A buyer in the test process, funded from the faucet.
async fn buyer(m: &Market, sats: u64) -> (Buyer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = m.funded_wallet(sats).await;
    let keys = Keys::generate();
    let relay = MarketClient::connect(
        keys.clone(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("relay");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let w: Arc<dyn Wallet> = Arc::new(wallet);
    let b = Buyer::start(
        keys,
        Arc::new(relay),
        Some(w),
        store,
        SpendLimits::default(),
    )
    .await
    .expect("buyer");
    (b, dir)
}

fn provider_key(node: &Spawned) -> PublicKey {
    PublicKey::from_hex(node.first_line.split_whitespace().nth(2).expect("pubkey")).expect("hex")
}

fn code_job(path: &str, content: String, provider: PublicKey, bid_msats: u64) -> NewJob {
    NewJob {
        kind: 5960,
        inputs: vec![JobInput::text(content)],
        params: vec![("path".into(), path.into())],
        bid_msats: Some(bid_msats),
        providers: vec![provider],
        ..Default::default()
    }
}

fn wait(auto_pay: bool, max_msats: Option<u64>) -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(30),
        auto_pay,
        max_msats,
    }
}

/// Up to `n` source files of this repository, as (path, content).
fn repo_files(n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    stack.push(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests"));
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                if text.len() < 200_000 {
                    let rel = p
                        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .expect("rel")
                        .display()
                        .to_string();
                    out.push((rel, text));
                }
            }
        }
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_paid_jobs_across_three_providers() {
    let m = Market::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    let homes: Vec<Home> = (0..3)
        .map(|i| Home::new(root.path().join(format!("p{i}"))))
        .collect();
    let nodes: Vec<Spawned> = homes
        .iter()
        .map(|h| start_node_process(&h.path, &[&url], &[]))
        .collect();
    let providers: Vec<PublicKey> = nodes.iter().map(provider_key).collect();
    let (b, _dir) = buyer(&m, 1_000).await;
    let b = Arc::new(b);
    let files = repo_files(50);
    assert_eq!(files.len(), 50, "this repository has 50 source files");

    let mut tasks = Vec::new();
    for (i, (path, content)) in files.into_iter().enumerate() {
        let (b, provider) = (b.clone(), providers[i % 3]);
        tasks.push(tokio::spawn(async move {
            let sha = bitcoin::hashes::sha256::Hash::hash(content.as_bytes()).to_string();
            let outcome = b
                .run(&code_job(&path, content, provider, 5_000), wait(true, None))
                .await
                .expect("run");
            (path, sha, outcome)
        }));
    }
    let mut job_ids = Vec::new();
    let mut paid_to: std::collections::HashMap<String, u64> = Default::default();
    for t in tasks {
        let (path, sha, o) = t.await.expect("task");
        assert_eq!(o.status, JobState::Done, "{path}: {o:?}");
        let analysis: Value =
            serde_json::from_str(o.result.as_deref().expect("result")).expect("json");
        assert_eq!(
            analysis["sha256"],
            sha.as_str(),
            "{path}: the analysis is of the file sent"
        );
        assert_eq!(analysis["path"], path.as_str());
        let payment = o.payment.expect("paid");
        *paid_to.entry(o.provider.expect("provider")).or_default() += payment.amount_msat;
        assert!(o.receipt_id.is_some());
        job_ids.push(o.job_id);
    }
    // Every trace verifies from relay events alone.
    let auditor = MarketClient::connect(
        Keys::generate(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("auditor");
    for id in &job_ids {
        let t = pylon::provenance::trace(
            &auditor,
            nostr_sdk::EventId::from_hex(id).expect("id"),
            Duration::from_secs(5),
            &m.trust(),
        )
        .await
        .expect("trace");
        assert!(t.verified, "{id}: {:?}", t.reason);
    }
    // Balances moved by exactly the invoiced amounts.
    for (home, key) in homes.iter().zip(&providers) {
        let earned = home.wallet(&m).await.balance_msat().await.expect("balance");
        assert_eq!(
            earned,
            paid_to.get(&key.to_hex()).copied().unwrap_or(0),
            "provider {key}"
        );
        assert!(earned > 0, "each provider got work");
    }
    let total: u64 = paid_to.values().sum();
    assert_eq!(total, 50 * 1_000, "50 jobs at the default 1000 msats");
    let audit = m.audit();
    assert!(audit.ok, "{audit:?}");
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pay_first_mode_and_refusals() {
    let m = Market::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    let home = Home::new(root.path().join("p"));
    let node = start_node_process(
        &home.path,
        &[&url],
        &["--payment", "before", "--price-msats", "2000"],
    );
    let provider = provider_key(&node);
    let (b, _dir) = buyer(&m, 100).await;

    let o = b
        .run(
            &code_job("a.py", "def f():\n    pass\n".into(), provider, 5_000),
            wait(true, None),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Done, "{o:?}");
    assert_eq!(o.payment.as_ref().expect("paid").amount_msat, 2_000);
    assert!(o.receipt_id.is_some());
    assert!(o
        .result
        .expect("result")
        .contains("\"language\":\"python\""));

    // A bid below the price is refused with its code.
    let o = b
        .run(
            &code_job("a.py", "x = 1\n".into(), provider, 1_000),
            wait(true, None),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Failed);
    assert_eq!(o.failure, Some(FailureCode::BidTooLow));

    // Auto-pay never goes above --max-sats.
    let before = home.wallet(&m).await.balance_msat().await.expect("balance");
    let o = b
        .run(
            &code_job("a.py", "y = 2\n".into(), provider, 5_000),
            wait(true, Some(1_000)),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Failed);
    assert_eq!(o.failure, Some(FailureCode::PaymentFailed));
    assert!(o.message.expect("why").contains("above the limit"));
    assert_eq!(
        home.wallet(&m).await.balance_msat().await.expect("balance"),
        before,
        "nothing paid"
    );

    // Oversized and binary input: invalid-input.
    let big = "x".repeat(300 * 1024);
    let o = b
        .run(&code_job("big.txt", big, provider, 5_000), wait(true, None))
        .await
        .expect("run");
    assert_eq!(o.failure, Some(FailureCode::InvalidInput), "{o:?}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_killed_after_claiming_leaves_a_resubmittable_job() {
    let m = Market::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    // Pay-first: the provider claims, asks for payment and waits; we never pay, then kill it.
    let doomed_home = Home::new(root.path().join("doomed"));
    let doomed = start_node_process(&doomed_home.path, &[&url], &["--payment", "before"]);
    let doomed_key = provider_key(&doomed);
    let (b, _dir) = buyer(&m, 100).await;
    let b = Arc::new(b);
    let job = code_job("k.rs", "fn k() {}\n".into(), doomed_key, 5_000);
    let follower = {
        let (b, job) = (b.clone(), job.clone());
        tokio::spawn(async move {
            b.run(
                &job,
                WaitOptions {
                    timeout: Duration::from_secs(6),
                    auto_pay: false,
                    max_msats: None,
                },
            )
            .await
        })
    };
    // Kill it once it has claimed the job (seen in its own store).
    let store = Store::open(&doomed_home.path).expect("store");
    loop {
        let claimed = store
            .jobs()
            .list(None, 10)
            .expect("list")
            .iter()
            .any(|j| j.state == Some(JobState::PaymentRequired));
        if claimed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.signal("KILL");
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.status, JobState::Failed);
    assert!(
        matches!(
            o.failure,
            Some(FailureCode::ProviderOffline) | Some(FailureCode::Timeout)
        ),
        "{o:?}"
    );
    // Resubmitted to a live provider, it completes.
    let home = Home::new(root.path().join("alive"));
    let alive = start_node_process(&home.path, &[&url], &[]);
    let retry = NewJob {
        providers: vec![provider_key(&alive)],
        ..job
    };
    let o = b.run(&retry, wait(true, None)).await.expect("run");
    assert_eq!(o.status, JobState::Done, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_seen_on_two_relays_runs_once() {
    let m = Market::start().await;
    let second = second_relay().await;
    let root = tempfile::tempdir().expect("tempdir");
    let home = Home::new(root.path().join("p"));
    let (a_url, b_url) = (m.relay.url().to_string(), second.url().to_string());
    let node = start_node_process(&home.path, &[&a_url, &b_url], &[]);
    let provider = provider_key(&node);

    // The buyer publishes the same signed request to each relay separately.
    let buyer = Keys::generate();
    let request = code_job("twice.rs", "fn twice() {}\n".into(), provider, 5_000)
        .to_event(&buyer)
        .expect("event");
    for url in [&m.relay.url(), &second.url()] {
        let c = MarketClient::connect(
            buyer.clone(),
            std::slice::from_ref(url),
            Duration::from_secs(5),
            Reachability::OneShot,
        )
        .await
        .expect("connect");
        c.publish(&request).await.expect("publish");
        c.shutdown().await;
    }
    // Wait for the result, then check the provider's own books.
    let watcher = MarketClient::connect(
        Keys::generate(),
        &[m.relay.url(), second.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("watcher");
    let filter = nostr_sdk::Filter::new()
        .kind(Kind::from(6960))
        .event(request.id);
    let mut results = Vec::new();
    for _ in 0..100 {
        results = watcher
            .fetch(filter.clone(), Duration::from_secs(2))
            .await
            .expect("fetch")
            .into_iter()
            .collect();
        if !results.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(results.len(), 1, "one result");
    let store = Store::open(&home.path).expect("store");
    let jobs = store.jobs().list(None, 10).expect("list");
    assert_eq!(jobs.len(), 1, "recorded once");
    let wallet = home.wallet(&m).await;
    let invoices = wallet
        .list_transactions(pylon::protocol::nip47::ListTransactionsParams {
            unpaid: Some(true),
            ..Default::default()
        })
        .await
        .expect("history");
    assert_eq!(invoices.len(), 1, "invoiced once");
    drop(node);
}

/// A provider that answers without asking for payment (a foreign DVM's free job): the buyer
/// calls the job `done` without paying, and the trace, from the relay alone, says `free` (exit
/// 0 from `job trace`) while `verified` stays false: there is no payment to prove. An answer
/// that is not a code analysis (an echo) from the one provider asked is `invalid-result`.
#[tokio::test]
async fn a_free_result_is_done_and_traces_as_free_and_an_echo_is_refused() {
    let m = Market::start().await;
    let (b, _dir) = buyer(&m, 100).await;
    let b = Arc::new(b);
    let provider = Keys::generate();
    let c = MarketClient::connect(
        provider.clone(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("connect");
    let source = "fn free() {}\n";
    let free_job = NewJob {
        bid_msats: None,
        ..code_job("free.rs", source.into(), provider.public_key(), 0)
    };
    let follower = {
        let (b, job) = (b.clone(), free_job.clone());
        tokio::spawn(async move { b.run(&job, wait(true, Some(5_000))).await })
    };
    let request = request_of(&c, b.public_key(), &[]).await;
    let parsed = JobRequest::from_event(&request, None).expect("parse");
    let analysis =
        serde_json::to_string(&pylon::executors::code::analyze("free.rs", source)).expect("json");
    let result = JobResult::to_event(&provider, &request, &parsed, &analysis, None).expect("event");
    c.publish(&result).await.expect("publish");
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.status, JobState::Done, "{o:?}");
    assert!(o.payment.is_none(), "nothing paid: {o:?}");
    assert_eq!(b.balance_msat().await.expect("balance"), 100_000);
    let t = pylon::provenance::trace(
        &c,
        request.id,
        Duration::from_secs(5),
        &pylon::provenance::TrustedHubs::default(),
    )
    .await
    .expect("trace");
    assert!(t.free && !t.verified, "{t:?}");
    assert_eq!(t.provider, Some(provider.public_key().to_hex()));
    assert!(t.reason.is_none(), "{t:?}");

    // The same provider answers a second job with an echo of the input.
    let echo_job = NewJob {
        bid_msats: None,
        ..code_job("echo.rs", "fn echo() {}\n".into(), provider.public_key(), 0)
    };
    let follower = {
        let (b, job) = (b.clone(), echo_job.clone());
        tokio::spawn(async move { b.run(&job, wait(true, Some(5_000))).await })
    };
    let request2 = request_of(&c, b.public_key(), &[request.id]).await;
    let parsed2 = JobRequest::from_event(&request2, None).expect("parse");
    let echo = JobResult::to_event(&provider, &request2, &parsed2, "ECHO: fn echo() {}", None)
        .expect("event");
    c.publish(&echo).await.expect("publish");
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert_eq!(o.failure, Some(FailureCode::InvalidResult), "{o:?}");
    assert!(
        o.result.is_none(),
        "an echo is not kept as the result: {o:?}"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn forged_results_are_rejected() {
    let m = Market::start().await;
    let (b, _dir) = buyer(&m, 100).await;
    let provider = Keys::generate();
    let impostor = Keys::generate();
    let job = code_job("f.rs", "fn f() {}\n".into(), provider.public_key(), 5_000);
    let b = Arc::new(b);
    let follower = {
        let (b, job) = (b.clone(), job.clone());
        tokio::spawn(async move { b.run(&job, wait(false, None)).await })
    };
    // Find the request the buyer published.
    let c = MarketClient::connect(
        provider.clone(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("connect");
    let request = request_of(&c, b.public_key(), &[]).await;
    let parsed = JobRequest::from_event(&request, None).expect("parse");
    // 1. A result from someone the job was not sent to.
    let foreign =
        JobResult::to_event(&impostor, &request, &parsed, "{\"forged\":1}", None).expect("event");
    c.publish(&foreign).await.expect("publish");
    // 2. A result whose embedded request is another job (its `e` says ours).
    let other = code_job("g.rs", "fn g() {}\n".into(), provider.public_key(), 5_000)
        .to_event(&Keys::generate())
        .expect("other");
    let mismatched = EventBuilder::new(Kind::from(6960), "{\"forged\":2}")
        .tags([
            Tag::custom(nostr_sdk::TagKind::custom("request"), [other.as_json()]),
            Tag::event(request.id),
            Tag::public_key(b.public_key()),
        ])
        .sign_with_keys(&provider)
        .expect("sign");
    c.publish(&mismatched).await.expect("publish");
    // 3. The genuine result.
    let analysis = serde_json::to_string(&pylon::executors::code::analyze("f.rs", "fn f() {}\n"))
        .expect("json");
    let genuine =
        JobResult::to_event(&provider, &request, &parsed, &analysis, None).expect("event");
    c.publish(&genuine).await.expect("publish");
    let o = follower.await.expect("task").expect("run");
    assert_eq!(o.result.as_deref(), Some(analysis.as_str()), "{o:?}");
    assert_eq!(o.result_id, Some(genuine.id.to_hex()));

    // A bad signature never passes verification (relays would refuse it too).
    let mut tampered: Value = serde_json::from_str(&genuine.as_json()).expect("json");
    tampered["content"] = "{\"genuine\":false}".into();
    let tampered: nostr_sdk::Event = serde_json::from_value(tampered).expect("event");
    let parsed_result = JobResult::from_event(&tampered, None).expect("parses");
    assert!(pylon::buyer::verify::result(&parsed, &tampered, &parsed_result).is_err());
    // An invoice that does not name the job, or asks more than the bid, is refused.
    let amount = Amount {
        msats: 9_000,
        bolt11: Some("lnbcrt1invalid".into()),
    };
    assert!(pylon::buyer::verify::invoice(&parsed, &amount, &provider.public_key(), None).is_err());
    c.shutdown().await;
}

#[test]
fn cli_buyer_flow_and_trace_from_a_fresh_home() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let m = rt.block_on(Market::start());
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    let provider = Home::new(root.path().join("provider"));
    let node = start_node_process(&provider.path, &[&url], &[]);
    let buyer = Home::new(root.path().join("buyer"));
    let run = |home: &std::path::Path, args: &[&str]| {
        pylon(home)
            .args(["--relay", &url])
            .args(args)
            .env("PYLON_PASSPHRASE", PASS)
            .output()
            .expect("spawn")
    };
    let out = run(&buyer.path, &["wallet", "faucet", "100"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/home.rs");
    let out = run(
        &buyer.path,
        &[
            "job",
            "submit",
            "code-analysis",
            "--input",
            file,
            "--bid",
            "5",
            "--wait",
            "--auto-pay",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let o: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(o["status"], "done");
    assert_eq!(o["result"]["language"], "rust");
    assert!(o["payment"]["preimage"].is_string());
    let job_id = o["job_id"].as_str().expect("id").to_string();

    let out = run(&buyer.path, &["job", "status", &job_id[..10], "--json"]);
    let s: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(s["job"]["state"], "done");
    assert!(s["durations_ms"]["end_to_end_ms"].is_u64());
    let out = run(&buyer.path, &["job", "results", &job_id]);
    assert!(stdout(&out).contains("\"schema\":\"pylon/code-analysis@1\""));
    let out = run(&buyer.path, &["receipts", "--json"]);
    let receipts: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(receipts.as_array().expect("array").len(), 1);

    // An auditor with a brand-new home (no identity, no store) trusts no hub yet: the chain is
    // complete, but a payee could have made it up, so it does not verify.
    let fresh = root.path().join("auditor");
    let out = pylon(&fresh)
        .args(["--relay", &url, "job", "trace", &job_id, "--json"])
        .output()
        .expect("spawn");
    assert!(!out.status.success(), "verified without a trusted hub");
    let t: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(t["verified"], false, "{t}");
    assert!(
        t["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unknown hub")),
        "{t}"
    );
    // Pinning the hub (by its npub, resolved through its signed info event) verifies it.
    let hub = nostr_sdk::ToBech32::to_bech32(&m.hub_keys.public_key()).expect("npub");
    let out = pylon(&fresh)
        .args(["--relay", &url, "job", "trace", &job_id, "--json"])
        .args(["--trust-hub", &hub])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let t: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(t["verified"], true, "{t}");
    let steps: Vec<&str> = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|s| s["what"].as_str())
        .collect();
    assert_eq!(
        steps,
        vec!["request", "feedback:processing", "result", "receipt"]
    );

    // Node status and a graceful stop.
    // The status file is rewritten every second: wait for it to include the job and its pay.
    let mut st = Value::Null;
    for _ in 0..50 {
        let out = run(&provider.path, &["node", "status", "--json"]);
        st = serde_json::from_str(&stdout(&out)).expect("json");
        // Earnings land when the settlement is seen, a moment after the result is served.
        if st["node"]["totals"]["served"] == 1 && st["node"]["totals"]["earned_msat"] == 1000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(st["running"], true);
    assert_eq!(st["node"]["totals"]["served"], 1, "{st}");
    assert_eq!(st["node"]["totals"]["earned_msat"], 1000);
    let out = run(&provider.path, &["node", "down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut node = node;
    let status = node.child.wait().expect("wait");
    assert!(status.success(), "graceful exit");
    let out = run(&provider.path, &["node", "status", "--json"]);
    assert!(!out.status.success(), "no node: a failing health check");
    let st: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(st["running"], false);
    drop(m);
}

/// `job submit --encrypt`: the input goes to the provider under NIP-44 (no `i` or `param` tag in
/// the clear), the provider's result comes back encrypted to the buyer, and the buyer reads,
/// checks and pays it like any other. Anyone else on the relay sees neither input nor output.
#[test]
fn cli_encrypted_job_is_served_paid_and_unreadable_on_the_relay() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let m = rt.block_on(Market::start());
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    let provider_home = Home::new(root.path().join("provider"));
    let node = start_node_process(&provider_home.path, &[&url], &[]);
    let provider = provider_key(&node);
    let buyer = Home::new(root.path().join("buyer"));
    let run = |args: &[&str]| {
        pylon(&buyer.path)
            .args(["--relay", &url])
            .args(args)
            .env("PYLON_PASSPHRASE", PASS)
            .output()
            .expect("spawn")
    };
    let out = run(&["wallet", "faucet", "100"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/home.rs");
    let out = run(&[
        "job",
        "submit",
        "code-analysis",
        "--input",
        file,
        "--bid",
        "5",
        "--provider",
        &provider.to_hex(),
        "--encrypt",
        "--wait",
        "--auto-pay",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(o["status"], "done", "{o}");
    assert_eq!(o["result"]["language"], "rust", "{o}");
    assert!(o["payment"]["preimage"].is_string(), "{o}");
    let job_id = nostr_sdk::EventId::from_hex(o["job_id"].as_str().expect("id")).expect("hex");

    // What a third party on the relay sees.
    let (request, result) = rt.block_on(async {
        let c = MarketClient::connect(
            Keys::generate(),
            &[m.relay.url()],
            Duration::from_secs(5),
            Reachability::OneShot,
        )
        .await
        .expect("connect");
        let request = c
            .fetch(nostr_sdk::Filter::new().id(job_id), Duration::from_secs(3))
            .await
            .expect("fetch")
            .into_iter()
            .next()
            .expect("the request is on the relay");
        let result = c
            .fetch(
                nostr_sdk::Filter::new()
                    .kind(Kind::from(6960))
                    .event(job_id),
                Duration::from_secs(3),
            )
            .await
            .expect("fetch")
            .into_iter()
            .next()
            .expect("the result is on the relay");
        (request, result)
    });
    let source = std::fs::read_to_string(file).expect("read");
    let secret_line = "PYLON_HOME";
    assert!(source.contains(secret_line));
    for ev in [&request, &result] {
        let json = ev.as_json();
        assert!(
            !json.contains(secret_line),
            "plaintext on the relay: {json}"
        );
        assert!(
            ev.tags.iter().any(|t| t.kind().to_string() == "encrypted"),
            "{json}"
        );
    }
    assert!(
        !request
            .tags
            .iter()
            .any(|t| ["i", "param"].contains(&t.kind().to_string().as_str())),
        "inputs and params travel encrypted"
    );
    assert!(
        JobRequest::from_event(&request, Some(&Keys::generate())).is_err(),
        "a stranger cannot read the request"
    );
    drop(node);
    drop(m);
}

#[test]
fn bad_job_input_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::common::init_home(dir.path());
    let out = pylon(dir.path())
        .args(["job", "submit", "not-a-kind", "--input", "x"])
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a job kind"), "{}", stderr(&out));
    let out = pylon(dir.path())
        .args(["job", "trace", "zz"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a job id"), "{}", stderr(&out));
    let out = pylon(dir.path())
        .args(["node", "up", "--kinds", "5100"])
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no executor for kind 5100"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_discoverable_by_kind_and_heartbeat() {
    let m = Market::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let home = Home::new(root.path().join("p"));
    let node = start_node_process(
        &home.path,
        &[&m.relay.url().to_string()],
        &["--price-msats", "1500"],
    );
    let provider = provider_key(&node);
    let c = MarketClient::connect(
        Keys::generate(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("connect");
    // The filter DESIGN.md promises: {"kinds":[31990],"#k":["5960"]}.
    let filter = nostr_sdk::Filter::new().kind(Kind::from(31990)).custom_tag(
        nostr_sdk::SingleLetterTag::lowercase(nostr_sdk::Alphabet::K),
        "5960",
    );
    let found: Vec<_> = c
        .fetch(filter, Duration::from_secs(3))
        .await
        .expect("fetch")
        .into_iter()
        .collect();
    let ann = found
        .iter()
        .filter_map(|e| pylon::protocol::nip89::Announcement::from_event(e).ok())
        .find(|a| a.provider == provider)
        .expect("the provider is announced");
    assert_eq!(ann.price(5960), Some(1500));
    assert!(ann.kinds.contains(&5960));
    // What a client that did not write Pylon may send, documented in the announcement.
    let params: Vec<_> = ann.info.params["5960"]
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(params, ["path", "lang"], "{:?}", ann.info.params);
    let beats = c
        .fetch(
            nostr_sdk::Filter::new()
                .kind(Kind::from(11998))
                .author(provider),
            Duration::from_secs(3),
        )
        .await
        .expect("fetch");
    let hb = pylon::protocol::heartbeat::Heartbeat::from_event(
        beats.iter().next().expect("a heartbeat"),
    )
    .expect("parse");
    assert!(hb.is_online(nostr_sdk::Timestamp::now()));
    c.shutdown().await;
    drop(node);
}

#[test]
fn bench_loop_prints_its_figures_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args([
            "bench",
            "loop",
            "--jobs",
            "20",
            "--providers",
            "2",
            "--sequential",
            "3",
            "--json",
        ])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(r["all_done"], true);
    assert_eq!(r["audit_ok"], true);
    assert_eq!(r["sequential_end_to_end_ms"]["samples"], 3);
    assert!(r["paid_jobs_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(r["target_jobs_per_sec"].as_f64().expect("target") > 0.0);
    assert!(
        r["sequential_stages"]["payment_ms"]["samples"]
            .as_u64()
            .expect("n")
            > 0
    );
}

/// An in-process provider node on the market (the same `Node` that `pylon node up` runs).
async fn in_process_node(
    m: &Market,
    options: pylon::provider::NodeOptions,
) -> (pylon::provider::Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate();
    let relay = MarketClient::connect(
        keys.clone(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("relay");
    let wallet: Arc<dyn Wallet> = Arc::new(m.wallet().await);
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let node = pylon::provider::Node::start(
        keys,
        Arc::new(relay),
        wallet,
        store,
        pylon::executors::Registry::builtin(),
        options,
    )
    .await
    .expect("node");
    (node, dir)
}

#[tokio::test]
async fn a_buyer_with_expired_unpaid_invoices_is_refused() {
    let m = Market::start().await;
    let (node, _dir) = in_process_node(
        &m,
        pylon::provider::NodeOptions {
            invoice_expiry_secs: 1,
            ..Default::default()
        },
    )
    .await;
    let provider = node.public_key();
    let (b, _bdir) = buyer(&m, 100).await;
    // Take a result without paying for it.
    let o = b
        .run(
            &code_job("a.rs", "fn a() {}\n".into(), provider, 5_000),
            wait(false, None),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Result);
    // Once its invoice has expired (a clock condition), the provider refuses new work.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let o = b
        .run(
            &code_job("b.rs", "fn b() {}\n".into(), provider, 5_000),
            wait(true, None),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Failed);
    assert_eq!(o.failure, Some(FailureCode::UnpaidInvoices), "{o:?}");
    node.stop().await;
}

#[test]
fn pay_later_by_job_id_and_the_receipt_follows() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let m = rt.block_on(Market::start());
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    let provider = Home::new(root.path().join("provider"));
    let _node = start_node_process(&provider.path, &[&url], &[]);
    let buyer = Home::new(root.path().join("buyer"));
    let run = |args: &[&str]| crate::common::pylon_at(&buyer.path, &url, args);
    assert!(run(&["wallet", "faucet", "100"]).status.success());
    let out = run(&[
        "job",
        "submit",
        "code-analysis",
        "--input",
        "fn later() {}",
        "--param",
        "path=later.rs",
        "--bid",
        "2",
        "--wait",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(o["status"], "result", "not paid yet");
    let job_id = o["job_id"].as_str().expect("id").to_string();
    // Too low a cap: refused, nothing paid.
    let out = run(&["pay", "--job-id", &job_id, "--max-sats", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("above the limit"), "{}", stderr(&out));
    let out = run(&["pay", "--job-id", &job_id[..12], "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let paid: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(paid["amount_msat"], 1000);
    // The provider notices the payment and publishes the receipt: the trace verifies.
    let mut verified = false;
    let hub = m.hub_keys.public_key().to_hex();
    for _ in 0..50 {
        let out = run(&["job", "trace", &job_id, "--json", "--trust-hub", &hub]);
        let t: Value = serde_json::from_str(&stdout(&out)).expect("json");
        if t["verified"] == true {
            verified = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(verified, "the receipt arrived and the chain verifies");
    drop(m);
}

/// A relay that takes every message and never confirms an EVENT (answers REQs with EOSE only):
/// what an overloaded relay looks like from the client. Returns its URL and the ids of the events
/// it received, in order, duplicates included.
async fn silent_relay() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text.as_str())
                    else {
                        continue;
                    };
                    match frame.first().and_then(Value::as_str) {
                        Some("REQ") => {
                            let eose = serde_json::json!(["EOSE", frame[1]]).to_string();
                            if ws.send(Message::text(eose)).await.is_err() {
                                return;
                            }
                        }
                        Some("EVENT") => {
                            if let Some(id) = frame[1]["id"].as_str() {
                                log.lock().expect("log").push(id.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_relay_confirms_is_followed_and_sent_again() {
    let (url, seen) = silent_relay().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate();
    let relay = MarketClient::connect(
        keys.clone(),
        &[url.parse().expect("url")],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("relay");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let buyer = Buyer::start(keys, Arc::new(relay), None, store, SpendLimits::default())
        .await
        .expect("buyer");
    let job = NewJob {
        kind: pylon::protocol::kinds::CODE_ANALYSIS,
        inputs: vec![JobInput::text("fn main() {}\n")],
        params: vec![("path".into(), "main.rs".into())],
        ..Default::default()
    };
    let wait = WaitOptions {
        timeout: Duration::from_secs(8),
        auto_pay: false,
        max_msats: None,
    };
    // Unconfirmed is not refused: the buyer follows the job to its own deadline instead of
    // failing at the publish, and ends it as a timeout with nobody having answered.
    let outcome = buyer.run(&job, wait).await.expect("followed, not failed");
    assert_eq!(outcome.status, JobState::Failed);
    assert_eq!(outcome.failure, Some(FailureCode::Timeout));
    // While the job was quiet and unclaimed, the same request went out again.
    let ids = seen.lock().expect("log").clone();
    let request = &outcome.job_id;
    let copies = ids.iter().filter(|id| *id == request).count();
    assert!(copies >= 2, "request sent {copies} time(s): {ids:?}");
}

/// Another embedded relay on loopback, beside the market's.
async fn second_relay() -> pylon::relay::EmbeddedRelay {
    pylon::relay::EmbeddedRelay::start(
        &pylon::relay::RelaySettings {
            bind: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        },
        &tempfile::tempdir().expect("tempdir").keep().join("r2"),
    )
    .await
    .expect("second relay")
}

/// NIP-90 `relays`: the buyer names its relays, and a provider answers there as well as on its
/// own — so a buyer that reads a relay the provider never uses still gets feedback and result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_answers_on_the_relays_the_request_names() {
    let m = Market::start().await;
    let second = second_relay().await;
    // The provider is on the market relay only; loopback relays are allowed here because
    // every relay of a test is on loopback (the default refuses them: provider::reply tests).
    let (node, _ndir) = in_process_node(
        &m,
        pylon::provider::NodeOptions {
            allow_private_relays: true,
            ..Default::default()
        },
    )
    .await;
    let provider = node.public_key();
    // The buyer reads and writes both relays.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate();
    let relay = MarketClient::connect(
        keys.clone(),
        &[m.relay.url(), second.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("relay");
    let w: Arc<dyn Wallet> = Arc::new(m.funded_wallet(100).await);
    let b = Buyer::start(
        keys,
        Arc::new(relay),
        Some(w),
        Arc::new(Store::open(dir.path()).expect("store")),
        SpendLimits::default(),
    )
    .await
    .expect("buyer");
    let o = b
        .run(
            &code_job("named.rs", "fn named() {}\n".into(), provider, 5_000),
            wait(true, None),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Done, "{o:?}");
    let job_id = nostr_sdk::EventId::from_hex(&o.job_id).expect("job id");

    // Only the second relay is asked: the provider never connected to it of its own accord.
    let watcher = MarketClient::connect(
        Keys::generate(),
        &[second.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("watcher");
    let request = watcher
        .fetch(nostr_sdk::Filter::new().id(job_id), Duration::from_secs(2))
        .await
        .expect("fetch")
        .into_iter()
        .next()
        .expect("the buyer published the request to its relays");
    let named = pylon::protocol::tags::values(&request, "relays")
        .expect("the request names its relays")
        .to_vec();
    for url in [m.relay.url(), second.url()] {
        assert!(named.contains(&url.to_string()), "{named:?} lacks {url}");
    }
    let answers = nostr_sdk::Filter::new()
        .kinds([Kind::from(6960), Kind::from(7000)])
        .author(provider)
        .event(job_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut result, mut feedback) = (false, false);
    while !(result && feedback) {
        assert!(
            std::time::Instant::now() < deadline,
            "on the named relay: result {result}, feedback {feedback}"
        );
        for e in watcher
            .fetch(answers.clone(), Duration::from_secs(2))
            .await
            .expect("fetch")
            .iter()
        {
            result |= e.kind == Kind::from(6960);
            feedback |= e.kind == Kind::from(7000);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watcher.shutdown().await;
    node.stop().await;
}
