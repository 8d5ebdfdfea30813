#!/usr/bin/env bash
# The BENCHMARKS.md suite: each measurement three times on a fresh cluster,
# Sluice (one store, 1/1/1; and three stores, 3/3/2) and NATS JetStream with
# the same message size and batch. Prints every run; BENCHMARKS.md quotes
# the medians. Failover times: tests' sluice-failover-bench (see
# BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")"
runs=${RUNS:-3}
for run in $(seq 1 "$runs"); do
  echo "##### run $run"
  ./run-sluice.sh \
    "produce --messages 1000000 --size 1024 --batch 100 --partitions 1 --topic p1" \
    "consume --messages 1000000 --size 1024 --partitions 1 --topic p1"
  ./run-sluice.sh "produce --messages 1000000 --size 1024 --batch 100 --partitions 1 --in-flight 64 --no-idempotence --topic p64"
  ./run-sluice.sh "produce --messages 1000000 --size 1024 --batch 100 --partitions 16 --topic p16"
  ./run-sluice.sh "produce --messages 500000 --size 1024 --batch 100 --partitions 1 --rate 50000 --topic r1"
  STORES=3 ./run-sluice.sh \
    "produce --messages 1000000 --size 1024 --batch 100 --partitions 1 --topic e3" \
    "consume --messages 1000000 --size 1024 --partitions 1 --topic e3"
  STORES=3 ./run-sluice.sh "produce --messages 400000 --size 1024 --batch 100 --partitions 1 --rate 20000 --topic e3r"
  ./run-nats.sh --messages 1000000 --size 1024 --batch 100 --in-flight 16 --consume
  ./run-nats.sh --messages 500000 --size 1024 --batch 100 --in-flight 16 --rate 50000
done
