#!/usr/bin/env bash
# Builds the base image `pylon-base:bookworm` from Debian packages alone (debootstrap + docker
# import), for machines that cannot pull images. Where pulling works, `debian:bookworm-slim` is
# the same thing and this script is not needed. Idempotent: an existing image is kept.
set -euo pipefail
image="${PYLON_BASE_IMAGE:-pylon-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "==> base image $image already present"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "==> installing debootstrap"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; fi
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
# Keep the image small: package caches and docs are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
echo "==> docker import $image"
tar -C "$root" -c . | docker import - "$image" >/dev/null
docker image inspect "$image" --format '==> {{.RepoTags}} {{.Size}} bytes'
