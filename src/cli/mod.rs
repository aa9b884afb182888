//! The command line: a thin shell that parses arguments once into typed values and calls the
//! library. One file per command group.

mod bench;
mod config;
mod demo;
mod doctor;
mod events;
mod hub;
mod init;
mod job;
mod node;
mod output;
mod prompt;
mod relay;
mod repomap;
mod stats;
mod swarm;
mod up;
mod wallet;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::home::Home;

/// Pylon: make this machine a node of an open compute market on Nostr.
///
/// Providers sell small jobs (NIP-90), buyers post jobs and pay over Lightning, and every step is
/// a signed event anyone can audit. Start with `pylon init`, then `pylon relay` and `pylon doctor`.
#[derive(Debug, Parser)]
#[command(
    name = "pylon",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Data directory [default: $PYLON_HOME, else ~/.pylon]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    /// Relay to use instead of the configured ones (repeat for several)
    #[arg(long = "relay", global = true, value_name = "URL")]
    relays: Vec<String>,

    /// Wallet to use: a nostr+walletconnect:// URI (overrides wallet.nwc_uri)
    #[arg(
        long,
        global = true,
        value_name = "URI",
        env = "PYLON_NWC",
        hide_env_values = true
    )]
    nwc: Option<SecretArg>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Less log output on stderr (errors only)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this node's identity (a 24-word mnemonic) and a default config.toml
    Init(init::InitArgs),
    /// Run the whole market here: relay, regtest hub with faucet, dashboard and provider nodes
    Up(up::UpArgs),
    /// The self-contained hero run: 30 providers map this repository, then the launch scoreboard
    Demo(demo::DemoArgs),
    /// Many provider nodes in one process (each its own keys and wallet), with memory reports
    Swarm(swarm::SwarmArgs),
    /// Keys and money: who this node is, balance, invoices, payments, faucet
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Show the configuration in effect
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the embedded Nostr relay in the foreground
    Relay(relay::RelayArgs),
    /// Run the regtest Lightning hub (NIP-47 wallet service with a faucet), or audit it
    Hub(hub::HubArgs),
    /// Provider: run a node that sells jobs, see its status, stop it
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Buyer and auditor: submit jobs, follow them, read results, trace their provenance
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Pay a job's result invoice (only if it is within the bid and names the job)
    Pay(job::PayArgs),
    /// List payment receipts from the local store
    Receipts(job::ReceiptsArgs),
    /// Map a repository through the market: one paid microjob per file, folded into a repo map
    Repomap(repomap::RepomapArgs),
    /// Market statistics: a live terminal dashboard, or one snapshot with --json
    Stats(stats::StatsArgs),
    /// Serve the live web dashboard, JSON API and Prometheus metrics
    Web(stats::WebArgs),
    /// Check identity, config, relays and the data directory
    Doctor(doctor::DoctorArgs),
    /// Query raw events from the relays (an auditor's view of the market)
    Events(events::EventsArgs),
    /// Benchmarks, each beside a raw-relay baseline measured in the same run (JSON with --json)
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// A command-line value that holds a secret (the `--nwc` URI): its `Debug` never shows it, so
/// printing the parsed arguments leaks nothing.
#[derive(Clone)]
struct SecretArg(String);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::config::redact(&self.0))
    }
}

/// What every command gets: the resolved home and the global flags.
pub(crate) struct Context {
    home: Home,
    relay_override: Vec<String>,
    nwc_override: Option<String>,
}

impl Context {
    /// The configuration with `--relay` applied.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(&self.home)?;
        config.override_relays(&self.relay_override)?;
        config.override_nwc(self.nwc_override.as_deref())?;
        Ok(config)
    }

    /// Unlocks the identity, asking for the passphrase if `$PYLON_PASSPHRASE` is unset.
    fn identity(&self) -> anyhow::Result<crate::identity::Identity> {
        let passphrase = prompt::passphrase()?;
        Ok(crate::identity::sealed::load(
            &self.home.identity_file(),
            &passphrase,
        )?)
    }
}

