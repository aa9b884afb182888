//! `pylon stats` (a live terminal dashboard, or one JSON snapshot) and `pylon web`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use nostr_sdk::Keys;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, BarGroup, Block, Borders, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

use super::{output, shutdown_signal, Context};
use crate::relay::client::ONE_SHOT_TIMEOUT;
use crate::relay::{MarketClient, Reachability};
use crate::stats::{LiveStats, Snapshot, DAY};
use crate::store::Store;
use crate::web::{self, WebState};

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Print one snapshot as JSON (schema in src/stats/model.rs) and exit
    #[arg(long)]
    json: bool,
    /// Hours of history to load
    #[arg(long, default_value_t = 24)]
    hours: u64,
}

#[derive(Debug, Args)]
pub(crate) struct WebArgs {
    /// Listen address for the dashboard
    #[arg(long, default_value = "127.0.0.1:7780")]
    bind: SocketAddr,
}

async fn live(
    ctx: &Context,
    hours: u64,
    long_running: bool,
) -> anyhow::Result<(Arc<LiveStats>, Arc<MarketClient>)> {
    let config = ctx.config()?;
    let reach = if long_running {
        Reachability::FallBack {
            settings: Box::new(config.relay.clone()),
            data_dir: ctx.home.relay_dir(),
        }
    } else {
        Reachability::OneShot
    };
    let timeout = if long_running {
        config.fallback_timeout
    } else {
        ONE_SHOT_TIMEOUT
    };
    // Reading public events needs no identity.
    let client =
        Arc::new(MarketClient::connect(Keys::generate(), &config.relays, timeout, reach).await?);
    if let Some(fb) = client.fallback() {
        eprintln!(
            "warning: relays unreachable ({}); showing the embedded relay at {}",
            fb.reason, fb.url
        );
    }
    let window = Duration::from_secs(hours.clamp(1, 24 * 7) * 3600).min(DAY * 7);
    let stats = Arc::new(LiveStats::start(client.clone(), window).await?);
    Ok((stats, client))
}

fn personal_store(ctx: &Context) -> Option<Arc<Store>> {
    ctx.home
        .root()
        .join("jobs.db")
        .exists()
        .then(|| Store::open(ctx.home.root()).ok().map(Arc::new))
        .flatten()
}

