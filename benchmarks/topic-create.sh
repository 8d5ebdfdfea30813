#!/usr/bin/env bash
# Time from creating a many-partition topic until every partition is
# writable (issue 16), on a real etcd: per run a fresh cluster (1 etcd,
# 1 nameserver, STORES stores, 1 broker), then
# `sluice bench topics --count 1 --partitions PARTITIONS --wait-writable-s 300`.
# Prints each run's figure and the median.
#
#   benchmarks/topic-create.sh                          # 3 runs of 1,000 partitions
#   PARTITIONS=4000 RUNS=1 benchmarks/topic-create.sh
#   BIN=/path/to/other/target/debug CLI=target/debug/sluice benchmarks/topic-create.sh
#
# Ports PORT_BASE .. PORT_BASE+20 (default 25500; keep clear of ports
# others use). BIN=<dir> (default target/debug) holds the service
# binaries, CLI the `sluice` binary (default $BIN/sluice); LOGS=<dir> keeps
# each run's logs. Nothing is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }
bin=${BIN:-target/debug}
cli=${CLI:-$bin/sluice}
base=${PORT_BASE:-25500}
partitions=${PARTITIONS:-1000}
runs=${RUNS:-3}
stores=${STORES:-1}
ensemble=$(( stores < 3 ? stores : 3 ))
ack=$(( ensemble / 2 + 1 ))
etcd_client=$base
etcd_peer=$(( base + 1 ))
nameserver=$(( base + 2 ))
broker=$(( base + 3 ))
# BROKER_EXTRA: more broker config lines, e.g. a [replication] section.
broker_extra=${BROKER_EXTRA:-}

work=""
pids=()
# Stops this run's processes (only those), keeps its logs if asked.
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true
  pids=()
  if [ -n "$work" ]; then
    if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS/run-$1" && cp "$work"/*.log "$LOGS/run-$1"/; fi
    rm -rf "$work"
  fi
  work=""
}
trap 'cleanup interrupted' EXIT

# One run; sets $figure to the seconds until every partition was writable.
run_once() {
  local run=$1
  work=$(mktemp -d)
  etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_client" \
    --advertise-client-urls "http://127.0.0.1:$etcd_client" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" --initial-cluster "bench=http://127.0.0.1:$etcd_peer" \
    >"$work/etcd.log" 2>&1 &
  pids+=($!)
  cat >"$work/nameserver.toml" <<TOML
listen_address = "127.0.0.1:$nameserver"
[metadata]
backend = "etcd"
endpoints = ["http://127.0.0.1:$etcd_client"]
[topic_defaults]
ensemble_size = $ensemble
write_quorum = $ensemble
ack_quorum = $ack
TOML
  for index in $(seq 1 "$stores"); do
    cat >"$work/store-$index.toml" <<TOML
node_id = "store-$index"
listen_address = "127.0.0.1:$(( base + 10 + index ))"
nameservers = ["http://127.0.0.1:$nameserver"]
data_dir = "$work/store-$index"
TOML
  done
  cat >"$work/broker.toml" <<TOML
[server]
listen_address = "127.0.0.1:$broker"
[cluster]
nameservers = ["http://127.0.0.1:$nameserver"]
$broker_extra
TOML
  sleep 1
  "$bin/sluice-nameserver" --config "$work/nameserver.toml" >"$work/nameserver.log" 2>&1 &
  pids+=($!)
  for index in $(seq 1 "$stores"); do
    "$bin/sluice-store" --config "$work/store-$index.toml" >"$work/store-$index.log" 2>&1 &
    pids+=($!)
  done
  "$bin/sluice-broker" --config "$work/broker.toml" >"$work/broker.log" 2>&1 &
  pids+=($!)
  export SLUICE_BOOTSTRAP=127.0.0.1:$nameserver
  for _ in $(seq 1 150); do
    "$cli" cluster status 2>/dev/null | grep -q "stores ($stores)" && break
    sleep 0.2
  done
  # The broker's own partitions (__consumer_offsets) first.
  sleep 2
  "$cli" bench topics --count 1 --partitions "$partitions" --prefix "run$run" \
    --wait-writable-s 300 --status-calls 1 >"$work/bench.out" || true
  cat "$work/bench.out" >&2
  awk '/every partition writable/ {print $4}' "$work/bench.out" >"$work/figure"
  figure=$(cat "$work/figure")
  # CPU seconds (user + system) each process used in the run.
  local names=(etcd nameserver) index
  for index in $(seq 1 "$stores"); do names+=("store-$index"); done
  names+=(broker)
  for index in "${!pids[@]}"; do
    awk -v name="${names[$index]}" -v tick="$(getconf CLK_TCK)" \
      '{printf "  %s CPU: %.1f s\n", name, ($14 + $15) / tick}' "/proc/${pids[$index]}/stat" >&2 || true
  done
  cleanup "$run"
}

figures=()
for run in $(seq 1 "$runs"); do
  echo "== run $run: $partitions partitions, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  figure=""
  run_once "$run"
  [ -n "$figure" ] || { echo "run $run: not writable within 300 s" >&2; figure=300; }
  echo "run $run: every partition writable after $figure s" >&2
  figures+=("$figure")
done
median=$(printf '%s\n' "${figures[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
echo "create-to-writable, $partitions partitions, $runs run(s): ${figures[*]} s; median $median s"
