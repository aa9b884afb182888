//! The repo-map fan-out with real parts: an in-process appliance (relay, hub, provider nodes),
//! the coordinator paying per file, and the CLI.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use nostr_sdk::{EventId, Keys};
use pylon::appliance::{open_hub_settings, Appliance};
use pylon::executors::code::analyze;
use pylon::executors::{ExecError, Executor, Output, Registry};
use pylon::fanout::{self, aggregate, sample, walk, Options};
use pylon::protocol::nip90::JobRequest;
use pylon::provider::NodeOptions;
use pylon::relay::RelaySettings;
use pylon::wallet::Wallet;
use serde_json::Value;

use crate::common::{pylon, stderr, stdout, PASS};

fn node_options() -> NodeOptions {
    NodeOptions {
        buyer_jobs_per_minute: 1_000_000,
        buyer_max_concurrent: 1_000_000,
        settlement_poll: Duration::from_millis(500),
        ..NodeOptions::default()
    }
}

fn relay_settings() -> RelaySettings {
    RelaySettings {
        bind: "127.0.0.1:0".parse().expect("addr"),
        events_per_second: 100_000,
        event_burst: 100_000,
        ..RelaySettings::default()
    }
}

async fn market(providers: usize) -> Appliance {
    let mut m = Appliance::start(&relay_settings(), None, None, open_hub_settings())
        .await
        .expect("appliance");
    m.add_providers(providers, &node_options())
        .await
        .expect("providers");
    m
}

