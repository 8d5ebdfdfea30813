#!/usr/bin/env bash
# Runs the whole Sluice test suite: unit tests, store crash tests and the
# process-level cluster tests (real etcd, real service binaries).
# Installs protoc and etcd through apt when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --with-etcd
# The cluster tests spawn the service binaries and the copier example
# (tests/tests/copier.rs); build them first.
cargo build --workspace --bins --examples
# The whole log is kept so that, on failure, each failed test's panic is
# repeated at the end (CI shows only the tail of the output).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! cargo test --workspace --no-fail-fast 2>&1 | tee "$log"; then
  python3 scripts/failure-summary.py "$log"
  exit 101
fi
# Part of the process suite once more with mutual TLS and authorisation on
# every hop (ClusterSpec::tls), so security does not live only in its own
# tests.
SLUICE_TEST_TLS=1 cargo test -p sluice-tests --test replication --test failover --test subscriptions
