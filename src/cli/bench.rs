//! `pylon bench …`: measured figures, always beside a baseline from the same run.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output;
use crate::bench::wallet::{self, WalletBenchOptions};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Pay-invoice round trip and payments/s through the embedded relay and hub, vs the raw relay
    Wallet(WalletArgs),
    /// The paid job loop (request → result → payment → receipt) with in-process providers, vs the raw relay
    Loop(LoopArgs),
    /// Stats collector: events/s folded and memory for a busy day, vs parsing the same events
    Stats(StatsArgs),
    /// Thousands of paid jobs through one provider and one buyer: RSS and open fds sampled as
    /// they go (flat = no leak per job), jobs.db size per job, the hub audit
    Soak(SoakArgs),
    /// Repo map of a generated 200-file repository through 1, 10, 30 providers, vs --local
    Repomap(RepomapArgs),
    /// A 64-token completion bought through the market vs calling the model server directly
    Textgen(TextgenArgs),
    /// Memory per idle and per busy in-process provider, and the time to start 30 and 300
    Swarm(SwarmArgs),
    /// The relay under load (fan-out throughput, memory, a REQ storm, idle connections):
    /// Pylon's embedded relay beside nostr-rs-relay, both as child processes
    Relay(RelayArgs),
    /// The market through a relay far away: every role behind a delaying, connection-cutting
    /// proxy, the relay rate-limited per connection; paid loop p50 and a repo map
    Wan(WanArgs),
}

