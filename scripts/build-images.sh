#!/usr/bin/env bash
# Builds every container image compose.yaml uses from this machine's own
# files, pulling nothing from any registry:
#
#   sluice/nameserver:dev  sluice/broker:dev  sluice/store:dev  sluice/sluice:dev
#   sluice/etcd:<version of /usr/bin/etcd>   (3.4.23 from Debian bookworm)
#
# The Sluice binaries are built on the host (`cargo build --release`), the
# etcd and etcdctl binaries come from Debian's etcd-server and etcd-client
# packages. Each image is `FROM scratch`: the binaries, the shared libraries
# `ldd` reports for them (and the dynamic loader), a passwd/group entry for
# the unprivileged user 65532, and nothing else (no shell). Every service
# image also carries the `sluice` CLI, whose `sluice health` is the compose
# healthcheck; the CLI image has /etc/sluice/tls owned by that user, where
# compose's `certs` service writes the cluster's certificates.
#
# Run it once, and again after changing the code; it is idempotent (Docker's
# build cache makes an unchanged image a no-op). Users who can pull from a
# registry can use docker/Dockerfile and docker/etcd.Dockerfile instead (see
# the README).
#
# Usage: scripts/build-images.sh [--from-dockerfiles]
#   --from-dockerfiles  build with docker/Dockerfile and docker/etcd.Dockerfile
#                       instead (pulls rust:1-bookworm and debian:bookworm-slim)
#
# Environment:
#   SLUICE_IMAGE_TAG           tag of the Sluice images (default: dev)
#   SLUICE_SKIP_CARGO_BUILD=1  use the binaries already in target/release
#   SLUICE_ETCD_BINARY         etcd to package (default: /usr/bin/etcd)
#   SLUICE_ETCDCTL_BINARY      etcdctl to package (default: /usr/bin/etcdctl)
#   SLUICE_ETCD_VERSION        etcd tag with --from-dockerfiles (default: 3.4.23,
#                              what Debian bookworm's etcd-server installs)
set -euo pipefail
cd "$(dirname "$0")/.."
repository_root=$(pwd)

image_tag=${SLUICE_IMAGE_TAG:-dev}
etcd_binary=${SLUICE_ETCD_BINARY:-/usr/bin/etcd}
etcdctl_binary=${SLUICE_ETCDCTL_BINARY:-/usr/bin/etcdctl}
# The unprivileged user every container runs as (no name needed: numeric
# ids work without /etc/passwd, which the images have only for tools).
run_uid=65532

fail() {
  echo "build-images: error: $*" >&2
  exit 1
}
step() { echo "build-images: $*" >&2; }

from_dockerfiles=0
for argument in "$@"; do
  case $argument in
    --from-dockerfiles) from_dockerfiles=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) fail "unknown argument $argument (see --help)" ;;
  esac
done

# --- prerequisites -----------------------------------------------------------
command -v docker >/dev/null 2>&1 || fail "docker is not installed (Debian: apt-get install docker.io)"
docker_error=$(docker info 2>&1 >/dev/null) || fail "cannot talk to the Docker daemon: ${docker_error}"

if [ "$from_dockerfiles" = "1" ]; then
  etcd_tag=sluice/etcd:${SLUICE_ETCD_VERSION:-3.4.23}
  for target in nameserver broker store cli; do
    image=$target
    [ "$target" != cli ] || image=sluice
    step "building sluice/$image:$image_tag from docker/Dockerfile (target $target)"
    docker build -f docker/Dockerfile --target "$target" -t "sluice/$image:$image_tag" . ||
      fail "docker build --target $target failed"
  done
  step "building $etcd_tag from docker/etcd.Dockerfile"
  docker build -f docker/etcd.Dockerfile -t "$etcd_tag" docker || fail "docker build of $etcd_tag failed"
  echo "built images:"
  printf '  sluice/%s:%s\n' nameserver "$image_tag" broker "$image_tag" store "$image_tag" sluice "$image_tag"
  echo "  $etcd_tag"
  exit 0
fi

command -v ldd >/dev/null 2>&1 || fail "ldd is not installed (Debian: libc-bin)"

install_packages() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  step "installing from Debian's packages: $*"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@"
}

