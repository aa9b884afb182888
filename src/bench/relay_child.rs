//! Relays as child processes, so the load bench measures every relay the same way: Pylon's own
//! (`pylon relay`, spawned from the very binary that runs the bench) and nostr-rs-relay, each in
//! its own temp directory, with their memory and CPU read from `/proc/PID/…`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr_sdk::{Event, JsonUtil};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::relay::bench_relay_settings;

/// How long a relay may take to start listening.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Lines of a child's output kept for error messages.
const TAIL_LINES: usize = 30;

/// Errors starting or reading a relay process.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The temp directory or config file could not be written.
    #[error("cannot prepare {0}: {1}")]
    Setup(String, std::io::Error),
    /// The program could not be run at all.
    #[error("cannot run {name} ({}): {source}", program.display())]
    Spawn {
        /// Which relay.
        name: String,
        /// The program path.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its store could not be filled before the start.
    #[error("cannot preload {0}'s store: {1}")]
    Preload(String, String),
    /// It exited, or never listened, before it was ready.
    #[error("{name} did not start: {why}; its last output:\n{tail}")]
    NotReady {
        /// Which relay.
        name: String,
        /// What happened.
        why: String,
        /// Its last lines of output.
        tail: String,
    },
}

/// A relay program the bench can start.
#[derive(Debug, Clone)]
pub enum RelayProgram {
    /// `pylon relay` from this binary.
    Pylon(PathBuf),
    /// nostr-rs-relay.
    NostrRsRelay(PathBuf),
}

/// How a store was filled before its relay started.
#[derive(Debug, Clone, Serialize)]
pub struct Preload {
    /// `lmdb` (written with nostr-lmdb, the embedded relay's own store) or `bulkloader`
    /// (nostr-rs-relay's bulk loader).
    pub method: &'static str,
    /// Events written.
    pub events: usize,
    /// Seconds it took.
    pub secs: f64,
}

impl RelayProgram {
    /// Starts it with an empty store.
    pub async fn start(&self) -> Result<RelayChild, ChildError> {
        Ok(self.start_preloaded(&[]).await?.0)
    }

    /// Starts it with `events` already in its store, written the fastest way that relay's own
    /// tools allow. `None`: there was no such way (nostr-rs-relay without its `bulkloader`
    /// beside it), and the store is empty.
    pub async fn start_preloaded(
        &self,
        events: &[Event],
    ) -> Result<(RelayChild, Option<Preload>), ChildError> {
        match self {
            Self::Pylon(bin) => RelayChild::pylon(bin, events).await,
            Self::NostrRsRelay(bin) => RelayChild::nostr_rs_relay(bin, events).await,
        }
    }
}

