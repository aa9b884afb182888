//! `pylon init`, `wallet whoami` and `config show`, run as a user runs them.

use std::process::Stdio;

use serde_json::Value;

use crate::common::{init_home, init_import, pylon, run_with_pass, stderr, stdout, PASS};

const VECTOR_WORDS: &str =
    "leader monkey parrot ring guide accident before fence cannon height naive bean";
const VECTOR_PUBKEY: &str = "17162c921dc4d2518f9a101db33695df1afb56ab82f5ff3e5da6eec3ca5cd917";

fn whoami(home: &std::path::Path, pass: &str) -> std::process::Output {
    run_with_pass(pylon(home).args(["wallet", "whoami", "--json"]), pass)
}

#[test]
fn init_then_whoami() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let created = init_home(&home);
    assert_eq!(
        created["mnemonic"]
            .as_str()
            .expect("mnemonic")
            .split(' ')
            .count(),
        24
    );
    assert_eq!(created["config_written"], true);

    let out = whoami(&home, PASS);
    assert!(out.status.success(), "{}", stderr(&out));
    let me: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(me["pubkey"], created["pubkey"]);
    assert_eq!(me["npub"], created["npub"]);
    assert!(me["npub"].as_str().expect("npub").starts_with("npub1"));
    let node = me["node_pubkey"].as_str().expect("node_pubkey");
    assert_eq!(node.len(), 66);
    assert!(node.starts_with("02") || node.starts_with("03"));

    // The human form carries the same keys.
    let out = run_with_pass(pylon(&home).args(["wallet", "whoami"]), PASS);
    assert!(stdout(&out).contains(me["npub"].as_str().expect("npub")));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("identity.enc"))
            .expect("identity")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let config = std::fs::read_to_string(home.join("config.toml")).expect("config written");
    assert!(config.contains("network = \"regtest\"") && config.contains("# "));
}

#[test]
fn import_reproduces_nip06_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = init_import(dir.path(), VECTOR_WORDS, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let me: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(me["pubkey"], VECTOR_PUBKEY);
    assert_eq!(me["imported"], true);
}

#[test]
fn import_rejects_bad_words_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = init_import(
        dir.path(),
        "leader monkey parrot ring guide accident before fence cannon height naive naive",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid mnemonic"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("identity.enc").exists());
}

#[test]
fn wrong_passphrase_is_one_clear_line_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_home(dir.path());
    let path = dir.path().join("identity.enc");
    let before = std::fs::read(&path).expect("read");
    let out = whoami(dir.path(), "not the passphrase");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn corrupt_and_truncated_files_are_named_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_home(dir.path());
    let path = dir.path().join("identity.enc");
    let good = std::fs::read(&path).expect("read");

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    for (bytes, expect) in [
        (flipped, "corrupt"),
        (good[..40].to_vec(), "truncated"),
        (b"hello, not an identity".to_vec(), "corrupt"),
        (Vec::new(), "truncated"),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let out = whoami(dir.path(), PASS);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "file untouched");
    }
}

#[test]
fn init_refuses_to_replace_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = init_home(dir.path());
    let path = dir.path().join("identity.enc");
    let before = std::fs::read(&path).expect("read");

    let out = run_with_pass(pylon(dir.path()).arg("init"), PASS);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&path).expect("read"), before);

    let out = run_with_pass(pylon(dir.path()).args(["init", "--force", "--json"]), PASS);
    assert!(out.status.success(), "{}", stderr(&out));
    let second: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_ne!(second["pubkey"], first["pubkey"]);
    let backup = second["replaced_backup"].as_str().expect("backup path");
    assert_eq!(std::fs::read(backup).expect("backup kept"), before);
    let out = whoami(dir.path(), PASS);
    let me: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(me["pubkey"], second["pubkey"]);
}

#[test]
fn missing_or_empty_passphrase_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_home(dir.path());
    let out = pylon(dir.path())
        .args(["wallet", "whoami"])
        .env("PYLON_PASSPHRASE", "")
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PYLON_PASSPHRASE is set but empty"),
        "{}",
        stderr(&out)
    );

    // No PYLON_PASSPHRASE and no controlling terminal (setsid detaches it): nothing to prompt on.
    let out = std::process::Command::new("setsid")
        .arg("-w")
        .arg(crate::common::pylon_bin())
        .arg("--home")
        .arg(dir.path())
        .args(["wallet", "whoami"])
        .env_remove("PYLON_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("spawn setsid");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("set PYLON_PASSPHRASE or run in a terminal"),
        "{err}"
    );
}

#[test]
fn config_show_reports_defaults_and_names_unknown_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Without a file: defaults.
    let out = pylon(dir.path())
        .args(["config", "show", "--json"])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(shown["network"], "regtest");
    assert_eq!(shown["relays"][0], "ws://127.0.0.1:7777");
    assert_eq!(shown["relay"]["name"], "pylon");
    assert!(shown["source"].is_null());

    // --relay overrides for the run.
    let out = pylon(dir.path())
        .args([
            "--relay",
            "wss://relay.example.com",
            "config",
            "show",
            "--json",
        ])
        .output()
        .expect("spawn");
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(shown["relays"][0], "wss://relay.example.com");

    std::fs::write(
        dir.path().join("config.toml"),
        "network = \"regtest\"\n[relay]\nmin_pow = 3\n",
    )
    .expect("write");
    let out = pylon(dir.path())
        .args(["config", "show"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("min_pow"), "{}", stderr(&out));
}
