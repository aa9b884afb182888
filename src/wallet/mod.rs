//! The wallet boundary every role pays and gets paid through.
//!
//! [`Wallet`] is the one trait; [`nwc::NwcWallet`] implements it over NIP-47, so the same code
//! works with the embedded regtest hub and with any Nostr Wallet Connect wallet. A future backend
//! (e.g. Spark) implements the same trait.

pub mod nwc;
pub mod resolve;

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

pub use nwc::{NwcOptions, NwcWallet};

use crate::protocol::nip47::{
    ErrorBody, ErrorCode, GetInfoResult, ListTransactionsParams, MakeInvoiceParams, Notification,
    PayResult, Transaction,
};

/// Why a wallet call failed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The wallet answered with a NIP-47 error.
    #[error("the wallet refused: {} ({})", .0.message, .0.code)]
    Refused(ErrorBody),
    /// No answer in time.
    #[error("the wallet did not answer within {0:?}: is the hub running (`pylon hub` or `pylon up`) and on the same relay?")]
    Timeout(Duration),
    /// A payment went unanswered, and the wallet said it is not paid *after* its request expired
    /// by the wallet's own clock: a definite failure, the request can never run. Paying again is
    /// safe.
    #[error("the payment was NOT paid: the wallet did not answer within {waited:?} and the request expired unexecuted (payment hash {payment_hash}); is the hub running (`pylon hub` or `pylon up`) and on the same relay?")]
    NotPaid {
        /// The payment hash of the invoice.
        payment_hash: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// A payment went unanswered and the look-up of its payment hash went unanswered too: it may
    /// or may not have settled. Paying the same invoice again is safe (a settled invoice refuses
    /// a second payment), but paying a *new* invoice for the same thing is not — check first.
    #[error("the payment's outcome is unknown (the wallet did not answer): check `pylon wallet history --hash {payment_hash}` before paying again")]
    Unknown {
        /// The payment hash of the invoice, to look it up later.
        payment_hash: String,
    },
    /// The relays could not be reached.
    #[error(transparent)]
    Relay(#[from] crate::relay::client::ClientError),
    /// The wallet's answer made no sense.
    #[error("wallet protocol error: {0}")]
    Protocol(String),
    /// No wallet is configured or discoverable.
    #[error("{0}")]
    NotConfigured(String),
}

impl WalletError {
    /// Whether the money may have moved although the call failed: only
    /// [`WalletError::Unknown`]. Every other error means the payment did not happen.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Unknown { .. })
    }

    /// The NIP-47 code, when the wallet refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Refused(body) => Some(&body.code),
            _ => None,
        }
    }
}

/// A Lightning wallet, as every Pylon role sees it. Amounts are msats.
pub trait Wallet: Send + Sync {
    /// Node and capability information.
    fn get_info(&self) -> BoxFuture<'_, Result<GetInfoResult, WalletError>>;
    /// Spendable balance.
    fn balance_msat(&self) -> BoxFuture<'_, Result<u64, WalletError>>;
    /// Creates an invoice to be paid to this wallet.
    fn make_invoice(
        &self,
        params: MakeInvoiceParams,
    ) -> BoxFuture<'_, Result<Transaction, WalletError>>;
    /// Pays a BOLT11 invoice; `amount_msat` only for invoices without an amount.
    fn pay_invoice(
        &self,
        bolt11: String,
        amount_msat: Option<u64>,
    ) -> BoxFuture<'_, Result<PayResult, WalletError>>;
    /// Looks up an invoice or payment of this wallet by payment hash.
    fn lookup_invoice(
        &self,
        payment_hash: String,
    ) -> BoxFuture<'_, Result<Transaction, WalletError>>;
    /// Transactions, newest first.
    fn list_transactions(
        &self,
        params: ListTransactionsParams,
    ) -> BoxFuture<'_, Result<Vec<Transaction>, WalletError>>;
    /// Payments received and sent, as they happen.
    fn notifications(&self) -> broadcast::Receiver<Notification>;
    /// The longest a payment request may stay executable after it was sent: past this, a
    /// payment the wallet reports as unsettled can no longer settle.
    fn max_request_age(&self) -> Duration {
        Duration::from_secs(120)
    }
}
