//! Secrets stay secret and the home stays private, on the real binary.
//!
//! Every command a user runs — `init`, `up`, a paid job, `node up`, `hub`, `relay`, `demo` — is
//! run with its stdout and stderr captured (several with `RUST_LOG=debug`), and every log file
//! under `<home>/logs/` is read; none may hold the mnemonic, a secret key (hex or nsec), the NWC
//! client secret or a `secret=` with a value. The one place the NWC URI belongs, the 0600
//! `nwc.uri` file, is checked to hold it, and `pylon wallet connect` (which prints it on purpose)
//! to be caught by the same scan — so the scan is shown to find what it looks for.
//!
//! Every child starts with a permissive umask (022), so files come out private only because the
//! binary makes them so.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nostr_sdk::{Keys, ToBech32};
use pylon::identity::Identity;
use serde_json::Value;

use crate::common::{pylon, stderr, stdout, PASS};

/// `pylon --home HOME` as a user with the common umask 022 would start it.
fn user_cmd(home: &Path) -> Command {
    let mut cmd = pylon(home);
    // SAFETY: `umask` is async-signal-safe and touches no memory; nothing else runs in the
    // forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    cmd
}

/// Runs `pylon --home HOME [--relay RELAY] ARGS…` to completion with the test passphrase.
fn run(home: &Path, relay: Option<&str>, args: &[&str], debug: bool) -> Output {
    let mut cmd = user_cmd(home);
    if let Some(r) = relay {
        cmd.args(["--relay", r]);
    }
    cmd.args(args).env("PYLON_PASSPHRASE", PASS);
    if debug {
        cmd.env("RUST_LOG", "debug");
    }
    cmd.output().expect("spawn pylon")
}

/// `pylon init --import` with `words` on stdin.
fn import(home: &Path, words: &str) -> Output {
    let mut child = user_cmd(home)
        .args(["init", "--import"])
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
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "init --import: {}", stderr(&out));
    out
}

/// A long-running `pylon` whose whole stdout and stderr are kept.
struct Captured {
    child: Child,
    head: Vec<String>,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Captured {
    /// Spawns `cmd` and waits (at most 60 s) for a stdout line containing `marker`.
    fn start(cmd: &mut Command, marker: &str) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pylon");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = err.read_to_end(&mut all);
            String::from_utf8_lossy(&all).into_owned()
        });
        let mut head = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    head.push(line);
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = stderr.join().unwrap_or_default();
                    panic!("no {marker:?} ({e}); printed {head:?}; stderr {err}");
                }
            }
        }
        Self {
            child,
            head,
            stdout,
            stderr,
        }
    }

    /// The first word after `name` on a line of the head that starts with it.
    fn field(&self, name: &str) -> String {
        self.head
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.head))
    }

    /// SIGTERM, then everything it printed: (stdout, stderr).
    fn stop(mut self) -> (String, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let status = self.child.wait().expect("wait");
        let out = self.stdout.join().expect("stdout reader");
        let err = self.stderr.join().expect("stderr reader");
        assert!(status.success(), "{status:?}\n{out}\n{err}");
        (out, err)
    }
}

/// One identity's secrets, as they could appear in text.
struct Secrets {
    /// (what, value), every value non-empty.
    values: Vec<(String, String)>,
    /// Every run of four consecutive mnemonic words.
    word_runs: HashSet<Vec<String>>,
}

impl Secrets {
    /// The secrets of `id`, with those of its first `extra` derived providers.
    fn of(who: &str, id: &Identity, extra: usize) -> Self {
        let mut values = Vec::new();
        let mut keys = |what: String, k: &Keys| {
            values.push((format!("{who} {what} hex"), k.secret_key().to_secret_hex()));
            values.push((
                format!("{who} {what} nsec"),
                k.secret_key().to_bech32().expect("nsec"),
            ));
        };
        keys("nostr key".into(), id.nostr_keys());
        keys("NWC client secret".into(), &id.wallet_client_keys());
        keys("hub service key".into(), &id.hub_keys());
        for i in 1..=extra {
            let (node, wallet) = id.swarm_keys(i);
            keys(format!("provider {i} key"), &node);
            keys(format!("provider {i} NWC client secret"), &wallet);
        }
        values.push((
            format!("{who} Lightning node key"),
            id.node_key().secret().display_secret().to_string(),
        ));
        values.push((format!("{who} mnemonic"), id.mnemonic().to_string()));
        for (what, v) in &values {
            assert!(v.len() >= 32, "{what} is a real secret");
        }
        let words: Vec<String> = id.mnemonic().split(' ').map(str::to_string).collect();
        assert_eq!(words.len(), 24);
        Self {
            values,
            word_runs: words.windows(4).map(<[String]>::to_vec).collect(),
        }
    }