/// Every mapped file's trace verifies from relay events alone.
async fn traces_verify(m: &Appliance, mapped: &[aggregate::MappedFile]) {
    let auditor = pylon::appliance::connect(&Keys::generate(), &m.url)
        .await
        .expect("auditor");
    for f in mapped {
        let id = EventId::from_hex(&f.job_id).expect("job id");
        let t = pylon::provenance::trace(&auditor, id, Duration::from_secs(5), &m.trusted_hubs())
            .await
            .expect("trace");
        assert!(t.verified, "{}: {:?}", f.analysis.path, t.reason);
    }
    auditor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_files_through_ten_providers_all_mapped_paid_and_traceable() {
    let repo = tempfile::tempdir().expect("tempdir");
    sample::generate(repo.path(), 200).expect("sample");
    let (files, _) = walk::collect(repo.path(), &[], &[]).expect("walk");
    let m = market(10).await;
    let keys = Keys::generate();
    let (buyer, _) = m.funded_buyer(&keys, 10_000_000).await.expect("buyer");
    let relay = pylon::appliance::connect(&keys, &m.url)
        .await
        .expect("relay");
    let budget = 250_000; // msats: room for 200 files at 1000, not for every duplicate
    let options = Options {
        budget_msats: Some(budget),
        ..Options::default()
    };
    let (report, mapped, provenance) =
        fanout::map_market(&files, buyer.clone(), &relay, &options, |_| {})
            .await
            .expect("map");
    assert_eq!(report.mapped, 200, "{:?}", report.failed);
    assert!(report.failed.is_empty());
    assert!(
        report.spent_msats <= budget,
        "budget holds: {}",
        report.spent_msats
    );
    assert_eq!(report.spent_msats, 200 * 1000, "every file paid once");
    assert!(
        report.providers_used >= 5,
        "load spread: {}",
        report.providers_used
    );
    assert!(
        provenance
            .iter()
            .all(|p| p.receipt.is_some() && p.result.is_some()),
        "receipts collected"
    );
    traces_verify(&m, &mapped).await;
    let audit = m.audit().expect("audit");
    assert!(audit.ok, "{audit:?}");
    relay.shutdown().await;
    drop(buyer);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn this_repository_maps_and_matches_the_local_baseline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (files, skipped) = walk::collect(root, &[], &[]).expect("walk");
    assert!(files.iter().any(|f| f.path == "src/lib.rs"));
    assert!(
        !files.iter().any(|f| f.path.starts_with("target/")),
        "build output is not mapped"
    );
    assert!(skipped.iter().all(|s| !s.reason.is_empty()));
    let m = market(3).await;
    let keys = Keys::generate();
    let (buyer, _) = m.funded_buyer(&keys, 10_000_000).await.expect("buyer");
    let relay = pylon::appliance::connect(&keys, &m.url)
        .await
        .expect("relay");
    let (report, mapped, _) =
        fanout::map_market(&files, buyer.clone(), &relay, &Options::default(), |_| {})
            .await
            .expect("map");
    assert_eq!(report.mapped, files.len(), "{:?}", report.failed);
    // The market's map equals the local one, apart from providers and job ids.
    let (local, _) = fanout::map_local(&files);
    let strip = |v: &[aggregate::MappedFile]| {
        let mut m = aggregate::repo_map("repo", v);
        for f in &mut m.files {
            f.provider.clear();
            f.job_id.clear();
        }
        serde_json::to_string(&m).expect("json")
    };
    assert_eq!(strip(&mapped), strip(&local));
    traces_verify(&m, &mapped[..20]).await;
    relay.shutdown().await;
    drop(buyer);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_three_providers_mid_run_still_completes() {
    let repo = tempfile::tempdir().expect("tempdir");
    sample::generate(repo.path(), 120).expect("sample");
    let (files, _) = walk::collect(repo.path(), &[], &[]).expect("walk");
    let mut m = market(10).await;
    let keys = Keys::generate();
    let (buyer, _) = m.funded_buyer(&keys, 10_000_000).await.expect("buyer");
    let relay = Arc::new(
        pylon::appliance::connect(&keys, &m.url)
            .await
            .expect("relay"),
    );
    let options = Options {
        parallel: 16,
        timeout: Duration::from_secs(4),
        straggler_after: Duration::from_secs(2),
        ..Options::default()
    };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = {
        let (buyer, files, done, relay) =
            (buyer.clone(), files.clone(), done.clone(), relay.clone());
        tokio::spawn(async move {
            fanout::map_market(&files, buyer, &relay, &options, |p| {
                done.store(p.done, std::sync::atomic::Ordering::SeqCst)
            })
            .await
        })
    };
    // Once a third of the files are mapped, three providers die.
    while done.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        m.nodes.pop().expect("node").kill().await;
    }
    let (report, _, _) = run.await.expect("task").expect("map");
    assert_eq!(report.mapped, 120, "{:?}", report.failed);
    assert!(m.audit().expect("audit").ok);
    drop(buyer);
    m.stop().await;
}

/// A provider that answers every file with the analysis of something else.
struct Liar;

impl Executor for Liar {
    fn kind(&self) -> u16 {
        5960
    }
    fn backends(&self) -> Vec<String> {
        vec!["liar".into()]
    }
    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>> {
        Box::pin(async move {
            let path = request.param("path").unwrap_or("x").to_string();
            let forged = analyze(&path, "fn forged() {}\n");
            Ok(Output {
                content: serde_json::to_string(&forged).expect("json"),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_returning_a_wrong_hash_is_not_paid_and_the_file_goes_elsewhere() {
    let repo = tempfile::tempdir().expect("tempdir");
    sample::generate(repo.path(), 20).expect("sample");
    let (files, _) = walk::collect(repo.path(), &[], &[]).expect("walk");
    let mut m = market(2).await;
    // The liar: a real node with a lying executor, and the cheapest price so it is chosen first.
    let liar_keys = Keys::generate();
    let liar_wallet_keys = Keys::generate();
    let liar_wallet = m.wallet(&liar_wallet_keys).await.expect("wallet");
    let mut registry = Registry::default();
    registry.add(Arc::new(Liar));
    let store = Arc::new(
        pylon::store::Store::open(&tempfile::tempdir().expect("tmp").keep()).expect("store"),
    );
    let liar = pylon::provider::Node::start(
        liar_keys.clone(),
        Arc::new(
            pylon::appliance::connect(&liar_keys, &m.url)
                .await
                .expect("relay"),
        ),
        Arc::new(liar_wallet),
        store,
        registry,
        NodeOptions {
            prices: [(5960, 1)].into(),
            ..node_options()
        },
    )
    .await
    .expect("liar node");
    let keys = Keys::generate();
    let (buyer, _) = m.funded_buyer(&keys, 1_000_000).await.expect("buyer");
    let relay = pylon::appliance::connect(&keys, &m.url)
        .await
        .expect("relay");
    let (report, mapped, _) =
        fanout::map_market(&files, buyer.clone(), &relay, &Options::default(), |_| {})
            .await
            .expect("map");
    assert_eq!(report.mapped, 20, "{:?}", report.failed);
    assert!(
        report.rejected_results >= 1,
        "the liar was caught: {report:?}"
    );
    assert!(
        mapped
            .iter()
            .all(|f| f.provider != liar_keys.public_key().to_hex()),
        "never accepted"
    );
    let liar_balance = m
        .wallet(&liar_wallet_keys)
        .await
        .expect("wallet")
        .balance_msat()
        .await
        .expect("balance");
    assert_eq!(liar_balance, 0, "the liar is not paid");
    liar.stop().await;
    relay.shutdown().await;
    drop(buyer);
    m.nodes.clear();
    m.stop().await;
}

#[test]
fn cli_local_maps_are_deterministic_and_inputs_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    sample::generate(&repo, 25).expect("sample");
    let run = |out: &str| {
        pylon(dir.path())
            .args(["repomap", "--local", "--json", "--out"])
            .arg(dir.path().join(out))
            .arg(&repo)
            .output()
            .expect("spawn")
    };
    let a = run("a");
    assert!(a.status.success(), "{}", stderr(&a));
    let report: Value = serde_json::from_str(&stdout(&a)).expect("json");
    assert_eq!(report["report"]["mapped"], 25);
    assert!(run("b").status.success());
    for name in ["repo_map.json", "overview.md", "provenance.json"] {
        let x = std::fs::read(dir.path().join("a").join(name)).expect("artifact");
        let y = std::fs::read(dir.path().join("b").join(name)).expect("artifact");
        assert_eq!(x, y, "{name} is byte-identical across runs");
    }
    let map: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/repo_map.json")).expect("map"))
            .expect("json");
    assert_eq!(map["schema"], "pylon/repo-map@1");
    assert!(map["symbols"]["Widget5"].is_array());

    // A git URL is cloned (here a local repository, as file://).
    let git = |args: &[&str]| {
        assert!(std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git")
            .status
            .success());
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "sample"]);
    let url = format!("file://{}", repo.display());
    let out = pylon(dir.path())
        .args(["repomap", "--local", "--json", "--out"])
        .arg(dir.path().join("c"))
        .arg(&url)
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(r["report"]["mapped"], 25);

    for (args, expect) in [
        (
            vec!["repomap", "--local", "/no/such/dir"],
            "not a directory",
        ),
        (
            vec!["repomap", "--local", "--include", "[", "."],
            "bad glob",
        ),
    ] {
        let out = pylon(dir.path())
            .args(&args)
            .env("PYLON_PASSPHRASE", PASS)
            .output()
            .expect("spawn");
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn the_budget_is_never_exceeded() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let repo = tempfile::tempdir().expect("tempdir");
        sample::generate(repo.path(), 30).expect("sample");
        let (files, _) = walk::collect(repo.path(), &[], &[]).expect("walk");
        let m = market(2).await;
        let keys = Keys::generate();
        let (buyer, _) = m.funded_buyer(&keys, 1_000_000).await.expect("buyer");
        let relay = pylon::appliance::connect(&keys, &m.url)
            .await
            .expect("relay");
        let options = Options {
            budget_msats: Some(10_000),
            ..Options::default()
        };
        let (report, _, _) = fanout::map_market(&files, buyer.clone(), &relay, &options, |_| {})
            .await
            .expect("map");
        assert!(report.budget_exhausted);
        assert!(report.spent_msats <= 10_000, "{}", report.spent_msats);
        assert!(
            report.mapped <= 10 && report.mapped > 0,
            "{}",
            report.mapped
        );
        assert!(
            report.failed.iter().all(|f| f.reason == "budget exhausted"),
            "{:?}",
            report.failed
        );
        relay.shutdown().await;
        drop(buyer);
        m.stop().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_map_completes_through_a_relay_that_allows_ten_events_a_second_per_connection() {
    let repo = tempfile::tempdir().expect("tempdir");
    sample::generate(repo.path(), 20).expect("sample");
    let (files, _) = walk::collect(repo.path(), &[], &[]).expect("walk");
    // Like a public relay: 10 events/s per connection, a burst of 10. The hub, which answers
    // every wallet on the relay, is exempt, as its operator would configure it.
    let hub = Keys::generate();
    let node_key = bitcoin::secp256k1::SecretKey::from_slice(&[7u8; 32]).expect("key");
    let settings = RelaySettings {
        events_per_second: 10,
        event_burst: 10,
        rate_limit_exempt: vec![hub.public_key()],
        ..relay_settings()
    };
    let mut m = Appliance::start(&settings, None, Some((hub, node_key)), open_hub_settings())
        .await
        .expect("appliance");
    m.add_providers(3, &node_options())
        .await
        .expect("providers");
    let keys = Keys::generate();
    let (buyer, _) = m.funded_buyer(&keys, 10_000_000).await.expect("buyer");
    let relay = pylon::appliance::connect(&keys, &m.url)
        .await
        .expect("relay");
    let options = Options {
        timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let (report, _, _) = fanout::map_market(&files, buyer.clone(), &relay, &options, |_| {})
        .await
        .expect("map");
    assert_eq!(report.mapped, 20, "{:?}", report.failed);
    assert_eq!(report.spent_msats, 20 * 1000, "every file paid once");
    assert!(m.audit().expect("audit").ok);
    relay.shutdown().await;
    drop(buyer);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_says_why_each_provider_it_passes_over_cannot_be_used() {
    use nostr_sdk::{EventBuilder, Kind, Tag, TagKind, Timestamp};
    use pylon::fanout::select::{discover_all, Unusable};
    use pylon::protocol::heartbeat::{Heartbeat, HeartbeatInfo};
    use pylon::protocol::nip89::{Announcement, ProviderInfo};

    let mut m = Appliance::start(&relay_settings(), None, None, open_hub_settings())
        .await
        .expect("appliance");
    let ours = m
        .add_node(Registry::builtin(), &node_options())
        .await
        .expect("provider");
    let client = pylon::appliance::connect(&Keys::generate(), &m.url)
        .await
        .expect("client");
    let k = |v: &str| Tag::custom(TagKind::custom("k"), [v]);
    // Another framework's DVM: its own announcement shape (no `prices`) and its heartbeat.
    let foreign = Keys::generate();
    let announce = EventBuilder::new(
        Kind::Custom(31990),
        r#"{"name":"dvm","about":"code analysis","supportsEncryption":true}"#,
    )
    .tags([Tag::identifier("dvm"), k("5960")])
    .sign_with_keys(&foreign)
    .expect("sign");
    let beat = EventBuilder::new(Kind::Custom(11998), "Alive and kicking")
        .tags([Tag::expiration(Timestamp::now() + 300)])
        .sign_with_keys(&foreign)
        .expect("sign");
    let priced = |keys: &Keys, msats: u64| {
        let info = ProviderInfo {
            prices: [("5960".to_string(), msats)].into(),
            ..ProviderInfo::default()
        };
        Announcement::to_event(keys, "pylon", &[5960], &info).expect("announce")
    };
    let pricey = Keys::generate();
    let pricey_beat = Heartbeat::to_event(
        &pricey,
        &HeartbeatInfo {
            interval_secs: Some(60),
            ..HeartbeatInfo::default()
        },
        &[5960],
    )
    .expect("beat");
    let silent = Keys::generate();
    for event in [
        announce,
        beat,
        priced(&pricey, 200_000_000),
        pricey_beat,
        priced(&silent, 1),
    ] {
        client.publish(&event).await.expect("publish");
    }

    let found = discover_all(&client, 100_000_000, &[])
        .await
        .expect("discover");
    assert_eq!(
        found
            .candidates
            .iter()
            .map(|c| c.pubkey)
            .collect::<Vec<_>>(),
        vec![ours]
    );
    let mut expected = vec![
        (foreign.public_key(), Unusable::NoPrice),
        (pricey.public_key(), Unusable::TooExpensive(200_000_000)),
        (silent.public_key(), Unusable::Offline),
    ];
    expected.sort_by_key(|p| p.0);
    assert_eq!(found.passed_over, expected);

    // Named ones: the foreign DVM and a key that announces nothing are explained.
    let stranger = Keys::generate().public_key();
    let found = discover_all(
        &client,
        100_000_000,
        &[foreign.public_key(), stranger, ours],
    )
    .await
    .expect("discover");
    assert_eq!(found.candidates.len(), 1);
    let why = found.explain().join("\n");
    assert!(why.contains("without a price in Pylon's `prices`"), "{why}");
    assert!(why.contains("announces no code analysis"), "{why}");
    assert_eq!(found.passed_over.len(), 2, "{why}");

    client.shutdown().await;
    m.stop().await;
}
