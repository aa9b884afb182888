//! What a buyer checks before trusting a result or paying its invoice.

use bitcoin::hashes::{sha256, Hash as _};
use nostr_sdk::{Event, PublicKey};

use crate::bolt11::{self, Decoded};
use crate::protocol::code_analysis::Analysis;
use crate::protocol::kinds;
use crate::protocol::nip90::{Amount, InputType, JobRequest, JobResult};
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
    /// A genuine answer to this job, but not a result of its kind (an echo, another schema,
    /// another file's analysis): never paid, never `done`.
    #[error("not a valid {kind} result: {why}")]
    Content {
        /// The request kind.
        kind: u16,
        /// What is wrong with it.
        why: String,
    },
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
    content(request, parsed).map_err(|why| Rejected::Content {
        kind: request.kind,
        why,
    })
}

/// Checks a result's content against its kind's schema: a code analysis (6960) is Pylon's JSON
/// schema with the sha256 (and path) of the text the buyer sent; a text generation (6050) is
/// non-empty text. Other kinds are not Pylon's to judge.
fn content(request: &JobRequest, parsed: &JobResult) -> Result<(), String> {
    if parsed.kind != request.kind + 1000 {
        return Err(format!(
            "kind {} does not answer a kind {} request",
            parsed.kind, request.kind
        ));
    }
    match request.kind {
        kinds::CODE_ANALYSIS => {
            let analysis = Analysis::from_json(&parsed.content)?;
            // The provider analyses the first input; a URL it fetches itself, and only it
            // knows the bytes it read and the name it gave them.
            if let Some(input) = request
                .inputs
                .first()
                .filter(|i| matches!(i.input_type, InputType::Text | InputType::Prompt))
            {
                let digest = sha256::Hash::hash(input.data.as_bytes()).to_string();
                if analysis.sha256 != digest {
                    return Err(format!(
                        "it analyses other content (sha256 {}, sent {digest})",
                        analysis.sha256
                    ));
                }
                // (A fetched file is named by its URL, not by the `path` param.)
                if let Some(path) = request.param("path") {
                    if analysis.path != path {
                        return Err(format!("it names path `{}`, sent `{path}`", analysis.path));
                    }
                }
            }
            Ok(())
        }
        kinds::TEXT_GENERATION if parsed.content.trim().is_empty() => {
            Err("the generated text is empty".into())
        }
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use nostr_sdk::{Event, Keys};

    use super::*;
    use crate::protocol::nip90::{JobInput, NewJob};

    const SOURCE: &str = "pub fn answer() -> u32 {\n    42\n}\n";

    fn request(kind: u16, inputs: Vec<JobInput>, provider: &Keys) -> (Event, JobRequest) {
        let buyer = Keys::generate();
        let ev = NewJob {
            kind,
            inputs,
            params: vec![("path".into(), "src/lib.rs".into())],
            providers: vec![provider.public_key()],
            ..Default::default()
        }
        .to_event(&buyer)
        .expect("request");
        let parsed = JobRequest::from_event(&ev, None).expect("parse");
        (ev, parsed)
    }

    fn answer(provider: &Keys, req: &(Event, JobRequest), content: &str) -> Result<(), Rejected> {
        let ev = JobResult::to_event(provider, &req.0, &req.1, content, None).expect("result");
        let parsed = JobResult::from_event(&ev, None).expect("parse");
        result(&req.1, &ev, &parsed)
    }

    fn analysis_json(path: &str, source: &str) -> String {
        serde_json::to_string(&crate::executors::code::analyze(path, source)).expect("json")
    }

    #[test]
    fn a_code_analysis_must_be_the_schema_for_the_file_sent() {
        let provider = Keys::generate();
        let req = request(
            kinds::CODE_ANALYSIS,
            vec![JobInput::text(SOURCE)],
            &provider,
        );
        assert_eq!(
            answer(&provider, &req, &analysis_json("src/lib.rs", SOURCE)),
            Ok(())
        );
        for (content, expect) in [
            (format!("ECHO: {SOURCE}"), "not a code analysis"),
            (
                analysis_json("src/lib.rs", "fn other() {}"),
                "other content",
            ),
            (analysis_json("src/main.rs", SOURCE), "names path"),
            (
                analysis_json("src/lib.rs", SOURCE).replace("pylon/code-analysis@1", "x@9"),
                "unknown schema",
            ),
        ] {
            match answer(&provider, &req, &content) {
                Err(e @ Rejected::Content { .. }) => {
                    assert!(e.to_string().contains(expect), "{e} for {content}")
                }
                other => panic!("{content}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_url_input_is_checked_for_schema_but_not_hash() {
        let provider = Keys::generate();
        let req = request(
            kinds::CODE_ANALYSIS,
            vec![JobInput::url("https://example.com/lib.rs")],
            &provider,
        );
        assert_eq!(
            answer(&provider, &req, &analysis_json("src/lib.rs", SOURCE)),
            Ok(())
        );
        assert!(answer(&provider, &req, "ECHO").is_err());
    }

    #[test]
    fn generated_text_must_not_be_empty_and_other_kinds_are_not_judged() {
        let provider = Keys::generate();
        let req = request(
            kinds::TEXT_GENERATION,
            vec![JobInput::text("hi")],
            &provider,
        );
        assert_eq!(answer(&provider, &req, "Hello there."), Ok(()));
        assert!(matches!(
            answer(&provider, &req, "  \n"),
            Err(Rejected::Content { .. })
        ));
        let req = request(5001, vec![JobInput::text("hi")], &provider);
        assert_eq!(answer(&provider, &req, ""), Ok(()));
    }
}
