//! `pylon bench relay`: the relay under load. Pylon's embedded relay and nostr-rs-relay 0.8.12
//! are measured in the same run, the same way: each runs as a child process (`pylon relay` from
//! this very binary, with [`bench_relay_settings`](super::relay::bench_relay_settings)), and raw
//! WebSocket clients (tokio-tungstenite) see exactly what each relay sends.
//!
//! Per relay, four phases, each on a fresh relay process:
//! 1. **fan-out** — 50 subscribers REQ the run's unique `#t` tag; 20 publishers push a fixed
//!    total of ~400-byte kind-1 events (short notes), each keeping a window of events awaiting
//!    `OK`; every delivery, CLOSED and NOTICE is counted;
//! 2. **memory** — the relay's VmRSS (and RssAnon) sampled every 100 ms during phase 1, and its
//!    VmHWM at the end;
//! 4. **idle connections** (run before 3) — open many connections, each with one small REQ
//!    answered by EOSE, and divide the relay's RSS growth by their number;
//! 3. **REQ storm** — the store preloaded with kind-1 events (through the relay's own bulk path:
//!    nostr-lmdb for Pylon, `bulkloader` for nostr-rs-relay), then one client sends
//!    `["REQ","w<i>",{"kinds":[1],"limit":10000}]`, 8 open at once, for at most `--storm-secs`,
//!    while a probe publishes an event every 20 ms and, 1 s in, a new client connects and asks a
//!    small REQ. The relay's CPU seconds come from `/proc/PID/stat`.
//!
//! # JSON
//! `{"pylon": RelayFigures, "nostr_rs_relay": RelayFigures | null, "notes": [string]}`:
//! see [`RelayLoadReport`], [`RelayFigures`], [`FanoutFigures`], [`StormFigures`],
//! [`IdleFigures`] and [`Percentiles`] for every field. `nostr_rs_relay` is `null` when it is
//! not installed or did not start; `notes` then says why.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use nostr_sdk::{Event, EventBuilder, JsonUtil, Keys, Kind, Tag};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::relay_child::{self, Preload, RelayChild, RelayProgram};
use super::round3;

/// Events each publisher keeps awaiting `OK` in phase 1.
pub const DEFAULT_WINDOW: usize = 32;
/// Publishers in phase 1.
pub const PUBLISHERS: usize = 20;
/// Subscribers in phase 1.
pub const SUBSCRIBERS: usize = 50;
/// The storm's filter limit.
pub const STORM_LIMIT: usize = 10_000;
/// Storm REQs open at once on the one connection, each CLOSEd at its EOSE and the next one
/// sent. nostr-rs-relay allows 32 subscriptions per connection and runs 8 queries at once (its
/// default `max_conn`); a ninth REQ would stall that connection's reading until one finishes.
pub const STORM_IN_FLIGHT: usize = 8;
/// The probe publishes one event this often during the storm.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// The probe's goal: publish → OK p99 under this, storm or not.
pub const PROBE_GOAL_P99_MS: f64 = 50.0;
/// When the new client connects, after the storm starts.
const NEWCOMER_AFTER: Duration = Duration::from_secs(1);
/// A subscriber stops this long after the last delivery once publishing is over.
const QUIET: Duration = Duration::from_secs(3);
/// A publisher gives up on its outstanding events after this long without any reply.
const OK_STALL: Duration = Duration::from_secs(20);
/// Storm REQs still open when nothing at all arrives for this long count as unanswered.
const STORM_SILENCE: Duration = Duration::from_secs(5);
/// After the storm's last REQ is sent, the open ones have this long to be answered.
const STORM_DRAIN: Duration = Duration::from_secs(60);
/// The probe's kind: a regular kind the storm's `kinds: [1]` does not return.
const PROBE_KIND: u16 = 1111;
/// How long a REQ may take to be answered outside the storm.
const REQ_WITHIN: Duration = Duration::from_secs(20);
/// Connections used to preload the storm's events, and their window.
const PRELOADERS: usize = 32;
const PRELOAD_WINDOW: usize = 64;
/// Idle connections opened at once.
const IDLE_CONCURRENCY: usize = 32;
/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Target size of one event's JSON, bytes: a short note. (A signed kind-1 event with one `t`
/// tag is never much under 400 bytes: id, pubkey and signature alone take 256.)
const EVENT_BYTES: usize = 400;
/// Distinct relay messages (CLOSED, NOTICE, OK false) kept per phase.
const MESSAGES_KEPT: usize = 5;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Errors that stop the benchmark (a relay that cannot be started or reached at all).
#[derive(Debug, thiserror::Error)]
#[error("relay benchmark: {0}")]
pub struct RelayBenchError(pub String);

fn err(e: impl std::fmt::Display) -> RelayBenchError {
    RelayBenchError(e.to_string())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RelayLoadOptions {
    /// Events published in phase 1 (in total, over every publisher).
    pub events: usize,
    /// Events each publisher keeps awaiting `OK`.
    pub window: usize,
    /// Events stored before the REQ storm.
    pub preload: usize,
    /// REQs in the storm.
    pub storm: usize,
    /// No new storm REQ is sent after this long.
    pub storm_secs: Duration,
    /// Idle connections in phase 4.
    pub idle: usize,
    /// The `pylon` binary to run `pylon relay` from (normally this process's own).
    pub pylon_bin: PathBuf,
    /// nostr-rs-relay given on the command line; `None`: `$NOSTR_RS_RELAY` or `PATH`.
    pub nostr_rs_relay: Option<PathBuf>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct RelayLoadReport {
    /// Pylon's embedded relay (`pylon relay`).
    pub pylon: RelayFigures,
    /// nostr-rs-relay, measured the same way in the same run; `null` when absent (see `notes`).
    pub nostr_rs_relay: Option<RelayFigures>,
    /// How the run was set up, what was skipped and why, and anything odd a relay did.
    pub notes: Vec<String>,
    /// The comparison was asked for (`--nostr-rs-relay`) but could not run.
    #[serde(skip)]
    pub comparison_failed: bool,
}

/// Every figure for one relay.
#[derive(Debug, Clone, Serialize)]
pub struct RelayFigures {
    /// What ran, e.g. `pylon 0.1.0` or `nostr-rs-relay 0.8.12`.
    pub relay: String,
    /// Phases 1 and 2: throughput with fan-out, and memory meanwhile.
    pub fanout: FanoutFigures,
    /// Phase 3: the worst-case REQ storm.
    pub storm: StormFigures,
    /// Phase 4: idle connections.
    pub idle: IdleFigures,
}

/// Percentiles of a set of durations, milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
    /// How many.
    pub samples: usize,
}

impl Percentiles {
    fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            p50: round3(super::percentile(&ms, 50.0)),
            p99: round3(super::percentile(&ms, 99.0)),
            max: round3(ms.last().copied().unwrap_or(0.0)),
            samples: ms.len(),
        }
    }
}

