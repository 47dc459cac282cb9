#!/usr/bin/env bash
# Builds fieldgate's container image with podman from a binary built already, with no
# registry: the Debian the image's libraries and CA certificates come from is made here
# with debootstrap (once; it stays as localhost/debian:bookworm-slim), the binary is staged at
# deploy/image/fieldgate, and deploy/Dockerfile's `prebuilt` target is built.
#
# Usage: scripts/image.sh BINARY [TAG]        (TAG: localhost/fieldgate:0.1.0)
#   e.g. scripts/image.sh target/release/fieldgate
# Needs podman, runc and debootstrap (Debian packages); runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:?usage: scripts/image.sh BINARY [TAG]}
tag=${2:-localhost/fieldgate:0.1.0}
base=localhost/debian:bookworm-slim
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}

if ! podman image exists "$base"; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-base.XXXXXX")
  echo "making $base with debootstrap"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$dir" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; exit 1; }
  tar -C "$dir" -c . | podman import - "$base" >/dev/null
  rm -rf "$dir" "$dir.log"
fi

mkdir -p deploy/image
trap 'rm -rf deploy/image' EXIT
install -m 0755 "$bin" deploy/image/fieldgate
# Docker's format: OCI images carry no HEALTHCHECK.
podman build --format docker --target prebuilt --build-arg BASE="$base" -f deploy/Dockerfile -t "$tag" .
podman image inspect "$tag" --format '{{.Size}}' | awk -v t="$tag" '{ printf "%s: %.1f MB\n", t, $1 / 1e6 }'
