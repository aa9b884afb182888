//! A node never depends on hearing a live event, handles each request once however often its
//! look-ups see it, and sheds load it could not serve in time with `overloaded`.
//!
//! Requests dated before the node's live subscription began are invisible to it (a relay sends
//! a subscriber only events matching its `since`), which is how these tests make the live stream
//! "miss" them: only the node's look-ups can find them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use nostr_sdk::{Event, EventBuilder, Filter, Keys, Timestamp};
use pylon::executors::{ExecError, Executor, Output, Registry};
use pylon::protocol::failure::FailureCode;
use pylon::protocol::kinds;
use pylon::protocol::nip90::{Feedback, JobInput, JobRequest, JobStatus};
use pylon::provider::{Node, NodeOptions, NodeStatus};
use pylon::store::JobState;

use super::{buyer, buyer_on, code_job, connect, node, wait};
use crate::common::Market;

/// A node that gives any buyer credit for many jobs at once and rate-limits no one.
fn generous() -> NodeOptions {
    NodeOptions {
        buyer_jobs_per_minute: 100_000,
        buyer_max_concurrent: 10_000,
        max_unpaid_jobs_unproven: 10_000,
        ..NodeOptions::default()
    }
}

/// `event` re-signed by `keys` with `created_at` = `at`.
fn dated(event: &Event, keys: &Keys, at: Timestamp) -> Event {
    EventBuilder::new(event.kind, event.content.clone())
        .tags(event.tags.clone().to_vec())
        .custom_created_at(at)
        .sign_with_keys(keys)
        .expect("sign")
}