/// Phase 1 (throughput with fan-out) and phase 2 (memory during it).
#[derive(Debug, Clone, Serialize)]
pub struct FanoutFigures {
    /// Publishing connections.
    pub publishers: usize,
    /// Subscribing connections, each with one REQ for the run's `#t` tag.
    pub subscribers: usize,
    /// Events each publisher keeps awaiting `OK`.
    pub window: usize,
    /// Events sent (over every publisher).
    pub events_sent: usize,
    /// Mean size of one event's JSON, bytes.
    pub event_bytes: usize,
    /// Answered `OK` true.
    pub accepted: usize,
    /// Answered `OK` false.
    pub rejected: usize,
    /// Never answered (the publisher gave up after 20 s of silence, or was disconnected).
    pub unanswered: usize,
    /// From the first event sent to the last `OK`, seconds.
    pub wall_secs: f64,
    /// `accepted / wall_secs`.
    pub accepted_per_sec: f64,
    /// CPU seconds the relay process used from the first event to the last delivery.
    pub relay_cpu_secs: f64,
    /// CPU seconds the bench's own clients used meanwhile, on the same cores.
    pub client_cpu_secs: f64,
    /// Publish → `OK`, each event timed from when it was written to the socket.
    pub publish_ok_ms: Percentiles,
    /// `accepted × subscribers`: every subscriber should see every accepted event.
    pub deliveries_expected: u64,
    /// `EVENT`s the subscribers received for their subscription.
    pub deliveries_received: u64,
    /// `deliveries_expected − deliveries_received` (never negative).
    pub lost: u64,
    /// Subscribers that lost at least one event.
    pub subscribers_short: usize,
    /// `CLOSED` messages the subscribers got (a relay may close a subscriber it finds too slow).
    pub closed: usize,
    /// `NOTICE` messages the subscribers and publishers got.
    pub notices: usize,
    /// Subscriber connections the relay ended before the phase did.
    pub disconnected: usize,
    /// Up to 5 distinct texts of those CLOSED / NOTICE / `OK` false messages.
    pub relay_messages: Vec<String>,
    /// Relay VmRSS before the phase, KiB.
    pub rss_start_kib: u64,
    /// Highest relay VmRSS sampled every 100 ms during the phase, KiB.
    pub peak_rss_kib: u64,
    /// Highest anonymous (heap) resident memory sampled, KiB: VmRSS minus mapped files such as
    /// an LMDB store.
    pub peak_rss_anon_kib: u64,
    /// The kernel's high-water mark of the relay's RSS (VmHWM) at the end of the phase, KiB.
    pub vm_hwm_kib: u64,
}

/// Phase 3: preload, then the REQ storm with a probe publisher and a newcomer meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct StormFigures {
    /// Events in the store when the storm began.
    pub preloaded: usize,
    /// How they got there, the fastest way each relay allows: `lmdb` (written with nostr-lmdb
    /// before `pylon relay` started), `bulkloader` (nostr-rs-relay's bulk loader, between two
    /// starts), or `websocket` (EVENTs on 32 connections, 64 in flight each, counting OK true).
    pub preload_method: &'static str,
    /// Seconds the preload took.
    pub preload_secs: f64,
    /// `preloaded / preload_secs`.
    pub preload_per_sec: f64,
    /// REQs planned, each `["REQ","w<i>",{"kinds":[1],"limit":req_limit}]`.
    pub reqs: usize,
    /// REQs sent: all of them, unless `--storm-secs` ran out first.
    pub reqs_sent: usize,
    /// Their filter limit.
    pub req_limit: usize,
    /// REQs open at once (each is CLOSEd at its EOSE and the next sent).
    pub in_flight: usize,
    /// REQs answered with EOSE.
    pub eose: usize,
    /// REQs answered with CLOSED instead.
    pub closed: usize,
    /// REQs sent that got neither (the connection was silent 5 s with them open, or the relay
    /// hung up): the relay dropped them.
    pub unanswered: usize,
    /// Stored events the REQs returned, in total.
    pub events_received: u64,
    /// From the first REQ to the last answer, seconds (the REQs sent, not the planned).
    pub wall_secs: f64,
    /// CPU seconds (user + system, all threads) the relay process used meanwhile.
    pub relay_cpu_secs: f64,
    /// `relay_cpu_secs / wall_secs`: cores the relay kept busy.
    pub relay_cpu_share: f64,
    /// `relay_cpu_secs / events_received`, microseconds: the relay's CPU cost of one stored
    /// event served.
    pub relay_cpu_us_per_event: f64,
    /// CPU seconds the bench's own clients used meanwhile, on the same cores.
    pub client_cpu_secs: f64,
    /// Publish → `OK` of the probe (one kind-1111 event every 20 ms, not waiting for the
    /// previous OK; the storm's REQs do not return them).
    pub probe_publish_ok_ms: Percentiles,
    /// Probe events sent.
    pub probe_sent: usize,
    /// Probe events never answered within 5 s after the storm.
    pub probe_unanswered: usize,
    /// The goal for the probe's p99, ms.
    pub probe_goal_p99_ms: f64,
    /// Whether every probe event was answered and the p99 is under the goal.
    pub probe_goal_met: bool,
    /// A new client, 1 s into the storm: TCP + WebSocket handshake, ms (`null`: it failed).
    pub new_client_connect_ms: Option<f64>,
    /// The same client: connect + a small REQ until its EOSE, ms (`null`: no EOSE within 60 s).
    pub new_client_eose_ms: Option<f64>,
}