    /// What of these secrets `text` shows.
    fn found_in(&self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        let mut found: Vec<String> = self
            .values
            .iter()
            .filter(|(_, v)| lower.contains(&v.to_lowercase()))
            .map(|(what, _)| what.clone())
            .collect();
        // The words in order, whatever separates them (numbered columns, newlines).
        let tokens: Vec<String> = lower
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tokens.windows(4).any(|w| self.word_runs.contains(w)) {
            found.push("mnemonic words in order".into());
        }
        found
    }
}

/// Secrets of any key, not only ours: an nsec, or a `secret=` followed by a value (the redacted
/// `secret=<hidden>` is fine).
fn generic_leaks(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    if lower.contains("nsec1") {
        found.push("an nsec".to_string());
    }
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("secret=") {
        rest = &rest[at + "secret=".len()..];
        if rest
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            found.push("secret= with a value".to_string());
            break;
        }
    }
    found
}

/// Everything seen, by where it was seen.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn output(&mut self, what: &str, out: &Output) {
        self.text(&format!("{what}: stdout"), stdout(out));
        self.text(&format!("{what}: stderr"), stderr(out));
    }

    fn text(&mut self, what: &str, text: String) {
        self.0.push((what.to_string(), text));
    }

    /// Every file under `<home>/logs/`; returns their text joined.
    fn logs(&mut self, home: &Path) -> String {
        let dir = home.join("logs");
        let mut all = String::new();
        for entry in std::fs::read_dir(&dir).expect("logs dir") {
            let path = entry.expect("entry").path();
            let text =
                String::from_utf8_lossy(&std::fs::read(&path).expect("read log")).into_owned();
            all.push_str(&text);
            self.text(&path.display().to_string(), text);
        }
        assert!(!all.is_empty(), "no log lines in {}", dir.display());
        all
    }

    /// Panics, naming the place and the kind of secret (not the secret), if anything leaked.
    fn assert_clean(&self, secrets: &[&Secrets]) {
        let mut leaks = Vec::new();
        for (what, text) in &self.0 {
            let mut found = generic_leaks(text);
            for s in secrets {
                found.extend(s.found_in(text));
            }
            if !found.is_empty() {
                leaks.push(format!("{what}: {}", found.join(", ")));
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `root` (itself included), symbolic links not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).expect("stat").is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                out.push(e.expect("entry").path());
            }
        }
        i += 1;
    }
    out
}

/// No file or directory under `home` has a group or other permission bit; `expect` are there.
fn assert_private(home: &Path, expect: &[PathBuf]) {
    for p in expect {
        assert!(p.exists(), "{} was not created", p.display());
    }
    let all = walk(home);
    let open: Vec<String> = all
        .iter()
        .filter(|p| mode(p) & 0o077 != 0)
        .map(|p| format!("{} {:04o}", p.display(), mode(p)))
        .collect();
    assert!(open.is_empty(), "not private: {open:?}");
    assert!(all.len() > expect.len());
}

