#!/usr/bin/env bash
# Builds the image `pylon:local` without pulling anything: the base from local Debian packages
# (scripts/docker-base.sh) and the binary from this checkout, built on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/docker-base.sh
echo "==> cargo build --release (the binary the image carries)"
cargo build --release --locked --quiet --bin pylon
target_dir="${CARGO_TARGET_DIR:-target}"
cp "$target_dir/release/pylon" docker/pylon
# Debug info is for local profiling; the image does not need it.
if command -v strip >/dev/null 2>&1; then strip docker/pylon; fi
echo "==> docker build pylon:local"
docker build --quiet -f docker/Dockerfile.prebuilt \
  --build-arg BASE_IMAGE="${PYLON_BASE_IMAGE:-pylon-base:bookworm}" -t pylon:local . >/dev/null
docker image inspect pylon:local --format '==> {{.RepoTags}} {{.Size}} bytes'