/// Polls the node's status until `done` holds (up to `within`).
async fn status_until(
    node: &Node,
    within: Duration,
    done: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = node.status().await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "node status never got there: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_the_live_subscription_never_saw_are_found_by_paged_look_ups() {
    let m = Market::start().await;
    let (node, _nd) = node(&m, generous()).await;
    let provider = node.public_key();
    let buyer_keys = Keys::generate();
    let relay = connect(&m, &buyer_keys).await;
    // 300 requests in two seconds before the node started: more than one look-up page (250),
    // with a page boundary inside a second.
    let start = Timestamp::now().as_secs();
    let mut ids = Vec::new();
    for i in 0..300u64 {
        let job = code_job(
            JobInput::text(format!("pub fn missed_{i}() {{}}\n")),
            &format!("missed/{i}.rs"),
            provider,
        );
        let ev = dated(
            &job.to_event(&buyer_keys).expect("request"),
            &buyer_keys,
            Timestamp::from(start - 3 + i % 2),
        );
        relay.publish(&ev).await.expect("stored");
        ids.push(ev.id);
    }
    let s = status_until(&node, Duration::from_secs(180), |s| s.served >= 300).await;
    assert_eq!(s.served, 300, "every request served once: {s:?}");
    assert!(s.lookups >= 1);
    // One result each, no more: the second page's overlap was not handled twice.
    let results = relay
        .fetch_complete(
            Filter::new()
                .kind(kinds::result_kind(kinds::CODE_ANALYSIS))
                .author(provider),
            Duration::from_secs(10),
        )
        .await
        .expect("results");
    assert_eq!(results.len(), 300);
    for r in results.iter() {
        let request = r.tags.event_ids().next().expect("e tag");
        assert!(ids.contains(request), "a result for a request we sent");
    }
    drop(node);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unparseable_request_gets_one_error_however_often_the_look_ups_see_it() {
    let m = Market::start().await;
    let (node, _nd) = node(&m, generous()).await;
    let buyer_keys = Keys::generate();
    let relay = connect(&m, &buyer_keys).await;
    let mut job = code_job(JobInput::text("fn x() {}\n"), "x.rs", node.public_key());
    job.bid_msats = None;
    let good = job.to_event(&buyer_keys).expect("request");
    let mut tags = good.tags.clone().to_vec();
    tags.push(nostr_sdk::Tag::parse(["bid", "lots"]).expect("tag"));
    let bad = EventBuilder::new(good.kind, "")
        .tags(tags)
        .custom_created_at(Timestamp::from(Timestamp::now().as_secs() - 2))
        .sign_with_keys(&buyer_keys)
        .expect("sign");
    assert!(
        JobRequest::from_event(&bad, None).is_err(),
        "the fixture is unparseable"
    );
    relay.publish(&bad).await.expect("stored");
    // Three look-ups after it was stored: each of them saw it.
    let seen_from = node.status().await.lookups;
    status_until(&node, Duration::from_secs(60), |s| {
        s.lookups >= seen_from + 3
    })
    .await;
    let errors: Vec<Feedback> = relay
        .fetch_complete(
            Filter::new().kind(kinds::JOB_FEEDBACK).event(bad.id),
            Duration::from_secs(10),
        )
        .await
        .expect("feedback")
        .iter()
        .filter_map(|e| Feedback::from_event(e).ok())
        .collect();
    assert_eq!(errors.len(), 1, "one answer per request: {errors:?}");
    assert_eq!(errors[0].status, JobStatus::Error);
    assert_eq!(errors[0].failure, Some(FailureCode::InvalidInput));
    drop(node);
    drop(m);
}

/// Analysis that takes `delay` per job, and counts the jobs it ran.
struct Slow {
    delay: Duration,
    ran: Arc<AtomicUsize>,
}

impl Executor for Slow {
    fn kind(&self) -> u16 {
        kinds::CODE_ANALYSIS
    }
    fn backends(&self) -> Vec<String> {
        vec!["slow".into()]
    }
    fn execute<'a>(&'a self, request: &'a JobRequest) -> BoxFuture<'a, Result<Output, ExecError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.ran.fetch_add(1, Ordering::SeqCst);
            let code = request
                .inputs
                .first()
                .map(|i| i.data.as_str())
                .unwrap_or("");
            let path = request.param("path").unwrap_or("x.rs");
            let analysis = pylon::executors::code::analyze(path, code);
            Ok(Output {
                content: serde_json::to_string(&analysis).expect("json"),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_sheds_jobs_it_could_not_start_in_time_with_overloaded() {
    let m = Market::start().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::default();
    registry.add(Arc::new(Slow {
        delay: Duration::from_millis(1_500),
        ran: ran.clone(),
    }));
    let keys = Keys::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet: Arc<dyn pylon::wallet::Wallet> = Arc::new(m.wallet().await);
    // One slot and a 2 s job timeout: once a job is known to take 1.5 s, a second one waiting
    // would start after more than half the timeout.
    let node = Node::start(
        keys.clone(),
        connect(&m, &keys).await,
        wallet,
        Arc::new(pylon::store::Store::open(dir.path()).expect("store")),
        registry,
        NodeOptions {
            max_concurrent: 1,
            job_timeout: Duration::from_secs(2),
            ..generous()
        },
    )
    .await
    .expect("node");
    let (b, _bd) = buyer(&m, Some(1_000)).await;
    let b = Arc::new(b);
    let job = |i: usize| {
        code_job(
            JobInput::text(format!("fn f{i}() {{}}\n")),
            &format!("f{i}.rs"),
            node.public_key(),
        )
    };
    // The first job teaches the node how long a job takes.
    let first = b.run(&job(0), wait(true)).await.expect("run");
    assert_eq!(first.status, JobState::Done, "{first:?}");
    // Then four at once: one runs, one may wait, the rest are refused at once.
    let runs: Vec<_> = (1..=4)
        .map(|i| {
            let (b, job) = (b.clone(), job(i));
            tokio::spawn(async move { b.run(&job, wait(true)).await.expect("run") })
        })
        .collect();
    let mut done = 0;
    let mut shed = 0;
    for r in runs {
        let out = r.await.expect("task");
        match out.status {
            JobState::Done => done += 1,
            JobState::Failed => {
                assert_eq!(out.failure, Some(FailureCode::Overloaded), "{out:?}");
                assert!(
                    out.message.as_deref().unwrap_or("").contains("elsewhere"),
                    "says what to do: {out:?}"
                );
                shed += 1;
            }
            other => panic!("unexpected {other:?}: {out:?}"),
        }
    }
    assert!(shed >= 1, "at least one job shed (done {done})");
    assert!(done >= 1, "the node still served (shed {shed})");
    assert_eq!(node.status().await.shed, shed as u64);
    assert_eq!(ran.load(Ordering::SeqCst), 1 + done, "shed jobs never ran");
    drop(node);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_follows_at_most_its_in_flight_limit_and_queues_the_rest() {
    let m = Market::start().await;
    let (node, _nd) = node(&m, generous()).await;
    let (b, _relay, _bd) = buyer_on(&m, Some(1_000)).await;
    let b = Arc::new(b.with_max_in_flight(2));
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let b = b.clone();
            let job = code_job(
                JobInput::text(format!("fn q{i}() {{}}\n")),
                &format!("q{i}.rs"),
                node.public_key(),
            );
            tokio::spawn(async move { b.run(&job, wait(true)).await.expect("run") })
        })
        .collect();
    let (mut most_in_flight, mut most_queued) = (0, 0);
    while runs.iter().any(|r| !r.is_finished()) {
        most_in_flight = most_in_flight.max(b.in_flight());
        most_queued = most_queued.max(b.queued());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for r in runs {
        let out = r.await.expect("task");
        assert_eq!(out.status, JobState::Done, "{out:?}");
    }
    assert!(most_in_flight <= 2, "in flight {most_in_flight}");
    assert!(most_queued >= 1, "the rest waited their turn");
    assert_eq!((b.in_flight(), b.queued()), (0, 0));
    drop(node);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pay_first_job_paid_while_its_node_was_down_runs_when_the_node_is_back() {
    let m = Market::start().await;
    let (keys, wallet_keys) = (Keys::generate(), Keys::generate());
    let dir = tempfile::tempdir().expect("tempdir");
    let options = NodeOptions {
        payment: pylon::provider::PaymentMode::Before,
        ..generous()
    };
    let node = super::start_node(&m, &keys, &wallet_keys, dir.path(), options.clone()).await;
    let provider = node.public_key();
    let (b, relay, _bd) = buyer_on(&m, Some(100)).await;
    let id = b
        .submit(&code_job(
            JobInput::text("fn paid_first() {}\n"),
            "p.rs",
            provider,
        ))
        .await
        .expect("submit")
        .id;
    let asked = super::answers_when(&relay, &[id], |a| a[0].payment_required().is_some()).await;
    let amount = asked[0]
        .payment_required()
        .and_then(|f| f.amount.clone())
        .expect("an invoice");
    // The node dies with the invoice outstanding; the buyer pays while it is down.
    node.kill().await;
    b.pay_amount(&id, &provider, &amount, None)
        .await
        .expect("paid");
    let node = super::start_node(&m, &keys, &wallet_keys, dir.path(), options).await;
    let done = super::answers_when(&relay, &[id], |a| !a[0].results.is_empty()).await;
    assert_eq!(done[0].results.len(), 1, "{done:?}");
    assert!(
        done[0]
            .feedback
            .iter()
            .all(|f| f.status != JobStatus::Error),
        "no failure was published: {done:?}"
    );
    let analysis: serde_json::Value =
        serde_json::from_str(&done[0].results[0].content).expect("json");
    assert_eq!(analysis["path"], "p.rs", "{analysis}");
    drop(node);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_map_survives_a_provider_killed_and_restarted_with_its_identity() {
    use pylon::fanout::{self, sample, walk, Options};
    let m = Market::start().await;
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    let mut identities = Vec::new();
    for _ in 0..3 {
        let (keys, wallet_keys) = (Keys::generate(), Keys::generate());
        let dir = tempfile::tempdir().expect("tempdir");
        nodes.push(super::start_node(&m, &keys, &wallet_keys, dir.path(), generous()).await);
        identities.push((keys, wallet_keys));
        dirs.push(dir);
    }
    let repo = tempfile::tempdir().expect("tempdir");
    sample::generate(repo.path(), 60).expect("sample");
    let (files, _) = walk::collect(repo.path(), &[], &[]).expect("walk");
    let (b, relay, _bd) = buyer_on(&m, Some(10_000)).await;
    let b = Arc::new(b);
    let options = Options {
        timeout: Duration::from_secs(10),
        parallel: 4,
        ..Options::default()
    };
    let map = tokio::spawn({
        let (b, relay, options) = (b.clone(), relay.clone(), options.clone());
        async move { fanout::map_market(&files, b, &relay, &options, |_| {}).await }
    });
    // Mid-run, the first provider crashes, and comes back with the same keys and store.
    let victim = nodes.remove(0);
    status_until(&victim, Duration::from_secs(60), |s| s.served >= 3).await;
    victim.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (keys, wallet_keys) = &identities[0];
    let back = super::start_node(&m, keys, wallet_keys, dirs[0].path(), generous()).await;
    let (report, mapped, _) = map.await.expect("task").expect("map");
    assert_eq!(report.mapped, 60, "{:?}", report.failed);
    assert_eq!(report.spent_msats, 60 * 1_000, "every file paid once");
    assert_eq!(mapped.len(), 60);
    assert!(m.audit().ok);
    drop((back, nodes));
    drop(m);
}
