#!/usr/bin/env bash
# Runs the JetStream comparison: a local nats-server (Debian package) with
# file storage in a temp dir, then the bench with the given arguments.
set -euo pipefail
cd "$(dirname "$0")"
command -v nats-server >/dev/null || { echo "nats-server missing: apt-get install nats-server" >&2; exit 1; }
store=$(mktemp -d)
nats-server -js -sd "$store" -p 4222 -a 127.0.0.1 >"$store/server.log" 2>&1 &
server=$!
trap 'kill $server; wait $server 2>/dev/null; rm -rf "$store"' EXIT
sleep 1
cargo run --release --quiet --manifest-path nats-jetstream/Cargo.toml -- "$@"
