//! docs/protocol.md's example events are test vectors: each one is parsed with the protocol
//! module, its signature checked, and the set checked as one job's story (the result answers
//! the request and carries the sha256 of its input, the invoice names the job, the receipt
//! proves the payment). So the document cannot drift from the code.
//!
//! To regenerate them after a protocol change: `PYLON_WRITE_VECTORS=1 cargo test --test it
//! protocol_doc` (fresh keys and signatures; the test then checks what it wrote).

use std::collections::BTreeMap;
use std::path::PathBuf;

use nostr_sdk::{Event, JsonUtil, Keys, Kind};
use pylon::bolt11::{self, Purpose};
use pylon::buyer::verify;
use pylon::protocol::failure::FailureCode;
use pylon::protocol::heartbeat::{Heartbeat, HeartbeatInfo, NodeState};
use pylon::protocol::nip89::{Announcement, ParamDoc, ProviderInfo};
use pylon::protocol::nip90::{
    Amount, Feedback, JobInput, JobRequest, JobResult, JobStatus, NewFeedback, NewJob,
};
use pylon::protocol::payment_link;
use pylon::protocol::receipt::Receipt;
use pylon::protocol::settlement::Attestation;

/// Every example the document must hold, in its order.
const NAMES: [&str; 10] = [
    "announce",
    "heartbeat",
    "request-code",
    "feedback-processing",
    "result-code",
    "receipt",
    "request-text",
    "feedback-payment-required",
    "result-text",
    "feedback-error",
];

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md")
}

/// The `<!-- vector: NAME -->` blocks of `doc`: name → the JSON of the fenced block after it.
fn vectors(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = doc;
    while let Some(at) = rest.find("<!-- vector: ") {
        let after = &rest[at + "<!-- vector: ".len()..];
        let name_end = after.find(" -->").expect("vector marker ends with ' -->'");
        let name = after[..name_end].to_string();
        let body = &after[name_end..];
        let open = body
            .find("```json\n")
            .expect("a ```json block after the marker")
            + 8;
        let close = body[open..].find("\n```").expect("the block closes") + open;
        assert!(
            out.insert(name.clone(), body[open..close].to_string())
                .is_none(),
            "vector {name} appears twice"
        );
        rest = &body[close..];
    }
    out
}

