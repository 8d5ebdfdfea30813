#!/usr/bin/env bash
# End-to-end check of compose.yaml: builds the images (scripts/build-images.sh,
# nothing pulled), brings the cluster up, waits until every container is
# healthy, checks `sluice cluster status` (2 nameservers, 3 brokers, 3 stores,
# all healthy), creates a topic, runs `sluice bench produce` and
# `sluice bench consume`, does a produce/consume round trip whose records are
# compared one by one, and takes the cluster down with its volumes.
# Exits non-zero on the first failure, after printing the containers' state
# and their last log lines.
#
# Environment:
#   SLUICE_SMOKE_SKIP_BUILD=1   use the images already built
#   SLUICE_SMOKE_KEEP=1         leave the cluster running at the end
#   SLUICE_SMOKE_PROJECT        compose project name (default: sluice-smoke)
#   SLUICE_SMOKE_TIMEOUT_S      bound on waiting for healthy (default: 240)
#   SLUICE_COMPOSE_*_PORT       host ports, as in compose.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

project=${SLUICE_SMOKE_PROJECT:-sluice-smoke}
healthy_timeout_s=${SLUICE_SMOKE_TIMEOUT_S:-240}
bootstrap="127.0.0.1:${SLUICE_COMPOSE_NAMESERVER_1_PORT:-7400},127.0.0.1:${SLUICE_COMPOSE_NAMESERVER_2_PORT:-7410}"
expected_containers=11 # 3 etcd, 2 nameservers, 3 stores, 3 brokers

fail() {
  echo "compose-smoke: FAILED: $*" >&2
  exit 1
}
step() { echo "compose-smoke: $*" >&2; }

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$project" -f compose.yaml)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose -p "$project" -f compose.yaml)
else
  fail "neither \`docker compose\` nor \`docker-compose\` is installed (Debian: apt-get install docker-compose)"
fi

if [ "${SLUICE_SMOKE_SKIP_BUILD:-0}" != "1" ]; then
  bash scripts/build-images.sh
fi

# The CLI on the host when it was built, else the image's (on the host's network).
if [ -x target/release/sluice ]; then
  sluice=(target/release/sluice --bootstrap "$bootstrap")
else
  sluice=(docker run --rm -i --network host sluice/sluice:"${SLUICE_IMAGE_TAG:-dev}" --bootstrap "$bootstrap")
fi

work_directory=$(mktemp -d "${TMPDIR:-/tmp}/sluice-smoke.XXXXXX")
finish() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "compose-smoke: containers:" >&2
    "${compose[@]}" ps >&2 || true
    echo "compose-smoke: last log lines:" >&2
    "${compose[@]}" logs --no-color --tail 30 >&2 || true
  fi
  if [ "${SLUICE_SMOKE_KEEP:-0}" = "1" ]; then
    step "leaving the cluster running (project $project); stop it with: ${compose[*]} down -v"
  else
    step "taking the cluster down"
    "${compose[@]}" down -v --remove-orphans >&2 || echo "compose-smoke: down failed" >&2
  fi
  rm -rf "$work_directory"
  if [ "$status" -eq 0 ]; then echo "compose-smoke: OK"; fi
  exit "$status"
}
trap finish EXIT

step "starting the cluster (project $project)"
"${compose[@]}" up -d || fail "compose up failed"

step "waiting until all $expected_containers containers are healthy (at most ${healthy_timeout_s}s)"
deadline=$((SECONDS + healthy_timeout_s))
while :; do
  mapfile -t containers < <("${compose[@]}" ps -q)
  healthy=0
  states=""
  for container in "${containers[@]}"; do
    state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' "$container")
    states+="  ${state#/}"$'\n'
    [[ $state == *" running healthy" ]] && healthy=$((healthy + 1))
  done
  if [ "${#containers[@]}" -eq "$expected_containers" ] && [ "$healthy" -eq "$expected_containers" ]; then
    break
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    printf '%s' "$states" >&2
    fail "only $healthy of $expected_containers containers healthy after ${healthy_timeout_s}s"
  fi
  sleep 2
done
step "all containers healthy"

step "cluster status"
# Registration follows health by a heartbeat; wait for every node to show.
deadline=$((SECONDS + 60))
while :; do
  status_output=$("${sluice[@]}" cluster status 2>&1) || status_output="(cluster status failed) $status_output"
  if grep -q '^nameservers (2)' <<<"$status_output" &&
    grep -q '^brokers (3)' <<<"$status_output" &&
    grep -q '^stores (3)' <<<"$status_output" &&
    [ "$(grep -c ' healthy ' <<<"$status_output")" -eq 8 ] &&
    ! grep -q 'unhealthy' <<<"$status_output"; then
    break
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "$status_output" >&2
    fail "cluster status does not show 2 nameservers, 3 brokers and 3 stores, all healthy"
  fi
  sleep 2
done
echo "$status_output"

step "topic create + bench produce / consume"
"${sluice[@]}" topic create smoke-bench --partitions 3 || fail "topic create failed"
"${sluice[@]}" bench produce --topic smoke-bench --messages 20000 --size 1024 --partitions 3 ||
  fail "bench produce failed"
"${sluice[@]}" bench consume --topic smoke-bench --messages 20000 --size 1024 --partitions 3 ||
  fail "bench consume failed"

step "produce/consume round trip"
records=200
seq 1 "$records" | sed 's/^/record-/' >"$work_directory/sent"
"${sluice[@]}" topic create smoke-round-trip --partitions 3 || fail "topic create failed"
"${sluice[@]}" produce smoke-round-trip <"$work_directory/sent" || fail "produce failed"
"${sluice[@]}" consume smoke-round-trip --group smoke --from-beginning --max-messages "$records" \
  >"$work_directory/received" || fail "consume failed"
if ! diff <(sort "$work_directory/sent") <(sort "$work_directory/received") >"$work_directory/difference"; then
  head -n 20 "$work_directory/difference" >&2
  fail "consumed records differ from produced ones ($(wc -l <"$work_directory/received") of $records received)"
fi
step "round trip: $records records produced and consumed back"
"${sluice[@]}" group describe smoke || fail "group describe failed"
