//! `pylon doctor`: every check a node needs to work, each with a verdict and a reason.

use std::path::Path;
use std::time::{Duration, Instant};

use nostr_sdk::{Client, Filter, RelayUrl};
use serde::Serialize;

use crate::config::Config;
use crate::home::Home;
use crate::identity::sealed;
use crate::relay::transport::NoDelayTransport;

/// How long each relay probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `relay ws://127.0.0.1:7777`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or what to do about it.
    pub detail: String,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Every check, in the order a user would fix them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when every check passed.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

/// Runs all checks. `passphrase`, when given, is used to verify the identity opens; without it
/// only the file's structure is checked. `relay_override` replaces the configured relays.
pub async fn run(home: &Home, passphrase: Option<&str>, relay_override: &[String]) -> Report {
    let mut checks = Vec::new();
    let config = match Config::load(home) {
        Ok(mut config) => match config.override_relays(relay_override) {
            Ok(()) => {
                let source = match &config.source {
                    Some(p) => format!("{} is valid", p.display()),
                    None => "no config.toml; defaults apply".to_string(),
                };
                checks.push(Check::pass("config", source));
                Some(config)
            }
            Err(e) => {
                checks.push(Check::fail("config", e.to_string()));
                None
            }
        },
        Err(e) => {
            checks.push(Check::fail("config", e.to_string()));
            None
        }
    };
    checks.push(check_identity(home, passphrase));
    checks.push(check_writable(home.root()));
    if let Some(config) = &config {
        for url in &config.relays {
            checks.push(check_relay(url).await);
        }
    }
    checks.push(check_llm(config.as_ref()).await);
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

fn check_identity(home: &Home, passphrase: Option<&str>) -> Check {
    let path = home.identity_file();
    match passphrase {
        Some(pass) => match sealed::load(&path, pass) {
            Ok(id) => Check::pass("identity", format!("unlocked: {}", id.public().npub)),
            Err(e) => Check::fail("identity", e.to_string()),
        },
        None => match sealed::inspect(&path) {
            Ok(()) => Check::pass(
                "identity",
                format!(
                    "{} is well-formed (set PYLON_PASSPHRASE to also check the passphrase)",
                    path.display()
                ),
            ),
            Err(e) => Check::fail("identity", e.to_string()),
        },
    }
}

/// Text generation is optional: this check reports what is there, and never fails.
async fn check_llm(config: Option<&Config>) -> Check {
    use crate::executors::textgen::{backend, Backend};
    let timeout = Duration::from_secs(5);
    let found = match config.and_then(|c| c.llm.endpoint.clone()) {
        Some(ep) => {
            let b = Backend::new("openai", &ep, timeout);
            match b.models().await {
                Ok(m) => Some((b, m)),
                Err(e) => {
                    return Check::pass("llm backend", format!("{e}; text generation is off"))
                }
            }
        }
        None => backend::detect(timeout).await,
    };
    match found {
        Some((b, models)) => Check::pass("llm backend", format!("{} at {}: {}", b.name(), b.endpoint(), models.join(", "))),
        None => Check::pass(
            "llm backend",
            "none found (Ollama on 127.0.0.1:11434, llama-server on 127.0.0.1:8080): text generation is off",
        ),
    }
}

fn check_writable(dir: &Path) -> Check {
    let name = "data dir";
    if !dir.is_dir() {
        return Check::fail(
            name,
            format!("{} does not exist: run `pylon init`", dir.display()),
        );
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let result = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe));
    match result {
        Ok(()) => Check::pass(name, format!("{} is writable", dir.display())),
        Err(e) => Check::fail(name, format!("{} is not writable: {e}", dir.display())),
    }
}

/// Fetches the NIP-11 document and measures a REQ→EOSE round trip over the WebSocket.
async fn check_relay(url: &RelayUrl) -> Check {
    let name = format!("relay {url}");
    let nip11 = fetch_nip11(url).await;
    let client = Client::builder()
        .websocket_transport(NoDelayTransport)
        .build();
    let ws = async {
        client.add_relay(url).await.map_err(|e| e.to_string())?;
        let out = client.try_connect(PROBE_TIMEOUT).await;
        if out.success.is_empty() {
            let why = out
                .failed
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| "no answer".into());
            return Err(format!("websocket: {why}"));
        }
        let mut samples = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            client
                .fetch_events(Filter::new().limit(0), PROBE_TIMEOUT)
                .await
                .map_err(|e| format!("websocket connected but REQ failed: {e}"))?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    }
    .await;
    crate::relay::client::close(&client).await;
    let nip11_text = match &nip11 {
        Ok(doc) => format!("NIP-11 name {:?}", doc["name"].as_str().unwrap_or("?")),
        Err(e) => format!("no NIP-11 ({e})"),
    };
    match ws {
        Ok(rtt_ms) => Check::pass(name, format!("{nip11_text}; round trip {rtt_ms:.1} ms")),
        Err(e) => Check::fail(
            name,
            format!("{e}; {nip11_text}. Start a relay with `pylon relay`, or use --relay URL"),
        ),
    }
}

async fn fetch_nip11(url: &RelayUrl) -> Result<serde_json::Value, String> {
    let http = url
        .as_str()
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(&http)
        .header("Accept", "application/nostr+json")
        .send()
        .await
        .map_err(|e| error_chain(&e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.json().await.map_err(|e| e.without_url().to_string())
}

/// "outer: inner: root cause", because reqwest's top-level message alone says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}
