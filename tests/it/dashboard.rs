//! Stats and the web dashboard over a live market: the JSON API and its schema, the pages,
//! Prometheus text, `pylon stats --json`, and a real headless Chromium watching the page update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use pylon::buyer::{Buyer, WaitOptions};
use pylon::protocol::nip90::{JobInput, NewJob};
use pylon::relay::{MarketClient, Reachability};
use pylon::stats::LiveStats;
use pylon::store::{JobState, Store};
use pylon::wallet::Wallet;
use pylon::web::{self, WebState};
use serde_json::Value;

use crate::common::{pylon, start_node_process, stderr, stdout, Home, Market, Spawned};

struct Scene {
    m: Market,
    _root: tempfile::TempDir,
    _node: Spawned,
    provider: nostr_sdk::PublicKey,
    buyer: Arc<Buyer>,
    web: web::RunningWeb,
}

async fn scene() -> Scene {
    let m = Market::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let home = Home::new(root.path().join("p"));
    let node = start_node_process(&home.path, &[&m.relay.url().to_string()], &[]);
    let provider =
        nostr_sdk::PublicKey::from_hex(node.first_line.split_whitespace().nth(2).expect("key"))
            .expect("hex");
    let wallet: Arc<dyn Wallet> = Arc::new(m.funded_wallet(1_000).await);
    let keys = Keys::generate();
    let relay = MarketClient::connect(
        keys.clone(),
        &[m.relay.url()],
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("relay");
    let store = Arc::new(Store::open(&root.path().join("buyer")).expect("store"));
    let buyer = Arc::new(
        Buyer::start(
            keys,
            Arc::new(relay),
            Some(wallet),
            store.clone(),
            pylon::buyer::SpendLimits::default(),
        )
        .await
        .expect("buyer"),
    );
    let viewer = Arc::new(
        MarketClient::connect(
            Keys::generate(),
            &[m.relay.url()],
            Duration::from_secs(5),
            Reachability::OneShot,
        )
        .await
        .expect("viewer"),
    );
    let stats = Arc::new(
        LiveStats::start(viewer.clone(), pylon::stats::DAY)
            .await
            .expect("stats"),
    );
    let state = Arc::new(WebState {
        stats,
        client: viewer,
        store: Some(store),
        notices: vec!["the public relay is unreachable: running on the embedded relay".into()],
        trust: m.trust(),
    });
    let web = web::serve("127.0.0.1:0".parse().expect("addr"), state)
        .await
        .expect("web");
    Scene {
        m,
        _root: root,
        _node: node,
        provider,
        buyer,
        web,
    }
}

async fn run_jobs(
    buyer: &Buyer,
    provider: nostr_sdk::PublicKey,
    n: usize,
    tag: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let job = NewJob {
            kind: 5960,
            inputs: vec![JobInput::text(format!("pub fn {tag}_{i}() {{}}\n"))],
            params: vec![("path".into(), format!("{tag}/{i}.rs"))],
            bid_msats: Some(5_000),
            providers: vec![provider],
            ..Default::default()
        };
        let o = buyer
            .run(
                &job,
                WaitOptions {
                    timeout: Duration::from_secs(20),
                    auto_pay: true,
                    max_msats: None,
                },
            )
            .await
            .expect("run");
        assert_eq!(o.status, JobState::Done, "{o:?}");
        ids.push(o.job_id);
    }
    ids
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}