/// A relay running as a child process; killed when dropped.
pub struct RelayChild {
    /// `pylon` or `nostr-rs-relay`.
    pub name: String,
    /// Its WebSocket URL.
    pub url: String,
    child: Child,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

/// The `[relay]` table a child `pylon relay` runs with: exactly [`bench_relay_settings`].
#[derive(Serialize)]
struct PylonConfig {
    relay: crate::relay::RelaySettings,
}

impl RelayChild {
    /// Starts `pylon relay` from `pylon_bin` on an ephemeral port, with a fresh home whose
    /// `config.toml` holds the bench relay settings, and a fresh store holding `preload`.
    async fn pylon(
        pylon_bin: &Path,
        preload: &[Event],
    ) -> Result<(Self, Option<Preload>), ChildError> {
        let name = "pylon".to_string();
        let dir = tempdir(&name)?;
        let home = dir.path().join("home");
        let store = dir.path().join("store");
        let setup = |e| ChildError::Setup(format!("the {name} relay's home"), e);
        std::fs::create_dir_all(&home).map_err(setup)?;
        let config = toml::to_string(&PylonConfig {
            relay: bench_relay_settings(),
        })
        .map_err(|e| setup(std::io::Error::other(e)))?;
        std::fs::write(home.join("config.toml"), config).map_err(setup)?;
        let preloaded = if preload.is_empty() {
            None
        } else {
            let started = Instant::now();
            preload_lmdb(&store, preload)
                .await
                .map_err(|e| ChildError::Preload(name.clone(), e))?;
            Some(Preload {
                method: "lmdb",
                events: preload.len(),
                secs: super::round3(started.elapsed().as_secs_f64()),
            })
        };
        let mut cmd = Command::new(pylon_bin);
        cmd.arg("--home")
            .arg(&home)
            .arg("--quiet")
            .args(["relay", "--bind", "127.0.0.1:0", "--data"])
            .arg(&store)
            .env_remove("RUST_LOG")
            .env_remove("PYLON_HOME");
        let (mut child, pid, tail) = spawn(&name, pylon_bin, cmd)?;
        let Some(stdout) = child.stdout.take() else {
            return Err(not_ready(&name, "no stdout".into(), &tail));
        };
        // `pylon relay` prints its URL on its first line, then keeps stdout open: keep reading
        // it so a later line never blocks the relay.
        let (url_tx, url_rx) = tokio::sync::oneshot::channel::<String>();
        let lines_tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut url_tx = Some(url_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(url.to_string());
                    }
                }
                push_tail(&lines_tail, line);
            }
        });
        let url = match tokio::time::timeout(READY_WITHIN, url_rx).await {
            Ok(Ok(url)) => url,
            Ok(Err(_)) => {
                let status = child.wait().await.map(|s| s.to_string());
                let why = format!("it exited ({})", status.unwrap_or_else(|e| e.to_string()));
                return Err(not_ready(&name, why, &tail));
            }
            Err(_) => {
                let why = format!("no URL within {} s", READY_WITHIN.as_secs());
                return Err(not_ready(&name, why, &tail));
            }
        };
        let relay = Self {
            name,
            url,
            child,
            pid,
            tail,
            _dir: dir,
        };
        Ok((relay, preloaded))
    }

    /// Starts nostr-rs-relay `bin` on a free port with a fresh SQLite store and generous limits
    /// (see [`nostr_rs_relay_config`]). With `preload`, and its `bulkloader` beside it: starts
    /// it once to create the schema, stops it, bulk-loads, and starts it again.
    async fn nostr_rs_relay(
        bin: &Path,
        preload: &[Event],
    ) -> Result<(Self, Option<Preload>), ChildError> {
        let name = "nostr-rs-relay".to_string();
        let dir = tempdir(&name)?;
        let setup = |e| ChildError::Setup(format!("the {name} config"), e);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(setup)?
            .port();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, nostr_rs_relay_config(dir.path(), port)).map_err(setup)?;
        let (mut child, mut pid, mut tail) =
            start_nostr_rs_relay(&name, bin, dir.path(), port).await?;
        let loader = bin.with_file_name("bulkloader");
        let mut preloaded = None;
        if !preload.is_empty() && loader.is_file() {
            let started = Instant::now();
            stop_child(&mut child, pid).await;
            bulk_load(&loader, dir.path(), preload)
                .await
                .map_err(|e| ChildError::Preload(name.clone(), e))?;
            (child, pid, tail) = start_nostr_rs_relay(&name, bin, dir.path(), port).await?;
            preloaded = Some(Preload {
                method: "bulkloader",
                events: preload.len(),
                secs: super::round3(started.elapsed().as_secs_f64()),
            });
        }
        let relay = Self {
            name,
            url: format!("ws://127.0.0.1:{port}"),
            child,
            pid,
            tail,
            _dir: dir,
        };
        Ok((relay, preloaded))
    }

    /// Resident memory now (VmRSS), KiB; `None` once the process is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS:")
    }

    /// The most resident memory the process ever had (VmHWM), KiB.
    pub fn hwm_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmHWM:")
    }

    /// CPU seconds (user + system, every thread) the process has used so far.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(self.pid)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its last lines of output, for an error message.
    pub fn tail(&self) -> String {
        tail_text(&self.tail)
    }

    /// Samples VmRSS and RssAnon every `every` until [`RssSampler::finish`].
    pub fn sample_rss(&self, every: Duration) -> RssSampler {
        let pid = self.pid;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut peak = (0, 0);
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                            let rss = parse_status_kib(&text, "VmRSS:").unwrap_or(0);
                            let anon = parse_status_kib(&text, "RssAnon:").unwrap_or(0);
                            peak = (peak.0.max(rss), peak.1.max(anon));
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            peak
        });
        RssSampler { stop, task }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub async fn stop(mut self) {
        stop_child(&mut self.child, self.pid).await;
    }
}

