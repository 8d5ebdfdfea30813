#!/usr/bin/env bash
# End-to-end check of compose.yaml: builds the images (scripts/build-images.sh,
# nothing pulled), brings the cluster up, waits until every container is
# healthy, copies the cluster's certificates out of the `certs` container,
# checks that a plaintext client, a client without a certificate, a client
# with another CA's certificate and a valid certificate without ACLs are
# each refused and told why, that etcd refuses plaintext and
# certificate-less clients, checks `sluice cluster status` as User:admin
# over mutual TLS (2 nameservers, 3 brokers, 3 stores, all healthy), creates
# a topic, runs `sluice bench produce` and `sluice bench consume`, does a
# produce/consume round trip whose records are compared one by one, and
# takes the cluster down with its volumes.
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
expected_containers=11 # 3 etcd, 2 nameservers, 3 stores, 3 brokers (not the one-shot certs)

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

work_directory=$(mktemp -d "${TMPDIR:-/tmp}/sluice-smoke.XXXXXX")
# The cluster's certificates, copied out of the `certs` container below.
certs=$work_directory/certs

# The CLI on the host when it was built, else the image's (on the host's
# network, with the certificates mounted where they are on the host).
if [ -x target/release/sluice ]; then
  cli=(target/release/sluice --bootstrap "$bootstrap")
else
  cli=(docker run --rm -i --network host --user "$(id -u):$(id -g)" -v "$work_directory:$work_directory"
    sluice/sluice:"${SLUICE_IMAGE_TAG:-dev}" --bootstrap "$bootstrap")
fi
# As User:admin (a super user), over mutual TLS.
sluice=("${cli[@]}" --tls-ca "$certs/ca.pem" --tls-cert "$certs/client.pem" --tls-key "$certs/client.key")
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
  # -a: compose v2 lists exited containers (certs) only with it.
  mapfile -t all_containers < <("${compose[@]}" ps -a -q)
  containers=()
  healthy=0
  states=""
  for container in "${all_containers[@]}"; do
    state=$(docker inspect -f '{{.Name}} {{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' "$container")
    states+="  ${state#/}"$'\n'
    read -r _ service status exit_code _ <<<"$state"
    if [ "$service" = certs ]; then
      if [ "$status" = exited ] && [ "$exit_code" != 0 ]; then
        printf '%s' "$states" >&2
        fail "the certs service failed (exit code $exit_code)"
      fi
      continue
    fi
    containers+=("$container")
    [[ $state == *" running "*" healthy" ]] && healthy=$((healthy + 1))
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

step "copying the certificates out of the certs container"
certs_container=$("${compose[@]}" ps -a -q certs)
[ -n "$certs_container" ] || fail "no certs container"
docker cp "$certs_container:/etc/sluice/tls" "$certs" || fail "docker cp of the certificates failed"
for file in ca.pem ca.key node.pem node.key client.pem client.key; do
  [ -s "$certs/$file" ] || fail "the certs container made no $file"
done

# expect_refused WHAT PATTERN COMMAND...: COMMAND must fail and print
# something PATTERN (an extended regular expression) matches.
expect_refused() {
  local what=$1 pattern=$2 output
  shift 2
  if output=$("$@" 2>&1); then
    echo "$output" >&2
    fail "$what was served"
  fi
  grep -qiE -- "$pattern" <<<"$output" || {
    echo "$output" >&2
    fail "$what was refused without saying \"$pattern\""
  }
  step "refused as it should be: $what (...$(grep -oiE -m 1 -- ".{0,80}($pattern).{0,60}" <<<"$output" | head -n 1)...)"
}
step "clients the cluster must refuse"
"${cli[@]}" certs create --out-dir "$work_directory/other-ca" >/dev/null || fail "sluice certs create failed"
"${cli[@]}" certs issue --ca-dir "$certs" --name smoke-nobody --out-dir "$work_directory/nobody" >/dev/null ||
  fail "sluice certs issue failed"
expect_refused "a plaintext client" "accepts TLS only" "${cli[@]}" cluster status
expect_refused "a client without a certificate" "requires a client certificate" \
  "${cli[@]}" --tls-ca "$certs/ca.pem" cluster status
# The TLS handshake fails: rustls answers a certificate it cannot verify
# with a fatal alert (DecryptError here: both development CAs have the same
# name, so the signature check is what fails).
expect_refused "a client whose certificate another CA signed" "fatal alert|certificate" \
  "${cli[@]}" --tls-ca "$certs/ca.pem" --tls-cert "$work_directory/other-ca/client.pem" \
  --tls-key "$work_directory/other-ca/client.key" cluster status
expect_refused "a valid certificate without ACLs (User:smoke-nobody)" "User:smoke-nobody may not" \
  "${cli[@]}" --tls-ca "$certs/ca.pem" --tls-cert "$work_directory/nobody/smoke-nobody.pem" \
  --tls-key "$work_directory/nobody/smoke-nobody.key" topic create smoke-intruder --partitions 1
# etcd serves TLS only and requires a client certificate; etcdctl reports
# either refusal as a deadline (it retries the failed handshakes).
expect_refused "a plaintext etcd client" "deadline exceeded" \
  "${compose[@]}" exec -T etcd-1 /usr/local/bin/etcdctl --endpoints=http://127.0.0.1:2379 \
  --command-timeout=3s get /sluice/ --prefix --keys-only
expect_refused "an etcd client without a certificate" "deadline exceeded" \
  "${compose[@]}" exec -T etcd-1 /usr/local/bin/etcdctl --endpoints=https://127.0.0.1:2379 \
  --cacert=/etc/sluice/tls/ca.pem --command-timeout=3s get /sluice/ --prefix --keys-only

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