/// Polls `/api/stats` until `ready` holds (the collector follows the relay live).
async fn stats_until(base: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = get_json(&format!("{base}/api/stats")).await;
        if ready(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_pages_and_metrics_describe_the_live_market() {
    let sc = scene().await;
    let base = format!("http://{}", sc.web.local_addr());
    let ids = run_jobs(&sc.buyer, sc.provider, 5, "api").await;
    let s = stats_until(&base, |s| s["windows"]["last_day"]["sats_settled"] == 5).await;
    // The documented keys.
    for key in [
        "online_nodes",
        "jobs_per_min",
        "success_rate",
        "top_providers",
        "latency_ms",
        "pickup_ms",
        "windows",
    ] {
        assert!(s.get(key).is_some(), "{key} in {s}");
    }
    assert_eq!(s["schema"], "pylon/stats@1");
    assert_eq!(s["online_nodes"], 1);
    assert_eq!(s["windows"]["last_day"]["completed"], 5);
    assert_eq!(s["windows"]["last_day"]["sats_settled"], 5);
    assert_eq!(s["success_rate"], 1.0);
    assert!(s["latency_ms"]["p50"].as_f64().expect("p50") >= 0.0);
    assert!(
        s["latency_ms"]["p95"].as_f64().expect("p95")
            >= s["latency_ms"]["p50"].as_f64().expect("p50")
    );
    assert_eq!(
        s["top_providers"][0]["pubkey"],
        sc.provider.to_hex().as_str()
    );
    assert_eq!(s["top_providers"][0]["completed"], 5);
    assert_eq!(
        s["personal"]["spent_msat"], 5_000,
        "the buyer's own spend, from its store"
    );

    let providers = get_json(&format!("{base}/api/providers")).await;
    assert_eq!(providers[0]["online"], true);
    let job = get_json(&format!("{base}/api/jobs/{}", ids[0])).await;
    assert_eq!(job["trace"]["verified"], true, "{job}");
    assert_eq!(job["job"]["status"], "paid");

    let page = reqwest::get(format!("{base}/"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("html");
    assert!(page.contains("id=\"online_nodes\"") && page.contains("/assets/app.js"));
    assert!(page.contains("class=\"notice\"") && page.contains("running on the embedded relay"));
    assert_eq!(
        s["notices"][0],
        "the public relay is unreachable: running on the embedded relay"
    );
    assert!(!page.contains("http://") || !page.contains("cdn"), "no CDN");
    let job_page = reqwest::get(format!("{base}/job/{}", ids[0]))
        .await
        .expect("GET")
        .text()
        .await
        .expect("html");
    assert!(job_page.contains("VERIFIED"), "{job_page}");
    let npub = s["top_providers"][0]["npub"].as_str().expect("npub");
    let provider_page = reqwest::get(format!("{base}/provider/{npub}"))
        .await
        .expect("GET");
    assert_eq!(provider_page.status(), 200);
    assert!(provider_page
        .text()
        .await
        .expect("html")
        .contains("Completed"));
    for bad in ["/job/nothex", "/api/jobs/zz", "/provider/npub1nope"] {
        assert_eq!(
            reqwest::get(format!("{base}{bad}"))
                .await
                .expect("GET")
                .status(),
            400,
            "{bad}"
        );
    }
    assert_eq!(
        reqwest::get(format!("{base}/nope"))
            .await
            .expect("GET")
            .status(),
        404
    );
    let js = reqwest::get(format!("{base}/assets/app.js"))
        .await
        .expect("GET");
    assert!(js.headers()["content-type"]
        .to_str()
        .expect("ct")
        .contains("javascript"));

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let samples = parse_prometheus(&metrics);
    assert_eq!(samples.get("pylon_online_nodes"), Some(&1.0));
    assert_eq!(
        samples.get("pylon_jobs_completed{window=\"24h\"}"),
        Some(&5.0)
    );
    assert_eq!(
        samples.get("pylon_sats_settled{window=\"24h\"}"),
        Some(&5.0)
    );
    assert!(samples.contains_key("pylon_latency_ms{quantile=\"0.5\"}"));

    // The CLI reads the same market.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args(["--relay", sc.m.relay.url().as_str(), "stats", "--json"])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(cli["windows"]["last_day"]["completed"], 5);
    assert_eq!(cli["online_nodes"], 1);
    sc.web.stop().await;
}

/// A strict reader of Prometheus text format 0.0.4: every line is a comment (`# HELP`/`# TYPE`)
/// or `name{labels} value`, TYPE precedes samples, values are numbers. Returns sample → value.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("type name");
            assert!(
                matches!(
                    parts.next(),
                    Some("gauge" | "counter" | "summary" | "histogram" | "untyped")
                ),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name {line}"
        );
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "labels: {line}"
                );
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("label: {line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "label name: {line}"
                    );
                    assert!(v.starts_with('"'), "label value quoted: {line}");
                }
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value not a number: {line}"));
        out.insert(series.to_string(), v);
    }
    out
}

