//! Rebuilding a job's history from relay events alone, and checking every link:
//! request → feedback → result → payment → receipt. Needs no local state, so anyone can audit any
//! job from a fresh home.

use std::time::Duration;

use nostr_sdk::{Event, EventId, Filter, JsonUtil};
use serde::Serialize;

use crate::protocol::kinds;
use crate::protocol::nip90::{Feedback, JobRequest, JobResult};
use crate::protocol::receipt::Receipt;
use crate::relay::client::ClientError;
use crate::relay::MarketClient;

/// One step of the timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    /// Unix seconds (Nostr timestamps have second resolution).
    pub at: u64,
    /// Seconds after the request.
    pub after_request_secs: u64,
    /// `request`, `feedback:<status>`, `result`, `receipt`.
    pub what: String,
    /// The event.
    pub event_id: String,
    /// Its author (hex).
    pub author: String,
    /// A short description.
    pub detail: String,
}

/// The reconstructed history and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The job.
    pub job_id: String,
    /// True when request, result and receipt form a valid, paid chain.
    pub verified: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// Request kind.
    pub kind: Option<u16>,
    /// Buyer (hex).
    pub buyer: Option<String>,
    /// The provider whose result was paid (hex).
    pub provider: Option<String>,
    /// Msats paid.
    pub amount_msat: Option<u64>,
    /// The invoice's payment hash.
    pub payment_hash: Option<String>,
    /// The preimage (sha256 of it = payment hash).
    pub preimage: Option<String>,
    /// Events in time order.
    pub timeline: Vec<Step>,
    /// The signed events, for anyone to re-check.
    pub events: Vec<serde_json::Value>,
}

/// Fetches everything about `job_id` from `client`'s relays and verifies it.
pub async fn trace(
    client: &MarketClient,
    job_id: EventId,
    timeout: Duration,
) -> Result<Trace, ClientError> {
    let request = client.fetch(Filter::new().id(job_id), timeout).await?;
    let related = client
        .fetch(Filter::new().event(job_id).limit(1000), timeout)
        .await?;
    Ok(verify(
        job_id,
        request.into_iter().next().as_ref(),
        &related.into_iter().collect::<Vec<_>>(),
    ))
}

