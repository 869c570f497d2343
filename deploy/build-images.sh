#!/usr/bin/env bash
# Builds one image per Aurora service from deploy/Dockerfile, with docker (BuildKit), podman
# or buildah, whichever works here (AURORA_IMAGE_ENGINE=docker|podman|buildah picks one).
#
#   deploy/build-images.sh                      all five services
#   deploy/build-images.sh ws-gateway eve-ingest
#
# Environment:
#   IMAGE_PREFIX   repository prefix, default "aurora/" (images are ${IMAGE_PREFIX}<service>)
#   IMAGE_TAG      tag, default the short git commit (or "dev")
#   PUSH=1         push each image after building it
#   REQUIRE_ENGINE=1  fail (exit 1) instead of exiting 0 when no engine is available
#
# With no container engine (or a docker client without a daemon) it says so and exits 0, so
# `make images` is harmless on a machine that cannot build images.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ALL_SERVICES=(mqtt-bridge device-registry ws-gateway federation-gateway eve-ingest)

ops_port() {
  case "$1" in
    mqtt-bridge) echo 9101 ;;
    device-registry) echo 9102 ;;
    ws-gateway) echo 9103 ;;
    federation-gateway) echo 9104 ;;
    eve-ingest) echo 9105 ;;
    *) echo "unknown service: $1 (one of: ${ALL_SERVICES[*]})" >&2; return 1 ;;
  esac
}

http_port() {
  case "$1" in
    ws-gateway) echo 8000 ;;
    device-registry) echo 8081 ;;
    *) ops_port "$1" ;;
  esac
}

detect_engine() {
  if [[ -n "${AURORA_IMAGE_ENGINE:-}" ]]; then
    echo "$AURORA_IMAGE_ENGINE"
    return
  fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
    echo podman
  elif command -v buildah >/dev/null 2>&1; then
    echo buildah
  fi
}

ENGINE="$(detect_engine)"
if [[ -z "$ENGINE" ]]; then
  msg="build-images: no container engine here (no working docker daemon, podman or buildah): no images built."
  if [[ "${REQUIRE_ENGINE:-0}" == 1 ]]; then
    echo "$msg" >&2
    exit 1
  fi
  echo "$msg Install one of them to build; exiting 0."
  exit 0
fi

if [[ $# -gt 0 ]]; then
  SERVICES=("$@")
else
  SERVICES=("${ALL_SERVICES[@]}")
fi

PREFIX="${IMAGE_PREFIX:-aurora/}"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
TAG="${IMAGE_TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

echo "build-images: $ENGINE, tag $TAG, services: ${SERVICES[*]}"
for svc in "${SERVICES[@]}"; do
  ops="$(ops_port "$svc")"
  http="$(http_port "$svc")"
  image="${PREFIX}${svc}:${TAG}"
  args=(
    -f deploy/Dockerfile
    --build-arg "SERVICE=$svc"
    --build-arg "OPS_PORT=$ops"
    --build-arg "HTTP_PORT=$http"
    --build-arg "VERSION=${VERSION:-0.1.0}"
    --build-arg "REVISION=$REVISION"
    --build-arg "CREATED=$CREATED"
    -t "$image"
  )
  if [[ "$http" == "$ops" ]]; then
    echo "==> $image (ops port $ops)"
  else
    echo "==> $image (ops port $ops, http port $http)"
  fi
  case "$ENGINE" in
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . ;;
    podman) podman build --ignorefile deploy/Dockerfile.dockerignore "${args[@]}" . ;;
    buildah) buildah bud --layers --ignorefile deploy/Dockerfile.dockerignore "${args[@]}" . ;;
    *) echo "build-images: unknown engine $ENGINE" >&2; exit 1 ;;
  esac
  if [[ "${PUSH:-0}" == 1 ]]; then
    "$ENGINE" push "$image"
  fi
done
echo "build-images: built ${#SERVICES[@]} image(s)"
