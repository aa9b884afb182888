//! `pylon bench …`: measured figures, always beside a baseline from the same run.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output;
use crate::bench::wallet::{self, WalletBenchOptions};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Pay-invoice round trip and payments/s through the embedded relay and hub, vs the raw relay
    Wallet(WalletArgs),
}

#[derive(Debug, Args)]
pub(crate) struct WalletArgs {
    /// Sequential payments (for the round trip)
    #[arg(long, default_value_t = 200)]
    sequential: usize,
    /// Concurrent payments (for the throughput)
    #[arg(long, default_value_t = 1000)]
    payments: usize,
    /// Concurrent paying clients
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Wallet(args) => {
            let options = WalletBenchOptions {
                sequential: args.sequential.max(1),
                concurrent: args.payments.max(1),
                clients: args.clients.max(1),
            };
            let report = wallet::run(options, |line| eprintln!("bench: {line}")).await?;
            if args.json {
                output::print_json(&report)?;
            } else {
                println!(
                    "raw relay:   round trip p50 {:.2} ms, p95 {:.2} ms; {:.0} events/s",
                    report.relay.round_trip_ms.p50,
                    report.relay.round_trip_ms.p95,
                    report.relay.events_per_sec
                );
                println!(
                    "pay_invoice: round trip p50 {:.2} ms, p95 {:.2} ms ({:.1}x the relay)",
                    report.pay_round_trip_ms.p50,
                    report.pay_round_trip_ms.p95,
                    report.pay_p50_over_relay_p50
                );
                println!(
                    "throughput:  {:.0} payments/s with {} clients (relay moves {:.1}x as many events/s)",
                    report.payments_per_sec, report.clients, report.relay_rate_over_payment_rate
                );
                println!(
                    "audit:       {}",
                    if report.audit_ok { "OK" } else { "FAILED" }
                );
            }
            Ok(if report.audit_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