/// Verifies a chain from its events (pure; see [`trace`]).
pub fn verify(job_id: EventId, request_event: Option<&Event>, related: &[Event]) -> Trace {
    let mut t = Trace {
        job_id: job_id.to_hex(),
        verified: false,
        reason: None,
        kind: None,
        buyer: None,
        provider: None,
        amount_msat: None,
        payment_hash: None,
        preimage: None,
        timeline: Vec::new(),
        events: Vec::new(),
    };
    let Some(request_event) = request_event else {
        t.reason = Some("the request is not on these relays".into());
        return t;
    };
    if request_event.id != job_id || request_event.verify().is_err() {
        t.reason = Some("the request event fails signature verification".into());
        return t;
    }
    let request = match JobRequest::from_event(request_event, None) {
        Ok(r) => r,
        // Encrypted requests cannot be read by third parties; their chain can still be checked.
        Err(_) if crate::protocol::tags::values(request_event, "encrypted").is_some() => {
            match encrypted_request_shell(request_event) {
                Some(r) => r,
                None => {
                    t.reason = Some("the request is not a job request".into());
                    return t;
                }
            }
        }
        Err(e) => {
            t.reason = Some(format!("the request is malformed: {e}"));
            return t;
        }
    };
    t.kind = Some(request.kind);
    t.buyer = Some(request.buyer.to_hex());
    let start = request.created_at.as_secs();
    let mut steps = vec![step(
        request_event,
        start,
        "request".into(),
        format!("kind {} by the buyer", request.kind),
    )];
    let mut events: Vec<&Event> = vec![request_event];

    let mut results: Vec<(&Event, JobResult)> = Vec::new();
    let mut receipts: Vec<(&Event, Receipt)> = Vec::new();
    for ev in related {
        if ev.verify().is_err() {
            continue;
        }
        if ev.kind == kinds::JOB_FEEDBACK {
            if let Ok(fb) = Feedback::from_event(ev) {
                if fb.request_id == job_id {
                    let status = serde_json::to_value(&fb.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| "other".into());
                    steps.push(step(
                        ev,
                        start,
                        format!("feedback:{status}"),
                        fb.info.clone(),
                    ));
                    events.push(ev);
                }
            }
        } else if kinds::JOB_RESULTS.contains(&ev.kind.as_u16()) {
            // Readable or not (encrypted output), the chain facts are in the tags.
            let parsed = JobResult::from_event(ev, None).or_else(|_| result_shell(ev));
            if let Ok(r) = parsed {
                if r.request_id == job_id
                    && (request.providers.is_empty() || request.providers.contains(&r.provider))
                {
                    let detail = match &r.amount {
                        Some(a) => format!("asks {} msats", a.msats),
                        None => "free".into(),
                    };
                    steps.push(step(ev, start, "result".into(), detail));
                    events.push(ev);
                    results.push((ev, r));
                }
            }
        } else if ev.kind == kinds::RECEIPT {
            if let Ok(r) = Receipt::from_event(ev) {
                if r.request_id == job_id {
                    steps.push(step(
                        ev,
                        start,
                        "receipt".into(),
                        format!("{} msats settled", r.amount_msats),
                    ));
                    events.push(ev);
                    receipts.push((ev, r));
                }
            }
        }
    }
    steps.sort_by(|a, b| a.at.cmp(&b.at).then(order(&a.what).cmp(&order(&b.what))));
    t.timeline = steps;
    t.events = events
        .iter()
        .filter_map(|e| serde_json::from_str(&e.as_json()).ok())
        .collect();

    if results.is_empty() {
        t.reason = Some("no result for this job on these relays".into());
        return t;
    }
    let mut problem =
        "no receipt: the result was not paid, or its receipt is not on these relays".to_string();
    for (result_event, result) in &results {
        for (receipt_event, receipt) in &receipts {
            if receipt.result_id != result.id {
                continue;
            }
            match check_pair(&request, result_event, result, receipt_event, receipt) {
                Ok(()) => {
                    t.verified = true;
                    t.provider = Some(result.provider.to_hex());
                    t.amount_msat = Some(receipt.amount_msats);
                    t.payment_hash = Some(receipt.payment_hash.clone());
                    t.preimage = Some(receipt.preimage.clone());
                    return t;
                }
                Err(e) => problem = e,
            }
        }
    }
    t.reason = Some(problem);
    t
}

fn check_pair(
    request: &JobRequest,
    result_event: &Event,
    result: &JobResult,
    receipt_event: &Event,
    receipt: &Receipt,
) -> Result<(), String> {
    if receipt_event.pubkey != result_event.pubkey {
        return Err("the receipt is not signed by the provider of the result".into());
    }
    let amount = result
        .amount
        .as_ref()
        .ok_or("the receipted result asked for no payment")?;
    if amount.bolt11.as_deref().map(str::to_ascii_lowercase)
        != Some(receipt.bolt11.to_ascii_lowercase())
    {
        return Err(
            "the receipt is for a different invoice than the result asked to be paid".into(),
        );
    }
    if amount.msats != receipt.amount_msats {
        return Err("the receipt's amount differs from the result's".into());
    }
    receipt.verify().map_err(|e| format!("receipt: {e}"))?;
    let decoded = crate::bolt11::decode(&receipt.bolt11).map_err(|e| format!("invoice: {e}"))?;
    if !decoded
        .description
        .as_deref()
        .is_some_and(|d| d.contains(&request.id.to_hex()))
    {
        return Err("the invoice does not name this job".into());
    }
    Ok(())
}

fn step(ev: &Event, start: u64, what: String, detail: String) -> Step {
    let at = ev.created_at.as_secs();
    Step {
        at,
        after_request_secs: at.saturating_sub(start),
        what,
        event_id: ev.id.to_hex(),
        author: ev.pubkey.to_hex(),
        detail,
    }
}

fn order(what: &str) -> u8 {
    match what {
        "request" => 0,
        w if w.starts_with("feedback") => 1,
        "result" => 2,
        _ => 3,
    }
}

/// The chain facts of an encrypted request, without its (unreadable) inputs.
fn encrypted_request_shell(ev: &Event) -> Option<JobRequest> {
    let kind = ev.kind.as_u16();
    kinds::JOB_REQUESTS.contains(&kind).then(|| JobRequest {
        id: ev.id,
        buyer: ev.pubkey,
        kind,
        created_at: ev.created_at,
        inputs: Vec::new(),
        params: Vec::new(),
        output: None,
        bid_msats: None,
        providers: ev.tags.public_keys().copied().collect(),
        relays: Vec::new(),
        encrypted: None,
        expiration: None,
    })
}

