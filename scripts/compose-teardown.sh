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
  ids="$(_ct_docker network ls -q --filter "$label" || true)"
  # shellcheck disable=SC2086
  [ -n "$ids" ] && { _ct_docker network rm $ids >&2 || true; }
  ids="$(_ct_docker volume ls -q --filter "$label" || true)"
  # shellcheck disable=SC2086
  [ -n "$ids" ] && { _ct_docker volume rm -f $ids >&2 || true; }

  ids="$(compose_leftovers "$project")"
  if [ -n "$ids" ]; then
    echo "==> FAILED to clean up compose project $project; still present:" >&2
    _ct_docker ps -a --filter "$label" >&2 || true
    _ct_docker network ls --filter "$label" >&2 || true
    _ct_docker volume ls --filter "$label" >&2 || true
    return 1
  fi
  echo "==> compose project $project removed"
}
