//! Why a job failed: one enum used in feedback events, the stores and status output.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A job failure reason, spelled in kebab-case on the wire (`["failure", "bid-too-low"]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureCode {
    /// No result in time.
    Timeout,
    /// The provider claimed the job and went away.
    ProviderOffline,
    /// The job ran and failed.
    ExecError,
    /// The requested model is not served.
    ModelMissing,
    /// The bid is below the provider's price.
    BidTooLow,
    /// The payment did not go through.
    PaymentFailed,
    /// The payment was sent but its outcome is unknown (the wallet did not answer in time); it
    /// is never retried blindly.
    PaymentUnknown,
    /// Results came, but none the buyer could accept (over the bid, wrong job, bad invoice).
    InvalidResult,
    /// The input is missing, oversized, binary or malformed.
    InvalidInput,
    /// The buyer sent too many jobs.
    RateLimited,
    /// The buyer has unpaid invoices past their expiry.
    UnpaidInvoices,
    /// The provider does not serve this kind.
    UnsupportedKind,
    /// The provider is shutting down.
    ShuttingDown,
    /// The provider's queue is longer than it could serve within the job's timeout: it refused
    /// the job at once so the buyer can go to another provider.
    Overloaded,
    /// A code from another implementation.
    Other(String),
}

impl FailureCode {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Timeout => "timeout",
            Self::ProviderOffline => "provider-offline",
            Self::ExecError => "exec-error",
            Self::ModelMissing => "model-missing",
            Self::BidTooLow => "bid-too-low",
            Self::PaymentFailed => "payment-failed",
            Self::PaymentUnknown => "payment-unknown",
            Self::InvalidResult => "invalid-result",
            Self::InvalidInput => "invalid-input",
            Self::RateLimited => "rate-limited",
            Self::UnpaidInvoices => "unpaid-invoices",
            Self::UnsupportedKind => "unsupported-kind",
            Self::ShuttingDown => "shutting-down",
            Self::Overloaded => "overloaded",
            Self::Other(s) => s,
        }
    }

    /// Parses a wire spelling; unknown codes are kept as [`FailureCode::Other`].
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            "timeout" => Self::Timeout,
            "provider-offline" => Self::ProviderOffline,
            "exec-error" => Self::ExecError,
            "model-missing" => Self::ModelMissing,
            "bid-too-low" => Self::BidTooLow,
            "payment-failed" => Self::PaymentFailed,
            "payment-unknown" => Self::PaymentUnknown,
            "invalid-result" => Self::InvalidResult,
            "invalid-input" => Self::InvalidInput,
            "rate-limited" => Self::RateLimited,
            "unpaid-invoices" => Self::UnpaidInvoices,
            "unsupported-kind" => Self::UnsupportedKind,
            "shutting-down" => Self::ShuttingDown,
            "overloaded" => Self::Overloaded,
            other => Self::Other(other.chars().take(64).collect()),
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_codes() {
        for code in [
            FailureCode::Timeout,
            FailureCode::ProviderOffline,
            FailureCode::BidTooLow,
            FailureCode::InvalidInput,
            FailureCode::UnpaidInvoices,
            FailureCode::PaymentUnknown,
            FailureCode::InvalidResult,
            FailureCode::ShuttingDown,
            FailureCode::Overloaded,
        ] {
            assert_eq!(FailureCode::parse(code.as_str()), code);
        }
        assert_eq!(
            FailureCode::parse("gpu-on-fire"),
            FailureCode::Other("gpu-on-fire".into())
        );
        assert_eq!(
            FailureCode::parse(&"x".repeat(500)).as_str().len(),
            64,
            "bounded"
        );
    }
}
