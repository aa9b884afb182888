#!/usr/bin/env bash
# Builds `pylon:source` with docker/Dockerfile, the from-source build `docker compose up` runs,
# on a machine that cannot pull images. The Dockerfile's two base images are replaced by local
# equivalents made from Debian packages and the host's own Rust toolchain:
#   BASE_IMAGE  debian:bookworm-slim  ->  pylon-base:bookworm (scripts/docker-base.sh)
#   RUST_IMAGE  rust:1-bookworm       ->  pylon-rust:local (debootstrap + gcc + the host toolchain)
# Cargo inside the build fetches crates from crates.io as it would anywhere. The host's CA bundle
# goes into pylon-rust:local so a TLS-intercepting proxy the host trusts is trusted there too.
# Where pulling works none of this is needed: `docker compose up` builds the same Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/docker-base.sh
rust_image="${PYLON_RUST_IMAGE:-pylon-rust:local}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$rust_image" >/dev/null 2>&1; then
  echo "==> rust image $rust_image already present"
else
  sysroot="$(rustc --print sysroot)"
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  echo "==> debootstrap bookworm with a C toolchain (for $rust_image)"
  debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev,make bookworm "$root" "$mirror" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  echo "==> the host's Rust toolchain ($(rustc --version)) into $rust_image"
  mkdir -p "$root/usr/local/rust"
  # Documentation (share/) is most of a toolchain's size and no build needs it.
  for part in bin lib libexec etc; do
    if [ -e "$sysroot/$part" ]; then cp -a "$sysroot/$part" "$root/usr/local/rust/"; fi
  done
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' - "$rust_image" >/dev/null
  docker image inspect "$rust_image" --format '==> {{.RepoTags}} {{.Size}} bytes'
fi

echo "==> docker build -f docker/Dockerfile (cargo build --release inside; several minutes)"
docker build --quiet -f docker/Dockerfile \
  --build-arg RUST_IMAGE="$rust_image" \
  --build-arg BASE_IMAGE="${PYLON_BASE_IMAGE:-pylon-base:bookworm}" \
  -t pylon:source . >/dev/null
docker image inspect pylon:source --format '==> {{.RepoTags}} {{.Size}} bytes'
