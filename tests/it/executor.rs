//! The code-analysis executor's input handling: url inputs fetched from a real local server (the
//! provider inlines them before the job runs; a local server needs `allow_private`), and refusals
//! of binary, oversized and missing input.

use axum::routing::get;
use nostr_sdk::Keys;
use pylon::executors::code::CodeAnalysis;
use pylon::executors::fetch::{inline_urls, FetchPolicy};
use pylon::executors::{ExecError, Executor, Output};
use pylon::protocol::failure::FailureCode;
use pylon::protocol::nip90::{JobInput, JobRequest, NewJob};

fn request(inputs: Vec<JobInput>, params: Vec<(String, String)>) -> JobRequest {
    let ev = NewJob {
        kind: 5960,
        inputs,
        params,
        ..Default::default()
    }
    .to_event(&Keys::generate())
    .expect("event");
    JobRequest::from_event(&ev, None).expect("parse")
}

/// What a provider does with a request: inline its urls (local servers allowed), then execute.
async fn run(request: &JobRequest) -> Result<Output, ExecError> {
    let policy = FetchPolicy {
        allow_private: true,
        ..FetchPolicy::default()
    };
    let inlined = inline_urls(request, &policy).await?;
    CodeAnalysis.execute(&inlined).await
}

#[tokio::test]
async fn url_inputs_are_fetched_and_bad_inputs_refused() {
    let app = axum::Router::new()
        .route(
            "/src/lib.py",
            get(|| async { "def hello():\n    return 1\n" }),
        )
        .route("/blob.bin", get(|| async { vec![0u8, 1, 2, 3] }))
        .route("/big.txt", get(|| async { "x".repeat(300 * 1024) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let out = run(&request(
        vec![JobInput::url(format!("http://{addr}/src/lib.py"))],
        vec![],
    ))
    .await
    .expect("analysed");
    let a: serde_json::Value = serde_json::from_str(&out.content).expect("json");
    assert_eq!(a["path"], "src/lib.py");
    assert_eq!(a["language"], "python");
    assert_eq!(a["definitions"][0]["name"], "hello");

    for (input, what) in [
        (JobInput::url(format!("http://{addr}/blob.bin")), "binary"),
        (JobInput::url(format!("http://{addr}/big.txt")), "larger"),
        (JobInput::url(format!("http://{addr}/missing")), "404"),
        (JobInput::url("file:///etc/passwd".to_string()), "only http"),
        (JobInput::text("a\u{0}b"), "binary"),
    ] {
        let err = run(&request(vec![input], vec![])).await.expect_err(what);
        assert_eq!(err.code, FailureCode::InvalidInput, "{what}: {err}");
        assert!(err.message.contains(what), "{what}: {}", err.message);
    }
    let err = run(&request(vec![], vec![])).await.expect_err("no input");
    assert_eq!(err.code, FailureCode::InvalidInput);

    // Without the operator's opt-in, the same local server is refused, and an executor handed a
    // url it was not given the text of refuses it rather than fetching.
    let url = request(
        vec![JobInput::url(format!("http://{addr}/src/lib.py"))],
        vec![],
    );
    let err = inline_urls(&url, &FetchPolicy::default())
        .await
        .expect_err("loopback");
    assert_eq!(err.code, FailureCode::InvalidInput);
    assert!(err.message.contains("loopback address"), "{}", err.message);
    let err = CodeAnalysis.execute(&url).await.expect_err("not inlined");
    assert_eq!(err.code, FailureCode::InvalidInput);
}