/// One job's events, made with the protocol module's builders: a code-analysis job paid after
/// its result (with the hub's settlement attestation in the receipt), and a text job whose
/// provider asks for payment first, plus an error.
fn generate() -> BTreeMap<&'static str, Event> {
    let provider = Keys::generate();
    let buyer = Keys::generate();
    let hub_node = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    let relays = vec!["wss://relay.example.com".to_string()];
    let mut v = BTreeMap::new();

    let info = ProviderInfo {
        name: "pylon-example".into(),
        about: "code analysis and text generation".into(),
        version: "pylon 0.1.0".into(),
        backends: vec!["tree-sitter".into(), "llama.cpp".into()],
        models: vec!["gemma-3-270m".into()],
        prices: [("5960".to_string(), 1_000), ("5050".to_string(), 5_000)].into(),
        encryption: vec!["nip44_v2".into(), "nip04".into()],
        payment: "after".into(),
        params: [(
            "5960".to_string(),
            vec![
                ParamDoc::new(
                    "path",
                    "the file's path; its extension picks the language",
                    &[],
                ),
                ParamDoc::new(
                    "lang",
                    "the language, when no path says it",
                    &["rust", "python"],
                ),
            ],
        )]
        .into(),
    };
    v.insert(
        "announce",
        Announcement::to_event(&provider, "pylon", &[5960, 5050], &info).expect("announce"),
    );
    let beat = HeartbeatInfo {
        state: Some(NodeState::Online),
        queue_depth: Some(0),
        running: Some(1),
        jobs_served: Some(42),
        jobs_failed: Some(1),
        interval_secs: Some(10),
        uptime_secs: Some(3_600),
    };
    v.insert(
        "heartbeat",
        Heartbeat::to_event(&provider, &beat, &[5960, 5050]).expect("heartbeat"),
    );

    let source = "pub fn answer() -> u32 {\n    42\n}\n";
    let request = NewJob {
        kind: 5960,
        inputs: vec![JobInput::text(source)],
        params: vec![("path".into(), "src/answer.rs".into())],
        bid_msats: Some(2_000),
        providers: vec![provider.public_key()],
        relays: relays.clone(),
        ..NewJob::default()
    }
    .to_event(&buyer)
    .expect("request");
    let parsed = JobRequest::from_event(&request, None).expect("parse");
    v.insert(
        "feedback-processing",
        NewFeedback {
            status: JobStatus::Processing,
            info: "running".into(),
            failure: None,
            amount: None,
        }
        .to_event(&provider, request.id, buyer.public_key())
        .expect("feedback"),
    );
    let invoice = bolt11::create(
        &hub_node,
        1_000,
        &Purpose::Description(payment_link::description(
            &request.id,
            &provider.public_key(),
        )),
        600,
    )
    .expect("invoice");
    let analysis = pylon::executors::code::analyze("src/answer.rs", source);
    let result = JobResult::to_event(
        &provider,
        &request,
        &parsed,
        &serde_json::to_string(&analysis).expect("json"),
        Some(&Amount {
            msats: 1_000,
            bolt11: Some(invoice.bolt11.clone()),
        }),
    )
    .expect("result");
    let mut settlement = Attestation::statement(
        &invoice.payment_hash,
        1_000,
        invoice.created_at + 1,
        "buyer-account",
        "provider-account",
    );
    settlement.seal(&hub_node);
    let receipt = Receipt {
        id: None,
        provider: None,
        request_id: request.id,
        result_id: result.id,
        buyer: buyer.public_key(),
        amount_msats: 1_000,
        bolt11: invoice.bolt11.clone(),
        payment_hash: invoice.payment_hash.clone(),
        preimage: invoice.preimage.clone(),
        settlement: Some(settlement),
        created_at: None,
    }
    .to_event(&provider)
    .expect("receipt");
    v.insert("request-code", request);
    v.insert("result-code", result);
    v.insert("receipt", receipt);

    let text = NewJob {
        kind: 5050,
        inputs: vec![JobInput::text("Write one line about relays.")],
        params: vec![("max_tokens".into(), "32".into())],
        bid_msats: Some(5_000),
        providers: vec![provider.public_key()],
        relays,
        ..NewJob::default()
    }
    .to_event(&buyer)
    .expect("text request");
    let text_invoice = bolt11::create(
        &hub_node,
        5_000,
        &Purpose::Description(payment_link::description(&text.id, &provider.public_key())),
        600,
    )
    .expect("invoice");
    v.insert(
        "feedback-payment-required",
        NewFeedback {
            status: JobStatus::PaymentRequired,
            info: "pay first: this buyer has not paid this node before".into(),
            failure: None,
            amount: Some(Amount {
                msats: 5_000,
                bolt11: Some(text_invoice.bolt11),
            }),
        }
        .to_event(&provider, text.id, buyer.public_key())
        .expect("feedback"),
    );
    let text_parsed = JobRequest::from_event(&text, None).expect("parse");
    v.insert(
        "result-text",
        JobResult::to_event(
            &provider,
            &text,
            &text_parsed,
            "Relays carry signed notes from anyone to anyone.",
            None,
        )
        .expect("result"),
    );
    v.insert(
        "feedback-error",
        NewFeedback {
            status: JobStatus::Error,
            info: "overloaded: 12 jobs queued, try another provider".into(),
            failure: Some(FailureCode::Overloaded),
            amount: None,
        }
        .to_event(&provider, text.id, buyer.public_key())
        .expect("feedback"),
    );
    v.insert("request-text", text);
    v
}

