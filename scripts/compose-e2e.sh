#!/usr/bin/env bash
# Stage "compose": the 30-node Docker Compose swarm end to end, on images built from local
# material. Passes when the buyer service maps the repository and exits 0, and the dashboard's
# /api/stats counts at least 30 online nodes. Prints the seconds from `up` to the first paid job.
#   compose-e2e.sh source     the image docker/Dockerfile builds from source (what `docker compose
#                             up` builds), via scripts/docker-source.sh
#   compose-e2e.sh prebuilt   the host-built binary on docker/Dockerfile.prebuilt (docker-local.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then compose=(docker compose)
else
  echo "==> installing docker-compose"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  compose=(docker-compose)
fi
variant="${1:-source}"
case "$variant" in
  source) ./scripts/docker-source.sh; image=pylon:source ;;
  prebuilt) ./scripts/docker-local.sh; image=pylon:local ;;
  *) echo "usage: $0 [source|prebuilt]" >&2; exit 2 ;;
esac
project="pylon-e2e-$$"
port="${PYLON_WEB_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
export PYLON_IMAGE="$image" PYLON_WEB_PORT="$port"
dc() { "${compose[@]}" -p "$project" -f docker-compose.yml "$@"; }
# shellcheck source=scripts/compose-teardown.sh
. scripts/compose-teardown.sh
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "==> compose logs (failure)"; dc logs --tail 30 appliance buyer provider-01 2>&1 | tail -80 || true
  fi
  # A stage that leaves containers behind fails, whatever the buyer said.
  compose_teardown "$project" "${compose[@]}" -p "$project" -f docker-compose.yml || status=1
  exit "$status"
}
trap cleanup EXIT

echo "==> docker compose up with $image (appliance, 30 providers, buyer); dashboard on 127.0.0.1:$port"
started=$(date +%s.%N)
dc up -d --no-build >/dev/null 2>&1 || dc up -d --no-build
stats() { python3 - "$port" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/stats", timeout=3) as r:
        s = json.load(r)
    print(s["online_nodes"], s["windows"]["last_day"]["sats_settled"])
except Exception:
    print("0 0")
PY
}
first_paid=""
buyer="$(dc ps -q buyer)"
for _ in $(seq 1 600); do
  read -r online settled <<<"$(stats)"
  if [ -z "$first_paid" ] && [ "$settled" -gt 0 ]; then
    first_paid=$(python3 -c "import time; print(round(time.time() - $started, 2))")
    echo "==> first paid job $first_paid s after compose up ($online nodes online)"
  fi
  if [ "$(docker inspect -f '{{.State.Status}}' "$buyer")" = "exited" ]; then break; fi
  sleep 1
done
code="$(docker inspect -f '{{.State.ExitCode}}' "$buyer")"
dc logs --no-color buyer | tail -8
read -r online settled <<<"$(stats)"
echo "==> buyer exit code $code; dashboard: $online nodes online, $settled sats settled"
mkdir -p target
echo "{\"buyer_exit_code\": $code, \"online_nodes\": $online, \"sats_settled\": $settled, \"compose_up_to_first_paid_job_secs\": ${first_paid:-null}}" | tee "target/compose-e2e-$variant.json"
[ "$code" -eq 0 ] && [ "$online" -ge 30 ]
