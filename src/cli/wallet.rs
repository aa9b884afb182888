//! `pylon wallet …`: who this node is, and its money — through the hub or any NWC wallet.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{self, JsonFlag};
use super::Context;
use crate::protocol::nip47::{
    ErrorCode, ListTransactionsParams, MakeInvoiceParams, Transaction, TransactionState,
    TransactionType,
};
use crate::wallet::{resolve, Wallet};

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Show this node's public keys: Nostr (npub and hex) and Lightning node key
    Whoami(JsonFlag),
    /// Show the spendable balance
    Balance(JsonFlag),
    /// Create an invoice to get paid
    Receive(ReceiveArgs),
    /// Pay a BOLT11 invoice
    #[command(after_help = SEND_EXIT_CODES)]
    Send(SendArgs),
    /// List payments and invoices with their final state, newest first; or look one up (--hash)
    History(HistoryArgs),
    /// Get regtest sats from the hub's faucet (regtest only)
    Faucet(FaucetArgs),
    /// Print this node's nostr+walletconnect:// URI, secret included: the one command meant to
    /// show it (to paste into a wallet app); every other command and log keeps it hidden
    Connect(JsonFlag),
}

/// The exit codes of `wallet send`, for scripts and agents that must never pay twice.
const SEND_EXIT_CODES: &str = "\
Exit status:
  0  paid (the preimage is printed)
  1  NOT paid: refused, failed, or expired unexecuted — paying again is safe
  2  bad arguments
  3  outcome UNKNOWN: the wallet did not answer, not even to a look-up of the payment. The money
     may have moved. Check `pylon wallet history --hash <payment_hash>` before paying again.";

