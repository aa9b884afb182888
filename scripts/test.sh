#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: it installs what the tests need, checks
# formatting and lints, then runs every unit and integration test (real relay, real sockets).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# System tools the tests use. `setsid` (util-linux) runs the CLI without a terminal.
missing=()
need setsid || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}"; fi
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "==> cargo test"
cargo test --locked --all-targets