#[test]
fn up_and_a_paid_job_print_and_log_no_secret_and_leave_the_home_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (op_home, buyer_home) = (dir.path().join("operator"), dir.path().join("buyer"));
    let operator = Identity::generate().expect("identity");
    let buyer = Identity::generate().expect("identity");
    let op_secrets = Secrets::of("operator", &operator, 1);
    let buyer_secrets = Secrets::of("buyer", &buyer, 0);
    let mut seen = Seen::default();
    seen.output("operator init", &import(&op_home, operator.mnemonic()));
    seen.output("buyer init", &import(&buyer_home, buyer.mnemonic()));

    let up = Captured::start(
        user_cmd(&op_home)
            .args([
                "up",
                "--bind",
                "127.0.0.1:0",
                "--web",
                "127.0.0.1:0",
                "--heartbeat-secs",
                "1",
                "--providers",
                "2",
            ])
            .env("PYLON_PASSPHRASE", PASS)
            .env("RUST_LOG", "debug"),
        "Ctrl-C stops everything.",
    );
    let relay = up.field("relay:");

    // The URI is in its private file, and only there: the banner names the file.
    let uri_file = PathBuf::from(up.field("nwc:"));
    assert_eq!(uri_file, op_home.join("nwc.uri"));
    assert_eq!(mode(&uri_file), 0o600);
    let uri = std::fs::read_to_string(&uri_file).expect("nwc.uri");
    let client_hex = operator.wallet_client_keys().secret_key().to_secret_hex();
    assert!(uri.starts_with("nostr+walletconnect://"), "{uri}");
    assert!(uri.contains(&format!("secret={client_hex}")), "{uri}");
    let uri = uri.trim().to_string();
    // The scan finds it where it is.
    assert!(op_secrets
        .found_in(&uri)
        .contains(&"operator NWC client secret hex".to_string()));
    assert_eq!(generic_leaks(&uri), ["secret= with a value"]);

    // Both providers announce themselves before the buyer comes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&buyer_home, Some(&relay), &["stats", "--json"], false);
        let stats: Value = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
        if stats["online_nodes"].as_u64() >= Some(2) {
            seen.output("buyer stats", &out);
            break;
        }
        assert!(Instant::now() < deadline, "providers never online: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A paid job through the CLI, with debug logs.
    let faucet = run(&buyer_home, Some(&relay), &["wallet", "faucet", "50"], true);
    assert!(faucet.status.success(), "{}", stderr(&faucet));
    seen.output("buyer faucet", &faucet);
    let job = run(
        &buyer_home,
        Some(&relay),
        &[
            "job",
            "submit",
            "code-analysis",
            "--input",
            "fn up() {}",
            "--param",
            "path=up.rs",
            "--bid",
            "2",
            "--wait",
            "--auto-pay",
        ],
        true,
    );
    assert!(job.status.success(), "{}", stderr(&job));
    assert!(stdout(&job).contains("Done"), "{}", stdout(&job));
    seen.output("buyer job submit", &job);

    // The operator's read commands, and ones given the URI itself, echo no secret.
    for (what, args) in [
        ("node status", vec!["node", "status", "--json"]),
        ("wallet balance", vec!["wallet", "balance", "--json"]),
        ("config show", vec!["config", "show"]),
        ("doctor", vec!["doctor"]),
        (
            "--nwc wallet balance",
            vec!["--nwc", &uri, "wallet", "balance"],
        ),
        (
            "--nwc config show",
            vec!["--nwc", &uri, "config", "show", "--json"],
        ),
    ] {
        let out = run(&op_home, Some(&relay), &args, true);
        // `doctor` may fail a check unrelated to secrets (no local LLM); the rest must succeed.
        assert!(
            out.status.success() || what == "doctor",
            "{what}: {}",
            stderr(&out)
        );
        seen.output(&format!("operator {what}"), &out);
    }
    let shown = run(
        &op_home,
        Some(&relay),
        &["--nwc", &uri, "config", "show"],
        false,
    );
    assert!(
        stdout(&shown).contains("secret=<hidden>"),
        "{}",
        stdout(&shown)
    );

    // `wallet connect` prints the URI on purpose, and the scan catches it.
    let connect = run(&op_home, Some(&relay), &["wallet", "connect"], false);
    assert!(connect.status.success(), "{}", stderr(&connect));
    assert!(op_secrets
        .found_in(&stdout(&connect))
        .contains(&"operator NWC client secret hex".to_string()));
    seen.text("wallet connect: stderr", stderr(&connect));

    let (up_out, up_err) = up.stop();
    assert!(
        up_out.contains("nwc:") && up_out.contains("market stopped"),
        "{up_out}"
    );
    assert!(!up_out.contains("nostr+walletconnect://"), "{up_out}");
    assert!(up_err.contains("DEBUG"), "debug logs were on: {up_err}");
    seen.text("pylon up: stdout", up_out);
    seen.text("pylon up: stderr", up_err);
    let audit = run(&op_home, None, &["hub", "audit"], false);
    assert!(audit.status.success(), "{}", stderr(&audit));
    seen.output("operator hub audit", &audit);

    let op_logs = seen.logs(&op_home);
    assert!(op_logs.contains("DEBUG"), "debug lines reach the log file");
    assert!(
        op_logs.contains("hub answering NIP-47 requests"),
        "{op_logs}"
    );
    seen.logs(&buyer_home);
    seen.assert_clean(&[&op_secrets, &buyer_secrets]);

    assert_private(
        &op_home,
        &[
            op_home.join("identity.enc"),
            op_home.join("config.toml"),
            op_home.join("nwc.uri"),
            op_home.join("jobs.db"),
            op_home.join("hub").join("ledger.db"),
            op_home.join("relay"),
            op_home.join("nodes").join("1"),
            op_home.join("logs"),
        ],
    );
    assert_private(&buyer_home, &[buyer_home.join("jobs.db")]);
}

