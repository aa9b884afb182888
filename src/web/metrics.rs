//! Prometheus text exposition of a snapshot.

use std::fmt::Write;

use crate::stats::model::{ProviderRow, Snapshot};

/// Renders the snapshot (and every provider) as Prometheus text format 0.0.4.
pub fn render(s: &Snapshot, providers: &[ProviderRow]) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    gauge(
        "pylon_online_nodes",
        "Providers with an unexpired heartbeat.",
        vec![(String::new(), s.online_nodes as f64)],
    );
    gauge(
        "pylon_known_providers",
        "Providers seen in the last day.",
        vec![(String::new(), s.known_providers as f64)],
    );
    let windows = [
        ("1m", &s.windows.last_minute),
        ("1h", &s.windows.last_hour),
        ("24h", &s.windows.last_day),
    ];
    for (metric, help, pick) in [
        ("pylon_jobs_submitted", "Job requests in the window.", 0),
        ("pylon_jobs_completed", "Job results in the window.", 1),
        (
            "pylon_jobs_failed",
            "Jobs that failed without a result in the window.",
            2,
        ),
        (
            "pylon_sats_requested",
            "Sats asked for in results in the window.",
            3,
        ),
        (
            "pylon_sats_settled",
            "Sats proven paid by receipts in the window.",
            4,
        ),
    ] {
        let samples = windows
            .iter()
            .map(|(w, st)| {
                let v = [
                    st.submitted,
                    st.completed,
                    st.failed,
                    st.sats_requested,
                    st.sats_settled,
                ][pick];
                (format!("{{window=\"{w}\"}}"), v as f64)
            })
            .collect();
        gauge(metric, help, samples);
    }
    if let Some(r) = s.success_rate {
        gauge(
            "pylon_success_ratio",
            "Results over ended jobs, last hour.",
            vec![(String::new(), r)],
        );
    }
    for (metric, help, p) in [
        (
            "pylon_latency_ms",
            "Request to result, last hour.",
            &s.latency_ms,
        ),
        (
            "pylon_pickup_ms",
            "Request to claim, last hour.",
            &s.pickup_ms,
        ),
        (
            "pylon_payment_ms",
            "Result to receipt, last hour.",
            &s.payment_ms,
        ),
    ] {
        let mut samples = Vec::new();
        if let Some(v) = p.p50 {
            samples.push(("{quantile=\"0.5\"}".to_string(), v));
        }
        if let Some(v) = p.p95 {
            samples.push(("{quantile=\"0.95\"}".to_string(), v));
        }
        gauge(metric, help, samples);
    }
    let by_code = s
        .failures
        .iter()
        .map(|(code, n)| (format!("{{code=\"{}\"}}", escape(code)), *n as f64))
        .collect();
    gauge("pylon_failures", "Failures by code, last day.", by_code);
    let label = |p: &ProviderRow| format!("{{provider=\"{}\"}}", escape(&p.npub));
    gauge(
        "pylon_provider_completed",
        "Results per provider, last day.",
        providers
            .iter()
            .map(|p| (label(p), p.completed as f64))
            .collect(),
    );
    gauge(
        "pylon_provider_online",
        "1 when the provider's heartbeat is unexpired.",
        providers
            .iter()
            .map(|p| (label(p), f64::from(u8::from(p.online))))
            .collect(),
    );
    gauge(
        "pylon_provider_earnings_sats",
        "Receipted sats per provider, last day.",
        providers
            .iter()
            .map(|p| (label(p), p.earnings_sats as f64))
            .collect(),
    );
    out
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
