//! Buyers with no paid history at a provider get at most N unpaid jobs there; the rest are
//! pay-first. Paying once restores the normal flow, and waives a job already waiting.

use nostr_sdk::EventId;
use pylon::protocol::nip90::{JobInput, JobStatus};
use pylon::provider::NodeOptions;
use pylon::store::JobState;

use super::{answers, answers_when, buyer_on, code_job, node, wait};
use crate::common::Market;

fn job(i: usize, provider: nostr_sdk::PublicKey) -> pylon::protocol::nip90::NewJob {
    code_job(
        JobInput::text(format!("fn f{i}() {{}}\n")),
        &format!("f{i}.rs"),
        provider,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unfunded_key_gets_only_limited_credit() {
    let m = Market::start().await;
    let (node, _dir) = node(&m, NodeOptions::default()).await;
    assert_eq!(NodeOptions::default().max_unpaid_jobs_unproven, 2);
    let provider = node.public_key();
    let (unfunded, relay, _ud) = buyer_on(&m, None).await;
    let mut ids: Vec<EventId> = Vec::new();
    for i in 0..6 {
        ids.push(unfunded.submit(&job(i, provider)).await.expect("submit").id);
    }
    let seen = answers_when(&relay, &ids, |a| {
        a.iter()
            .all(|j| !j.results.is_empty() || j.payment_required().is_some())
    })
    .await;
    let worked: Vec<_> = seen.iter().filter(|j| !j.results.is_empty()).collect();
    let asked: Vec<_> = seen
        .iter()
        .filter(|j| j.payment_required().is_some())
        .collect();
    assert_eq!(worked.len(), 2, "two jobs on credit: {seen:?}");
    assert_eq!(asked.len(), 4, "the rest pay first: {seen:?}");
    for j in &worked {
        assert!(j.payment_required().is_none());
        let amount = j.results[0].amount.as_ref().expect("invoiced");
        assert!(amount.bolt11.is_some());
    }
    for j in &asked {
        assert!(j.results.is_empty(), "no work before payment");
        let fb = j.payment_required().expect("asked");
        assert!(fb.amount.as_ref().and_then(|a| a.bolt11.as_ref()).is_some());
        assert!(
            fb.info.contains("has not paid this provider"),
            "{}",
            fb.info
        );
    }

    // A buyer who paid once is trusted: four jobs at once, all worked, none asked to pay first.
    let (funded, _, _fd) = buyer_on(&m, Some(100)).await;
    let first = funded
        .run(&job(100, provider), wait(true))
        .await
        .expect("run");
    assert_eq!(first.status, JobState::Done, "{first:?}");
    let batch: Vec<_> = (0..4).map(|i| job(200 + i, provider)).collect();
    let runs = batch.iter().map(|j| funded.run(j, wait(false)));
    let outcomes = futures_util::future::join_all(runs).await;
    let mut ids = Vec::new();
    for o in outcomes {
        let o = o.expect("run");
        assert_eq!(o.status, JobState::Result, "{o:?}");
        ids.push(EventId::from_hex(&o.job_id).expect("id"));
    }
    for a in answers(&relay, &ids).await {
        assert!(a.payment_required().is_none(), "{a:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paying_for_one_job_waives_a_waiting_one() {
    let m = Market::start().await;
    let (node, _dir) = node(&m, NodeOptions::default()).await;
    let provider = node.public_key();
    let (b, relay, _bd) = buyer_on(&m, Some(100)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(b.submit(&job(i, provider)).await.expect("submit").id);
    }
    let seen = answers_when(&relay, &ids, |a| {
        a.iter().filter(|j| !j.results.is_empty()).count() == 2
            && a.iter().filter(|j| j.payment_required().is_some()).count() == 1
    })
    .await;
    let waiting = seen
        .iter()
        .position(|j| j.payment_required().is_some())
        .expect("one waits");
    let asked = seen[waiting]
        .payment_required()
        .and_then(|f| f.amount.clone())
        .expect("invoice");
    // Pay one of the worked jobs (as a coordinator does): the waiting job then runs unpaid, and
    // its result asks for the very invoice of its payment request.
    let worked = seen
        .iter()
        .position(|j| !j.results.is_empty())
        .expect("worked");
    let amount = seen[worked].results[0].amount.clone().expect("amount");
    let provider = seen[worked].results[0].provider;
    b.pay_amount(&ids[worked], &provider, &amount, None)
        .await
        .expect("pays");
    let after = answers_when(&relay, &ids, |a| !a[waiting].results.is_empty()).await;
    let result = &after[waiting].results[0];
    assert_eq!(result.amount.as_ref(), Some(&asked), "same invoice");
    assert!(after[waiting]
        .feedback
        .iter()
        .all(|f| f.status != JobStatus::Error));
    node.stop().await;
}
