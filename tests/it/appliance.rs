//! The appliance as users run it: `pylon demo` (the golden path, ten times in a row, and with 30%
//! of the providers killed mid-run), `pylon up` (with and without a reachable public relay) and
//! `pylon swarm` against it.

use std::path::Path;
use std::time::{Duration, Instant};

use pylon::appliance::demo::{self, DemoOptions};
use serde_json::Value;

use crate::common::{closed_port, init_home, pylon, pylon_at, stderr, stdout, Spawned, PASS};

fn options(out: &Path) -> DemoOptions {
    DemoOptions {
        repo: None,
        out: out.to_path_buf(),
        ..DemoOptions::default()
    }
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_golden_path_ten_times_in_a_row() {
    for run in 1..=10 {
        let out = tempfile::tempdir().expect("tempdir");
        let demo = demo::run(&options(out.path()), |_| {}, |_| {})
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let r = &demo.report;
        let b = &r.scoreboard;
        assert!(b.met, "run {run}: {b:?}");
        assert!(
            r.repomap.failed.is_empty(),
            "run {run}: {:?}",
            r.repomap.failed
        );
        assert_eq!(r.repomap.mapped, 200, "run {run}");
        assert!(
            b.providers_with_jobs >= 20 && b.jobs_completed >= 200,
            "run {run}: {b:?}"
        );
        assert_eq!(
            b.sats_settled, 200,
            "run {run}: every job paid 1 sat, receipted"
        );
        let trace = r.trace.as_ref().expect("a traced job");
        assert!(trace.verified, "run {run}: {:?}", trace.reason);
        for a in &r.artifacts {
            assert!(a.is_file(), "run {run}: {}", a.display());
        }
        let map: Value =
            serde_json::from_str(&std::fs::read_to_string(&r.artifacts[0]).expect("read"))
                .expect("json");
        assert_eq!(
            map["files"].as_array().map(Vec::len),
            Some(200),
            "run {run}"
        );
        demo.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_kills_thirty_percent_and_the_map_still_completes() {
    let out = tempfile::tempdir().expect("tempdir");
    let demo = demo::run(
        &DemoOptions {
            churn: 0.3,
            ..options(out.path())
        },
        |_| {},
        |_| {},
    )
    .await
    .expect("demo");
    let r = &demo.report;
    assert_eq!(r.killed, 9);
    assert!(r.repomap.failed.is_empty(), "{:?}", r.repomap.failed);
    assert_eq!(r.repomap.mapped, 200);
    // The dead show: offline, and their unfinished jobs counted as provider-offline.
    assert_eq!(r.stats.online_nodes, 21, "{:?}", r.stats.online_nodes);
    let offline = r
        .stats
        .failures
        .get("provider-offline")
        .copied()
        .unwrap_or(0);
    assert!(offline >= 1, "{:?}", r.stats.failures);
    // `pylon stats`, pointed at the same relay, sees the same failures with their reason.
    let home = tempfile::tempdir().expect("home");
    let url = demo.relay_url().to_string();
    let relay = url.clone();
    let printed = tokio::task::spawn_blocking(move || {
        pylon(home.path())
            .args(["--relay", &relay, "stats", "--json"])
            .output()
            .expect("spawn")
    })
    .await
    .expect("join");
    assert!(printed.status.success(), "{}", stderr(&printed));
    let s: Value = serde_json::from_str(&stdout(&printed)).expect("json");
    assert!(
        s["failures"]["provider-offline"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    let relay = url.clone();
    let home = tempfile::tempdir().expect("home");
    let text = tokio::task::spawn_blocking(move || {
        pylon(home.path())
            .args(["--relay", &relay, "stats"])
            .output()
            .expect("spawn")
    })
    .await
    .expect("join");
    let line = stdout(&text)
        .lines()
        .find(|l| l.starts_with("failures (24h)"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no failures line in {}", stdout(&text)));
    assert!(line.contains("provider-offline"), "{line}");
    let page = reqwest::get(format!("{}/", demo.dashboard))
        .await
        .expect("GET")
        .text()
        .await
        .expect("html");
    let card = page.split("id=\"failures\"").nth(1).expect("failures card");
    assert!(
        card[..200.min(card.len())].contains("provider-offline"),
        "{card}"
    );
    // So does the dashboard, per provider.
    let providers = get_json(&format!("{}/api/providers", demo.dashboard)).await;
    let dead = providers
        .as_array()
        .expect("array")
        .iter()
        .filter(|p| p["online"] == false)
        .count();
    assert_eq!(dead, 9, "{providers}");
    demo.stop().await;
}

#[test]
fn demo_cli_prints_the_scoreboard_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("artifacts");
    let run = pylon(dir.path())
        .args(["demo", "--sample-only", "--web", "127.0.0.1:0", "--out"])
        .arg(&out)
        .output()
        .expect("spawn");
    assert!(run.status.success(), "{}\n{}", stderr(&run), stdout(&run));
    let text = stdout(&run);
    for needle in [
        "launch scoreboard",
        "providers with ≥ 1 job",
        "jobs completed",
        "success rate",
        "p50 job runtime",
        "end-to-end p50 / p95",
        "sats settled",
        "VERIFIED",
        "every launch bar met",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(out.join("repo_map.json").is_file() && out.join("overview.md").is_file());
    assert!(
        stderr(&run).contains("watch it on http://127.0.0.1:"),
        "{}",
        stderr(&run)
    );
}

/// The hero run under launch-day conditions, as a user starts it: 30% of the providers killed a
/// third of the way in, every role 100 ms away through the WAN proxy with random cuts, and the
/// relay limiting each connection to 20 events/s. Every file is still mapped, and the report
/// says what the link was and how it went.
#[test]
fn demo_with_churn_over_a_wan_maps_every_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("artifacts");
    let run = pylon(dir.path())
        .args([
            "demo",
            "--sample-only",
            "--churn",
            "30",
            "--wan",
            "--json",
            "--web",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("spawn");
    let r: Value = serde_json::from_str(&stdout(&run))
        .unwrap_or_else(|e| panic!("JSON ({e}): {}\n{}", stdout(&run), stderr(&run)));
    // The launch bars are for a local market; 100 ms away some may be missed, and then the exit
    // status says so: 0 exactly when every bar is met.
    let met = r["scoreboard"]["met"].as_bool().expect("met");
    assert_eq!(
        run.status.code(),
        Some(if met { 0 } else { 1 }),
        "{}",
        r["scoreboard"]
    );
    assert_eq!(r["killed"], 9, "{}", r["killed"]);
    let map = &r["repomap"];
    assert_eq!(map["mapped"], 200, "{map}");
    assert_eq!(map["failed"].as_array().map(Vec::len), Some(0), "{map}");
    let wan = &r["wan"];
    assert_eq!(wan["rtt_ms"], 100.0, "{wan}");
    assert_eq!(wan["events_per_sec"], 20, "{wan}");
    // Every role went through the proxy: 30 providers, the hub, the buyer and its wallet.
    assert!(
        wan["proxy"]["accepted"].as_u64().expect("accepted") >= 33,
        "{wan}"
    );
    // The success rate is what the dashboard counted, dead providers' jobs included.
    let rate = r["scoreboard"]["success_rate"].as_f64().expect("rate");
    assert!((0.0..=1.0).contains(&rate), "{rate}");
    assert!(
        stderr(&run).contains("through ws://127.0.0.1:"),
        "{}",
        stderr(&run)
    );
}

/// Starts `pylon up` from a fresh home and reads its banner.
fn start_up(home: &Path, extra: &[&str]) -> (Spawned, String, String) {
    init_home(home);
    let mut cmd = pylon(home);
    cmd.args([
        "up",
        "--bind",
        "127.0.0.1:0",
        "--web",
        "127.0.0.1:0",
        "--heartbeat-secs",
        "1",
    ])
    .args(extra)
    .env("PYLON_PASSPHRASE", PASS);
    let up = Spawned::start_until(&mut cmd, "Ctrl-C stops everything.");
    let field = |name: &str| {
        up.head
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {:?}", up.head))
    };
    let (relay, dashboard) = (field("relay:"), field("dashboard:"));
    (up, relay, dashboard)
}

async fn stats_until(dashboard: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = get_json(&format!("{dashboard}/api/stats")).await;
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never ready: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_relay_hub_dashboard_and_nodes_then_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("operator");
    let (up, relay, dashboard) = start_up(&home, &["--providers", "3"]);
    // The banner names the private file that holds the operator's wallet URI, not the URI.
    let uri_file = home.join("nwc.uri");
    assert!(
        up.head
            .iter()
            .any(|l| l.contains(&format!("nwc:        {}", uri_file.display()))),
        "{:?}",
        up.head
    );
    assert!(
        !up.head.iter().any(|l| l.contains("nostr+walletconnect://")),
        "{:?}",
        up.head
    );
    let uri = std::fs::read_to_string(&uri_file).expect("nwc.uri");
    assert!(uri.starts_with("nostr+walletconnect://"), "{uri}");
    assert!(relay.starts_with("ws://127.0.0.1:"), "{relay}");
    stats_until(&dashboard, |s| s["online_nodes"] == 3).await;

    // A buyer elsewhere gets sats from the faucet and buys a job; the operator's own node shows
    // up in `pylon node status`.
    let buyer = dir.path().join("buyer");
    init_home(&buyer);
    let (b, r) = (buyer.clone(), relay.clone());
    let out = tokio::task::spawn_blocking(move || {
        assert!(pylon_at(&b, &r, &["wallet", "faucet", "50"])
            .status
            .success());
        pylon_at(
            &b,
            &r,
            &[
                "job",
                "submit",
                "code-analysis",
                "--input",
                "fn up() {}",
                "--param",
                "path=up.rs",
                "--bid",
                "2",
                "--wait",
                "--auto-pay",
            ],
        )
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Done"), "{}", stdout(&out));
    stats_until(&dashboard, |s| {
        s["windows"]["last_day"]["sats_settled"] == 1
    })
    .await;
    let status = pylon(&home)
        .args(["node", "status", "--json"])
        .output()
        .expect("spawn");
    let v: Value = serde_json::from_str(&stdout(&status)).expect("json");
    assert_eq!(v["node"]["kinds"][0], 5960, "{v}");

    let exit = up.signal("TERM");
    assert!(exit.success(), "{exit:?}");
    // Everything persisted: the ledger audits clean after the stop.
    let audit = pylon(&home)
        .args(["hub", "audit", "--json"])
        .output()
        .expect("spawn");
    assert!(audit.status.success(), "{}", stderr(&audit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_falls_back_to_the_embedded_relay_and_says_so_on_the_dashboard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("ws://127.0.0.1:{}", closed_port());
    let (up, relay, dashboard) =
        start_up(dir.path(), &["--public-relay", &dead, "--providers", "1"]);
    let notice = up
        .head
        .iter()
        .find(|l| l.contains("notice:"))
        .unwrap_or_else(|| panic!("no notice in {:?}", up.head))
        .clone();
    assert!(
        notice.contains(&dead) && notice.contains("unreachable"),
        "{notice}"
    );
    assert_ne!(relay, dead);
    let s = stats_until(&dashboard, |s| s["online_nodes"] == 1).await;
    assert!(
        s["notices"][0]
            .as_str()
            .expect("notice")
            .contains("unreachable"),
        "{s}"
    );
    let page = reqwest::get(format!("{dashboard}/"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains("class=\"notice\"") && page.contains("embedded relay"),
        "{page}"
    );
    let stopped = up.signal("TERM");
    assert!(stopped.success(), "stopped with {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_runs_funded_nodes_on_an_up_market_and_reports_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, relay, dashboard) = start_up(&dir.path().join("operator"), &["--providers", "0"]);
    let home = dir.path().join("swarm");
    init_home(&home);
    let mut cmd = pylon(&home);
    cmd.args([
        "--relay",
        &relay,
        "swarm",
        "--providers",
        "5",
        "--fund",
        "7",
        "--json",
    ])
    .env("PYLON_PASSPHRASE", PASS);
    let swarm = Spawned::start_until(&mut cmd, "per_idle_node_mib");
    assert!(swarm.first_line.contains("5 nodes"), "{}", swarm.first_line);
    let report: Value = serde_json::from_str(swarm.head.last().expect("report")).expect("json");
    assert_eq!(report["nodes"], 5);
    assert!(
        report["per_idle_node_mib"].as_f64().expect("mib") > 0.0,
        "{report}"
    );
    stats_until(&dashboard, |s| s["online_nodes"] == 5).await;
    let stopped = swarm.signal("TERM");
    assert!(stopped.success(), "stopped with {stopped:?}");
    // Each node's wallet got its own faucet grant: 5 × 7 sats issued.
    let audit = pylon(&dir.path().join("operator"))
        .args(["hub", "audit", "--json"])
        .output()
        .expect("spawn");
    let a: Value = serde_json::from_str(&stdout(&audit)).expect("json");
    assert_eq!(a["total_issued_msat"], 35_000, "{a}");
}

#[test]
fn bench_swarm_prints_memory_and_start_times_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args([
            "bench",
            "swarm",
            "--providers",
            "3,6",
            "--jobs-per-node",
            "2",
            "--json",
        ])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for (run, n) in runs.iter().zip([3, 6]) {
        assert_eq!(run["providers"], n);
        assert_eq!(run["busy_jobs"], 2 * n);
        assert_eq!(run["all_done"], true, "{run}");
        assert_eq!(run["failures"], serde_json::json!({}), "{run}");
        let idle = run["per_idle_node_mib"].as_f64().expect("idle");
        assert!(
            idle > 0.0 && run["per_busy_node_mib"].as_f64().expect("busy") >= idle,
            "{run}"
        );
        assert!(run["start_secs"].as_f64().expect("start") > 0.0);
    }
    assert_eq!(v["target_idle_mib"], 2.0);
    assert_eq!(v["compose_to_first_paid_job_secs"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_leaves_the_dashboard_up_until_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = pylon(dir.path());
    cmd.args([
        "demo",
        "--sample-only",
        "--keep",
        "--web",
        "127.0.0.1:0",
        "--out",
    ])
    .arg(dir.path().join("out"));
    let demo = Spawned::start_until(&mut cmd, "launch bar");
    let dashboard = demo
        .head
        .iter()
        .find_map(|l| l.split("(dashboard: ").nth(1))
        .map(|rest| rest.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no dashboard in {:?}", demo.head));
    // The run is over, the market and its dashboard are still there.
    let s = get_json(&format!("{dashboard}/api/stats")).await;
    // A loaded machine makes the coordinator re-send a slow job elsewhere (both complete, one is
    // paid): completed may exceed 200, what was settled may not.
    let day = &s["windows"]["last_day"];
    assert!(day["completed"].as_u64().is_some_and(|n| n >= 200), "{s}");
    assert_eq!(day["sats_settled"], 200, "{s}");
    assert_eq!(s["online_nodes"], 30, "{s}");
    assert!(demo.signal("INT").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_on_a_reachable_public_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Another process's relay stands in for the public one.
    let public = crate::common::RelayProcess::start(dir.path(), &dir.path().join("public"));
    let (up, relay, dashboard) = start_up(
        &dir.path().join("operator"),
        &["--public-relay", &public.url, "--providers", "2"],
    );
    assert_eq!(
        relay.trim_end_matches('/'),
        public.url.trim_end_matches('/')
    );
    assert!(
        !up.head
            .iter()
            .any(|l| l.contains("(embedded)") || l.contains("notice:")),
        "{:?}",
        up.head
    );
    let s = stats_until(&dashboard, |s| s["online_nodes"] == 2).await;
    assert!(s.get("notices").is_none(), "{s}");
    let stopped = up.signal("TERM");
    assert!(stopped.success(), "stopped with {stopped:?}");
    assert!(public.terminate().success());
}

/// Sends SIGTERM to `p` and waits at most `limit` for it to exit (then SIGKILLs it and fails).
fn terminate_within(
    p: Spawned,
    what: &str,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    let pid = p.child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let status = p.signal("TERM");
        let _ = tx.send((status, t.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok(done) => done,
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} still running {limit:?} after SIGTERM");
        }
    }
}

#[test]
fn swarm_and_node_stop_within_seconds_of_sigterm_when_the_relay_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let op = dir.path().join("op");
    init_home(&op);
    let relay = crate::common::RelayProcess::start(&op, &op.join("relay"));
    let (hub, _) = crate::common::start_hub_process(&op, &relay.url);
    let home = dir.path().join("swarm");
    init_home(&home);
    let mut cmd = pylon(&home);
    cmd.args([
        "--relay",
        &relay.url,
        "swarm",
        "--providers",
        "10",
        "--fund",
        "1",
        "--json",
    ])
    .env("PYLON_PASSPHRASE", PASS);
    let swarm = Spawned::start_until(&mut cmd, "per_idle_node_mib");
    let node_home = dir.path().join("node");
    init_home(&node_home);
    let node = crate::common::start_node_process(&node_home, &[&relay.url], &[]);
    // The relay dies (no goodbye), and the hub with it.
    relay.process.signal("KILL");
    hub.signal("KILL");
    // Before: a 30-node swarm was still stopping 90 s later. Now: a farewell heartbeat that
    // waits 3 s at most, nodes stopped at once, tasks given 2 s. The limit is generous for a
    // loaded machine; the figure is printed.
    let (status, took) = terminate_within(swarm, "swarm", Duration::from_secs(40));
    assert!(status.success(), "swarm exit {status:?}");
    let (node_status, node_took) = terminate_within(node, "node", Duration::from_secs(40));
    assert!(node_status.success(), "node exit {node_status:?}");
    eprintln!("stopped with the relay gone: swarm of 10 in {took:?}, node in {node_took:?}");
}
