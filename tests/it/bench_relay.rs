//! `pylon bench relay` end to end at a small size: both relays as child processes, every phase,
//! the JSON's shape and sanity (no timings asserted).

use std::path::PathBuf;

use serde_json::Value;

use crate::common::{pylon, stderr, stdout};

/// nostr-rs-relay where the test setup installs it (`NOSTR_RS_RELAY` overrides), if present.
fn nostr_rs_relay() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NOSTR_RS_RELAY") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin").join("nostr-rs-relay")).filter(|p| p.is_file())
}

/// The figures every relay must have, and their sanity.
fn check_relay(name: &str, r: &Value, strict_delivery: bool) {
    let f = &r["fanout"];
    let accepted = f["accepted"].as_u64().expect("accepted");
    assert!(accepted > 0, "{name}: nothing accepted: {r}");
    assert_eq!(f["events_sent"], 2000, "{name}");
    assert_eq!(f["publishers"], 20);
    assert_eq!(f["subscribers"], 50);
    assert_eq!(
        f["deliveries_expected"].as_u64(),
        Some(accepted * 50),
        "{name}"
    );
    let lost = f["lost"].as_u64().expect("lost");
    let closed = f["closed"].as_u64().expect("closed");
    if strict_delivery {
        // Pylon's relay may close a subscriber it finds too slow; otherwise nothing is lost.
        assert!(
            lost == 0 || closed > 0,
            "{name}: {lost} deliveries lost without a CLOSED: {r}"
        );
    }
    assert!(f["deliveries_received"].as_u64().expect("received") > 0);
    for key in ["p50", "p99", "max"] {
        assert!(f["publish_ok_ms"][key].as_f64().expect("latency") >= 0.0);
    }
    assert!(f["accepted_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(f["peak_rss_kib"].as_u64().expect("peak rss") > 0, "{name}");
    assert!(f["vm_hwm_kib"].as_u64().expect("hwm") > 0);
    assert!(f["relay_messages"].is_array());

    let s = &r["storm"];
    assert_eq!(s["reqs"], 20, "{name}");
    assert_eq!(s["req_limit"], 10_000);
    let sent = s["reqs_sent"].as_u64().expect("sent");
    assert!(sent > 0, "{name}: {s}");
    let answered = s["eose"].as_u64().expect("eose") + s["closed"].as_u64().expect("closed");
    assert_eq!(
        answered + s["unanswered"].as_u64().expect("unanswered"),
        sent,
        "{name}: every storm REQ sent is accounted for: {s}"
    );
    assert!(answered > 0, "{name}: {s}");
    assert!(s["preload_method"].is_string(), "{name}: {s}");
    assert!(s["preloaded"].as_u64().expect("preloaded") > 0, "{name}");
    assert!(s["events_received"].as_u64().expect("events") > 0, "{name}");
    assert!(s["relay_cpu_secs"].as_f64().expect("cpu") >= 0.0);
    assert!(s["client_cpu_secs"].as_f64().expect("client cpu") >= 0.0);
    assert!(s["wall_secs"].as_f64().expect("wall") > 0.0);
    assert!(s["probe_sent"].as_u64().expect("probe") > 0, "{name}");
    assert!(s["probe_publish_ok_ms"]["p99"].as_f64().is_some());
    assert!(s["probe_goal_met"].is_boolean());
    assert!(
        s["new_client_eose_ms"].as_f64().is_some(),
        "{name}: the new client got its EOSE: {s}"
    );

    let i = &r["idle"];
    assert_eq!(i["connections"], 50);
    assert_eq!(i["opened"], 50, "{name}: {i}");
    assert!(
        i["kib_per_connection"].as_f64().expect("per conn") > 0.0,
        "{name}: {i}"
    );
}

#[test]
fn bench_relay_measures_both_relays_and_prints_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = pylon(dir.path());
    cmd.args([
        "bench",
        "relay",
        "--events",
        "2000",
        "--preload",
        "2000",
        "--storm",
        "20",
        "--idle",
        "50",
        "--json",
    ]);
    let comparison = nostr_rs_relay();
    if let Some(bin) = &comparison {
        cmd.arg("--nostr-rs-relay").arg(bin);
    }
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "bench relay failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let report: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("bench relay --json prints JSON ({e}): {}", stdout(&out)));
    assert!(report["notes"].is_array(), "{report}");
    assert!(
        report["pylon"]["relay"]
            .as_str()
            .is_some_and(|s| s.starts_with("pylon")),
        "{report}"
    );
    check_relay("pylon", &report["pylon"], true);
    if comparison.is_some() {
        check_relay("nostr-rs-relay", &report["nostr_rs_relay"], false);
    } else {
        assert!(report["nostr_rs_relay"].is_null(), "{report}");
        let notes = report["notes"].to_string();
        assert!(notes.contains("nostr-rs-relay skipped"), "{notes}");
    }
    assert!(stderr(&out).contains("bench:"), "progress on stderr");
}