/// The chain facts of an encrypted result.
fn result_shell(ev: &Event) -> Result<JobResult, crate::protocol::nip90::ProtocolError> {
    use crate::protocol::nip90::{Amount, ProtocolError};
    let e = crate::protocol::tags::first(ev, "e").ok_or(ProtocolError::MissingTag("e"))?;
    Ok(JobResult {
        id: ev.id,
        provider: ev.pubkey,
        kind: ev.kind.as_u16(),
        request_id: EventId::from_hex(e)
            .map_err(|err| ProtocolError::BadTag("e", err.to_string()))?,
        buyer: None,
        request: None,
        content: String::new(),
        amount: Amount::from_event(ev)?,
        encrypted: true,
        created_at: ev.created_at,
    })
}

#[cfg(test)]
mod tests {
    use nostr_sdk::Keys;

    use super::*;
    use crate::bolt11::{create, Purpose};
    use crate::protocol::nip90::{Amount, JobInput, JobStatus, NewFeedback, NewJob};

    struct Chain {
        request: Event,
        related: Vec<Event>,
    }

    fn chain(receipt_signer: Option<&Keys>, receipt_amount: Option<u64>) -> Chain {
        let buyer = Keys::generate();
        let provider = Keys::generate();
        let request = NewJob {
            kind: 5960,
            inputs: vec![JobInput::text("x")],
            bid_msats: Some(2_000),
            ..Default::default()
        }
        .to_event(&buyer)
        .expect("request");
        let parsed = JobRequest::from_event(&request, None).expect("parse");
        let node = bitcoin::secp256k1::SecretKey::from_slice(&[5u8; 32]).expect("key");
        let inv = create(
            &node,
            1_000,
            &Purpose::Description(format!("pylon job {}", request.id)),
            600,
        )
        .expect("inv");
        let amount = Amount {
            msats: 1_000,
            bolt11: Some(inv.bolt11.clone()),
        };
        let claim = NewFeedback {
            status: JobStatus::Processing,
            info: "claimed".into(),
            failure: None,
            amount: None,
        }
        .to_event(&provider, request.id, buyer.public_key())
        .expect("feedback");
        let result =
            JobResult::to_event(&provider, &request, &parsed, "{}", Some(&amount)).expect("result");
        let receipt = Receipt {
            id: None,
            provider: None,
            request_id: request.id,
            result_id: result.id,
            buyer: buyer.public_key(),
            amount_msats: receipt_amount.unwrap_or(1_000),
            bolt11: inv.bolt11,
            payment_hash: inv.payment_hash,
            preimage: inv.preimage,
            created_at: None,
        }
        .to_event(receipt_signer.unwrap_or(&provider))
        .expect("receipt");
        Chain {
            request,
            related: vec![claim, result, receipt],
        }
    }

    #[test]
    fn a_paid_chain_verifies() {
        let c = chain(None, None);
        let t = verify(c.request.id, Some(&c.request), &c.related);
        assert!(t.verified, "{:?}", t.reason);
        assert_eq!(t.amount_msat, Some(1_000));
        let whats: Vec<&str> = t.timeline.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            whats,
            vec!["request", "feedback:processing", "result", "receipt"]
        );
        assert_eq!(t.events.len(), 4);
    }

    #[test]
    fn broken_chains_say_why() {
        let c = chain(Some(&Keys::generate()), None);
        let t = verify(c.request.id, Some(&c.request), &c.related);
        assert!(!t.verified);
        assert!(t
            .reason
            .expect("reason")
            .contains("not signed by the provider"));

        let c = chain(None, Some(999));
        let t = verify(c.request.id, Some(&c.request), &c.related);
        assert!(!t.verified);
        assert!(t.reason.expect("reason").contains("amount"));

        let c = chain(None, None);
        let unpaid: Vec<Event> = c.related[..2].to_vec();
        let t = verify(c.request.id, Some(&c.request), &unpaid);
        assert!(t.reason.expect("reason").contains("no receipt"));

        let t = verify(c.request.id, None, &c.related);
        assert!(t.reason.expect("reason").contains("not on these relays"));
    }
}
