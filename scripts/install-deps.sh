#!/usr/bin/env bash
# Installs what building and testing Sluice needs from Debian/Ubuntu packages
# when it is missing: protoc (protobuf-compiler), and for the tests etcd
# (etcd-server) and the headless browser the web console's test drives
# (Debian's chromium).
set -euo pipefail
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# etcd-client compiles etcd's protos, which import protobuf's well-known types.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if [ "${1:-}" = "--with-etcd" ]; then
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
