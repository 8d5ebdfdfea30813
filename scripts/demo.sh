#!/usr/bin/env bash
# Brings up `sluice dev` (nameserver, broker and store in one process, no
# etcd needed) and shows a produce/consume round trip, then stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p sluice-cli
sluice=target/release/sluice
data_dir=$(mktemp -d)
trap 'kill $dev_pid 2>/dev/null || true; wait $dev_pid 2>/dev/null || true; rm -rf "$data_dir"' EXIT
"$sluice" dev --data-dir "$data_dir" &
dev_pid=$!
for _ in $(seq 1 100); do
  "$sluice" cluster status >/dev/null 2>&1 && break
  sleep 0.2
done
set -x
"$sluice" cluster status
"$sluice" topic create greetings --partitions 3
printf 'hello\nbonjour\nhallo\n' | "$sluice" produce greetings --key demo
"$sluice" produce greetings "one more" --header source=demo
"$sluice" consume greetings --group demo-group --from-beginning --max-messages 4 --print-offset --print-key
"$sluice" group describe demo-group
"$sluice" topic describe greetings
