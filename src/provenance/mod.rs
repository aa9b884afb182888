//! Rebuilding a job's history from relay events alone, and checking every link:
//! request → feedback → result → payment → receipt. Needs no local state, so anyone can audit any
//! job from a fresh home.
//!
//! `verified` means: the request is the buyer's; a result answers it, addressed to that buyer,
//! embedding that request, from a key that claimed the job (when anyone did), asking no more than
//! the bid; its invoice names this job and that provider; exactly one receipt from that provider
//! pays that invoice; and a **trusted hub** attests, with the key that signed the invoice, that
//! the invoice settled. Everything else that names the job (a stranger's receipt, a replay, a
//! second receipt) is shown and flagged, never counted. See [`trust`] for whom a verifier
//! believes.

pub mod trust;

use std::collections::BTreeSet;
use std::time::Duration;

use nostr_sdk::{Event, EventId, Filter, JsonUtil, PublicKey};
use serde::Serialize;

pub use self::trust::TrustedHubs;
use crate::protocol::kinds;
use crate::protocol::nip90::{Feedback, JobRequest, JobResult, JobStatus};
use crate::protocol::payment_link;
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
    /// `request`, `feedback:<status>`, `result`, `receipt`, or `receipt:ignored`.
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
    /// True when request, result, receipt and a trusted hub's attestation form a paid chain.
    pub verified: bool,
    /// True when no chain is paid because none had to be: a result that checks out asked for
    /// no payment (a free job) and no receipt names the job. `verified` stays false: there is
    /// no payment to prove, only an answer.
    pub free: bool,
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
    /// The node key of the hub that attested the settlement (hex).
    pub hub: Option<String>,
    /// When the hub says the invoice settled (unix seconds).
    pub settled_at: Option<u64>,
    /// Events that name the job but do not count (replays, strangers' receipts, extra receipts),
    /// and why.
    pub warnings: Vec<String>,
    /// Events in time order.
    pub timeline: Vec<Step>,
    /// The signed events, for anyone to re-check.
    pub events: Vec<serde_json::Value>,
}

/// Fetches everything about `job_id` from `client`'s relays and verifies it, accepting
/// settlement attestations only from `trust` (its hub service keys are resolved on the relays).
/// A relay that does not answer completely in `timeout` is an error, never a verdict.
pub async fn trace(
    client: &MarketClient,
    job_id: EventId,
    timeout: Duration,
    trust: &TrustedHubs,
) -> Result<Trace, ClientError> {
    // Complete answers only: a best-effort look-up that a slow or cut link ended early comes
    // back empty, and "the request is not on these relays" would then be a false verdict.
    let request = client
        .fetch_complete(Filter::new().id(job_id), timeout)
        .await?;
    let related = client
        .fetch_complete(Filter::new().event(job_id).limit(1000), timeout)
        .await?;
    let mut trust = trust.clone();
    trust.resolve(client, timeout).await?;
    Ok(verify(
        job_id,
        request.into_iter().next().as_ref(),
        &related.into_iter().collect::<Vec<_>>(),
        &trust,
    ))
}

