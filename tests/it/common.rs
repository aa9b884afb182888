//! Helpers shared by the integration tests: a spawned `pylon` binary, a raw WebSocket client,
//! temp homes. Every component is real; ports are chosen at run time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The code-analysis request `author` published (one not in `seen`), as the relay stores it:
/// what a scripted provider answers.
pub async fn request_of(
    c: &pylon::relay::MarketClient,
    author: nostr_sdk::PublicKey,
    seen: &[nostr_sdk::EventId],
) -> nostr_sdk::Event {
    let filter = nostr_sdk::Filter::new()
        .kind(nostr_sdk::Kind::from(5960))
        .author(author);
    for _ in 0..200 {
        let found = c
            .fetch(filter.clone(), Duration::from_secs(1))
            .await
            .expect("fetch");
        if let Some(ev) = found.into_iter().find(|e| !seen.contains(&e.id)) {
            return ev;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the buyer never published its request");
}

/// The passphrase every test identity uses.
pub const PASS: &str = "test passphrase";

/// The binary under test.
pub fn pylon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pylon"))
}

/// A `pylon` command with a home, no inherited passphrase, and quiet logs.
pub fn pylon(home: &Path) -> Command {
    let mut cmd = Command::new(pylon_bin());
    cmd.arg("--home")
        .arg(home)
        .env_remove("PYLON_PASSPHRASE")
        .env_remove("PYLON_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs a command to completion, with the passphrase set.
pub fn run_with_pass(cmd: &mut Command, pass: &str) -> Output {
    cmd.env("PYLON_PASSPHRASE", pass)
        .output()
        .expect("spawn pylon")
}

/// `pylon init --json` in `home`; returns its JSON report.
/// Runs `pylon --relay RELAY ARGS…` from `home` with the test passphrase, as a user would.
pub fn pylon_at(home: &Path, relay: &str, args: &[&str]) -> Output {
    pylon(home)
        .args(["--relay", relay])
        .args(args)
        .env("PYLON_PASSPHRASE", PASS)
        .output()
        .expect("spawn")
}

pub fn init_home(home: &Path) -> Value {
    let out = run_with_pass(pylon(home).args(["init", "--json"]), PASS);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("init --json prints JSON")
}

/// `pylon init --import` with `words` piped on stdin, plus `extra` arguments.
pub fn init_import(home: &Path, words: &str, extra: &[&str]) -> Output {
    use std::io::Write;
    let mut child = pylon(home)
        .args(["init", "--import"])
        .args(extra)
        .env("PYLON_PASSPHRASE", PASS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(words.as_bytes())
        .expect("write words");
    child.wait_with_output().expect("wait")
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A port that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A long-running `pylon` process whose first stdout line announces it; killed when dropped.
pub struct Spawned {
    pub child: Child,
    pub first_line: String,
    /// Every line read before returning (the first line, or up to the marker).
    pub head: Vec<String>,
}

impl Spawned {
    /// Spawns `cmd` (stdout piped) and waits for its first line.
    pub fn start(cmd: &mut Command) -> Self {
        Self::start_until(cmd, "")
    }

    /// Spawns `cmd` (stdout piped) and reads lines until one contains `marker`.
    pub fn start_until(cmd: &mut Command, marker: &str) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pylon");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut head = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let done = line.contains(marker);
                    head.push(line);
                    if done {
                        break;
                    }
                }
                other => {
                    let _ = child.kill();
                    panic!("process ended before printing {marker:?}: {other:?}; printed {head:?}");
                }
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            first_line: head[0].clone(),
            head,
        }
    }

    /// The first word of the first line that starts with `prefix`.
    pub fn word(&self, prefix: &str) -> String {
        self.first_line
            .split_whitespace()
            .find(|w| w.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}… in {:?}", self.first_line))
            .to_string()
    }

    /// Sends `signal` (e.g. "STOP", "CONT") and returns at once.
    pub fn send(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` (e.g. "TERM", "KILL") and waits for the exit status.
    pub fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `pylon relay` process on an ephemeral port.
pub struct RelayProcess {
    pub process: Spawned,
    pub url: String,
}

impl RelayProcess {
    /// Starts `pylon relay` on an ephemeral port with the given store and waits for its URL.
    pub fn start(home: &Path, data: &Path) -> Self {
        let process = Spawned::start(
            pylon(home)
                .args(["relay", "--bind", "127.0.0.1:0", "--data"])
                .arg(data),
        );
        let url = process.word("ws://");
        Self { process, url }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.process.signal("TERM")
    }
}

/// A `pylon hub` process for an initialised `home`, on `relay`. Returns it and its pubkey (hex).
pub fn start_hub_process(home: &Path, relay: &str) -> (Spawned, String) {
    let hub = Spawned::start(
        pylon(home)
            .args(["--relay", relay, "hub"])
            .env("PYLON_PASSPHRASE", PASS),
    );
    let pubkey = hub
        .first_line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("hub line {:?}", hub.first_line))
        .to_string();
    (hub, pubkey)
}

/// A raw NIP-01 WebSocket client, to see exactly what a relay sends.
pub struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawClient {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Self { ws }
    }

    /// Wraps a WebSocket the test opened itself.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self { ws }
    }

    pub async fn send(&mut self, msg: Value) {
        self.send_text(msg.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends any frame, e.g. binary or a hand-made one.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Reads until the relay closes; its close code, if it sent a close frame within 30 s
    /// (generous: a wait that ends as soon as the frame or the end of the socket arrives).
    pub async fn close_code(
        &mut self,
    ) -> Option<tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next text message as JSON, or `None` if nothing came within `wait` or the socket closed.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match next {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next message, which must arrive within 30 s: a deadline for a stuck relay, not a
    /// measurement, so a loaded machine does not fail it.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(30))
            .await
            .expect("a message from the relay")
    }

    /// Publishes and returns the relay's `OK` message.
    pub async fn publish(&mut self, event: &nostr_sdk::Event) -> Value {
        self.send(serde_json::json!(["EVENT", event])).await;
        loop {
            let msg = self.recv().await;
            if msg[0] == "OK" && msg[1] == event.id.to_hex() {
                return msg;
            }
        }
    }

    /// Runs a REQ and collects its events until EOSE.
    pub async fn query(&mut self, sub: &str, filter: Value) -> Vec<Value> {
        self.send(serde_json::json!(["REQ", sub, filter])).await;
        let mut events = Vec::new();
        loop {
            let msg = self.recv().await;
            if msg[0] == "EOSE" && msg[1] == sub {
                self.send(serde_json::json!(["CLOSE", sub])).await;
                return events;
            }
            if msg[0] == "EVENT" && msg[1] == sub {
                events.push(msg[2].clone());
            }
        }
    }
}

/// An in-process market: the embedded relay and a hub on a temp ledger, on an ephemeral port.
pub struct Market {
    pub relay: pylon::relay::EmbeddedRelay,
    pub hub: pylon::hub::RunningHub,
    pub hub_keys: nostr_sdk::Keys,
    node_key: bitcoin::secp256k1::SecretKey,
    settings: pylon::hub::HubSettings,
    dir: tempfile::TempDir,
}

impl Market {
    /// A verifier's trust in this market's hub, by its service key (resolved on the relay).
    pub fn trust(&self) -> pylon::provenance::TrustedHubs {
        let mut t = pylon::provenance::TrustedHubs::none();
        t.add_service(self.hub_keys.public_key());
        t
    }

    pub async fn start() -> Self {
        Self::start_with(pylon::hub::HubSettings::default()).await
    }

    pub async fn start_with(settings: pylon::hub::HubSettings) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay_settings = pylon::relay::RelaySettings {
            bind: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        let relay = pylon::relay::EmbeddedRelay::start(&relay_settings, &dir.path().join("relay"))
            .await
            .expect("relay");
        let hub_keys = nostr_sdk::Keys::generate();
        let node_key = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
        let hub = Self::start_hub(&relay, &hub_keys, node_key, &settings, dir.path()).await;
        Self {
            relay,
            hub,
            hub_keys,
            node_key,
            settings,
            dir,
        }
    }

    async fn start_hub(
        relay: &pylon::relay::EmbeddedRelay,
        keys: &nostr_sdk::Keys,
        node_key: bitcoin::secp256k1::SecretKey,
        settings: &pylon::hub::HubSettings,
        dir: &Path,
    ) -> pylon::hub::RunningHub {
        let ledger = pylon::hub::Ledger::open(&dir.join("ledger.db")).expect("ledger");
        let service = pylon::hub::Service::new(keys.clone(), node_key, ledger, settings.clone());
        let client = pylon::relay::MarketClient::connect(
            keys.clone(),
            &[relay.url()],
            Duration::from_secs(5),
            pylon::relay::Reachability::OneShot,
        )
        .await
        .expect("hub connects");
        pylon::hub::start(service, std::sync::Arc::new(client))
            .await
            .expect("hub starts")
    }

    /// Stops the hub and starts a new one on the same ledger and keys (a process restart).
    pub async fn restart_hub(&mut self) {
        let fresh = Self::start_hub(
            &self.relay,
            &self.hub_keys,
            self.node_key,
            &self.settings,
            self.dir.path(),
        )
        .await;
        let old = std::mem::replace(&mut self.hub, fresh);
        old.stop().await;
    }

    /// A connection URI for a new (or given) client key.
    pub fn uri(&self, client: &nostr_sdk::Keys) -> nostr_sdk::nips::nip47::NostrWalletConnectURI {
        nostr_sdk::nips::nip47::NostrWalletConnectURI::new(
            self.hub_keys.public_key(),
            vec![self.relay.url()],
            client.secret_key().clone(),
            None,
        )
    }

    /// A wallet client with a fresh account.
    pub async fn wallet(&self) -> pylon::wallet::NwcWallet {
        pylon::wallet::NwcWallet::connect(
            &self.uri(&nostr_sdk::Keys::generate()),
            Default::default(),
        )
        .await
        .expect("wallet connects")
    }

    /// A wallet client holding `sats` from the faucet.
    pub async fn funded_wallet(&self, sats: u64) -> pylon::wallet::NwcWallet {
        use pylon::wallet::Wallet;
        let w = self.wallet().await;
        let inv = w
            .make_invoice(pylon::protocol::nip47::MakeInvoiceParams {
                amount: sats * 1000,
                description: Some("faucet".into()),
                description_hash: None,
                expiry: None,
            })
            .await
            .expect("invoice");
        w.faucet(inv.invoice.expect("bolt11"))
            .await
            .expect("faucet pays");
        w
    }

    pub fn audit(&self) -> pylon::hub::AuditReport {
        let ledger = self.hub.service().ledger();
        let guard = ledger.lock().expect("ledger lock");
        guard.audit().expect("audit")
    }
}

/// An initialised home and the identity behind it.
pub struct Home {
    pub path: std::path::PathBuf,
    pub identity: pylon::identity::Identity,
}

impl Home {
    pub fn new(path: std::path::PathBuf) -> Self {
        let created = init_home(&path);
        let words = created["mnemonic"].as_str().expect("mnemonic").to_string();
        let identity = pylon::identity::Identity::from_mnemonic(&words).expect("identity");
        Self { path, identity }
    }

    /// This home's wallet account on the market's hub, from the test's side.
    pub async fn wallet(&self, market: &Market) -> pylon::wallet::NwcWallet {
        pylon::wallet::NwcWallet::connect(
            &market.uri(&self.identity.wallet_client_keys()),
            Default::default(),
        )
        .await
        .expect("wallet")
    }
}

/// A `pylon node up` process for `home` on `relays`, with extra arguments. Returns it once up.
pub fn start_node_process(home: &Path, relays: &[&str], extra: &[&str]) -> Spawned {
    let mut cmd = pylon(home);
    for r in relays {
        cmd.args(["--relay", r]);
    }
    cmd.args(["node", "up", "--heartbeat-secs", "1"])
        .args(extra)
        .env("PYLON_PASSPHRASE", PASS);
    let node = Spawned::start(&mut cmd);
    assert!(
        node.first_line.contains(" up:"),
        "node did not start: {}",
        node.first_line
    );
    node
}
