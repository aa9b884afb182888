//! The payment link: a provider's invoice description names the job and the provider it pays,
//! `pylon job <request id> provider <provider pubkey>`, so payment ↔ job ↔ provider is
//! deterministic. The invoice is signed by the settling hub, so a provider cannot re-use another
//! provider's invoice for its own result, nor one job's invoice for another job.

use nostr_sdk::{EventId, PublicKey};

/// Why an invoice's description does not link it to a job and provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The job id is not in the description.
    #[error("the invoice does not name this job")]
    NoJob,
    /// No provider is named (strict checks only).
    #[error("the invoice does not name the provider it pays")]
    NoProvider,
    /// Another provider is named.
    #[error("the invoice pays another provider ({0})")]
    OtherProvider(String),
}

/// The description a provider puts in its invoice for `job`.
pub fn description(job: &EventId, provider: &PublicKey) -> String {
    format!("pylon job {} provider {}", job.to_hex(), provider.to_hex())
}

/// Checks that `description` names `job` and, when it names a provider, that it is `provider`.
/// With `require_provider`, a description that names no provider is refused too (an auditor's
/// check; a buyer paying an older provider may accept it).
pub fn check(
    description: Option<&str>,
    job: &EventId,
    provider: &PublicKey,
    require_provider: bool,
) -> Result<(), LinkError> {
    let text = description.unwrap_or("");
    if !text.contains(&job.to_hex()) {
        return Err(LinkError::NoJob);
    }
    match named_provider(text) {
        Some(named) if named.eq_ignore_ascii_case(&provider.to_hex()) => Ok(()),
        Some(named) => Err(LinkError::OtherProvider(named.to_string())),
        None if require_provider => Err(LinkError::NoProvider),
        None => Ok(()),
    }
}

/// The hex key after `provider `, if any.
fn named_provider(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("provider ")?;
    let key = rest.split_whitespace().next()?;
    (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}

#[cfg(test)]
mod tests {
    use nostr_sdk::Keys;

    use super::*;

    #[test]
    fn names_job_and_provider() {
        let job = EventId::all_zeros();
        let other_job = EventId::from_slice(&[1u8; 32]).expect("id");
        let (me, you) = (Keys::generate().public_key(), Keys::generate().public_key());
        let d = description(&job, &me);
        assert_eq!(check(Some(&d), &job, &me, true), Ok(()));
        assert_eq!(
            check(Some(&d), &other_job, &me, false),
            Err(LinkError::NoJob)
        );
        assert!(matches!(
            check(Some(&d), &job, &you, false),
            Err(LinkError::OtherProvider(_))
        ));
        let old = format!("pylon job {}", job.to_hex());
        assert_eq!(check(Some(&old), &job, &me, false), Ok(()));
        assert_eq!(
            check(Some(&old), &job, &me, true),
            Err(LinkError::NoProvider)
        );
        assert_eq!(check(None, &job, &me, false), Err(LinkError::NoJob));
    }
}