/// Verifies a chain from its events (pure; see [`trace`]).
pub fn verify(
    job_id: EventId,
    request_event: Option<&Event>,
    related: &[Event],
    trust: &TrustedHubs,
) -> Trace {
    let mut t = Trace {
        job_id: job_id.to_hex(),
        verified: false,
        free: false,
        reason: None,
        kind: None,
        buyer: None,
        provider: None,
        amount_msat: None,
        payment_hash: None,
        preimage: None,
        hub: None,
        settled_at: None,
        warnings: Vec::new(),
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
    let mut claimers: BTreeSet<PublicKey> = BTreeSet::new();
    let mut forged = 0usize;
    for ev in related {
        if ev.verify().is_err() {
            forged += 1;
            continue;
        }
        if ev.kind == kinds::JOB_FEEDBACK {
            if let Ok(fb) = Feedback::from_event(ev) {
                if fb.request_id == job_id {
                    if fb.status == JobStatus::Processing {
                        claimers.insert(fb.provider);
                    }
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
                    events.push(ev);
                    receipts.push((ev, r));
                }
            }
        }
    }
    if forged > 0 {
        t.warnings.push(format!(
            "{forged} events naming this job fail signature verification and were ignored"
        ));
    }
    results.sort_by_key(|(e, _)| (e.created_at, e.id));
    receipts.sort_by_key(|(e, _)| (e.created_at, e.id));

    // The first result whose own facts hold and that has a valid receipt is the paid one.
    let mut problem = if results.is_empty() {
        "no result for this job on these relays".to_string()
    } else {
        "no receipt: the result was not paid, or its receipt is not on these relays".to_string()
    };
    // How far the best failing receipt got (see `check_pair`); results that fail their own
    // checks rank below any receipt.
    let mut best: Option<u8> = None;
    let mut paid: Option<(EventId, EventId)> = None;
    let mut verdicts: Vec<(EventId, String)> = Vec::new();
    for (result_event, result) in &results {
        if let Err(e) = check_result(&request, result_event, result, &claimers) {
            if best.is_none() {
                problem = e;
            }
            continue;
        }
        for (receipt_event, receipt) in &receipts {
            if receipt.result_id != result.id {
                continue;
            }
            match check_pair(
                &request,
                result_event,
                result,
                receipt_event,
                receipt,
                trust,
            ) {
                Ok(()) if paid.is_none() => {
                    t.verified = true;
                    t.reason = None;
                    t.provider = Some(result.provider.to_hex());
                    t.amount_msat = Some(receipt.amount_msats);
                    t.payment_hash = Some(receipt.payment_hash.clone());
                    t.preimage = Some(receipt.preimage.clone());
                    t.hub = receipt.settlement.as_ref().map(|a| a.node.clone());
                    t.settled_at = receipt.settlement.as_ref().map(|a| a.settled_at);
                    paid = Some((result.id, receipt_event.id));
                }
                Ok(()) => verdicts.push((
                    receipt_event.id,
                    "a second receipt for a job already receipted: not counted".into(),
                )),
                Err((stage, e)) => {
                    if paid.is_none() && best.is_none_or(|b| stage >= b) {
                        best = Some(stage);
                        problem = e.clone();
                    }
                    verdicts.push((receipt_event.id, e));
                }
            }
        }
        if paid.is_some() {
            break;
        }
    }
    // Receipts: the counted one, and every other one flagged with its reason.
    for (receipt_event, receipt) in &receipts {
        let counted = paid.is_some_and(|(_, r)| r == receipt_event.id);
        if counted {
            steps.push(step(
                receipt_event,
                start,
                "receipt".into(),
                format!("{} msats settled", receipt.amount_msats),
            ));
            continue;
        }
        let why = verdicts
            .iter()
            .find(|(id, _)| *id == receipt_event.id)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| {
                if paid.is_some() {
                    "the job is already receipted for another result".into()
                } else if results.iter().any(|(_, r)| r.id == receipt.result_id) {
                    "for a result that does not check out".into()
                } else {
                    "names a result that is not on these relays".into()
                }
            });
        t.warnings.push(format!(
            "receipt {} by {} not counted: {why}",
            &receipt_event.id.to_hex()[..12],
            &receipt_event.pubkey.to_hex()[..12]
        ));
        steps.push(step(receipt_event, start, "receipt:ignored".into(), why));
    }
    steps.sort_by(|a, b| a.at.cmp(&b.at).then(order(&a.what).cmp(&order(&b.what))));
    t.timeline = steps;
    t.events = events
        .iter()
        .filter_map(|e| serde_json::from_str(&e.as_json()).ok())
        .collect();
    if !t.verified && receipts.is_empty() {
        let free = results
            .iter()
            .find(|(ev, r)| r.amount.is_none() && check_result(&request, ev, r, &claimers).is_ok());
        if let Some((_, r)) = free {
            t.free = true;
            t.provider = Some(r.provider.to_hex());
            return t;
        }
    }
    if !t.verified {
        t.reason = Some(problem);
    }
    t
}