/// Phase 4: idle connections.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    /// Connections asked for.
    pub connections: usize,
    /// Connections open, each with one small REQ answered by EOSE, when RSS was read.
    pub opened: usize,
    /// Seconds to open them (32 at a time).
    pub open_secs: f64,
    /// Relay VmRSS before, KiB.
    pub rss_before_kib: u64,
    /// Relay VmRSS with them open, KiB.
    pub rss_after_kib: u64,
    /// `(rss_after_kib − rss_before_kib) / opened`.
    pub kib_per_connection: f64,
}

/// One pre-signed event: its id, its `["EVENT", …]` message, and the event.
#[derive(Clone)]
struct Signed {
    id: String,
    msg: Utf8Bytes,
    event: Event,
}

/// Every event a run publishes, signed once and sent to each relay.
struct Workload {
    run_tag: String,
    idle_tag: String,
    probe_tag: String,
    fanout: Vec<Vec<Signed>>,
    preload: Vec<Vec<Signed>>,
    event_bytes: usize,
}

/// Runs every phase on Pylon's relay, then on nostr-rs-relay if there is one.
pub async fn run(
    options: RelayLoadOptions,
    progress: impl Fn(&str),
) -> Result<RelayLoadReport, RelayBenchError> {
    let mut notes = Vec::new();
    let fds_wanted = (options.idle + 1024) as u64;
    match relay_child::raise_nofile(fds_wanted) {
        Some(n) if n < fds_wanted => notes.push(format!(
            "open-file limit is {n}, under the {fds_wanted} this run may need"
        )),
        Some(_) => {}
        None => notes.push("cannot read the open-file limit".into()),
    }
    let comparison = relay_child::find_nostr_rs_relay(options.nostr_rs_relay.as_deref());

    progress(&format!(
        "signing {} fan-out and {} preload events",
        options.events, options.preload
    ));
    let work = {
        let (events, preload) = (options.events, options.preload);
        tokio::task::spawn_blocking(move || Workload::sign(events, preload))
            .await
            .map_err(err)??
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    notes.push(format!(
        "both relays run as child processes on loopback, one after the other, on {cores} cores \
         shared with the bench's own clients; every figure comes from this one run"
    ));
    notes.push(format!(
        "fan-out: {PUBLISHERS} publishers × {} events in flight, {SUBSCRIBERS} subscribers on one #t tag, \
         {}-byte kind-1 events; storm: {STORM_IN_FLIGHT} REQs open at once (nostr-rs-relay runs 8 \
         queries at once), each CLOSEd at its EOSE; the probe publishes kind {PROBE_KIND}, which the storm does not return",
        options.window, work.event_bytes
    ));
    notes.push(
        "memory: VmRSS includes mapped files (Pylon's LMDB store is memory-mapped); \
         peak_rss_anon_kib leaves them out"
            .into(),
    );

    // A debug build runs the relay with debug assertions in every dependency: measured here,
    // that costs the relay a good part of its CPU. Say which build ran.
    let build = if cfg!(debug_assertions) {
        " (debug build)"
    } else {
        ""
    };
    let pylon_version = format!("pylon {}{build}", env!("CARGO_PKG_VERSION"));
    if cfg!(debug_assertions) {
        notes.push(
            "pylon is a debug build (debug assertions on in every dependency): its relay is slower \
             than a release build's; `cargo build --release` for figures to compare"
                .into(),
        );
    }
    let pylon = measure(
        &pylon_version,
        &RelayProgram::Pylon(options.pylon_bin.clone()),
        &work,
        &options,
        &mut notes,
        &progress,
    )
    .await?;

    let mut comparison_failed = false;
    let nostr_rs_relay = match comparison {
        Err(why) => {
            progress(&format!("skipping nostr-rs-relay: {why}"));
            notes.push(format!("nostr-rs-relay skipped: {why}"));
            comparison_failed = options.nostr_rs_relay.is_some();
            None
        }
        Ok(bin) => {
            let version = relay_child::version_of(&bin)
                .await
                .unwrap_or_else(|| "nostr-rs-relay (version unknown)".into());
            if !version.contains("0.8.12") {
                notes.push(format!(
                    "{} reports `{version}`; the figures are meant for 0.8.12",
                    bin.display()
                ));
            }
            notes.push(format!(
                "nostr-rs-relay: {} with {}",
                bin.display(),
                "no rate limits, 512 KiB events, 1 MiB messages, default 16384-event broadcast buffer"
            ));
            match measure(
                &version,
                &RelayProgram::NostrRsRelay(bin.clone()),
                &work,
                &options,
                &mut notes,
                &progress,
            )
            .await
            {
                Ok(f) => Some(f),
                Err(e) => {
                    progress(&format!("nostr-rs-relay failed: {e}"));
                    notes.push(format!("nostr-rs-relay skipped: {e}"));
                    comparison_failed = true;
                    None
                }
            }
        }
    };
    Ok(RelayLoadReport {
        pylon,
        nostr_rs_relay,
        notes,
        comparison_failed,
    })
}

/// Every phase on one kind of relay, each on a fresh process: phases 1–2, then 4, then 3 (its
/// store preloaded).
async fn measure(
    label: &str,
    program: &RelayProgram,
    work: &Workload,
    options: &RelayLoadOptions,
    notes: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<RelayFigures, RelayBenchError> {
    let say = |l: &str| progress(&format!("{label}: {l}"));
    let mut relay = program.start().await.map_err(err)?;
    say(&format!(
        "fan-out: {PUBLISHERS} publishers → {SUBSCRIBERS} subscribers, {} events",
        work.fanout.iter().map(Vec::len).sum::<usize>()
    ));
    let fanout = fanout(&relay, work, options.window).await;
    let fanout = check_alive(&mut relay, fanout)?;
    // A relay that accepted nothing has no rate to report: a 0 would read as a measurement.
    if fanout.accepted == 0 {
        return Err(RelayBenchError(format!(
            "{label}: the relay accepted none of the {} fan-out events ({} rejected, {} unanswered)",
            fanout.events_sent, fanout.rejected, fanout.unanswered
        )));
    }
    say(&format!(
        "fan-out: {:.0} accepted/s, OK p99 {:.1} ms, {} of {} deliveries lost, peak RSS {} KiB",
        fanout.accepted_per_sec,
        fanout.publish_ok_ms.p99,
        fanout.lost,
        fanout.deliveries_expected,
        fanout.peak_rss_kib
    ));
    for m in &fanout.relay_messages {
        notes.push(format!("{label} fan-out: the relay said {m}"));
    }
    relay.stop().await;

    let mut relay = program.start().await.map_err(err)?;
    say(&format!("idle: opening {} connections", options.idle));
    let idle = idle(&relay, &work.idle_tag, options.idle).await;
    let idle = check_alive(&mut relay, idle)?;
    say(&format!(
        "idle: {} open, {:.1} KiB each",
        idle.opened, idle.kib_per_connection
    ));
    if idle.opened < idle.connections {
        notes.push(format!(
            "{label} idle: only {} of {} connections opened",
            idle.opened, idle.connections
        ));
    }
    relay.stop().await;

    say(&format!(
        "storm: preloading {} events",
        work.preload.iter().map(Vec::len).sum::<usize>()
    ));
    let events: Vec<Event> = work
        .preload
        .iter()
        .flatten()
        .map(|s| s.event.clone())
        .collect();
    let (mut relay, preloaded) = program.start_preloaded(&events).await.map_err(err)?;
    drop(events);
    say(&format!(
        "storm: {} REQs of limit {STORM_LIMIT} (for at most {} s)",
        options.storm,
        options.storm_secs.as_secs()
    ));
    let storm = storm(&relay, work, preloaded, options, notes, label).await;
    let storm = check_alive(&mut relay, storm)?;
    say(&format!(
        "storm: {:.1} s, relay CPU {:.1} s; probe OK p99 {:.1} ms (max {:.1}); new client EOSE {} ms",
        storm.wall_secs,
        storm.relay_cpu_secs,
        storm.probe_publish_ok_ms.p99,
        storm.probe_publish_ok_ms.max,
        storm
            .new_client_eose_ms
            .map_or("—".to_string(), |x| format!("{x:.1}"))
    ));
    relay.stop().await;
    Ok(RelayFigures {
        relay: label.to_string(),
        fanout,
        storm,
        idle,
    })
}

/// A phase's result, or its error with the relay's own last words if the relay died.
fn check_alive<T>(
    relay: &mut RelayChild,
    result: Result<T, RelayBenchError>,
) -> Result<T, RelayBenchError> {
    match result {
        Ok(v) if relay.alive() => Ok(v),
        Ok(_) => Err(RelayBenchError(format!(
            "{} exited during the run; its last output:\n{}",
            relay.name,
            relay.tail()
        ))),
        Err(e) if !relay.alive() => Err(RelayBenchError(format!(
            "{e}; {} exited, its last output:\n{}",
            relay.name,
            relay.tail()
        ))),
        Err(e) => Err(e),
    }
}

impl Workload {
    fn sign(events: usize, preload: usize) -> Result<Self, RelayBenchError> {
        let nonce = rand::random::<u64>();
        let run_tag = format!("pylon-bench-{nonce:016x}");
        let preload_tag = format!("pylon-bench-preload-{nonce:016x}");
        let fanout = sign_split(events, PUBLISHERS, &run_tag)?;
        let preload = sign_split(preload, PRELOADERS, &preload_tag)?;
        let all: Vec<&Signed> = fanout.iter().chain(preload.iter()).flatten().collect();
        let event_bytes = if all.is_empty() {
            0
        } else {
            // The message is `["EVENT",` + event + `]`.
            all.iter().map(|s| s.msg.len() - 10).sum::<usize>() / all.len()
        };
        Ok(Self {
            idle_tag: format!("pylon-bench-idle-{nonce:016x}"),
            probe_tag: format!("pylon-bench-probe-{nonce:016x}"),
            run_tag,
            fanout,
            preload,
            event_bytes,
        })
    }
}

/// `total` kind-1 events tagged `tag`, split over `parts` authors, signed on every core.
fn sign_split(total: usize, parts: usize, tag: &str) -> Result<Vec<Vec<Signed>>, RelayBenchError> {
    let sizes: Vec<usize> = (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = Vec::with_capacity(parts);
    // One part per thread, as many at once as there are cores (the parts are the same size).
    for group in sizes.chunks(threads) {
        let signed: Vec<Result<Vec<Signed>, RelayBenchError>> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|&n| {
                    s.spawn(move || {
                        let keys = Keys::generate();
                        (0..n).map(|i| signed(&keys, 1, tag, i)).collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(RelayBenchError("a signing thread panicked".into()))
                    })
                })
                .collect()
        });
        for part in signed {
            out.push(part?);
        }
    }
    Ok(out)
}

