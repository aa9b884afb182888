#!/bin/sh
# Every container is its own Pylon home: the first start creates its identity (a fresh mnemonic
# sealed with $PYLON_PASSPHRASE), later starts reuse it.
set -eu
if [ ! -f "${PYLON_HOME:-/data}/identity.enc" ]; then
  pylon init --json >/dev/null
fi
exec pylon "$@"