/// What the result itself must satisfy: it answers this buyer's request, embeds that request,
/// comes from a key that claimed the job (when any key did), and asks no more than the bid.
fn check_result(
    request: &JobRequest,
    result_event: &Event,
    result: &JobResult,
    claimers: &BTreeSet<PublicKey>,
) -> Result<(), String> {
    match result.buyer {
        Some(p) if p == request.buyer => {}
        Some(p) => {
            return Err(format!(
                "the result is addressed to another buyer ({}), not the request's author",
                &p.to_hex()[..12]
            ))
        }
        None => return Err("the result names no buyer (`p` tag)".into()),
    }
    if let Some(embedded) = &result.request {
        if embedded.id != request.id {
            return Err("the result's embedded request differs from the request".into());
        }
    }
    if !claimers.is_empty() && !claimers.contains(&result_event.pubkey) {
        return Err("the result's signer never claimed the job; another key did".into());
    }
    if let (Some(amount), Some(bid)) = (&result.amount, request.bid_msats) {
        if amount.msats > bid {
            return Err(format!(
                "the result asks {} msats, above the bid of {bid} msats",
                amount.msats
            ));
        }
    }
    Ok(())
}

/// What a receipt must satisfy for `result`: the same signer, the invoice the result asked to
/// be paid, the payment link, the preimage, and a trusted hub's attestation of settlement.
/// A refusal carries how far the receipt got (higher: closer to proving a payment), so the
/// verdict names the most telling problem when several receipts fail.
fn check_pair(
    request: &JobRequest,
    result_event: &Event,
    result: &JobResult,
    receipt_event: &Event,
    receipt: &Receipt,
    trust: &TrustedHubs,
) -> Result<(), (u8, String)> {
    let at = |stage: u8| move |m: String| (stage, m);
    if receipt_event.pubkey != result_event.pubkey {
        return Err((
            0,
            "the receipt is not signed by the provider of the result".into(),
        ));
    }
    if receipt.buyer != request.buyer {
        return Err((0, "the receipt names another buyer".into()));
    }
    let amount = result
        .amount
        .as_ref()
        .ok_or((0, "the receipted result asked for no payment".to_string()))?;
    if amount.bolt11.as_deref().map(str::to_ascii_lowercase)
        != Some(receipt.bolt11.to_ascii_lowercase())
    {
        return Err((
            1,
            "the receipt is for a different invoice than the result asked to be paid".into(),
        ));
    }
    if amount.msats != receipt.amount_msats {
        return Err((1, "the receipt's amount differs from the result's".into()));
    }
    receipt
        .verify()
        .map_err(|e| format!("receipt: {e}"))
        .map_err(at(2))?;
    let decoded = crate::bolt11::decode(&receipt.bolt11)
        .map_err(|e| format!("invoice: {e}"))
        .map_err(at(2))?;
    payment_link::check(
        decoded.description.as_deref(),
        &request.id,
        &result_event.pubkey,
        true,
    )
    .map_err(|e| (2, e.to_string()))?;
    let Some(settlement) = &receipt.settlement else {
        return Err((
            3,
            "no settlement attestation: the receipt proves only that the payee knows its own \
             preimage, not that anyone paid"
                .into(),
        ));
    };
    // `receipt.verify()` checked the attestation's signature and that the invoice's signer made it.
    if !trust.trusts(&settlement.node) {
        return Err((
            4,
            format!(
                "unverified: unknown hub {} attested the settlement; trust it with \
                 `--trust-hub <its npub or node key>` or `[trust] hubs` in config.toml",
                settlement.node
            ),
        ));
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
        buyer: crate::protocol::tags::first(ev, "p").and_then(|p| PublicKey::from_hex(p).ok()),
        request: None,
        content: String::new(),
        amount: Amount::from_event(ev)?,
        encrypted: true,
        created_at: ev.created_at,
    })
}

#[cfg(test)]
mod tests {
    use bitcoin::secp256k1::SecretKey;
    use nostr_sdk::{EventBuilder, Keys};

    use super::*;
    use crate::bolt11::{create, Purpose};
    use crate::protocol::nip90::{Amount, JobInput, NewFeedback, NewJob};
    use crate::protocol::settlement::Attestation;

    /// The hub every honest chain here settles through.
    fn hub_node() -> SecretKey {
        SecretKey::from_slice(&[5u8; 32]).expect("key")
    }

    fn node_hex(k: &SecretKey) -> String {
        k.public_key(&bitcoin::secp256k1::Secp256k1::signing_only())
            .to_string()
    }