#[derive(Debug, Args)]
pub(crate) struct WanArgs {
    /// Round trip the proxy adds (half each way), ms
    #[arg(long, default_value_t = 100)]
    rtt_ms: u64,
    /// ± per chunk, ms (order is kept)
    #[arg(long, default_value_t = 20)]
    jitter_ms: u64,
    /// Random cuts per connection per minute (the client must reconnect)
    #[arg(long, default_value_t = 1.0)]
    reconnects_per_min: f64,
    /// The relay's event rate limit per connection (public relays: 5–20)
    #[arg(long, default_value_t = 20)]
    events_per_sec: u32,
    /// The relay's burst per connection [default: one second's worth]
    #[arg(long)]
    event_burst: Option<u32>,
    /// Bandwidth cap per connection and direction, bytes/s
    #[arg(long)]
    bytes_per_sec: Option<u64>,
    /// Paid jobs run one at a time
    #[arg(long, default_value_t = 10)]
    sequential: usize,
    /// Files in the generated repository
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Provider nodes (in this process)
    #[arg(long, default_value_t = 30)]
    providers: usize,
    /// Seconds after which the repo map is stopped and reported as it stands
    #[arg(long, default_value_t = 600)]
    map_deadline_secs: u64,
    /// Also run everything straight to the relay, for comparison
    #[arg(long)]
    direct_baseline: bool,
    /// A relay outage this long during the repo map (the proxy's kill switch), seconds; 0: none
    #[arg(long, default_value_t = 0)]
    outage_secs: u64,
    /// When the outage begins, seconds into the repo map
    #[arg(long, default_value_t = 10)]
    outage_after_secs: u64,
    /// Put the hub behind the proxy too, like a remote wallet service. By default it reaches
    /// the relay straight, as the operator runs them (`pylon up`: relay + hub in one process),
    /// while every node is far away. A far hub adds a round trip to the provider's invoice
    /// and the buyer's payment (about 7x RTT instead of 5.5x for the paid loop)
    #[arg(long)]
    hub_far: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Events published in the fan-out phase (20 publishers → 50 subscribers)
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Events each publisher keeps awaiting OK
    #[arg(long, default_value_t = crate::bench::relay_load::DEFAULT_WINDOW)]
    window: usize,
    /// Events stored before the REQ storm
    #[arg(long, default_value_t = 40_000)]
    preload: usize,
    /// REQs of `{"kinds":[1],"limit":10000}` in the storm
    #[arg(long, default_value_t = 500)]
    storm: usize,
    /// Seconds after which the storm sends no new REQ (the figures cover the REQs sent)
    #[arg(long, default_value_t = 30)]
    storm_secs: u64,
    /// Idle connections opened to measure memory per connection
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// nostr-rs-relay 0.8.12 to compare with [default: $NOSTR_RS_RELAY, else on PATH, else
    /// ~/.cargo/bin]; without one, its figures are null
    #[arg(long, value_name = "PATH")]
    nostr_rs_relay: Option<std::path::PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Paid jobs in all
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Jobs between two RSS/fd samples (the first sample is the warm-up)
    #[arg(long, default_value_t = 1_000)]
    sample_every: usize,
    /// Jobs in flight at once
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SwarmArgs {
    /// Swarm sizes to start (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = vec![30, 300])]
    providers: Vec<usize>,
    /// Jobs per node in the busy phase
    #[arg(long, default_value_t = 4)]
    jobs_per_node: usize,
    /// Also time `docker-compose up` of this file to the first paid job (images must exist)
    #[arg(long, value_name = "FILE")]
    compose: Option<std::path::PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TextgenArgs {
    /// Completions measured each way
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Tokens per completion
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// A running OpenAI-compatible server (Ollama, llama-server…); default: launch the packaged
    /// llama.cpp server with Gemma 3 270M (installed by ./scripts/test.sh)
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Model to ask for (default: the server's first)
    #[arg(long)]
    model: Option<String>,
    /// CPU threads for the launched server
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RepomapArgs {
    /// Files in the generated repository
    #[arg(long, default_value_t = 200)]
    files: usize,
    /// Provider counts to run (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 10, 30])]
    providers: Vec<usize>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Providers simulated
    #[arg(long, default_value_t = 1000)]
    providers: usize,
    /// Jobs in the window
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LoopArgs {
    /// Paid jobs in the throughput run
    #[arg(long, default_value_t = 500)]
    jobs: usize,
    /// Provider nodes (in this process)
    #[arg(long, default_value_t = 4)]
    providers: usize,
    /// Jobs run one at a time, for latency
    #[arg(long, default_value_t = 50)]
    sequential: usize,
    /// Jobs in flight at once in the throughput run
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
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
        BenchCommand::Wan(args) => {
            let options = crate::bench::wan::WanOptions {
                rtt: std::time::Duration::from_millis(args.rtt_ms),
                jitter: std::time::Duration::from_millis(args.jitter_ms),
                reconnects_per_min: args.reconnects_per_min.max(0.0),
                events_per_sec: args.events_per_sec.max(1),
                event_burst: args.event_burst.unwrap_or(args.events_per_sec).max(1),
                bytes_per_sec: args.bytes_per_sec,
                sequential: args.sequential.max(1),
                files: args.files.max(1),
                providers: args.providers.max(1),
                map_deadline: std::time::Duration::from_secs(args.map_deadline_secs.max(1)),
                direct_baseline: args.direct_baseline,
                outage: (args.outage_secs > 0).then(|| {
                    (
                        std::time::Duration::from_secs(args.outage_after_secs),
                        std::time::Duration::from_secs(args.outage_secs),
                    )
                }),
                hub_beside_relay: !args.hub_far,
            };
            let r = crate::bench::wan::run(options, |l| eprintln!("bench: {l}")).await?;
            if args.json {
                output::print_json(&r)?;
            } else {
                print_wan(&r);
            }
            let w = &r.wan;
            Ok(
                if w.paid_loop.done == w.paid_loop.jobs
                    && w.repomap.completed == w.repomap.files
                    && w.audit_ok
                {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        BenchCommand::Soak(args) => {
            let options = crate::bench::soak::SoakOptions {
                jobs: args.jobs.max(1),
                sample_every: args.sample_every.max(1),
                window: args.window.max(1),
            };
            let r = crate::bench::soak::run(options, |l| eprintln!("bench: {l}")).await?;
            if args.json {
                output::print_json(&r)?;
            } else {
                print_soak(&r);
            }
            Ok(if r.all_paid && r.audit_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        BenchCommand::Relay(args) => {
            let options = crate::bench::relay_load::RelayLoadOptions {
                events: args.events.max(1),
                window: args.window.max(1),
                preload: args.preload,
                storm: args.storm,
                storm_secs: std::time::Duration::from_secs(args.storm_secs.max(1)),
                idle: args.idle,
                pylon_bin: std::env::current_exe()
                    .map_err(|e| anyhow::anyhow!("cannot find this program's own binary: {e}"))?,
                nostr_rs_relay: args.nostr_rs_relay,
            };
            let r = crate::bench::relay_load::run(options, |l| eprintln!("bench: {l}")).await?;
            if args.json {
                output::print_json(&r)?;
            } else {
                print_relay_table(&r);
            }
            Ok(if r.comparison_failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        BenchCommand::Swarm(args) => {
            let mut r = crate::bench::swarm::run(&args.providers, args.jobs_per_node.max(1), |l| {
                eprintln!("bench: {l}")
            })
            .await?;
            if let Some(file) = &args.compose {
                r.compose_to_first_paid_job_secs = Some(
                    crate::bench::swarm::compose_to_first_paid_job(file, |l| {
                        eprintln!("bench: {l}")
                    })
                    .await?,
                );
            }
            if args.json {
                output::print_json(&r)?;
            } else {
                println!("process before the nodes: {:.1} MiB", r.baseline_mib);
                for run in &r.runs {
                    println!(
                        "{:>4} providers: started in {:.2} s; {:.2} MiB per idle node, {:.2} MiB per busy node; {} jobs p50 {:.1} ms p95 {:.1} ms",
                        run.providers,
                        run.start_secs,
                        run.per_idle_node_mib,
                        run.per_busy_node_mib,
                        run.busy_jobs,
                        run.busy_latency_ms.p50,
                        run.busy_latency_ms.p95
                    );
                }
                println!(
                    "target ≤ {:.1} MiB per idle node: {}",
                    r.target_idle_mib,
                    if r.target_met { "met" } else { "missed" }
                );
                if let Some(secs) = r.compose_to_first_paid_job_secs {
                    println!("docker-compose up → first paid job: {secs:.1} s");
                }
            }
            Ok(if r.runs.iter().all(|x| x.all_done) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        BenchCommand::Textgen(args) => {
            let options = crate::bench::textgen::TextgenOptions {
                runs: args.runs.max(1),
                max_tokens: args.max_tokens.clamp(1, 1024),
                endpoint: args.endpoint,
                model: args.model,
                threads: args.threads.max(1),
            };
            let r = crate::bench::textgen::run(options, |l| eprintln!("bench: {l}")).await?;
            if args.json {
                output::print_json(&r)?;
            } else {
                println!(
                    "{} at {} ({} completion tokens, {} runs each way)",
                    r.model, r.endpoint, r.completion_tokens, r.runs
                );
                println!(
                    "direct:  p50 {:.1} ms, p95 {:.1} ms; {:.1} tokens/s",
                    r.direct.latency_ms.p50, r.direct.latency_ms.p95, r.direct.tokens_per_sec
                );
                println!(
                    "market:  p50 {:.1} ms, p95 {:.1} ms to the result; {:.1} tokens/s; paid and receipted p50 {:.1} ms",
                    r.market.latency_ms.p50,
                    r.market.latency_ms.p95,
                    r.market.tokens_per_sec,
                    r.market_paid_ms.p50
                );
                println!(
                    "overhead: {:.3}x ({:+.1} ms); identical outputs {}/{}; audit: {}",
                    r.overhead_ratio,
                    r.overhead_ms,
                    r.identical_outputs,
                    r.runs,
                    if r.audit_ok { "OK" } else { "FAILED" }
                );
                for p in &r.problems {
                    println!("problem: {p}");
                }
            }
            Ok(if r.all_done && r.audit_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        BenchCommand::Repomap(args) => {
            let r = crate::bench::repomap::run(args.files.max(1), &args.providers, |l| {
                eprintln!("bench: {l}")
            })
            .await?;
            if args.json {
                output::print_json(&r)?;
            } else {
                println!(
                    "{} files; local analyzer: {:.3} s",
                    r.files, r.local_wall_secs
                );
                for run in &r.runs {
                    println!(
                        "{:>3} providers: {:.2} s ({:.1}x local), per file p50 {:.1} ms p95 {:.1} ms, {} sats, {} mapped, {} failed",
                        run.providers,
                        run.wall_secs,
                        run.overhead_ratio,
                        run.per_file_ms.p50,
                        run.per_file_ms.p95,
                        run.sats_spent,
                        run.mapped,
                        run.failed
                    );
                }
                if let Some(q) = &r.quality {
                    println!(
                        "vs universal-ctags: recall {:.3}, precision {:.3}",
                        q.overall.recall, q.overall.precision
                    );
                }
            }
            Ok(if r.runs.iter().all(|x| x.failed == 0) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        BenchCommand::Stats(args) => {
            let r = tokio::task::spawn_blocking(move || {
                crate::bench::stats::run(args.providers, args.jobs, |l| eprintln!("bench: {l}"))
            })
            .await??;
            if args.json {
                output::print_json(&r)?;
            } else {
                println!(
                    "{} events ({} providers, {} jobs): folded at {:.0} events/s; parsing alone {:.0} events/s ({:.2}x)",
                    r.events, r.providers, r.jobs, r.ingest_events_per_sec, r.parse_events_per_sec, r.ingest_cost_over_parse
                );
                println!(
                    "snapshot of the full window: {:.1} ms; memory: {:.1} MiB",
                    r.snapshot_ms, r.collector_mib
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Loop(args) => {
            let options = crate::bench::market::LoopOptions {
                jobs: args.jobs.max(1),
                providers: args.providers.max(1),
                sequential: args.sequential.max(1),
                window: args.window.max(1),
            };
            let r = crate::bench::market::run(options, |line| eprintln!("bench: {line}")).await?;
            if args.json {
                output::print_json(&r)?;
            } else {
                println!(
                    "raw relay:  round trip p50 {:.2} ms; {:.0} events/s",
                    r.relay.round_trip_ms.p50, r.relay.events_per_sec
                );
                println!(
                    "one job:    submit → receipt p50 {:.2} ms, p95 {:.2} ms (target ≤ {:.2} ms: {})",
                    r.sequential_end_to_end_ms.p50,
                    r.sequential_end_to_end_ms.p95,
                    r.target_p50_ms,
                    if r.latency_target_met { "met" } else { "missed" }
                );
                println!(
                    "throughput: {:.1} paid jobs/s with {} providers (target ≥ {:.1}: {})",
                    r.paid_jobs_per_sec,
                    r.providers,
                    r.target_jobs_per_sec,
                    if r.throughput_target_met {
                        "met"
                    } else {
                        "missed"
                    }
                );
                println!(
                    "loaded:     p50 {:.1} ms, p95 {:.1} ms; all done: {}; audit: {}",
                    r.loaded_end_to_end_ms.p50,
                    r.loaded_end_to_end_ms.p95,
                    r.all_done,
                    if r.audit_ok { "OK" } else { "FAILED" }
                );
            }
            Ok(if r.all_done && r.audit_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
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

fn print_wan(r: &crate::bench::wan::WanBench) {
    let c = &r.conditions;
    println!(
        "conditions: RTT {} ms ± {} ms, {} cuts/connection/min, relay {} events/s (burst {}) per connection",
        c.rtt_ms, c.jitter_ms, c.reconnects_per_min, c.events_per_sec, c.event_burst
    );
    println!(
        "hub: {}",
        if c.hub_beside_relay {
            "beside the relay (straight, no proxy; --hub-far to put it behind the proxy)"
        } else {
            "behind the proxy, like every node"
        }
    );
    println!(
        "publish → OK: p50 {:.1} ms through the proxy, {:.1} ms straight to the relay",
        r.wan.round_trip_ms.p50, r.direct_round_trip_ms.p50
    );
    for s in std::iter::once(&r.wan).chain(r.direct.as_ref()) {
        let l = &s.paid_loop;
        println!(
            "{:>6}: paid loop {}/{} done, p50 {:.1} ms = {:.1}x the measured round trip{}; failures {:?}",
            s.path,
            l.done,
            l.jobs,
            l.end_to_end_ms.p50,
            l.p50_over_measured_rtt,
            l.p50_over_rtt.map_or(String::new(), |x| format!(
                ", {x:.1}x RTT (target ≤ {}x)",
                r.target_p50_over_rtt
            )),
            l.failures
        );
        let x = &l.crossings;
        println!(
            "{:>6}: crossings per job (stage p50 ÷ round trip): pickup {:.1}, result {:.1}, payment {:.1}, receipt {:.1}; total {:.1}",
            s.path, x.pickup, x.result, x.payment, x.receipt, x.total
        );
        let m = &s.repomap;
        println!(
            "{:>6}: repo map {}/{} files ({:.1}%) in {:.1} s{}; failures {:?}; audit {}",
            s.path,
            m.completed,
            m.files,
            m.completion_pct,
            m.wall_secs,
            if m.deadline_hit {
                " (deadline hit)"
            } else {
                ""
            },
            m.failures,
            if s.audit_ok { "OK" } else { "FAILED" }
        );
        if let Some(p) = &s.proxy {
            println!(
                "{:>6}: proxy accepted {}, random cuts {}, cut by the outage {}, refused {}, {} B up, {} B down",
                s.path, p.accepted, p.random_drops, p.cut, p.refused, p.bytes_up, p.bytes_down
            );
        }
    }
    println!("targets met: {}", r.targets_met);
}

/// The soak bench as lines of text.
fn print_soak(r: &crate::bench::soak::SoakBench) {
    let opt = |x: Option<f64>| x.map_or("n/a (too few samples)".into(), |v| format!("{v:.1}"));
    println!(
        "{} jobs in {:.1} s ({:.1} jobs/s); {} done, {} paid; submit → receipt p50 {:.1} ms",
        r.jobs, r.wall_secs, r.jobs_per_sec, r.done, r.paid, r.end_to_end_ms.p50
    );
    for s in std::iter::once(&r.baseline).chain(&r.samples) {
        println!(
            "  {:>7} jobs: RSS {:>8} KiB (anon {:>8} KiB retained, {:>8} KiB before the trim), {:>4} fds",
            s.jobs, s.rss_kib, s.rss_anon_kib, s.rss_anon_untrimmed_kib, s.fds
        );
    }
    println!(
        "RSS slope after warm-up: {} KiB per 1,000 jobs ({} bytes/job; anon {} KiB per 1,000, {} over the second half, {} untrimmed); fds: {} per 1,000 jobs, {:+} overall",
        opt(r.rss_slope_kib_per_1000_jobs),
        opt(r.rss_bytes_per_job),
        opt(r.rss_anon_slope_kib_per_1000_jobs),
        opt(r.rss_anon_slope_second_half_kib_per_1000_jobs),
        opt(r.rss_anon_untrimmed_slope_kib_per_1000_jobs),
        opt(r.fd_slope_per_1000_jobs),
        r.fd_growth_after_warmup
    );
    println!(
        "jobs.db: provider {:.0} bytes/job, buyer {:.0} bytes/job; audit: {}",
        r.provider_jobs_db_bytes_per_job,
        r.buyer_jobs_db_bytes_per_job,
        if r.audit_ok { "OK" } else { "FAILED" }
    );
    for (code, n) in &r.failures {
        println!("failed: {n} × {code}");
    }
}

/// The relay bench as a table: one column per relay.
fn print_relay_table(r: &crate::bench::relay_load::RelayLoadReport) {
    use crate::bench::relay_load::RelayFigures;
    let relays: Vec<&RelayFigures> = std::iter::once(&r.pylon)
        .chain(r.nostr_rs_relay.as_ref())
        .collect();
    let row = |name: &str, f: &dyn Fn(&RelayFigures) -> String| {
        let cells: Vec<String> = relays.iter().map(|x| format!("{:>22}", f(x))).collect();
        println!("{name:<34}{}", cells.join(""));
    };
    row("", &|x| x.relay.clone());
    println!("fan-out");
    row("  accepted events/s", &|x| {
        format!("{:.0}", x.fanout.accepted_per_sec)
    });
    row("  relay / client CPU s", &|x| {
        format!(
            "{:.1} / {:.1}",
            x.fanout.relay_cpu_secs, x.fanout.client_cpu_secs
        )
    });
    row("  accepted / sent", &|x| {
        format!("{} / {}", x.fanout.accepted, x.fanout.events_sent)
    });
    row("  publish → OK p50 / p99 ms", &|x| {
        format!(
            "{:.1} / {:.1}",
            x.fanout.publish_ok_ms.p50, x.fanout.publish_ok_ms.p99
        )
    });
    row("  deliveries received / expected", &|x| {
        format!(
            "{} / {}",
            x.fanout.deliveries_received, x.fanout.deliveries_expected
        )
    });
    row("  lost", &|x| x.fanout.lost.to_string());
    row("  CLOSED / NOTICE to subscribers", &|x| {
        format!("{} / {}", x.fanout.closed, x.fanout.notices)
    });
    row("  peak RSS MiB (anon)", &|x| {
        format!(
            "{:.1} ({:.1})",
            x.fanout.peak_rss_kib as f64 / 1024.0,
            x.fanout.peak_rss_anon_kib as f64 / 1024.0
        )
    });
    println!("REQ storm");
    row("  REQs sent × limit", &|x| {
        format!("{} × {}", x.storm.reqs_sent, x.storm.req_limit)
    });
    row("  answered / dropped", &|x| {
        format!("{} / {}", x.storm.eose + x.storm.closed, x.storm.unanswered)
    });
    row("  wall s / relay CPU s", &|x| {
        format!("{:.2} / {:.2}", x.storm.wall_secs, x.storm.relay_cpu_secs)
    });
    row("  events returned", &|x| {
        x.storm.events_received.to_string()
    });
    row("  relay CPU µs per event", &|x| {
        format!("{:.1}", x.storm.relay_cpu_us_per_event)
    });
    row("  probe OK p50 / p99 / max ms", &|x| {
        let p = x.storm.probe_publish_ok_ms;
        format!("{:.1} / {:.1} / {:.1}", p.p50, p.p99, p.max)
    });
    row("  new client connect + EOSE ms", &|x| {
        x.storm
            .new_client_eose_ms
            .map_or("none".into(), |m| format!("{m:.1}"))
    });
    row("  probe p99 under 50 ms", &|x| {
        if x.storm.probe_goal_met { "yes" } else { "no" }.to_string()
    });
    println!("idle connections");
    row("  opened", &|x| {
        format!("{} / {}", x.idle.opened, x.idle.connections)
    });
    row("  KiB per connection", &|x| {
        format!("{:.1}", x.idle.kib_per_connection)
    });
    for n in &r.notes {
        println!("note: {n}");
    }
}
