//! Text generation on a real local LLM: llama-cpp-python's OpenAI-compatible server with
//! Gemma 3 270M (both installed from PyPI by scripts/test.sh). No mock model anywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use pylon::appliance::{open_hub_settings, Appliance};
use pylon::buyer::WaitOptions;
use pylon::executors::textgen::server::{Installation, LocalServer, DEFAULT_ALIAS};
use pylon::executors::textgen::{Backend, TextGeneration};
use pylon::executors::Registry;
use pylon::protocol::failure::FailureCode;
use pylon::protocol::nip90::{InputType, JobInput, NewJob};
use pylon::provider::NodeOptions;
use pylon::store::{JobState, Role};
use serde_json::Value;

use crate::common::{pylon, start_node_process, stderr, stdout, Home, PASS};

/// The alias the server gives the model.
const MODEL: &str = DEFAULT_ALIAS;

/// The packaged llama.cpp server with Gemma 3 270M, on a free port.
async fn llama_server() -> LocalServer {
    let install = Installation::locate()
        .expect("llama-cpp-python and the model (./scripts/test.sh installs them)");
    LocalServer::start(&install, MODEL, 2)
        .await
        .expect("the LLM server starts")
}

fn job(
    prompt: &str,
    provider: nostr_sdk::PublicKey,
    params: &[(&str, &str)],
    input_type: InputType,
) -> NewJob {
    NewJob {
        kind: 5050,
        inputs: vec![JobInput {
            data: prompt.into(),
            input_type,
            relay: None,
            marker: None,
        }],
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        bid_msats: Some(10_000),
        providers: vec![provider],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_text_generation_on_a_real_model() {
    let server = llama_server().await;
    // Generous: the suite runs tests two at a time on two cores, and a CPU-heavy neighbour can
    // slow a CPU model server several times over (it timed out at 60 s beside the relay storms).
    let backend = Backend::new("llama.cpp", server.url(), Duration::from_secs(180));
    let models = backend.models().await.expect("models");
    assert!(models.contains(&MODEL.to_string()), "{models:?}");
    // Detection skips an address where nothing answers and takes the first live server.
    let dead = format!("http://127.0.0.1:{}", crate::common::closed_port());
    let (found, served) = pylon::executors::textgen::backend::detect_among(
        &[("ollama", &dead), ("llama.cpp", server.url())],
        Duration::from_secs(5),
    )
    .await
    .expect("detected");
    assert_eq!(
        (found.name(), found.endpoint(), served),
        ("llama.cpp", server.url(), models.clone())
    );

    let mut m = Appliance::start(
        &pylon::relay::RelaySettings {
            bind: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        },
        None,
        None,
        open_hub_settings(),
    )
    .await
    .expect("appliance");
    let mut registry = Registry::default();
    registry.add(Arc::new(TextGeneration::new(backend, models)));
    let options = NodeOptions {
        prices: [(5050, 2_000)].into(),
        job_timeout: Duration::from_secs(200),
        ..NodeOptions::default()
    };
    let provider = m.add_node(registry, &options).await.expect("node");
    let (buyer, store) = m
        .funded_buyer(&Keys::generate(), 100_000)
        .await
        .expect("buyer");
    let wait = |pay| WaitOptions {
        timeout: Duration::from_secs(240),
        auto_pay: pay,
        max_msats: None,
    };

    // The real thing: generated text, paid, receipted, traceable.
    let o = buyer
        .run(
            &job(
                "Write one short sentence about the sea.",
                provider,
                &[("max_tokens", "24"), ("temperature", "0")],
                InputType::Text,
            ),
            wait(true),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Done, "{o:?}");
    let text = o.result.clone().expect("text");
    assert!(text.trim().len() > 3, "generated: {text:?}");
    assert_eq!(o.payment.as_ref().expect("paid").amount_msat, 2_000);
    let auditor = pylon::appliance::connect(&Keys::generate(), &m.url)
        .await
        .expect("auditor");
    let t = pylon::provenance::trace(
        &auditor,
        nostr_sdk::EventId::from_hex(&o.job_id).expect("id"),
        Duration::from_secs(5),
        &m.trusted_hubs(),
    )
    .await
    .expect("trace");
    assert!(t.verified, "{:?}", t.reason);
    // The announcement names the served model, for buyers choosing a provider.
    let filter = nostr_sdk::Filter::new()
        .kind(nostr_sdk::Kind::Custom(31990))
        .author(provider);
    let ads = auditor
        .fetch(filter, Duration::from_secs(5))
        .await
        .expect("fetch");
    let ad = pylon::protocol::nip89::Announcement::from_event(ads.first().expect("announced"))
        .expect("parse");
    assert!(ad.kinds.contains(&5050), "{ad:?}");
    assert_eq!(ad.info.models, vec![MODEL.to_string()]);

    // `prompt` input type and the `top-p` spelling, as seen in the wild.
    let o = buyer
        .run(
            &job(
                "Say hi.",
                provider,
                &[("max_tokens", "8"), ("top-p", "0.9"), ("top_k", "20")],
                InputType::Prompt,
            ),
            wait(false),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Result, "{o:?}");

    // A model that is not served.
    let o = buyer
        .run(
            &job("Hi", provider, &[("model", "gpt-9")], InputType::Text),
            wait(false),
        )
        .await
        .expect("run");
    assert_eq!(o.failure, Some(FailureCode::ModelMissing), "{o:?}");
    // Nonsense parameters.
    let o = buyer
        .run(
            &job("Hi", provider, &[("max_tokens", "lots")], InputType::Text),
            wait(false),
        )
        .await
        .expect("run");
    assert_eq!(o.failure, Some(FailureCode::InvalidInput), "{o:?}");

    // The backend disappears: the job fails promptly with a code, it does not hang.
    // The backend disappears mid-generation: once the provider has said it is processing a long
    // completion, the server is killed. The job fails with a code; it does not hang.
    let long = job(
        "Count from 1 to 2000, one number per line.",
        provider,
        &[("max_tokens", "1024")],
        InputType::Text,
    );
    let running = tokio::spawn({
        let buyer = buyer.clone();
        async move { buyer.run(&long, wait(false)).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let latest = store.jobs().list(Some(Role::Buyer), 1).expect("list");
        if latest
            .first()
            .is_some_and(|r| r.picked_up_at.is_some() && r.published_at.is_none())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the provider never started the long job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
    let started = Instant::now();
    let o = running.await.expect("task").expect("run");
    assert_eq!(o.failure, Some(FailureCode::ExecError), "{o:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "reported, not hung"
    );
    // And a job sent after it is gone fails the same way.
    let o = buyer
        .run(
            &job(
                "Are you there?",
                provider,
                &[("max_tokens", "8")],
                InputType::Text,
            ),
            wait(false),
        )
        .await
        .expect("run");
    assert_eq!(o.failure, Some(FailureCode::ExecError), "{o:?}");
    drop(buyer);
    m.stop().await;
}

#[test]
fn the_cli_buys_generated_text() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(llama_server());
    let m = rt.block_on(crate::common::Market::start());
    let root = tempfile::tempdir().expect("tempdir");
    let url = m.relay.url().to_string();
    let provider = Home::new(root.path().join("provider"));
    // Misconfigurations are refused with what to do, before anything is announced.
    let refused = |extra: &[&str]| {
        let args = [&["node", "up", "--kinds", "text-generation"], extra].concat();
        let out = crate::common::pylon_at(&provider.path, &url, &args);
        assert!(!out.status.success());
        stderr(&out)
    };
    let dead = format!("http://127.0.0.1:{}", crate::common::closed_port());
    let e = refused(&["--backend", "openai", "--endpoint", &dead]);
    assert!(e.contains("no OpenAI-compatible server answers at"), "{e}");
    let e = refused(&["--backend", "openai"]);
    assert!(e.contains("needs --endpoint"), "{e}");
    let e = refused(&["--endpoint", server.url(), "--model", "llama-70b"]);
    assert!(
        e.contains("model `llama-70b` is not served") && e.contains(MODEL),
        "{e}"
    );
    let node = start_node_process(
        &provider.path,
        &[&url],
        &[
            "--kinds",
            "text-generation",
            "--backend",
            "openai",
            "--endpoint",
            server.url(),
            "--job-timeout",
            "90",
        ],
    );
    assert!(node.first_line.contains("[5050]"), "{}", node.first_line);
    let buyer = Home::new(root.path().join("buyer"));
    let run = |args: &[&str]| crate::common::pylon_at(&buyer.path, &url, args);
    assert!(run(&["wallet", "faucet", "100"]).status.success());
    let out = run(&[
        "job",
        "submit",
        "text-generation",
        "--input",
        "Name a color.",
        "--param",
        "max_tokens=12",
        "--bid",
        "2",
        "--wait",
        "--auto-pay",
        "--timeout",
        "90",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(printed.contains("Done"), "{printed}");
    let generated = printed
        .lines()
        .skip_while(|l| !l.starts_with("  receipt:"))
        .skip(1)
        .collect::<String>();
    assert!(
        !generated.trim().is_empty(),
        "the generated text is printed: {printed}"
    );

    // The node reports its model.
    let st = pylon(&provider.path)
        .args(["node", "status", "--json"])
        .output()
        .expect("spawn");
    let v: Value = serde_json::from_str(&stdout(&st)).expect("json");
    assert_eq!(v["node"]["models"][0], MODEL);

    // `pylon doctor` reports the backend named in config.toml and what it serves.
    let cfg = provider.path.join("config.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replace(
        "# endpoint = \"http://127.0.0.1:8080\"",
        &format!("endpoint = \"{}\"", server.url()),
    );
    std::fs::write(&cfg, text).expect("write config");
    let d = pylon(&provider.path)
        .args(["--relay", &url, "doctor", "--json"])
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn");
    let v: Value = serde_json::from_str(&stdout(&d)).expect("json");
    let checks = v["checks"].as_array().expect("checks");
    let llm = checks
        .iter()
        .find(|c| c["name"] == "llm backend")
        .expect("llm check");
    assert_eq!(llm["ok"], true, "{llm}");
    assert!(
        llm["detail"].as_str().expect("detail").contains(MODEL),
        "{llm}"
    );
    drop(node);
    drop(m);
}

#[test]
fn bench_textgen_compares_the_market_with_the_server() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = pylon(home.path())
        .args([
            "bench",
            "textgen",
            "--runs",
            "2",
            "--max-tokens",
            "16",
            "--json",
        ])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["launched"], true);
    assert_eq!(v["runs"], 2);
    assert_eq!(v["all_done"], true);
    assert_eq!(v["audit_ok"], true);
    let tokens = v["completion_tokens"].as_u64().expect("tokens");
    assert!((1..=16).contains(&tokens), "{v}");
    let direct = v["direct"]["latency_ms"]["p50"].as_f64().expect("direct");
    let market = v["market"]["latency_ms"]["p50"].as_f64().expect("market");
    assert!(direct > 0.0 && market > 0.0, "{v}");
    assert!(
        v["direct"]["tokens_per_sec"].as_f64().expect("rate") > 0.0,
        "{v}"
    );
    let ratio = v["overhead_ratio"].as_f64().expect("ratio");
    assert!((ratio - market / direct).abs() < 0.01, "{v}");
}