#[test]
fn init_tightens_an_open_home_and_relay_hub_and_node_keep_it_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let notes = home.join("notes.txt");
    std::fs::write(&notes, "mine").expect("write");
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let id = Identity::generate().expect("identity");
    let secrets = Secrets::of("node", &id, 0);
    let mut seen = Seen::default();
    let init = import(&home, id.mnemonic());
    let said = stdout(&init);
    assert!(
        said.contains(&format!(
            "tightened permissions of {} from 0755 to 0700",
            home.display()
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "tightened permissions of {} from 0644 to 0600",
            notes.display()
        )),
        "{said}"
    );
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&notes), 0o600);
    assert_eq!(mode(&home.join("config.toml")), 0o600);
    seen.output("init", &init);

    // A plain `pylon init` shows the words once, in numbered columns: the scan sees them.
    let shown = dir.path().join("shown");
    let fresh = run(&shown, None, &["init"], false);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    let loaded = pylon::identity::sealed::load(&shown.join("identity.enc"), PASS).expect("load");
    let found = Secrets::of("fresh", &loaded, 0).found_in(&stdout(&fresh));
    assert_eq!(found, ["mnemonic words in order"], "{}", stdout(&fresh));

    // Relay (its store in this home), hub and node from the same home, debug logs on.
    let relay = Captured::start(
        user_cmd(&home)
            .args(["relay", "--bind", "127.0.0.1:0", "--data"])
            .arg(home.join("relay"))
            .env("RUST_LOG", "debug"),
        "Ctrl-C stops it",
    );
    let url = relay.head[0]
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .expect("relay url")
        .to_string();
    let hub = Captured::start(
        user_cmd(&home)
            .args(["--relay", &url, "hub"])
            .env("PYLON_PASSPHRASE", PASS)
            .env("RUST_LOG", "debug"),
        "nodes on these relays find it",
    );
    let node = Captured::start(
        user_cmd(&home)
            .args(["--relay", &url, "node", "up", "--heartbeat-secs", "1"])
            .env("PYLON_PASSPHRASE", PASS)
            .env("RUST_LOG", "debug"),
        "`pylon node status` shows it",
    );
    assert!(node.head[0].contains(" up:"), "{:?}", node.head);
    let status = run(&home, None, &["node", "status", "--json"], false);
    assert!(status.status.success(), "{}", stderr(&status));
    seen.output("node status", &status);
    for (what, p) in [("node up", node), ("hub", hub), ("relay", relay)] {
        let (out, err) = p.stop();
        assert!(err.contains("DEBUG"), "{what}: debug logs were on");
        seen.text(&format!("{what}: stdout"), out);
        seen.text(&format!("{what}: stderr"), err);
    }
    seen.logs(&home);
    seen.assert_clean(&[&secrets]);

    assert_private(
        &home,
        &[
            home.join("jobs.db"),
            home.join("hub").join("ledger.db"),
            home.join("relay"),
            home.join("logs"),
        ],
    );
}

#[test]
fn the_demo_prints_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("artifacts");
    let run = user_cmd(dir.path())
        .args([
            "demo",
            "--sample-only",
            "--sample-files",
            "12",
            "--providers",
            "3",
            "--web",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(&out)
        .env("RUST_LOG", "debug")
        .output()
        .expect("spawn");
    assert!(
        stdout(&run).contains("mapped 12 of 12 files"),
        "{}\n{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(stderr(&run).contains("DEBUG"), "debug logs were on");
    let mut seen = Seen::default();
    seen.output("demo", &run);
    seen.assert_clean(&[]);
    assert!(out.join("repo_map.json").is_file());
}

#[test]
fn up_prints_the_wallet_uri_only_with_show_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("operator");
    let id = Identity::generate().expect("identity");
    import(&home, id.mnemonic());
    let up = Captured::start(
        user_cmd(&home)
            .args([
                "up",
                "--bind",
                "127.0.0.1:0",
                "--web",
                "127.0.0.1:0",
                "--providers",
                "0",
                "--show-secrets",
            ])
            .env("PYLON_PASSPHRASE", PASS),
        "Ctrl-C stops everything.",
    );
    let printed = up.field("nwc:");
    let written = std::fs::read_to_string(home.join("nwc.uri")).expect("nwc.uri");
    assert_eq!(printed, written.trim());
    assert!(
        printed.contains(&id.wallet_client_keys().secret_key().to_secret_hex()),
        "{printed}"
    );
    up.stop();
}
