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

/// A `pylon relay` process; killed when dropped.
pub struct RelayProcess {
    pub child: Child,
    pub url: String,
}

impl RelayProcess {
    /// Starts `pylon relay` on an ephemeral port with the given store and waits for its URL.
    pub fn start(home: &Path, data: &Path) -> Self {
        let mut child = pylon(home)
            .args(["relay", "--bind", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("relay printed a line").expect("utf-8");
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no ws:// URL in {first:?}"))
            .to_string();
        // Keep draining stdout so the relay never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    pub async fn send(&mut self, msg: Value) {
        self.send_text(msg.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
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

    /// The next message, which must arrive within 5 s.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(5))
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
