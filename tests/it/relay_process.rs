//! `pylon relay`, `pylon doctor` and `pylon events` as processes: persistence across a restart,
//! clean shutdown on SIGTERM, and fast, clear failures when no relay is there.

use std::time::{Duration, Instant};

use nostr_sdk::{Client, EventBuilder, Filter, Keys, Kind};
use serde_json::Value;

use crate::common::{closed_port, init_home, pylon, stderr, stdout, RelayProcess};

#[tokio::test]
async fn relay_keeps_every_event_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("store");
    let relay = RelayProcess::start(dir.path(), &data);

    let keys = Keys::generate();
    let client = Client::new(keys.clone());
    client.add_relay(relay.url.as_str()).await.expect("add");
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(5)).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let ev = EventBuilder::new(Kind::from(5960), format!("job {i}"))
            .sign_with_keys(&keys)
            .expect("sign");
        let out = client.send_event(&ev).await.expect("send");
        assert!(
            !out.success.is_empty(),
            "event {i} accepted: {:?}",
            out.failed
        );
        ids.push(ev.id);
    }
    client.shutdown().await;

    let status = relay.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");

    let relay = RelayProcess::start(dir.path(), &data);
    let client = Client::new(Keys::generate());
    client.add_relay(relay.url.as_str()).await.expect("add");
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(5)).await;
    let events = client
        .fetch_events(
            Filter::new().author(keys.public_key()).limit(1000),
            Duration::from_secs(10),
        )
        .await
        .expect("fetch");
    client.shutdown().await;
    assert_eq!(events.len(), 100);
    for id in &ids {
        assert!(events.iter().any(|e| e.id == *id), "event {id} survived");
    }
}

#[tokio::test]
async fn relay_refuses_a_taken_port_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = pylon(dir.path())
        .args(["relay", "--bind", &addr, "--data"])
        .arg(dir.path().join("d"))
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn one_shot_command_with_a_dead_relay_fails_fast_and_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("ws://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let out = pylon(dir.path())
        .args(["--relay", &dead, "events"])
        .output()
        .expect("spawn");
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no relay reachable") && err.contains(&dead),
        "{err}"
    );
    assert!(err.contains("pylon relay"), "says how to start one: {err}");
    // A refused connection is reported at once, never after a long client timeout.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn doctor_reports_a_dead_relay_as_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_home(dir.path());
    let dead = format!("ws://127.0.0.1:{}", closed_port());
    let out = pylon(dir.path())
        .args(["--relay", &dead, "doctor", "--json"])
        .env("PYLON_PASSPHRASE", crate::common::PASS)
        .output()
        .expect("doctor");
    assert!(!out.status.success(), "a failed check exits non-zero");
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let checks = report["checks"].as_array().expect("checks");
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .unwrap_or_else(|| panic!("check {name} in {report}"))
    };
    assert_eq!(find("identity")["ok"], true);
    assert_eq!(find("config")["ok"], true);
    assert_eq!(find("data dir")["ok"], true);
    let relay = find("relay");
    assert_eq!(relay["ok"], false);
    assert!(relay["detail"]
        .as_str()
        .expect("detail")
        .contains("pylon relay"));
    assert_eq!(report["ok"], false);
}

#[test]
fn doctor_passes_against_a_live_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_home(dir.path());
    let relay = RelayProcess::start(dir.path(), &dir.path().join("store"));
    let out = pylon(dir.path())
        .args(["--relay", &relay.url, "doctor", "--json"])
        .env("PYLON_PASSPHRASE", "wrong")
        .output()
        .expect("doctor");
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let checks = report["checks"].as_array().expect("checks");
    let relay_check = checks
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("relay")))
        .expect("relay check");
    assert_eq!(relay_check["ok"], true, "{report}");
    assert!(relay_check["detail"]
        .as_str()
        .expect("detail")
        .contains("\"pylon\""));
    // The wrong passphrase is caught too.
    let identity = checks
        .iter()
        .find(|c| c["name"] == "identity")
        .expect("identity");
    assert_eq!(identity["ok"], false);
    assert!(identity["detail"]
        .as_str()
        .expect("detail")
        .contains("wrong passphrase"));
    assert!(!out.status.success());
}