/// A running memory sampler.
pub struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl RssSampler {
    /// Stops sampling; the highest VmRSS and the highest RssAnon seen, KiB.
    pub async fn finish(self) -> (u64, u64) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or((0, 0))
    }
}

/// nostr-rs-relay's config: loopback on `port`, the store in `dir`, and limits at least as
/// generous as the Pylon bench relay's (no event or subscription rate limit, 512 KiB events,
/// 1 MiB messages). Its broadcast buffer stays at the default 16,384 events (Pylon's relay holds
/// `live_buffer_events` and then closes a subscriber with CLOSED; nostr-rs-relay drops silently).
pub fn nostr_rs_relay_config(dir: &Path, port: u16) -> String {
    format!(
        "[info]\nrelay_url = \"ws://127.0.0.1:{port}/\"\nname = \"pylon-bench\"\n\
         [database]\ndata_directory = \"{}\"\n\
         [network]\naddress = \"127.0.0.1\"\nport = {port}\n\
         [options]\nreject_future_seconds = 1800\n\
         [limits]\nmax_event_bytes = 524288\nmax_ws_message_bytes = 1048576\n\
         max_ws_frame_bytes = 1048576\n",
        dir.display()
    )
}

/// The nostr-rs-relay to compare with: `explicit`, else `$NOSTR_RS_RELAY`, else
/// `nostr-rs-relay` on `PATH`, else `~/.cargo/bin/nostr-rs-relay` (where the test setup puts it).
/// `Err` says why there is none.
pub fn find_nostr_rs_relay(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--nostr-rs-relay {}: no such file", p.display()))
        };
    }
    if let Some(p) = std::env::var_os("NOSTR_RS_RELAY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NOSTR_RS_RELAY={}: no such file", p.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nostr-rs-relay");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin").join("nostr-rs-relay"));
    match cargo_bin {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(
            "nostr-rs-relay not found (pass --nostr-rs-relay PATH or set NOSTR_RS_RELAY; \
             `cargo install nostr-rs-relay --version 0.8.12` installs it)"
                .into(),
        ),
    }
}

/// The first line `bin --version` prints, e.g. `nostr-rs-relay 0.8.12`.
pub async fn version_of(bin: &Path) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// Raises this process's open-file limit to at least `want` (bounded by the hard limit); the
/// relay children inherit it. Returns the soft limit in effect.
pub fn raise_nofile(want: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur >= want {
            return Some(lim.rlim_cur);
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = want.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Some(old);
        }
    }
    Some(lim.rlim_cur)
}

/// CPU seconds this process (the bench and its clients) has used so far.
pub fn own_cpu_secs() -> Option<f64> {
    cpu_secs(std::process::id())
}