    fn trusted() -> TrustedHubs {
        let mut t = TrustedHubs::none();
        t.add_node(&node_hex(&hub_node()));
        t
    }

    /// How to bend one honest chain into a forgery.
    #[derive(Default)]
    struct Bend {
        /// Who signs the receipt (the provider when `None`).
        receipt_signer: Option<Keys>,
        /// The amount the receipt claims.
        receipt_amount: Option<u64>,
        /// The amount the result asks (1,000 by default, on a 2,000 bid).
        ask: Option<u64>,
        /// Who signs the invoice and the attestation (the trusted hub by default).
        invoice_node: Option<SecretKey>,
        /// Who signs the attestation, if not the invoice's node.
        attest_node: Option<SecretKey>,
        /// No attestation at all (a payee-made receipt).
        unattested: bool,
        /// The result `p`-tags this key instead of the buyer.
        result_to: Option<PublicKey>,
        /// The invoice names this provider instead of the real one.
        invoice_for: Option<PublicKey>,
        /// Replace the preimage.
        preimage: Option<String>,
        /// Someone else claims the job; the real provider does not.
        claim_by_other: bool,
    }

    struct Chain {
        request: Event,
        provider: Keys,
        related: Vec<Event>,
    }

    fn chain(b: Bend) -> Chain {
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
        let mut parsed = JobRequest::from_event(&request, None).expect("parse");
        let ask = b.ask.unwrap_or(1_000);
        let invoice_node = b.invoice_node.unwrap_or_else(hub_node);
        let named = b.invoice_for.unwrap_or(provider.public_key());
        let inv = create(
            &invoice_node,
            ask,
            &Purpose::Description(payment_link::description(&request.id, &named)),
            600,
        )
        .expect("inv");
        let amount = Amount {
            msats: ask,
            bolt11: Some(inv.bolt11.clone()),
        };
        let claimer = if b.claim_by_other {
            Keys::generate()
        } else {
            provider.clone()
        };
        let claim = NewFeedback {
            status: JobStatus::Processing,
            info: "claimed".into(),
            failure: None,
            amount: None,
        }
        .to_event(&claimer, request.id, buyer.public_key())
        .expect("feedback");
        if let Some(p) = b.result_to {
            parsed.buyer = p;
        }
        let result =
            JobResult::to_event(&provider, &request, &parsed, "{}", Some(&amount)).expect("result");
        let settlement = (!b.unattested).then(|| {
            let mut a =
                Attestation::statement(&inv.payment_hash, ask, 1, "buyer-acct", "provider-acct");
            a.seal(b.attest_node.as_ref().unwrap_or(&invoice_node));
            a
        });
        let receipt = Receipt {
            id: None,
            provider: None,
            request_id: request.id,
            result_id: result.id,
            buyer: buyer.public_key(),
            amount_msats: b.receipt_amount.unwrap_or(ask),
            bolt11: inv.bolt11,
            payment_hash: inv.payment_hash,
            preimage: b.preimage.unwrap_or(inv.preimage),
            settlement,
            created_at: None,
        }
        .to_event(b.receipt_signer.as_ref().unwrap_or(&provider))
        .expect("receipt");
        Chain {
            request,
            provider,
            related: vec![claim, result, receipt],
        }
    }

    fn check(c: &Chain) -> Trace {
        verify(c.request.id, Some(&c.request), &c.related, &trusted())
    }

    fn refused(b: Bend, why: &str) {
        let t = check(&chain(b));
        assert!(!t.verified, "a forgery verified; expected refusal: {why}");
        let reason = t.reason.expect("reason");
        assert!(reason.contains(why), "expected `{why}`, got `{reason}`");
    }