/// One event of `kind` of about [`EVENT_BYTES`] bytes of JSON.
fn signed(keys: &Keys, kind: u16, tag: &str, i: usize) -> Result<Signed, RelayBenchError> {
    // Everything but the content and the tag's value takes 350 bytes of the JSON.
    let head = format!("bench event {i} ");
    let pad = EVENT_BYTES.saturating_sub(350 + tag.len() + head.len());
    let content = format!("{head}{}", "x".repeat(pad));
    let event: Event = EventBuilder::new(Kind::from(kind), content)
        .tag(Tag::hashtag(tag))
        .sign_with_keys(keys)
        .map_err(err)?;
    Ok(Signed {
        id: event.id.to_hex(),
        msg: format!("[\"EVENT\",{}]", event.as_json()).into(),
        event,
    })
}

/// CPU seconds used by the relay and by this process since [`CpuMeter::start`].
struct CpuMeter {
    relay: Option<f64>,
    own: Option<f64>,
}

impl CpuMeter {
    fn start(relay: &RelayChild) -> Self {
        Self {
            relay: relay.cpu_secs(),
            own: relay_child::own_cpu_secs(),
        }
    }

    /// (relay, this process) seconds, rounded; 0 where /proc could not be read.
    fn read(&self, relay: &RelayChild) -> (f64, f64) {
        let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => round3((b - a).max(0.0)),
            _ => 0.0,
        };
        (
            delta(self.relay, relay.cpu_secs()),
            delta(self.own, relay_child::own_cpu_secs()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Raw NIP-01 over WebSocket

/// What a relay sent, as far as the bench cares.
#[derive(Debug, PartialEq)]
enum Relayed<'a> {
    Event(Cow<'a, str>),
    Ok {
        id: String,
        accepted: bool,
        message: String,
    },
    Eose(String),
    Closed(String, String),
    Notice(String),
    Other,
}

/// Classifies a relay's text message. `EVENT`s, by far the most frequent, are recognised by
/// their prefix without parsing the event.
fn classify(text: &str) -> Relayed<'_> {
    if let Some(rest) = text.strip_prefix("[\"EVENT\",\"") {
        if let Some(end) = rest.find('"') {
            return Relayed::Event(Cow::Borrowed(&rest[..end]));
        }
    }
    let Ok(Value::Array(a)) = serde_json::from_str::<Value>(text) else {
        return Relayed::Other;
    };
    let s = |i: usize| a.get(i).and_then(Value::as_str).unwrap_or("").to_string();
    match a.first().and_then(Value::as_str) {
        Some("EVENT") => Relayed::Event(Cow::Owned(s(1))),
        Some("OK") => Relayed::Ok {
            id: s(1),
            accepted: a.get(2).and_then(Value::as_bool).unwrap_or(false),
            message: s(3),
        },
        Some("EOSE") => Relayed::Eose(s(1)),
        Some("CLOSED") => Relayed::Closed(s(1), s(2)),
        Some("NOTICE") => Relayed::Notice(s(1)),
        _ => Relayed::Other,
    }
}

async fn connect(url: &str) -> Result<Ws, RelayBenchError> {
    tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| RelayBenchError(format!("cannot connect to {url}: {e}")))
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

/// Sends `["REQ", sub, filter]` and reads until its EOSE (or CLOSED, which is an error).
async fn subscribe(
    ws: &mut Ws,
    sub: &str,
    filter: Value,
    within: Duration,
) -> Result<(), RelayBenchError> {
    ws.send(text(json!(["REQ", sub, filter])))
        .await
        .map_err(err)?;
    let answered = tokio::time::timeout(within, async {
        while let Some(msg) = ws.next().await {
            let Ok(Message::Text(t)) = msg else {
                continue;
            };
            match classify(t.as_str()) {
                Relayed::Eose(s) if s == sub => return Ok(()),
                Relayed::Closed(s, why) if s == sub => {
                    return Err(RelayBenchError(format!("REQ {sub} was CLOSED: {why}")))
                }
                _ => {}
            }
        }
        Err(RelayBenchError(format!(
            "the relay hung up before answering REQ {sub}"
        )))
    })
    .await;
    answered.unwrap_or_else(|_| {
        Err(RelayBenchError(format!(
            "no EOSE for REQ {sub} within {} s",
            within.as_secs()
        )))
    })
}

/// Distinct messages, at most [`MESSAGES_KEPT`].
#[derive(Default)]
struct Said(Vec<String>);

impl Said {
    fn add(&mut self, m: String) {
        if self.0.len() < MESSAGES_KEPT && !self.0.contains(&m) {
            self.0.push(m);
        }
    }
    fn merge(&mut self, other: Said) {
        for m in other.0 {
            self.add(m);
        }
    }
}

/// What one publisher saw.
#[derive(Default)]
struct Published {
    accepted: usize,
    rejected: usize,
    unanswered: usize,
    notices: usize,
    latencies: Vec<Duration>,
    said: Said,
    finished: Option<Instant>,
}

/// Publishes `events` on `ws`, keeping `window` awaiting OK, as fast as the OKs come back.
async fn publish_all(ws: Ws, events: &[Signed], window: usize) -> Published {
    let (mut sink, mut stream) = ws.split();
    let mut out = Published::default();
    let mut pending: HashMap<&str, Instant> = HashMap::with_capacity(window * 2);
    let mut next = 0usize;
    loop {
        if pending.len() < window && next < events.len() {
            while pending.len() < window && next < events.len() {
                let ev = &events[next];
                if sink.feed(Message::Text(ev.msg.clone())).await.is_err() {
                    break;
                }
                pending.insert(&ev.id, Instant::now());
                next += 1;
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        if pending.is_empty() && next >= events.len() {
            break;
        }
        match tokio::time::timeout(OK_STALL, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match classify(t.as_str()) {
                Relayed::Ok {
                    id,
                    accepted,
                    message,
                } => {
                    if let Some(sent) = pending.remove(id.as_str()) {
                        out.latencies.push(sent.elapsed());
                        if accepted {
                            out.accepted += 1;
                        } else {
                            out.rejected += 1;
                            out.said.add(format!("OK false: {message}"));
                        }
                    }
                }
                Relayed::Notice(m) => {
                    out.notices += 1;
                    out.said.add(format!("NOTICE: {m}"));
                }
                _ => {}
            },
            Ok(Some(Ok(_))) => {}
            // Disconnected or silent for too long: what is still pending stays unanswered.
            Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    out.unanswered = pending.len() + (events.len() - next);
    out.finished = Some(Instant::now());
    let _ = sink.close().await;
    out
}

// ---------------------------------------------------------------------------------------------
// Phase 1 and 2: fan-out, memory

/// What one subscriber saw.
#[derive(Default)]
struct Received {
    events: u64,
    closed: usize,
    notices: usize,
    disconnected: bool,
    said: Said,
}

/// Reads `ws` continuously, counting EVENTs for `sub`, until it has `target` of them (once
/// known) or nothing arrived for [`QUIET`] after the target became known.
async fn receive(mut ws: Ws, sub: &str, mut target: watch::Receiver<Option<u64>>) -> Received {
    let mut out = Received::default();
    let mut last = Instant::now();
    loop {
        let known = *target.borrow_and_update();
        if let Some(t) = known {
            if out.events >= t || last.elapsed() >= QUIET {
                break;
            }
        }
        let wait = if known.is_some() {
            QUIET.saturating_sub(last.elapsed())
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            msg = tokio::time::timeout(wait, ws.next()) => match msg {
                Ok(Some(Ok(Message::Text(t)))) => match classify(t.as_str()) {
                    Relayed::Event(s) if s == sub => {
                        out.events += 1;
                        last = Instant::now();
                    }
                    Relayed::Closed(_, why) => {
                        out.closed += 1;
                        out.said.add(format!("CLOSED: {why}"));
                    }
                    Relayed::Notice(m) => {
                        out.notices += 1;
                        out.said.add(format!("NOTICE: {m}"));
                    }
                    _ => {}
                },
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    out.disconnected = true;
                    break;
                }
                Ok(Some(Ok(_))) | Err(_) => {}
            },
            // Publishing is over: the quiet time counts from now.
            _ = target.changed(), if known.is_none() => last = Instant::now(),
        }
    }
    let _ = ws.close(None).await;
    out
}

async fn fanout(
    relay: &RelayChild,
    work: &Workload,
    window: usize,
) -> Result<FanoutFigures, RelayBenchError> {
    let rss_start = relay.rss_kib().unwrap_or(0);
    let (target_tx, target_rx) = watch::channel::<Option<u64>>(None);
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut ws = connect(&relay.url).await?;
        subscribe(
            &mut ws,
            "s",
            json!({"kinds": [1], "#t": [work.run_tag]}),
            REQ_WITHIN,
        )
        .await?;
        let rx = target_rx.clone();
        subscribers.push(tokio::spawn(receive(ws, "s", rx)));
    }
    let mut publishers = Vec::with_capacity(PUBLISHERS);
    for _ in 0..PUBLISHERS {
        publishers.push(connect(&relay.url).await?);
    }
    let sampler = relay.sample_rss(SAMPLE_EVERY);
    let cpu = CpuMeter::start(relay);
    let started = Instant::now();
    let tasks: Vec<_> = publishers
        .into_iter()
        .zip(work.fanout.iter().cloned())
        .map(|(ws, events)| tokio::spawn(async move { publish_all(ws, &events, window).await }))
        .collect();
    let mut published = Vec::with_capacity(tasks.len());
    for t in tasks {
        published.push(t.await.map_err(err)?);
    }
    let accepted: usize = published.iter().map(|p| p.accepted).sum();
    let finished = published
        .iter()
        .filter_map(|p| p.finished)
        .max()
        .unwrap_or(started);
    let _ = target_tx.send(Some(accepted as u64));
    let mut received = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        received.push(s.await.map_err(err)?);
    }
    let (relay_cpu, client_cpu) = cpu.read(relay);
    let (peak_rss, peak_anon) = sampler.finish().await;
    let hwm = relay.hwm_kib().unwrap_or(0);

    let mut said = Said::default();
    let mut latencies = Vec::new();
    let mut notices = 0;
    for p in published.iter_mut() {
        latencies.append(&mut p.latencies);
        notices += p.notices;
        said.merge(std::mem::take(&mut p.said));
    }
    let deliveries_expected = accepted as u64 * SUBSCRIBERS as u64;
    let deliveries_received: u64 = received.iter().map(|r| r.events).sum();
    let subscribers_short = received
        .iter()
        .filter(|r| r.events < accepted as u64)
        .count();
    let closed = received.iter().map(|r| r.closed).sum();
    notices += received.iter().map(|r| r.notices).sum::<usize>();
    let disconnected = received.iter().filter(|r| r.disconnected).count();
    for r in received {
        said.merge(r.said);
    }
    let wall = finished.duration_since(started).as_secs_f64();
    Ok(FanoutFigures {
        publishers: PUBLISHERS,
        subscribers: SUBSCRIBERS,
        window,
        events_sent: work.fanout.iter().map(Vec::len).sum(),
        event_bytes: work.event_bytes,
        accepted,
        rejected: published.iter().map(|p| p.rejected).sum(),
        unanswered: published.iter().map(|p| p.unanswered).sum(),
        wall_secs: round3(wall),
        accepted_per_sec: round3(accepted as f64 / wall.max(1e-9)),
        relay_cpu_secs: relay_cpu,
        client_cpu_secs: client_cpu,
        publish_ok_ms: Percentiles::of(&latencies),
        deliveries_expected,
        deliveries_received,
        lost: deliveries_expected.saturating_sub(deliveries_received),
        subscribers_short,
        closed,
        notices,
        disconnected,
        relay_messages: said.0,
        rss_start_kib: rss_start,
        peak_rss_kib: peak_rss,
        peak_rss_anon_kib: peak_anon,
        vm_hwm_kib: hwm,
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 4: idle connections

async fn idle(relay: &RelayChild, tag: &str, n: usize) -> Result<IdleFigures, RelayBenchError> {
    // Let the fresh relay settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay.rss_kib().unwrap_or(0);
    let started = Instant::now();
    let url = relay.url.clone();
    let filter = json!({"kinds": [1], "#t": [tag], "limit": 1});
    let open: Vec<Result<Ws, RelayBenchError>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let (url, filter) = (url.clone(), filter.clone());
            async move {
                let mut ws = connect(&url).await?;
                subscribe(&mut ws, "i", filter, REQ_WITHIN).await?;
                Ok(ws)
            }
        })
        .buffer_unordered(IDLE_CONCURRENCY)
        .collect()
        .await;
    let open_secs = started.elapsed().as_secs_f64();
    let first_error = open
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
    let conns: Vec<Ws> = open.into_iter().filter_map(Result::ok).collect();
    if conns.is_empty() && n > 0 {
        return Err(RelayBenchError(format!(
            "no idle connection could be opened: {}",
            first_error.unwrap_or_default()
        )));
    }
    // Let the relay finish whatever each session set up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = relay.rss_kib().unwrap_or(0);
    let opened = conns.len();
    drop(conns);
    Ok(IdleFigures {
        connections: n,
        opened,
        open_secs: round3(open_secs),
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: round3(after.saturating_sub(before) as f64 / opened.max(1) as f64),
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 3: the REQ storm

/// What the probe publisher saw.
#[derive(Default)]
struct Probed {
    sent: usize,
    latencies: Vec<Duration>,
    unanswered: usize,
}

/// Publishes one event every [`PROBE_EVERY`] on `ws` until `stop`, without waiting for the
/// previous OK (so a slow OK does not hide the next one's delay), then waits 5 s for the rest.
async fn probe(ws: Ws, tag: String, mut stop: watch::Receiver<bool>) -> Probed {
    let (mut sink, mut stream) = ws.split();
    let keys = Keys::generate();
    let mut out = Probed::default();
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut grace: Option<Instant> = None;
    loop {
        if *stop.borrow() && grace.is_none() {
            grace = Some(Instant::now() + Duration::from_secs(5));
        }
        if let Some(until) = grace {
            if pending.is_empty() || Instant::now() >= until {
                break;
            }
        }
        let deadline = grace.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tick.tick(), if grace.is_none() => {
                if let Ok(ev) = signed(&keys, PROBE_KIND, &tag, out.sent) {
                    if send_probe(&mut sink, &ev).await.is_err() {
                        break;
                    }
                    pending.insert(ev.id, Instant::now());
                    out.sent += 1;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Relayed::Ok { id, .. } = classify(t.as_str()) {
                        if let Some(sent) = pending.remove(&id) {
                            out.latencies.push(sent.elapsed());
                        }
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
            changed = stop.changed(), if grace.is_none() => {
                if changed.is_err() {
                    grace = Some(Instant::now() + Duration::from_secs(5));
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    out.unanswered = pending.len();
    let _ = sink.close().await;
    out
}

async fn send_probe(
    sink: &mut SplitSink<Ws, Message>,
    ev: &Signed,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    sink.send(Message::Text(ev.msg.clone())).await
}

/// What the new client measured: (connect ms, connect + EOSE ms).
async fn newcomer(url: String, tag: String) -> (Option<f64>, Option<f64>) {
    tokio::time::sleep(NEWCOMER_AFTER).await;
    let started = Instant::now();
    let Ok(mut ws) = connect(&url).await else {
        return (None, None);
    };
    let connect_ms = round3(started.elapsed().as_secs_f64() * 1000.0);
    let filter = json!({"kinds": [PROBE_KIND], "#t": [tag], "limit": 5});
    let eose = subscribe(&mut ws, "n", filter, Duration::from_secs(60)).await;
    let eose_ms = eose
        .is_ok()
        .then(|| round3(started.elapsed().as_secs_f64() * 1000.0));
    let _ = ws.close(None).await;
    (Some(connect_ms), eose_ms)
}

/// What the storm client saw.
#[derive(Default)]
struct Stormed {
    /// When the last message came (the end of the storm, not of a silence after it).
    last_message: Option<Instant>,
    sent: usize,
    eose: usize,
    closed: usize,
    unanswered: usize,
    events: u64,
    said: Said,
    cut_short: Option<String>,
}

/// Sends `reqs` REQs on `ws`, [`STORM_IN_FLIGHT`] open at once, reading every answer; each is
/// CLOSEd at its EOSE and the next one sent. A relay may drop a REQ without EOSE (nostr-rs-relay
/// sheds queries that wait too long): when nothing at all arrives for [`STORM_SILENCE`], the
/// open REQs count as unanswered, are CLOSEd, and the storm goes on.
async fn storm_client(mut ws: Ws, reqs: usize, within: Duration) -> Stormed {
    let mut out = Stormed::default();
    let req =
        |i: usize| text(json!(["REQ", format!("w{i}"), {"kinds": [1], "limit": STORM_LIMIT}]));
    let deadline = Instant::now() + within;
    let mut open: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut next = 0usize;
    loop {
        let mut wrote = false;
        while open.len() < STORM_IN_FLIGHT && next < reqs && Instant::now() < deadline {
            if ws.feed(req(next)).await.is_err() {
                out.cut_short = Some("the relay hung up".into());
                break;
            }
            open.insert(format!("w{next}"));
            next += 1;
            wrote = true;
        }
        if out.cut_short.is_none() && wrote && ws.flush().await.is_err() {
            out.cut_short = Some("the relay hung up".into());
        }
        if out.cut_short.is_some() || open.is_empty() {
            break;
        }
        if Instant::now() > deadline + STORM_DRAIN {
            out.cut_short = Some(format!(
                "the open REQs were not answered within {} s of the last one sent",
                STORM_DRAIN.as_secs()
            ));
            break;
        }
        let msg = tokio::time::timeout(STORM_SILENCE, ws.next()).await;
        if matches!(msg, Ok(Some(Ok(_)))) {
            out.last_message = Some(Instant::now());
        }
        let finished = match msg {
            Ok(Some(Ok(Message::Text(t)))) => match classify(t.as_str()) {
                Relayed::Event(_) => {
                    out.events += 1;
                    Vec::new()
                }
                Relayed::Eose(sub) if open.remove(&sub) => {
                    out.eose += 1;
                    vec![sub]
                }
                Relayed::Closed(sub, why) if open.remove(&sub) => {
                    out.closed += 1;
                    out.said.add(format!("CLOSED: {why}"));
                    Vec::new()
                }
                Relayed::Notice(m) => {
                    out.said.add(format!("NOTICE: {m}"));
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Ok(Some(Ok(_))) => Vec::new(),
            Ok(None) | Ok(Some(Err(_))) => {
                out.cut_short = Some("the relay hung up".into());
                break;
            }
            Err(_) => {
                out.unanswered += open.len();
                open.drain().collect()
            }
        };
        let closing = !finished.is_empty();
        for sub in finished {
            if ws.feed(text(json!(["CLOSE", sub]))).await.is_err() {
                out.cut_short = Some("the relay hung up".into());
                break;
            }
        }
        // The next REQs go out with these CLOSEs; the last ones need a flush of their own.
        if closing && ws.flush().await.is_err() {
            out.cut_short = Some("the relay hung up".into());
        }
    }
    out.unanswered += open.len();
    out.sent = next;
    let _ = ws.close(None).await;
    out
}

async fn storm(
    relay: &RelayChild,
    work: &Workload,
    preloaded: Option<Preload>,
    options: &RelayLoadOptions,
    notes: &mut Vec<String>,
    label: &str,
) -> Result<StormFigures, RelayBenchError> {
    let reqs = options.storm;
    let preload = match preloaded {
        Some(p) => p,
        None => {
            // No bulk way into this relay's store: over WebSocket, many connections deep.
            let mut loaders = Vec::with_capacity(work.preload.len());
            for events in &work.preload {
                let ws = connect(&relay.url).await?;
                let events = events.clone();
                loaders.push(tokio::spawn(async move {
                    publish_all(ws, &events, PRELOAD_WINDOW).await
                }));
            }
            let started = Instant::now();
            let mut accepted = 0;
            let mut said = Said::default();
            for l in loaders {
                let p = l.await.map_err(err)?;
                accepted += p.accepted;
                said.merge(p.said);
            }
            for m in said.0 {
                notes.push(format!("{label} preload: the relay said {m}"));
            }
            Preload {
                method: "websocket",
                events: accepted,
                secs: round3(started.elapsed().as_secs_f64()),
            }
        }
    };
    let storm_ws = connect(&relay.url).await?;
    let probe_ws = connect(&relay.url).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let prober = tokio::spawn(probe(probe_ws, work.probe_tag.clone(), stop_rx));
    // A moment of probing before the storm, so the probe's first samples are its baseline.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cpu = CpuMeter::start(relay);
    let started = Instant::now();
    let newcomer = tokio::spawn(newcomer(relay.url.clone(), work.probe_tag.clone()));
    let stormed = storm_client(storm_ws, reqs, options.storm_secs).await;
    // Up to the last answer: a silence while waiting for dropped REQs is not storm time.
    let wall = stormed
        .last_message
        .map_or_else(|| started.elapsed(), |t| t.duration_since(started))
        .as_secs_f64();
    let (relay_cpu, client_cpu) = cpu.read(relay);
    let (new_connect, new_eose) = newcomer.await.map_err(err)?;
    let _ = stop_tx.send(true);
    let probed = prober.await.map_err(err)?;
    if let Some(why) = &stormed.cut_short {
        notes.push(format!(
            "{label} storm: cut short ({why}) after {} of {reqs} REQs were answered",
            stormed.eose + stormed.closed
        ));
    }
    if stormed.unanswered > 0 {
        notes.push(format!(
            "{label} storm: {} of {reqs} REQs got neither EOSE nor CLOSED",
            stormed.unanswered
        ));
    }
    for m in stormed.said.0 {
        notes.push(format!("{label} storm: the relay said {m}"));
    }
    let probe_ms = Percentiles::of(&probed.latencies);
    Ok(StormFigures {
        preloaded: preload.events,
        preload_method: preload.method,
        preload_secs: preload.secs,
        preload_per_sec: round3(preload.events as f64 / preload.secs.max(1e-9)),
        reqs,
        reqs_sent: stormed.sent,
        req_limit: STORM_LIMIT,
        in_flight: STORM_IN_FLIGHT.min(reqs),
        eose: stormed.eose,
        closed: stormed.closed,
        unanswered: stormed.unanswered,
        events_received: stormed.events,
        wall_secs: round3(wall),
        relay_cpu_secs: relay_cpu,
        relay_cpu_share: round3(relay_cpu / wall.max(1e-9)),
        relay_cpu_us_per_event: round3(relay_cpu * 1e6 / (stormed.events.max(1) as f64)),
        client_cpu_secs: client_cpu,
        probe_publish_ok_ms: probe_ms,
        probe_sent: probed.sent,
        probe_unanswered: probed.unanswered,
        probe_goal_p99_ms: PROBE_GOAL_P99_MS,
        probe_goal_met: probed.unanswered == 0
            && probe_ms.samples > 0
            && probe_ms.p99 < PROBE_GOAL_P99_MS,
        new_client_connect_ms: new_connect,
        new_client_eose_ms: new_eose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_messages_are_classified() {
        assert_eq!(
            classify(r#"["EVENT","s",{"id":"ab"}]"#),
            Relayed::Event(Cow::Borrowed("s"))
        );
        assert_eq!(
            classify(r#"[ "EVENT", "s", {}]"#),
            Relayed::Event(Cow::Owned("s".into()))
        );
        assert_eq!(
            classify(r#"["OK","ab",true,""]"#),
            Relayed::Ok {
                id: "ab".into(),
                accepted: true,
                message: String::new()
            }
        );
        assert_eq!(
            classify(r#"["OK","ab","yes"]"#),
            Relayed::Ok {
                id: "ab".into(),
                accepted: false,
                message: String::new()
            }
        );
        assert_eq!(classify(r#"["EOSE","w1"]"#), Relayed::Eose("w1".into()));
        assert_eq!(
            classify(r#"["CLOSED","s","error: too slow"]"#),
            Relayed::Closed("s".into(), "error: too slow".into())
        );
        assert_eq!(classify(r#"["NOTICE","hi"]"#), Relayed::Notice("hi".into()));
        assert_eq!(classify("not json"), Relayed::Other);
        assert_eq!(classify(r#"{"a":1}"#), Relayed::Other);
        assert_eq!(classify("[]"), Relayed::Other);
    }

    #[test]
    fn events_are_about_the_target_size_and_split_evenly() {
        let w = Workload::sign(41, 5).expect("sign");
        assert_eq!(w.fanout.len(), PUBLISHERS);
        assert_eq!(w.fanout.iter().map(Vec::len).sum::<usize>(), 41);
        assert_eq!(w.preload.iter().map(Vec::len).sum::<usize>(), 5);
        let sizes: Vec<usize> = w.fanout.iter().map(Vec::len).collect();
        assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1);
        assert!(
            (EVENT_BYTES - 30..=EVENT_BYTES + 30).contains(&w.event_bytes),
            "{}",
            w.event_bytes
        );
    }

    #[test]
    fn percentiles_include_p99() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&d);
        assert_eq!((p.p50, p.p99, p.max, p.samples), (50.0, 99.0, 100.0, 100));
        assert_eq!(Percentiles::of(&[]).samples, 0);
    }
}
