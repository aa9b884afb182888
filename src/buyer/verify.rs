//! What a buyer checks before trusting a result or paying its invoice.

use nostr_sdk::{Event, PublicKey};

use crate::bolt11::{self, Decoded};
use crate::protocol::nip90::{Amount, JobRequest, JobResult};
use crate::protocol::payment_link;
use crate::protocol::receipt::Receipt;

/// Why a result, invoice or receipt is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Bad signature or id.
    #[error("bad signature")]
    Signature,
    /// The result is not for this job.
    #[error("{0}")]
    WrongJob(String),
    /// The provider was not asked.
    #[error("result from a provider the job was not sent to")]
    WrongProvider,
    /// The invoice is unusable or dishonest.
    #[error("invoice refused: {0}")]
    Invoice(String),
    /// Above what the buyer agreed to pay.
    #[error("asks {asked} msats, above the limit of {limit} msats")]
    TooExpensive {
        /// Asked.
        asked: u64,
        /// Limit.
        limit: u64,
    },
    /// The receipt does not prove the payment.
    #[error("receipt refused: {0}")]
    Receipt(String),
}

/// Checks a result event against the request it claims to answer.
pub fn result(request: &JobRequest, event: &Event, parsed: &JobResult) -> Result<(), Rejected> {
    event.verify().map_err(|_| Rejected::Signature)?;
    if parsed.request_id != request.id {
        return Err(Rejected::WrongJob(format!(
            "result answers {} not {}",
            parsed.request_id, request.id
        )));
    }
    if let Some(embedded) = &parsed.request {
        if embedded.id != request.id {
            return Err(Rejected::WrongJob("embedded request differs".into()));
        }
    }
    if !request.providers.is_empty() && !request.providers.contains(&parsed.provider) {
        return Err(Rejected::WrongProvider);
    }
    Ok(())
}

/// Checks the invoice of `provider`'s result (or payment-required feedback) before paying it: a
/// real regtest invoice for exactly the stated amount, naming this job (and no other provider),
/// unexpired, and within bid and limit.
pub fn invoice(
    request: &JobRequest,
    amount: &Amount,
    provider: &PublicKey,
    max_msats: Option<u64>,
) -> Result<Decoded, Rejected> {
    let bolt11 = amount
        .bolt11
        .as_deref()
        .ok_or_else(|| Rejected::Invoice("no invoice to pay".into()))?;
    let decoded = bolt11::decode(bolt11).map_err(|e| Rejected::Invoice(e.to_string()))?;
    if decoded.amount_msat != Some(amount.msats) {
        return Err(Rejected::Invoice(format!(
            "invoice is for {:?} msats but the amount tag says {}",
            decoded.amount_msat, amount.msats
        )));
    }
    // An invoice naming another provider is someone else's invoice replayed as this result's.
    payment_link::check(decoded.description.as_deref(), &request.id, provider, false)
        .map_err(|e| Rejected::Invoice(e.to_string()))?;
    if decoded.expires_at <= nostr_sdk::Timestamp::now().as_secs() {
        return Err(Rejected::Invoice("the invoice has expired".into()));
    }
    for limit in [request.bid_msats, max_msats].into_iter().flatten() {
        if amount.msats > limit {
            return Err(Rejected::TooExpensive {
                asked: amount.msats,
                limit,
            });
        }
    }
    Ok(decoded)
}

/// Checks a receipt: signed by the provider who produced the result, about this job and that
/// result, for the invoice paid, with a preimage that proves payment.
pub fn receipt(
    event: &Event,
    parsed: &Receipt,
    result: &JobResult,
    paid_bolt11: Option<&str>,
) -> Result<(), Rejected> {
    event.verify().map_err(|_| Rejected::Signature)?;
    let bad = |m: &str| Rejected::Receipt(m.to_string());
    if event.pubkey != result.provider {
        return Err(bad("not signed by the result's provider"));
    }
    if parsed.request_id != result.request_id || parsed.result_id != result.id {
        return Err(bad("names another job or result"));
    }
    if let Some(b) = paid_bolt11 {
        if !parsed.bolt11.eq_ignore_ascii_case(b) {
            return Err(bad("for another invoice"));
        }
    }
    parsed
        .verify()
        .map_err(|e| Rejected::Receipt(e.to_string()))
}
