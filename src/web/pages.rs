//! Server-rendered pages.

use askama::Template;

use crate::provenance::Trace;
use crate::stats::model::{ProviderRow, Snapshot};

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard<'a> {
    s: &'a Snapshot,
    relays: &'a [String],
    success: String,
    p50: String,
    p95: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage<'a> {
    t: &'a Trace,
    relays: &'a [String],
}

#[derive(Template)]
#[template(path = "provider.html")]
struct ProviderPage<'a> {
    p: &'a ProviderRow,
    relays: &'a [String],
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 1000.0 => format!("{} ms", v.round()),
        Some(v) => format!("{:.2} s", v / 1000.0),
    }
}

/// `/`.
pub fn dashboard(s: &Snapshot) -> Result<String, askama::Error> {
    Dashboard {
        s,
        relays: &s.relays,
        success: s
            .success_rate
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "–".into()),
        p50: ms(s.latency_ms.p50),
        p95: ms(s.latency_ms.p95),
    }
    .render()
}

/// `/job/<id>`.
pub fn job(t: &Trace, relays: &[String]) -> Result<String, askama::Error> {
    JobPage { t, relays }.render()
}

/// `/provider/<npub>`.
pub fn provider(p: &ProviderRow, relays: &[String]) -> Result<String, askama::Error> {
    ProviderPage { p, relays }.render()
}