pub(crate) async fn stats(ctx: &Context, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let (stats, _client) = live(ctx, args.hours, false).await?;
    let store = personal_store(ctx);
    let snapshot = |stats: &LiveStats| {
        let mut s = stats.snapshot();
        s.personal = store.as_ref().and_then(|st| st.jobs().personal().ok());
        s
    };
    if args.json {
        output::print_json(&snapshot(&stats))?;
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() {
        print_plain(&snapshot(&stats));
        eprintln!("(not a terminal: printed one snapshot; use --json for scripts)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let s = snapshot(&stats);
            terminal.draw(|f| draw(f, &s))?;
            if event::poll(Duration::from_secs(1))? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn web(ctx: &Context, args: WebArgs) -> anyhow::Result<ExitCode> {
    let (stats, client) = live(ctx, 24, true).await?;
    let state = Arc::new(WebState {
        stats,
        client,
        store: personal_store(ctx),
        notices: Vec::new(),
        trust: ctx.config()?.trusted_hubs(),
    });
    let running = web::serve(args.bind, state)
        .await
        .context("cannot start the dashboard")?;
    println!("pylon web dashboard on http://{}", running.local_addr());
    println!("  API: /api/stats /api/providers /api/jobs/<id>  Prometheus: /metrics");
    shutdown_signal().await?;
    running.stop().await;
    super::output::say("dashboard stopped");
    Ok(ExitCode::SUCCESS)
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 1000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.2} s", v / 1000.0),
    }
}

fn headline(s: &Snapshot) -> Vec<(String, String)> {
    vec![
        ("online nodes".into(), s.online_nodes.to_string()),
        ("jobs/min".into(), format!("{}", s.jobs_per_min)),
        (
            "success (1h)".into(),
            s.success_rate
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "–".into()),
        ),
        ("latency p50".into(), ms(s.latency_ms.p50)),
        ("latency p95".into(), ms(s.latency_ms.p95)),
        ("pickup p50".into(), ms(s.pickup_ms.p50)),
        (
            "sats settled/requested (24h)".into(),
            format!(
                "{} / {}",
                s.windows.last_day.sats_settled, s.windows.last_day.sats_requested
            ),
        ),
        ("failures (24h)".into(), failures(s)),
    ]
}

/// Failures by code, busiest first: the reasons matter more than the count.
fn failures(s: &Snapshot) -> String {
    if s.failures.is_empty() {
        return "none".into();
    }
    let mut by: Vec<(&String, &u64)> = s.failures.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    by.iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_plain(s: &Snapshot) {
    for (k, v) in headline(s) {
        println!("{k:<30} {v}");
    }
    for p in &s.top_providers {
        println!(
            "  {}  {} completed, {} sats",
            &p.npub[..20.min(p.npub.len())],
            p.completed,
            p.earnings_sats
        );
    }
}

fn draw(f: &mut Frame<'_>, s: &Snapshot) {
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Min(6),
        ])
        .split(f.area());
    let cards: Vec<Line> = headline(s)
        .into_iter()
        .map(|(k, v)| {
            Line::from(vec![
                format!("{k}: ").fg(Color::Gray),
                v.bold().fg(Color::Yellow),
            ])
        })
        .collect();
    let half = cards.len().div_ceil(2);
    let top = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(rows[0]);
    let title = format!(" Pylon market — {} ", s.relays.join(" "));
    f.render_widget(
        Paragraph::new(cards[..half].to_vec())
            .block(Block::default().borders(Borders::ALL).title(title)),
        top[0],
    );
    f.render_widget(
        Paragraph::new(cards[half..].to_vec())
            .block(Block::default().borders(Borders::ALL).title(" q quits ")),
        top[1],
    );
    let mid = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(rows[1]);
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" jobs per minute, last hour "),
            )
            .data(&s.jobs_per_min_series)
            .style(Style::default().fg(Color::Yellow)),
        mid[0],
    );
    let bars: Vec<Bar> = s
        .latency_histogram
        .iter()
        .map(|b| {
            let label = if b.le_ms == u64::MAX {
                ">10s".to_string()
            } else {
                format!("{}", b.le_ms)
            };
            Bar::default().value(b.count).label(Line::from(label))
        })
        .collect();
    f.render_widget(
        BarChart::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" latency ms (request → result) "),
            )
            .data(BarGroup::default().bars(&bars))
            .bar_width(4)
            .bar_gap(1),
        mid[1],
    );
    let bottom = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(rows[2]);
    let providers: Vec<Row> = s
        .top_providers
        .iter()
        .map(|p| {
            Row::new(vec![
                format!(
                    "{}{}",
                    if p.online { "● " } else { "○ " },
                    &p.npub[..16.min(p.npub.len())]
                ),
                p.completed.to_string(),
                p.failed.values().sum::<u64>().to_string(),
                ms(p.median_runtime_ms),
                p.earnings_sats.to_string(),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            providers,
            [
                Constraint::Length(20),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(8),
            ],
        )
        .header(Row::new(vec!["provider", "done", "failed", "median", "sats"]).bold())
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" top providers (24h) "),
        ),
        bottom[0],
    );
    let jobs: Vec<Row> = s
        .recent_jobs
        .iter()
        .map(|j| {
            Row::new(vec![
                j.job_id[..10.min(j.job_id.len())].to_string(),
                j.status.clone(),
                j.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            jobs,
            [
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(vec!["job", "status", "latency"]).bold())
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" recent jobs "),
        ),
        bottom[1],
    );
}
