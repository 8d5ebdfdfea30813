#!/usr/bin/env bash
# A/B of two builds on alternating fresh clusters, for a change to the
# produce/fetch path: RUNS rounds (default 3) of the suite's 1/1/1 and 3/3/2
# produce, consume and latency runs, first on tree A, then on tree B. Each
# tree runs with its own benchmarks/run-sluice.sh (configs may differ
# between builds) and its own target/release binaries, built beforehand:
#
#   git worktree add --detach /tmp/before <commit>
#   (cd /tmp/before && cargo build --release --bins)
#   cargo build --release --bins
#   benchmarks/compare.sh /tmp/before . | tee /tmp/compare.log
#
# Prints every run under "##### round N side A|B"; quote medians.
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 <tree A> <tree B>" >&2; exit 2; }
runs=${RUNS:-3}
for round in $(seq 1 "$runs"); do
  for side in A B; do
    if [ "$side" = A ]; then tree=$1; else tree=$2; fi
    script="$tree/benchmarks/run-sluice.sh"
    [ -x "$script" ] || { echo "$script is missing" >&2; exit 1; }
    echo "##### round $round side $side ($tree)"
    NO_BUILD=1 "$script" \
      "produce --messages 1000000 --size 1024 --batch 100 --partitions 1 --topic p1" \
      "consume --messages 1000000 --size 1024 --partitions 1 --topic p1"
    NO_BUILD=1 "$script" "produce --messages 1000000 --size 1024 --batch 100 --partitions 16 --topic p16"
    NO_BUILD=1 "$script" "produce --messages 500000 --size 1024 --batch 100 --partitions 1 --rate 50000 --topic r1"
    STORES=3 NO_BUILD=1 "$script" "produce --messages 1000000 --size 1024 --batch 100 --partitions 1 --topic e3"
    STORES=3 NO_BUILD=1 "$script" "produce --messages 400000 --size 1024 --batch 100 --partitions 1 --rate 20000 --topic e3r"
  done
done
