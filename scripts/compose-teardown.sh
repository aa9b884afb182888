# Sourced by compose-e2e.sh: takes a Compose project down and proves nothing of it remains.
# A `down` that fails silently once left 30 provider containers running and the Docker daemon
# unresponsive, so every step's output is shown and the result is checked, not assumed.
#   compose_teardown PROJECT COMPOSE_COMMAND...   (the command already carrying -p/-f)
# Returns non-zero, after printing what is left, when the project cannot be cleaned up.

# Every Docker call is bounded: a daemon that stopped answering must fail the stage, not hang it.
_ct_docker() { timeout "${COMPOSE_DOCKER_TIMEOUT:-120}" docker "$@"; }

# Ids of the project's containers, networks and volumes still present, one per line.
compose_leftovers() {
  local label="label=com.docker.compose.project=$1"
  _ct_docker ps -aq --filter "$label" || echo "(docker ps failed)"
  _ct_docker network ls -q --filter "$label" || echo "(docker network ls failed)"
  _ct_docker volume ls -q --filter "$label" || echo "(docker volume ls failed)"
}

compose_teardown() {
  local project="$1"; shift
  local label="label=com.docker.compose.project=$project" ids out rc=0
  echo "==> compose down ($project)"
  out="$(timeout 180 "$@" down -v --remove-orphans --timeout 20 2>&1)" || rc=$?
  printf '%s\n' "$out" | tail -5
  [ "$rc" -eq 0 ] || echo "==> compose down failed (exit $rc)" >&2
  [ -z "$(compose_leftovers "$project")" ] && return 0

  echo "==> still present after down; retrying with a longer stop timeout, then docker rm -f" >&2
  timeout 300 "$@" down -v --remove-orphans --timeout 60 2>&1 | tail -5 >&2 || true
  ids="$(_ct_docker ps -aq --filter "$label" || true)"
  # shellcheck disable=SC2086 # ids are whitespace-separated on purpose
  [ -n "$ids" ] && { _ct_docker rm -f -v $ids >&2 || true; }
  compose_remove_networks "$label"
  ids="$(_ct_docker volume ls -q --filter "$label" || true)"
  # shellcheck disable=SC2086
  [ -n "$ids" ] && { _ct_docker volume rm -f $ids >&2 || true; }

  # Containers and volumes left behind are a failure: they hold processes, ports and disk.
  # A network whose every container is gone but which the daemon still will not remove
  # (moby/moby#17217, #42119: a stale endpoint the daemon has not released) holds none of
  # those, so it is reported, not failed on.
  local containers volumes networks
  containers="$(_ct_docker ps -aq --filter "$label" || echo "(docker ps failed)")"
  volumes="$(_ct_docker volume ls -q --filter "$label" || echo "(docker volume ls failed)")"
  networks="$(_ct_docker network ls -q --filter "$label" || echo "(docker network ls failed)")"
  if [ -n "$containers" ] || [ -n "$volumes" ]; then
    echo "==> FAILED to clean up compose project $project; still present:" >&2
    _ct_docker ps -a --filter "$label" >&2 || true
    _ct_docker network ls --filter "$label" >&2 || true
    _ct_docker volume ls --filter "$label" >&2 || true
    return 1
  fi
  if [ -n "$networks" ]; then
    echo "==> WARNING: compose project $project: no container or volume is left, but the daemon" \
      "keeps its network with a stale endpoint; remove it later with: docker network rm $networks" >&2
    return 0
  fi
  echo "==> compose project $project removed"
}

# Removes the project's networks, forcing stale endpoints off first. After `down`, the daemon
# can still list endpoints of containers that no longer exist and refuse `network rm`; it
# releases them on `network disconnect -f`, or a moment later on its own, so this asks a few
# times, a few seconds apart, and gives up after about 30 s.
compose_remove_networks() {
  local label="$1" ids net endpoint try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    ids="$(_ct_docker network ls -q --filter "$label" || true)"
    [ -z "$ids" ] && return 0
    for net in $ids; do
      for endpoint in $(_ct_docker network inspect -f \
        '{{range $id, $c := .Containers}}{{$c.Name}} {{end}}' "$net" 2>/dev/null || true); do
        _ct_docker network disconnect -f "$net" "$endpoint" >&2 || true
      done
      _ct_docker network rm "$net" >/dev/null 2>&1 || true
    done
    ids="$(_ct_docker network ls -q --filter "$label" || true)"
    [ -z "$ids" ] && return 0
    echo "==> network still present (attempt $try of 10); asking again in 3 s" >&2
    sleep 3
  done
}
