#!/usr/bin/env bash
# Runs the BENCHMARKS.md measurements against a real multi-process cluster
# on this machine: etcd, one nameserver, STORES stores (default 1; topics
# then default to ensemble = write quorum = STORES capped at 3, ack quorum a
# majority: 1/1/1 or 3/3/2), one broker (release builds, data in a temp
# dir), then one `sluice bench` per argument, in order on the same cluster,
# then the peak resident memory (VmHWM) of broker and stores.
#
#   benchmarks/run-sluice.sh "produce --messages 1000000 --batch 100" "consume --messages 1000000"
#   benchmarks/run-sluice.sh "cli:topic create big --segment-bytes 1073741824" "produce --topic big"
#   STORES=3 benchmarks/run-sluice.sh "produce --messages 1000000 --batch 100"
#
# Prints, per command, the bytes the stores wrote to disk and the CPU
# seconds of the client, the broker and the
# stores. NO_BUILD=1 skips the build, BIN=<dir> takes the binaries from
# <dir>, LOGS=<dir> keeps the services' logs. TLS=1 runs every hop with
# mutual TLS (certificates from `sluice certs create`; the CLI and the
# bench connect with the client certificate). TRANSACTIONS=1 starts the
# broker with `[transactions] enabled = true` (for `bench produce
# --transactional`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }
# NO_BUILD=1 runs the binaries already in target/release (e.g. while the
# workspace does not build).
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet -p sluice-nameserver -p sluice-broker -p sluice-store -p sluice-cli --bins
# BIN=<dir> runs binaries from elsewhere (e.g. a copy kept for an A/B comparison).
bin=${BIN:-target/release}
work=$(mktemp -d)
pids=()
# LOGS=<dir> keeps the services' logs there (they go with the temp dir otherwise).
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true
  if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS"/; fi
  rm -rf "$work"
}
trap cleanup EXIT

tls_section=""
if [ -n "${TLS:-}" ]; then
  "$bin/sluice" certs create --out-dir "$work/tls" >/dev/null
  tls_section="[tls]
enabled = true
cert_file = \"$work/tls/node.pem\"
key_file = \"$work/tls/node.key\"
ca_file = \"$work/tls/ca.pem\"
client_ca_file = \"$work/tls/ca.pem\""
  export SLUICE_TLS_CA="$work/tls/ca.pem" SLUICE_TLS_CERT="$work/tls/client.pem" SLUICE_TLS_KEY="$work/tls/client.key"
fi

etcd --name bench --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23790 \
  --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
  --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster bench=http://127.0.0.1:23800 \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
stores=${STORES:-1}
ensemble=$(( stores < 3 ? stores : 3 ))
ack=$(( ensemble / 2 + 1 ))
cat >"$work/nameserver.toml" <<TOML
listen_address = "127.0.0.1:27400"
[metadata]
backend = "etcd"
endpoints = ["http://127.0.0.1:23790"]
[topic_defaults]
ensemble_size = $ensemble
write_quorum = $ensemble
ack_quorum = $ack
$tls_section
TOML
for index in $(seq 1 "$stores"); do
  cat >"$work/store-$index.toml" <<TOML
node_id = "store-$index"
listen_address = "127.0.0.1:$(( 27410 + index ))"
nameservers = ["http://127.0.0.1:27400"]
data_dir = "$work/store-$index"
$tls_section
TOML
done
transactions_section=""
if [ -n "${TRANSACTIONS:-}" ]; then
  transactions_section=$'[transactions]\nenabled = true'
fi
cat >"$work/broker.toml" <<TOML
[server]
listen_address = "127.0.0.1:27401"
[cluster]
nameservers = ["http://127.0.0.1:27400"]
$tls_section
$transactions_section
TOML
sleep 1
"$bin/sluice-nameserver" --config "$work/nameserver.toml" >"$work/nameserver.log" 2>&1 &
pids+=($!)
store_pids=()
for index in $(seq 1 "$stores"); do
  "$bin/sluice-store" --config "$work/store-$index.toml" >"$work/store-$index.log" 2>&1 &
  store_pids+=($!); pids+=($!)
done
"$bin/sluice-broker" --config "$work/broker.toml" >"$work/broker.log" 2>&1 &
broker=$!; pids+=($broker)
export SLUICE_BOOTSTRAP=127.0.0.1:27400
for _ in $(seq 1 100); do
  "$bin/sluice" cluster status 2>/dev/null | grep -q "stores ($stores)" && break
  sleep 0.2
done
# CPU seconds (user + system) a process used so far, from /proc/<pid>/stat.
cpu_seconds() {
  local pid
  for pid in "$@"; do cat "/proc/$pid/stat"; done |
    awk -v tick="$(getconf CLK_TCK)" '{total += $14 + $15} END {printf "%.2f", total / tick}'
}
# Bytes the processes had written to the device (/proc/PID/io write_bytes),
# summed: issue 16 tracks disk bytes written per payload byte.
disk_bytes_written() {
  local pid
  for pid in "$@"; do grep '^write_bytes' "/proc/$pid/io"; done | awk '{total += $2} END {printf "%.0f", total}'
}
for command in "$@"; do
  broker_cpu_before=$(cpu_seconds "$broker")
  stores_cpu_before=$(cpu_seconds "${store_pids[@]}")
  stores_written_before=$(disk_bytes_written "${store_pids[@]}")
  case "$command" in
    cli:*)  # a plain CLI command, e.g. "cli:topic create t --partitions 1 --segment-bytes 1073741824"
      echo "== sluice ${command#cli:}"
      # shellcheck disable=SC2086
      "$bin/sluice" ${command#cli:} ;;
    *)
      echo "== sluice bench $command"
      # shellcheck disable=SC2086
      /usr/bin/time -o "$work/time.txt" -f "  client CPU: %U s user, %S s system" "$bin/sluice" bench $command 2>/dev/null
      cat "$work/time.txt" ;;
  esac
  # Per command, so CPU per byte can be compared across runs on a loaded machine.
  awk -v broker="$(cpu_seconds "$broker")" -v broker_before="$broker_cpu_before" \
    -v stores="$(cpu_seconds "${store_pids[@]}")" -v stores_before="$stores_cpu_before" \
    'BEGIN {printf "  broker CPU: %.2f s, stores CPU: %.2f s\n", broker - broker_before, stores - stores_before}'
  awk -v after="$(disk_bytes_written "${store_pids[@]}")" -v before="$stores_written_before" \
    'BEGIN {printf "  stores wrote to disk: %.1f MB\n", (after - before) / 1e6}'
done
store_memory=""
for pid in "${store_pids[@]}"; do
  store_memory+=" $(grep VmHWM /proc/"$pid"/status | awk '{print $2/1024 " MiB"}')"
done
echo "peak resident memory: broker $(grep VmHWM /proc/$broker/status | awk '{print $2/1024 " MiB"}'), stores$store_memory"
