//! `pylon bench soak`, run small: the report's fields, every job paid, the books balanced.
//! No timing is asserted: the soak's figures are for the report, and a loaded machine only
//! makes the run longer.

use serde_json::Value;

use crate::common::{pylon, stderr, stdout};

#[test]
fn bench_soak_samples_memory_and_fds_and_pays_every_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args([
            "bench",
            "soak",
            "--jobs",
            "300",
            "--sample-every",
            "100",
            "--json",
        ])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(r["jobs"], 300, "{r}");
    assert_eq!(r["paid"], 300, "{r}");
    assert_eq!(r["done"], 300, "{r}");
    assert_eq!(r["all_paid"], true, "{r}");
    assert_eq!(r["failures"], serde_json::json!({}), "{r}");

    // Audit: every msat issued by the faucet is in some balance, nothing created or lost.
    let audit = &r["audit"];
    assert_eq!(r["audit_ok"], true, "{r}");
    assert_eq!(audit["ok"], true, "{r}");
    assert_eq!(
        audit["total_balance_msat"], audit["total_issued_msat"],
        "{r}"
    );
    assert!(audit["settled_invoices"].as_u64().expect("n") >= 300, "{r}");

    // A sample every 100 jobs, each a real reading (a 0 would read as "flat").
    let samples = r["samples"].as_array().expect("samples");
    let jobs: Vec<u64> = samples
        .iter()
        .map(|s| s["jobs"].as_u64().expect("jobs"))
        .collect();
    assert_eq!(jobs, [100, 200, 300], "{r}");
    for s in samples.iter().chain(std::iter::once(&r["baseline"])) {
        assert!(s["rss_kib"].as_u64().expect("rss") > 0, "{r}");
        let anon = s["rss_anon_kib"].as_u64().expect("anon");
        assert!(anon > 0, "{r}");
        assert!(
            s["rss_anon_untrimmed_kib"].as_u64().expect("untrimmed") > 0,
            "{r}"
        );
        assert!(s["fds"].as_u64().expect("fds") > 0, "{r}");
    }
    // Slopes over the two samples after the warm-up: present, finite numbers (values are the
    // report's business).
    for field in [
        "rss_slope_kib_per_1000_jobs",
        "rss_bytes_per_job",
        "rss_anon_slope_kib_per_1000_jobs",
        "rss_anon_slope_second_half_kib_per_1000_jobs",
        "rss_anon_untrimmed_slope_kib_per_1000_jobs",
        "fd_slope_per_1000_jobs",
    ] {
        assert!(r[field].as_f64().is_some(), "{field}: {r}");
    }
    assert!(r["fd_growth_after_warmup"].is_i64(), "{r}");
    assert!(r["rss_goal_met"].is_boolean(), "{r}");
    assert!(r["rss_anon_goal_met"].is_boolean(), "{r}");
    assert!(r["jobs_per_sec"].as_f64().expect("rate") > 0.0, "{r}");
    assert_eq!(r["end_to_end_ms"]["samples"], 300, "{r}");
    for field in [
        "provider_jobs_db_bytes_per_job",
        "buyer_jobs_db_bytes_per_job",
    ] {
        assert!(r[field].as_f64().expect(field) > 0.0, "{field}: {r}");
    }
    assert!(
        stderr(&out).contains("bench: 300/300 jobs"),
        "progress on stderr"
    );
}