missing_packages=()
if [ -z "${SLUICE_ETCD_BINARY:-}" ] && [ ! -x "$etcd_binary" ]; then missing_packages+=(etcd-server); fi
if [ -z "${SLUICE_ETCDCTL_BINARY:-}" ] && [ ! -x "$etcdctl_binary" ]; then missing_packages+=(etcd-client); fi
if [ ${#missing_packages[@]} -gt 0 ]; then
  install_packages "${missing_packages[@]}" || fail "could not install ${missing_packages[*]}"
fi
[ -x "$etcd_binary" ] || fail "no etcd at $etcd_binary (Debian: apt-get install etcd-server, or set SLUICE_ETCD_BINARY)"
[ -x "$etcdctl_binary" ] || fail "no etcdctl at $etcdctl_binary (Debian: apt-get install etcd-client, or set SLUICE_ETCDCTL_BINARY)"
etcd_version=$("$etcd_binary" --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -n 1)
[ -n "$etcd_version" ] || fail "cannot read the version of $etcd_binary (\`$etcd_binary --version\` printed no 'etcd Version:' line)"

# --- the Sluice binaries -----------------------------------------------------
sluice_binaries=(sluice-nameserver sluice-broker sluice-store sluice)
if [ "${SLUICE_SKIP_CARGO_BUILD:-0}" != "1" ]; then
  command -v cargo >/dev/null 2>&1 || fail "cargo is not installed (https://rustup.rs), or set SLUICE_SKIP_CARGO_BUILD=1 with binaries in target/release"
  bash scripts/install-deps.sh
  step "building the release binaries"
  cargo build --release -p sluice-nameserver -p sluice-broker -p sluice-store -p sluice-cli
fi
for binary in "${sluice_binaries[@]}"; do
  [ -x "target/release/$binary" ] || fail "target/release/$binary is missing: run without SLUICE_SKIP_CARGO_BUILD"
done

# --- image assembly ----------------------------------------------------------
work_directory=$(mktemp -d "${TMPDIR:-/tmp}/sluice-images.XXXXXX")
trap 'rm -rf "$work_directory"' EXIT

# copy_with_libraries ROOTFS SOURCE DESTINATION: installs an executable at
# DESTINATION inside ROOTFS, with every shared library (and the loader) that
# ldd reports for it, at the same paths as on this machine.
copy_with_libraries() {
  local rootfs=$1 source=$2 destination=$3 ldd_output line library
  install -D -m 0755 "$source" "$rootfs$destination"
  # Debug info (the release profile keeps line tables) is for profiling on
  # the host, not for the image.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$rootfs$destination" || fail "strip $rootfs$destination failed"
  fi
  if ! ldd_output=$(ldd "$source" 2>&1); then
    case $ldd_output in
      *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
      *) fail "ldd $source failed: $ldd_output" ;;
    esac
  fi
  while IFS= read -r line; do
    case $line in
      *"=> not found"*) fail "$source needs a library that is not installed: ${line## }" ;;
      *"statically linked"*) return 0 ;;
    esac
    library=""
    if [[ $line == *"=> /"* ]]; then
      library=$(awk '{print $3}' <<<"$line")
    elif [[ $line =~ ^[[:space:]]*(/[^[:space:]]+) ]]; then
      library=${BASH_REMATCH[1]}
    fi
    [ -n "$library" ] || continue # linux-vdso: provided by the kernel
    [ -e "$library" ] || fail "ldd lists $library for $source but it does not exist"
    if [ ! -e "$rootfs$library" ]; then
      mkdir -p "$rootfs$(dirname "$library")"
      # -L: the image needs the file, not the host's symlink to it.
      cp -L "$library" "$rootfs$library"
    fi
  done <<<"$ldd_output"
}

# new_context NAME: a build context with the files every image shares.
new_context() {
  local context="$work_directory/$1"
  mkdir -p "$context/rootfs/etc" "$context/rootfs/tmp" "$context/owned"
  chmod 1777 "$context/rootfs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nsluice:x:%s:%s:sluice:/nonexistent:/sbin/nologin\n' \
    "$run_uid" "$run_uid" >"$context/rootfs/etc/passwd"
  printf 'root:x:0:\nsluice:x:%s:\n' "$run_uid" >"$context/rootfs/etc/group"
  # glibc's resolver reads this; Docker provides /etc/hosts and resolv.conf.
  printf 'hosts: files dns\n' >"$context/rootfs/etc/nsswitch.conf"
  echo "$context"
}

