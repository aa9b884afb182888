//! `pylon demo`: the self-contained hero run and its launch scoreboard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{output, shutdown_signal};
use crate::appliance::demo::{self, DemoOptions};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Provider nodes to start in this process
    #[arg(long, default_value_t = 30)]
    providers: usize,
    /// The repository to map (this one by default); mapped beside a generated sample
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Map the generated sample only
    #[arg(long, conflicts_with = "repo")]
    sample_only: bool,
    /// Files in the generated sample (so the run has at least 200 jobs)
    #[arg(long, default_value_t = 200)]
    sample_files: usize,
    /// Kill this percentage of the providers a third of the way in (e.g. 30)
    #[arg(long, default_value_t = 0, value_name = "PERCENT")]
    churn: u8,
    /// Where the artifacts go
    #[arg(long, default_value = "pylon-demo")]
    out: PathBuf,
    /// Where the dashboard listens (another free port if taken)
    #[arg(long, default_value = "127.0.0.1:7780")]
    web: SocketAddr,
    /// Most sats the map may cost
    #[arg(long, default_value_t = 5_000)]
    budget: u64,
    /// Run every role through a relay "far away": the WAN proxy of `pylon bench wan` with its
    /// defaults (100 ms ± 20 ms round trip, one random cut per connection per minute) and the
    /// relay limited to 20 events/s per connection, as public relays are
    #[arg(long)]
    wan: bool,
    /// Leave the dashboard (and the market) up after the run, until Ctrl-C
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let options = DemoOptions {
        providers: args.providers.max(1),
        repo: (!args.sample_only).then(|| args.repo.clone()),
        sample_files: args.sample_files,
        churn: f64::from(args.churn.min(100)) / 100.0,
        out: args.out.clone(),
        web: args.web,
        budget_sats: args.budget.max(1),
        wan: args.wan.then(demo::WanLink::default),
    };
    let demo = demo::run(
        &options,
        |line| eprintln!("demo: {line}"),
        |url| eprintln!("demo: watch it on {url}"),
    )
    .await?;
    let r = &demo.report;
    if args.json {
        output::print_json(r)?;
    } else {
        let m = &r.repomap;
        println!(
            "mapped {} of {} files in {:.1} s through {} providers; paid {} sats",
            m.mapped,
            m.files,
            m.wall_secs,
            m.providers_used,
            m.spent_msats / 1000
        );
        for f in &m.failed {
            println!("  failed {}: {}", f.path, f.reason);
        }
        if r.killed > 0 {
            println!("  churn: {} providers killed mid-run", r.killed);
        }
        if let Some(w) = &r.wan {
            println!(
                "  wan: RTT {} ms ± {} ms, {} cuts/connection/min, {} events/s per connection; the proxy cut {} connections at random",
                w.conditions.rtt_ms,
                w.conditions.jitter_ms,
                w.conditions.reconnects_per_min,
                w.conditions.events_per_sec,
                w.proxy.random_drops
            );
        }
        println!("artifacts:");
        for p in &r.artifacts {
            println!("  {}", p.display());
        }
        let s = &r.stats;
        println!(
            "stats: {} nodes online, {} jobs completed, {} failed, {} sats settled (dashboard: {})",
            s.online_nodes,
            s.windows.last_hour.completed,
            s.windows.last_hour.failed,
            s.windows.last_day.sats_settled,
            demo.dashboard
        );
        for (code, n) in &s.failures {
            println!("  failures: {code} × {n}");
        }
        if let Some(t) = &r.trace {
            println!("one job, traced from the relay alone:");
            super::job::print_trace(t);
        }
        let b = &r.scoreboard;
        println!("launch scoreboard (measured in this run):");
        println!(
            "  providers with ≥ 1 job  {:>10}   {}",
            b.providers_with_jobs,
            mark(&b.bars, 0)
        );
        println!(
            "  jobs completed          {:>10}   {}",
            b.jobs_completed,
            mark(&b.bars, 1)
        );
        println!(
            "  success rate            {:>9.1}%   {}",
            b.success_rate * 100.0,
            mark(&b.bars, 2)
        );
        println!(
            "  p50 job runtime         {:>7.0} ms   {}",
            b.p50_job_runtime_ms,
            mark(&b.bars, 3)
        );
        println!(
            "  end-to-end p50 / p95    {:>4.0} / {:.0} ms   {}",
            b.p50_end_to_end_ms,
            b.p95_end_to_end_ms,
            mark(&b.bars, 4)
        );
        println!("  sats settled            {:>10}", b.sats_settled);
        println!(
            "{}",
            if b.met {
                "every launch bar met"
            } else {
                "some launch bars missed"
            }
        );
    }
    let ok = r.scoreboard.met && r.repomap.failed.is_empty();
    if args.keep {
        eprintln!(
            "demo: the dashboard stays up on {}; Ctrl-C stops it",
            demo.dashboard
        );
        shutdown_signal().await?;
    }
    demo.stop().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn mark(bars: &[demo::Bar], i: usize) -> String {
    bars.get(i)
        .map(|b| format!("{} {}", if b.met { "✓" } else { "✗" }, b.target))
        .unwrap_or_default()
}
