#!/usr/bin/env bash
# A/B rounds on this machine: for ROUNDS rounds, for 1/1/1 and 3/3/2, each
# configuration in turn on a fresh cluster (benchmarks/run-sluice.sh):
# produce 1 GB, consume it, then produce at a fixed rate (50,000 msg/s at
# 1/1/1, 20,000 at 3/3/2) for the ack latency. Alternating configurations
# inside every round spreads the VM's drift over all of them.
#
#   benchmarks/ab-rounds.sh 3 out.log plain:/tmp/bin-a:0 tls:/tmp/bin-a:1 tls-new:/tmp/bin-b:1
#
# Each configuration is NAME:BIN_DIR:TLS (TLS 1 runs every hop with mutual
# TLS). Binaries are taken as they are (NO_BUILD=1); copy release builds to
# the directories first. Output: one "### round= stores= config=" header
# per run followed by run-sluice.sh's report, appended to OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1 out=$2
shift 2
for round in $(seq 1 "$rounds"); do
  for stores in 1 3; do
    rate=50000
    if [ "$stores" = 3 ]; then rate=20000; fi
    for config in "$@"; do
      name=${config%%:*} rest=${config#*:}
      bin=${rest%%:*} tls=${rest#*:}
      echo "### round=$round stores=$stores config=$name load=$(cut -d' ' -f1 /proc/loadavg)" >>"$out"
      if [ "$tls" = 1 ]; then export TLS=1; else unset TLS; fi
      STORES=$stores NO_BUILD=1 BIN=$bin timeout 300 benchmarks/run-sluice.sh \
        "produce --messages 1000000 --batch 100" "consume --messages 1000000" \
        "produce --topic lat --messages $((rate * 10)) --batch 100 --rate $rate" >>"$out" 2>&1
      sleep 2
    done
  done
done