/// Replaces each vector block's JSON with the generated event.
fn write(doc: &str, events: &BTreeMap<&'static str, Event>) -> String {
    let mut out = String::new();
    let mut rest = doc;
    while let Some(at) = rest.find("<!-- vector: ") {
        let after = &rest[at + "<!-- vector: ".len()..];
        let name_end = after.find(" -->").expect("marker");
        let name = &after[..name_end];
        let open_rel = after.find("```json\n").expect("block") + 8;
        let close_rel = after[open_rel..].find("\n```").expect("closes") + open_rel;
        let event = events
            .get(name)
            .unwrap_or_else(|| panic!("no generator for vector {name}"));
        let value: serde_json::Value = serde_json::from_str(&event.as_json()).expect("json");
        out.push_str(&rest[..at + "<!-- vector: ".len()]);
        out.push_str(&after[..open_rel]);
        out.push_str(&serde_json::to_string_pretty(&value).expect("pretty"));
        rest = &after[close_rel..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_protocol_documents_examples_are_valid_signed_events_of_one_job() {
    let path = doc_path();
    let mut doc = std::fs::read_to_string(&path).expect("docs/protocol.md exists");
    if std::env::var_os("PYLON_WRITE_VECTORS").is_some() {
        doc = write(&doc, &generate());
        std::fs::write(&path, &doc).expect("write docs/protocol.md");
    }
    let found = vectors(&doc);
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    let mut expected = NAMES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "the document's vectors");
    let ev: BTreeMap<&str, Event> = found
        .iter()
        .map(|(name, json)| {
            let event = Event::from_json(json)
                .unwrap_or_else(|e| panic!("vector {name} is not an event: {e}"));
            assert!(event.verify().is_ok(), "vector {name}: bad id or signature");
            (name.as_str(), event)
        })
        .collect();
    let provider = ev["announce"].pubkey;
    for (name, e) in &ev {
        let by_buyer = name.starts_with("request");
        assert_eq!(
            e.pubkey == provider,
            !by_buyer,
            "vector {name} is signed by the wrong party"
        );
    }

    let a = Announcement::from_event(&ev["announce"]).expect("announce parses");
    assert!(a.pylon);
    assert_eq!(a.price(5960), Some(1_000));
    let h = Heartbeat::from_event(&ev["heartbeat"]).expect("heartbeat parses");
    assert!(h.pylon && h.expires_at.is_some());
    assert!(h.info.interval_secs.is_some() && h.info.uptime_secs.is_some());

    let req = JobRequest::from_event(&ev["request-code"], None).expect("request parses");
    assert_eq!(req.kind, 5960);
    assert!(req.param("path").is_some());
    assert!(!req.relays.is_empty());
    let fb = Feedback::from_event(&ev["feedback-processing"]).expect("feedback parses");
    assert_eq!(fb.status, JobStatus::Processing);
    assert_eq!(fb.request_id, req.id);
    let result = JobResult::from_event(&ev["result-code"], None).expect("result parses");
    verify::result(&req, &ev["result-code"], &result).expect("the result checks out");
    let amount = result.amount.clone().expect("the result asks to be paid");
    let bolt11 = amount.bolt11.clone().expect("with an invoice");
    let decoded = bolt11::decode(&bolt11).expect("invoice decodes");
    assert_eq!(decoded.amount_msat, Some(amount.msats));
    payment_link::check(decoded.description.as_deref(), &req.id, &provider, true)
        .expect("the invoice names the job and the provider");
    let receipt = Receipt::from_event(&ev["receipt"]).expect("receipt parses");
    verify::receipt(&ev["receipt"], &receipt, &result, Some(&bolt11))
        .expect("the receipt proves the payment");
    assert!(receipt.settlement.is_some(), "with the hub's attestation");

    let text = JobRequest::from_event(&ev["request-text"], None).expect("text request");
    assert_eq!(text.kind, 5050);
    let pay = Feedback::from_event(&ev["feedback-payment-required"]).expect("feedback");
    assert_eq!(pay.status, JobStatus::PaymentRequired);
    assert_eq!(pay.request_id, text.id);
    let pay_amount = pay.amount.clone().expect("an amount");
    let decoded = bolt11::decode(pay_amount.bolt11.as_deref().expect("bolt11")).expect("decodes");
    assert_eq!(decoded.amount_msat, Some(pay_amount.msats));
    payment_link::check(decoded.description.as_deref(), &text.id, &provider, true)
        .expect("the pay-first invoice names the job");
    let text_result = JobResult::from_event(&ev["result-text"], None).expect("text result");
    verify::result(&text, &ev["result-text"], &text_result).expect("checks out");
    assert_eq!(ev["result-text"].kind, Kind::from(6050));
    let err = Feedback::from_event(&ev["feedback-error"]).expect("error feedback");
    assert_eq!(err.status, JobStatus::Error);
    assert!(err.failure.is_some(), "an error names its failure code");
}
