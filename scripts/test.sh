#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: it installs what the tests need, checks
# formatting and lints, then runs every unit and integration test (real relay, real sockets).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  echo "==> installing $*"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; fi
}

# System tools the tests use. `setsid` (util-linux) runs the CLI without a terminal;
# protoc builds nostr-rs-relay; Chromium and its WebDriver drive the dashboard's browser test.
missing=()
need setsid || missing+=(util-linux)
need protoc || missing+=(protobuf-compiler)
[ -x /usr/bin/chromium ] || missing+=(chromium)
need chromedriver || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# nostr-rs-relay 0.8.12, the external relay the wallet tests run through (it never sends OK for
# ephemeral events). Not --locked: its lockfile pins a `time` release that newer Rust rejects.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export NOSTR_RS_RELAY="$cargo_bin/nostr-rs-relay"
if ! "$NOSTR_RS_RELAY" --version 2>/dev/null | grep -q "0.8.12"; then
  echo "==> installing nostr-rs-relay 0.8.12 (a few minutes, once)"
  cargo install nostr-rs-relay --version 0.8.12 --quiet
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "==> cargo test"
cargo test --locked --all-targets