/// A `/proc/PID/status` field in kB (e.g. `VmRSS:`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `/proc/PID/stat`, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_ticks(&text)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| ticks as f64 / per_sec as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// Runs nostr-rs-relay in `dir` (config.toml and the store) and waits until it accepts TCP.
async fn start_nostr_rs_relay(
    name: &str,
    bin: &Path,
    dir: &Path,
    port: u16,
) -> Result<(Child, u32, Tail), ChildError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--db")
        .arg(dir)
        .current_dir(dir)
        .env("RUST_LOG", "warn");
    let (mut child, pid, tail) = spawn(name, bin, cmd)?;
    // Its log lines go to stdout: keep reading them (for error messages) so it never blocks.
    let Some(stdout) = child.stdout.take() else {
        return Err(not_ready(name, "no stdout".into(), &tail));
    };
    let lines_tail = tail.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            push_tail(&lines_tail, line);
        }
    });
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((child, pid, tail));
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Give the output readers a moment to collect the reason.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(not_ready(name, format!("it exited ({status})"), &tail));
        }
        if Instant::now() > deadline {
            let why = format!(
                "nothing listening on port {port} after {} s",
                READY_WITHIN.as_secs()
            );
            return Err(not_ready(name, why, &tail));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within 5 s.
async fn stop_child(child: &mut Child, pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with our own child's pid and a valid signal; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Writes `events` into a new LMDB store at `dir` with nostr-lmdb, the embedded relay's own
/// store, many at a time so they commit in batches.
async fn preload_lmdb(dir: &Path, events: &[Event]) -> Result<(), String> {
    let path = dir.to_path_buf();
    use nostr_sdk::prelude::NostrDatabase;
    let db = tokio::task::spawn_blocking(move || nostr_lmdb::NostrLMDB::open(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    for chunk in events.chunks(1000) {
        let saves = chunk.iter().map(|e| db.save_event(e));
        for r in futures_util::future::join_all(saves).await {
            r.map_err(|e| format!("cannot store an event: {e}"))?;
        }
    }
    Ok(())
}

/// Feeds `events` (one JSON per line) to nostr-rs-relay's `bulkloader`, run in `dir`, where its
/// config.toml names the store.
async fn bulk_load(loader: &Path, dir: &Path, events: &[Event]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(loader)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", loader.display()))?;
    let mut lines = String::with_capacity(events.len() * 512);
    for e in events {
        lines.push_str(&e.as_json());
        lines.push('\n');
    }
    let Some(mut stdin) = child.stdin.take() else {
        return Err("bulkloader has no stdin".into());
    };
    let feed = tokio::spawn(async move {
        let r = stdin.write_all(lines.as_bytes()).await;
        drop(stdin);
        r
    });
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .map_err(|_| "bulkloader did not finish within 300 s".to_string())?
        .map_err(|e| e.to_string())?;
    let fed = feed.await.map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        return Err(format!(
            "bulkloader failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    fed.map_err(|e| format!("cannot feed bulkloader: {e}"))
}

fn spawn(name: &str, program: &Path, mut cmd: Command) -> Result<(Child, u32, Tail), ChildError> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ChildError::Spawn {
            name: name.to_string(),
            program: program.to_path_buf(),
            source,
        })?;
    let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut child = child;
    let pid = child.id().unwrap_or(0);
    // `pylon relay` writes errors on stderr; keep the tail of it for messages.
    if let Some(stderr) = child.stderr.take() {
        let t = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                push_tail(&t, line);
            }
        });
    }
    Ok((child, pid, tail))
}

fn push_tail(tail: &Tail, line: String) {
    if let Ok(mut t) = tail.lock() {
        if t.len() >= TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

fn tail_text(tail: &Tail) -> String {
    match tail.lock() {
        Ok(t) if !t.is_empty() => t.iter().cloned().collect::<Vec<_>>().join("\n"),
        _ => "(nothing)".into(),
    }
}

fn not_ready(name: &str, why: String, tail: &Tail) -> ChildError {
    ChildError::NotReady {
        name: name.to_string(),
        why,
        tail: tail_text(tail),
    }
}

fn tempdir(name: &str) -> Result<tempfile::TempDir, ChildError> {
    tempfile::Builder::new()
        .prefix(&format!("pylon-bench-{name}-"))
        .tempdir()
        .map_err(|e| ChildError::Setup(format!("a temp directory for {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tpylon\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 100 1000 50";
        assert_eq!(parse_stat_ticks(stat), Some(10));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(proc_status_kib(me, "VmRSS:").is_some_and(|k| k > 0));
        assert!(cpu_secs(me).is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn bench_settings_survive_the_config_file() {
        let text = toml::to_string(&PylonConfig {
            relay: bench_relay_settings(),
        })
        .expect("serialize");
        let config = crate::config::Config::parse(&text, Path::new("config.toml")).expect("parse");
        assert_eq!(config.relay, bench_relay_settings());
    }
}