/// Entry point for `main`: parse, set up logging and the runtime, run, and map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let home = match Home::resolve(cli.home.as_deref()) {
        Ok(home) => home,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbosity =
        i8::try_from(cli.verbose).unwrap_or(i8::MAX) - i8::try_from(cli.quiet).unwrap_or(i8::MAX);
    let _log_guard = crate::logging::init(verbosity, Some(&home.logs_dir()));
    let ctx = Context {
        home,
        relay_override: cli.relays,
        nwc_override: cli.nwc.map(|s| s.0),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, ctx)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code_of(&e)
        }
    }
}

/// Exit status when a payment's outcome is unknown (the money may have moved): distinct from 1
/// (failed, nothing moved) so that a script never pays twice, and from clap's 2 (bad arguments).
pub const EXIT_OUTCOME_UNKNOWN: u8 = 3;

/// The exit status for a command that failed with `error`.
fn exit_code_of(error: &anyhow::Error) -> ExitCode {
    let unknown = error.chain().any(|cause| {
        cause
            .downcast_ref::<crate::wallet::WalletError>()
            .is_some_and(crate::wallet::WalletError::outcome_unknown)
            || matches!(
                cause.downcast_ref::<crate::buyer::BuyerError>(),
                Some(crate::buyer::BuyerError::PaymentUnknown { .. })
            )
    });
    if unknown {
        ExitCode::from(EXIT_OUTCOME_UNKNOWN)
    } else {
        ExitCode::FAILURE
    }
}

async fn run(command: Command, ctx: Context) -> anyhow::Result<ExitCode> {
    // Servers run for days: give the allocator's free memory back now and then (see
    // `memory`). Benchmarks are left alone: they trim where they measure.
    let serves = matches!(
        command,
        Command::Relay(_)
            | Command::Hub(_)
            | Command::Node(_)
            | Command::Web(_)
            | Command::Up(_)
            | Command::Demo(_)
            | Command::Swarm(_)
    );
    let _trimmer = serves.then(|| {
        AbortOnDrop(tokio::spawn(crate::memory::trim_every(
            crate::memory::TRIM_EVERY,
        )))
    });
    match command {
        Command::Init(args) => init::run(&ctx, args).await,
        Command::Wallet(cmd) => wallet::run(&ctx, cmd).await,
        Command::Config(cmd) => config::run(&ctx, cmd),
        Command::Relay(args) => relay::run(&ctx, args).await,
        Command::Hub(args) => hub::run(&ctx, args).await,
        Command::Node(cmd) => node::run(&ctx, cmd).await,
        Command::Job(cmd) => job::run(&ctx, cmd).await,
        Command::Pay(args) => job::pay(&ctx, args).await,
        Command::Receipts(args) => job::receipts(&ctx, args),
        Command::Repomap(args) => repomap::run(&ctx, args).await,
        Command::Stats(args) => stats::stats(&ctx, args).await,
        Command::Web(args) => stats::web(&ctx, args).await,
        Command::Doctor(args) => doctor::run(&ctx, args).await,
        Command::Events(args) => events::run(&ctx, args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Up(args) => up::run(&ctx, args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Swarm(args) => swarm::run(&ctx, args).await,
    }
}

/// Aborts its task when dropped: the trimmer ends with the command.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

/// Runs a graceful stop, unless another SIGINT/SIGTERM comes first: then the process exits at
/// once (status 130), saying what it gave up. The stops are bounded anyway; this is for an
/// operator who will not wait even that long.
pub(crate) async fn stop_or_second_signal(stop: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = stop => {}
        _ = shutdown_signal() => {
            eprintln!("second signal: exiting now without finishing the stop (running jobs and unsent events are given up)");
            std::process::exit(130);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn an_unknown_payment_outcome_has_its_own_exit_code() {
        use crate::wallet::WalletError;
        let unknown = anyhow::Error::from(WalletError::Unknown {
            payment_hash: "ab".repeat(32),
        })
        .context("paying");
        assert_eq!(
            super::exit_code_of(&unknown),
            std::process::ExitCode::from(super::EXIT_OUTCOME_UNKNOWN)
        );
        let not_paid = anyhow::Error::from(WalletError::NotPaid {
            payment_hash: "ab".repeat(32),
            waited: std::time::Duration::from_secs(20),
        });
        assert_eq!(
            super::exit_code_of(&not_paid),
            std::process::ExitCode::FAILURE
        );
    }
}