/// A WebDriver session on a real headless Chromium (Debian's chromium + chromium-driver).
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = crate::common::closed_port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        // A profile of its own: no state shared with other runs, and a handle to clean up by.
        let profile = tempfile::tempdir().expect("profile dir");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--no-first-run", "--window-size=1400,1100",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_string();
        Self {
            driver,
            base,
            session,
            http,
            profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = if path.is_empty() {
            format!("{}/session/{}", self.base, self.session)
        } else {
            format!("{}/session/{}/{path}", self.base, self.session)
        };
        let mut req = self.http.request(method, url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        resp["value"].clone()
    }

    async fn numbers(&self) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "execute/sync",
            serde_json::json!({"script": "const t = (id) => document.getElementById(id).textContent.trim(); \
                return {online: t('online_nodes'), completed: t('completed_day'), settled: t('sats_settled'), \
                        live: document.getElementById('live').className, rows: document.querySelectorAll('#recent_jobs tr').length};",
                "args": []}),
        )
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium outlives a killed driver: end every process of this run's profile.
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(self.profile.path().as_os_str())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_browser_sees_the_dashboard_update_live() {
    let sc = scene().await;
    let base = format!("http://{}", sc.web.local_addr());
    let browser = Browser::start().await;
    browser
        .cmd(
            reqwest::Method::POST,
            "url",
            serde_json::json!({"url": format!("{base}/")}),
        )
        .await;
    let before = browser.numbers().await;
    assert_eq!(before["completed"], "0", "{before}");

    // Jobs run while the page is open; it must follow without a reload.
    run_jobs(&sc.buyer, sc.provider, 4, "live").await;
    let api = stats_until(&base, |s| s["windows"]["last_day"]["sats_settled"] == 4).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = browser.numbers().await;
    let want_settled = api["windows"]["last_day"]["sats_settled"].to_string();
    while now["settled"] != want_settled.as_str() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = browser.numbers().await;
    }
    assert_eq!(
        now["completed"],
        api["windows"]["last_day"]["completed"].to_string(),
        "{now} vs {api}"
    );
    assert_eq!(now["settled"], "4", "{now}");
    assert_eq!(now["online"], api["online_nodes"].to_string());
    assert!(
        now["live"].as_str().expect("class").contains("on"),
        "the live stream is connected"
    );
    assert_eq!(now["rows"], 4, "recent jobs listed");
    assert_ne!(
        before["completed"], now["completed"],
        "the numbers changed without a reload"
    );

    // Keep a picture of the page as a test artifact.
    let shot = browser
        .cmd(reqwest::Method::GET, "screenshot", Value::Null)
        .await;
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().expect("base64 png"))
        .expect("decode");
    assert!(png.starts_with(b"\x89PNG"));
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
    browser.cmd(reqwest::Method::DELETE, "", Value::Null).await;
    sc.web.stop().await;
}

#[test]
fn bench_stats_prints_its_figures_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args([
            "bench",
            "stats",
            "--providers",
            "20",
            "--jobs",
            "300",
            "--json",
        ])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
    // 20 announcements + 20 heartbeats + 300 × (request, claim, result) + 30 receipts.
    assert_eq!(r["events"], 40 + 900 + 30);
    assert!(r["ingest_events_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(r["parse_events_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(r["snapshot_ms"].as_f64().is_some());
}