# write_dockerfile CONTEXT OWNED_DIRECTORY EXPOSE ENTRYPOINT_JSON TITLE [REVISION]
# OWNED_DIRECTORY (inside the image) is created empty and owned by the run
# user, so a named volume mounted there starts writable.
write_dockerfile() {
  local context=$1 owned_directory=$2 expose=$3 entrypoint=$4 title=$5 revision=${6:-}
  {
    echo "# Generated by scripts/build-images.sh: assembled from host files, pulls nothing."
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    if [ -n "$owned_directory" ]; then
      echo "COPY --chown=$run_uid:$run_uid owned/ $owned_directory/"
    fi
    echo "LABEL org.opencontainers.image.title=\"$title\" org.opencontainers.image.source=\"scripts/build-images.sh\""
    # Only images of this repository's code carry its revision, so an
    # unchanged etcd image stays the same image across commits.
    [ -z "$revision" ] || echo "LABEL org.opencontainers.image.revision=\"$revision\""
    echo "USER $run_uid:$run_uid"
    [ -z "$expose" ] || echo "EXPOSE $expose"
    echo "ENTRYPOINT $entrypoint"
  } >"$context/Dockerfile"
}

built_tags=()
build_image() {
  local context=$1 tag=$2
  step "building $tag"
  # --network none: nothing in these builds may reach a registry (or anything).
  local output previous current
  previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  if ! output=$(docker build --quiet --network none --tag "$tag" "$context" 2>&1); then
    echo "$output" >&2
    fail "docker build of $tag failed"
  fi
  current=$(docker image inspect --format '{{.Id}}' "$tag")
  if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    # The replaced image has lost its tag; remove it so rebuilds do not pile
    # up untagged images (kept while a container still uses it).
    docker rmi "$previous" >/dev/null 2>&1 || true
  fi
  built_tags+=("$tag")
}

sluice_revision=$(git -C "$repository_root" rev-parse --short HEAD 2>/dev/null || echo unknown)

# service_image NAME BINARY PORT OWNED_DIRECTORY
service_image() {
  local name=$1 binary=$2 port=$3 owned_directory=$4 context
  context=$(new_context "$name")
  copy_with_libraries "$context/rootfs" "target/release/$binary" "/usr/local/bin/$binary"
  copy_with_libraries "$context/rootfs" "target/release/sluice" "/usr/local/bin/sluice"
  write_dockerfile "$context" "$owned_directory" "$port" "[\"/usr/local/bin/$binary\"]" "sluice $name" "$sluice_revision"
  build_image "$context" "sluice/$name:$image_tag"
}

service_image nameserver sluice-nameserver 7400 ""
service_image broker sluice-broker 7401 ""
service_image store sluice-store 7402 /var/lib/sluice/store

cli_context=$(new_context sluice)
copy_with_libraries "$cli_context/rootfs" target/release/sluice /usr/local/bin/sluice
# /etc/sluice/tls owned by the run user: compose.yaml's one-shot `certs`
# service writes the cluster's certificates there, into a new named volume,
# which takes the directory's owner from the image.
write_dockerfile "$cli_context" /etc/sluice/tls "" '["/usr/local/bin/sluice"]' "sluice CLI" "$sluice_revision"
build_image "$cli_context" "sluice/sluice:$image_tag"

etcd_context=$(new_context etcd)
copy_with_libraries "$etcd_context/rootfs" "$etcd_binary" /usr/local/bin/etcd
copy_with_libraries "$etcd_context/rootfs" "$etcdctl_binary" /usr/local/bin/etcdctl
write_dockerfile "$etcd_context" /var/lib/etcd "2379 2380" '["/usr/local/bin/etcd"]' "etcd $etcd_version"
# etcdctl speaks the v3 API by default from 3.4 on; said explicitly anyway.
echo 'ENV ETCDCTL_API=3' >>"$etcd_context/Dockerfile"
build_image "$etcd_context" "sluice/etcd:$etcd_version"

if [ "$etcd_version" != "3.4.23" ]; then
  step "note: compose.yaml defaults to sluice/etcd:3.4.23; run compose with SLUICE_ETCD_IMAGE=sluice/etcd:$etcd_version"
fi
echo "built images:"
for tag in "${built_tags[@]}"; do
  echo "  $tag"
done