    #[test]
    fn a_paid_chain_verifies() {
        let c = chain(Bend::default());
        let t = check(&c);
        assert!(t.verified, "{:?}", t.reason);
        assert_eq!(t.amount_msat, Some(1_000));
        assert_eq!(t.hub.as_deref(), Some(node_hex(&hub_node()).as_str()));
        assert_eq!(t.provider, Some(c.provider.public_key().to_hex()));
        let whats: Vec<&str> = t.timeline.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            whats,
            vec!["request", "feedback:processing", "result", "receipt"]
        );
        assert_eq!(t.events.len(), 4);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn every_forgery_class_is_refused_with_its_own_reason() {
        // A payee-made receipt: no money moved, only the payee's own preimage.
        refused(
            Bend {
                unattested: true,
                ..Bend::default()
            },
            "no settlement attestation",
        );
        // The provider runs its own "hub": invoice and attestation signed by a key nobody trusts.
        refused(
            Bend {
                invoice_node: Some(SecretKey::from_slice(&[6u8; 32]).expect("key")),
                ..Bend::default()
            },
            "unknown hub",
        );
        // A re-signed invoice: the trusted hub's attestation, another key's invoice.
        refused(
            Bend {
                invoice_node: Some(SecretKey::from_slice(&[6u8; 32]).expect("key")),
                attest_node: Some(hub_node()),
                ..Bend::default()
            },
            "node key than the one that signed the invoice",
        );
        // An attestation forged by someone else for the trusted hub's invoice.
        refused(
            Bend {
                attest_node: Some(SecretKey::from_slice(&[7u8; 32]).expect("key")),
                ..Bend::default()
            },
            "node key than the one that signed the invoice",
        );
        refused(
            Bend {
                ask: Some(5_000),
                ..Bend::default()
            },
            "above the bid of 2000 msats",
        );
        refused(
            Bend {
                result_to: Some(Keys::generate().public_key()),
                ..Bend::default()
            },
            "addressed to another buyer",
        );
        refused(
            Bend {
                preimage: Some("00".repeat(32)),
                ..Bend::default()
            },
            "preimage does not hash",
        );
        refused(
            Bend {
                receipt_signer: Some(Keys::generate()),
                ..Bend::default()
            },
            "not signed by the provider",
        );
        refused(
            Bend {
                receipt_amount: Some(999),
                ..Bend::default()
            },
            "amount",
        );
        refused(
            Bend {
                invoice_for: Some(Keys::generate().public_key()),
                ..Bend::default()
            },
            "pays another provider",
        );
        refused(
            Bend {
                claim_by_other: true,
                ..Bend::default()
            },
            "never claimed",
        );
    }

    #[test]
    fn untrusted_or_missing_pieces_say_so() {
        let c = chain(Bend::default());
        let t = verify(
            c.request.id,
            Some(&c.request),
            &c.related,
            &TrustedHubs::none(),
        );
        assert!(!t.verified);
        assert!(t.reason.expect("reason").contains("unknown hub"));

        let unpaid: Vec<Event> = c.related[..2].to_vec();
        let t = verify(c.request.id, Some(&c.request), &unpaid, &trusted());
        assert!(t.reason.expect("reason").contains("no receipt"));

        let t = verify(c.request.id, None, &c.related, &trusted());
        assert!(t.reason.expect("reason").contains("not on these relays"));
    }

    #[test]
    fn replayed_and_extra_receipts_are_flagged_not_counted() {
        let mut c = chain(Bend::default());
        let receipt = c.related[2].clone();
        // A stranger re-publishes the provider's receipt under its own key.
        let stranger = Keys::generate();
        let replay = EventBuilder::new(receipt.kind, receipt.content.clone())
            .tags(receipt.tags.clone().to_vec())
            .sign_with_keys(&stranger)
            .expect("sign");
        // The provider publishes a second receipt for the same job.
        let again = EventBuilder::new(receipt.kind, "")
            .tags(receipt.tags.clone().to_vec())
            .custom_created_at(receipt.created_at + 1)
            .sign_with_keys(&c.provider)
            .expect("sign");
        c.related.push(replay.clone());
        c.related.push(again.clone());
        let t = check(&c);
        assert!(t.verified, "{:?}", t.reason);
        let counted: Vec<&Step> = t.timeline.iter().filter(|s| s.what == "receipt").collect();
        assert_eq!(counted.len(), 1, "one receipt counts");
        assert_eq!(counted[0].event_id, receipt.id.to_hex());
        let ignored = t
            .timeline
            .iter()
            .filter(|s| s.what == "receipt:ignored")
            .count();
        assert_eq!(ignored, 2, "{:?}", t.timeline);
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        assert!(t
            .warnings
            .iter()
            .any(|w| w.contains("not signed by the provider")));
        assert!(t.warnings.iter().any(|w| w.contains("second receipt")));
    }
}
