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

pub use nwc::NwcWallet;

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
    /// The relays could not be reached.
    #[error(transparent)]
    Relay(#[from] crate::relay::client::ClientError),
    /// The wallet's answer made no sense.
    #[error("wallet protocol error: {0}")]
    Protocol(String),
    /// No wallet is configured or discoverable.
    #[error("{0}")]
    NotConfigured(String),
    /// A payment was sent and the wallet did not say whether it went through.
    #[error("the payment's outcome is unknown (the wallet did not answer): check `pylon wallet history` before paying again")]
    Unknown {
        /// The payment in doubt.
        payment_hash: String,
    },
}

impl WalletError {
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
