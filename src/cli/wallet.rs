//! `pylon wallet …`: who this node is, and its money — through the hub or any NWC wallet.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{self, JsonFlag};
use super::Context;
use crate::protocol::nip47::{
    ListTransactionsParams, MakeInvoiceParams, Transaction, TransactionType,
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
    Send(SendArgs),
    /// List payments and invoices, newest first
    History(HistoryArgs),
    /// Get regtest sats from the hub's faucet (regtest only)
    Faucet(FaucetArgs),
    /// Print this node's nostr+walletconnect:// URI, secret included: the one command meant to
    /// show it (to paste into a wallet app); every other command and log keeps it hidden
    Connect(JsonFlag),
}

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
    /// Print JSON (`preimage`, …)
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
            let paid = wallet
                .pay_invoice(args.bolt11.trim().to_string(), amount)
                .await?;
            if args.json {
                output::print_json(&json!({
                    "preimage": paid.preimage,
                    "fees_paid_msats": paid.fees_paid.unwrap_or(0),
                }))?;
            } else {
                println!("paid; preimage {}", paid.preimage);
            }
        }
        WalletCommand::History(args) => {
            let txs = wallet
                .list_transactions(ListTransactionsParams {
                    limit: Some(args.limit),
                    unpaid: Some(args.unpaid),
                    ..Default::default()
                })
                .await?;
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

fn print_history(txs: &[Transaction]) {
    if txs.is_empty() {
        println!("no transactions");
    }
    for tx in txs {
        let sign = match tx.kind {
            TransactionType::Incoming => "+",
            TransactionType::Outgoing => "-",
        };
        let state = tx
            .state
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_default();
        let when = nostr_sdk::Timestamp::from(tx.created_at).to_human_datetime();
        println!(
            "{when}  {sign}{:>10} sats  {state:<8} {}  {}",
            tx.amount / 1000,
            &tx.payment_hash[..12.min(tx.payment_hash.len())],
            tx.description.as_deref().unwrap_or("")
        );
    }
}