#[derive(Debug, Args)]
pub(crate) struct ReceiveArgs {
    /// Amount in sats
    sats: u64,
    /// Description written into the invoice
    #[arg(long, default_value = "")]
    memo: String,
    /// Seconds until the invoice expires [default: the wallet's]
    #[arg(long, value_name = "SECS")]
    expiry: Option<u64>,
    /// Print JSON (`bolt11`, `payment_hash`, …)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The BOLT11 invoice to pay
    bolt11: String,
    /// Amount in sats, only for invoices that carry none
    #[arg(long)]
    amount: Option<u64>,
    /// Print JSON (`outcome`: paid, not_paid or unknown; `payment_hash`, `preimage`, …)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// How many entries
    #[arg(long, default_value_t = 20)]
    limit: u64,
    /// Include unpaid invoices
    #[arg(long)]
    unpaid: bool,
    /// Look up one payment or invoice by its payment hash (e.g. after `wallet send` exited 3);
    /// exits 1 if this wallet has no such payment or invoice
    #[arg(long, value_name = "PAYMENT_HASH", conflicts_with_all = ["limit", "unpaid"])]
    hash: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FaucetArgs {
    /// Amount in sats
    #[arg(default_value_t = 100_000)]
    sats: u64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(ctx: &Context, cmd: WalletCommand) -> anyhow::Result<ExitCode> {
    if let WalletCommand::Whoami(flags) = &cmd {
        let public = ctx.identity()?.public();
        if flags.json {
            output::print_json(&public)?;
        } else {
            println!("npub:        {}", public.npub);
            println!("pubkey:      {}", public.pubkey);
            println!("node_pubkey: {}", public.node_pubkey);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = ctx.config()?;
    let identity = ctx.identity()?;
    if let WalletCommand::Faucet(_) = &cmd {
        if !config.network.is_regtest() {
            bail!(
                "the faucet gives regtest sats only; this node is configured for {:?}",
                config.network
            );
        }
    }
    if let WalletCommand::Connect(flags) = &cmd {
        let (uri, source) = resolve::resolve_uri(&identity, &config, &config.relays).await?;
        if flags.json {
            output::print_json(&json!({ "uri": uri.to_string(), "wallet": source }))?;
        } else {
            println!("{uri}");
            eprintln!("This URI holds the secret of this node's wallet account: share it only with apps you trust.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (wallet, source) = resolve::connect(&identity, &config, &config.relays).await?;
    let result = run_with(&wallet, cmd, &source).await;
    wallet.shutdown().await;
    result
}

async fn run_with(
    wallet: &crate::wallet::NwcWallet,
    cmd: WalletCommand,
    source: &resolve::WalletSource,
) -> anyhow::Result<ExitCode> {
    match cmd {
        WalletCommand::Whoami(_) | WalletCommand::Connect(_) => unreachable!("handled above"),
        WalletCommand::Balance(flags) => {
            let msat = wallet.balance_msat().await?;
            if flags.json {
                output::print_json(&json!({
                    "balance_sats": msat / 1000,
                    "balance_msats": msat,
                    "wallet": source,
                }))?;
            } else {
                println!("{} sats ({msat} msats)", msat / 1000);
            }
        }
        WalletCommand::Receive(args) => {
            let tx = wallet
                .make_invoice(MakeInvoiceParams {
                    amount: sats_to_msat(args.sats)?,
                    description: Some(args.memo),
                    description_hash: None,
                    expiry: args.expiry,
                })
                .await?;
            let bolt11 = tx
                .invoice
                .clone()
                .context("the wallet returned no invoice")?;
            if args.json {
                output::print_json(&json!({
                    "bolt11": bolt11,
                    "payment_hash": tx.payment_hash,
                    "amount_msats": tx.amount,
                    "expires_at": tx.expires_at,
                }))?;
            } else {
                println!("{bolt11}");
                eprintln!("payment hash {}", tx.payment_hash);
            }
        }
        WalletCommand::Send(args) => {
            let amount = args.amount.map(sats_to_msat).transpose()?;
            let bolt11 = args.bolt11.trim().to_string();
            let payment_hash = crate::bolt11::decode(&bolt11).ok().map(|d| d.payment_hash);
            match wallet.pay_invoice(bolt11, amount).await {
                Ok(paid) => {
                    if args.json {
                        output::print_json(&json!({
                            "outcome": "paid",
                            "payment_hash": payment_hash,
                            "preimage": paid.preimage,
                            "fees_paid_msats": paid.fees_paid.unwrap_or(0),
                        }))?;
                    } else {
                        println!("paid; preimage {}", paid.preimage);
                    }
                }
                Err(e) => {
                    // The error itself goes to stderr, and its exit code (3 for an unknown
                    // outcome) is chosen by `cli::main`.
                    if args.json {
                        let outcome = if e.outcome_unknown() {
                            "unknown"
                        } else {
                            "not_paid"
                        };
                        output::print_json(&json!({
                            "outcome": outcome,
                            "payment_hash": payment_hash,
                            "error": e.to_string(),
                        }))?;
                    }
                    return Err(e.into());
                }
            }
        }
        WalletCommand::History(args) => {
            if let Some(hash) = args.hash {
                return lookup(wallet, hash.trim().to_lowercase(), args.json).await;
            }
            // A wallet may answer with fewer than asked (one encrypted event holds ~60 attested
            // transactions): page with `offset` until the limit or the end.
            let mut txs = Vec::new();
            while (txs.len() as u64) < args.limit {
                let page = wallet
                    .list_transactions(ListTransactionsParams {
                        limit: Some(args.limit - txs.len() as u64),
                        offset: Some(txs.len() as u64),
                        unpaid: Some(args.unpaid),
                        ..Default::default()
                    })
                    .await?;
                if page.is_empty() {
                    break;
                }
                txs.extend(page);
            }
            if args.json {
                output::print_json(&txs)?;
            } else {
                print_history(&txs);
            }
        }
        WalletCommand::Faucet(args) => {
            let invoice = wallet
                .make_invoice(MakeInvoiceParams {
                    amount: sats_to_msat(args.sats)?,
                    description: Some("pylon faucet".into()),
                    description_hash: None,
                    expiry: Some(600),
                })
                .await?;
            let bolt11 = invoice.invoice.context("the wallet returned no invoice")?;
            let paid = wallet.faucet(bolt11).await?;
            let balance = wallet.balance_msat().await?;
            if args.json {
                output::print_json(&json!({
                    "received_sats": args.sats,
                    "preimage": paid.preimage,
                    "balance_sats": balance / 1000,
                    "balance_msats": balance,
                }))?;
            } else {
                println!(
                    "received {} sats from the faucet; balance {} sats",
                    args.sats,
                    balance / 1000
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn sats_to_msat(sats: u64) -> anyhow::Result<u64> {
    sats.checked_mul(1000)
        .filter(|m| *m > 0)
        .with_context(|| format!("{sats} sats is not a payable amount"))
}

/// `wallet history --hash`: one payment or invoice by payment hash, in its final state.
async fn lookup(
    wallet: &crate::wallet::NwcWallet,
    hash: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match wallet.lookup_invoice(hash.clone()).await {
        Ok(mut tx) => {
            let now = nostr_sdk::Timestamp::now().as_secs();
            // `lookup_invoice` reports an unpaid invoice as pending even past its expiry.
            if tx.state == Some(TransactionState::Pending)
                && tx.expires_at.is_some_and(|at| at <= now)
            {
                tx.state = Some(TransactionState::Expired);
            }
            if json {
                output::print_json(&tx)?;
            } else {
                print_history(std::slice::from_ref(&tx));
                if let Some(preimage) = tx.preimage.as_deref().filter(|_| is_settled(&tx)) {
                    println!("payment hash {}", tx.payment_hash);
                    println!("preimage     {preimage}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.code() == Some(&ErrorCode::NotFound) => {
            if json {
                output::print_json(&json!({ "payment_hash": hash, "state": "not_found" }))?;
            } else {
                println!(
                    "{hash}: not found: this wallet neither paid it nor issued it (a payment that \
                     never settled leaves no record)"
                );
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn is_settled(tx: &Transaction) -> bool {
    tx.state == Some(TransactionState::Settled) || tx.settled_at.is_some()
}

/// An amount in sats, exact: msats that are not whole sats keep their three decimals.
fn sats(msat: u64) -> String {
    match msat % 1000 {
        0 => (msat / 1000).to_string(),
        rest => format!("{}.{rest:03}", msat / 1000),
    }
}

fn print_history(txs: &[Transaction]) {
    if txs.is_empty() {
        println!("no transactions");
    }
    for tx in txs {
        let (direction, sign) = match tx.kind {
            TransactionType::Incoming => ("in", "+"),
            TransactionType::Outgoing => ("out", "-"),
        };
        let state = tx
            .state
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_default();
        let when = nostr_sdk::Timestamp::from(tx.created_at).to_human_datetime();
        println!(
            "{when}  {direction:<3} {:>12} sats  {state:<8} {}  {}",
            format!("{sign}{}", sats(tx.amount)),
            &tx.payment_hash[..12.min(tx.payment_hash.len())],
            tx.description.as_deref().unwrap_or("")
        );
    }
}
