#!/usr/bin/env bash
# Builds one image per Aurora service from deploy/Dockerfile, with docker (BuildKit), podman
# or buildah, whichever works here (AURORA_IMAGE_ENGINE=docker|podman|buildah picks one).
#
#   deploy/build-images.sh                      all five services
#   deploy/build-images.sh ws-gateway eve-ingest
#   deploy/build-images.sh --list               print the image names and exit (no engine needed)
#   deploy/build-images.sh --plan               print "<service> <image> <ops port> <http port>"
#
# Image names (deploy/README.md, "Image names"; scripts/check_image_names.py checks that this
# script, deploy/compose.yaml, the Helm chart and the docs agree):
#
#   [IMAGE_REGISTRY/]aurora/<service>:IMAGE_TAG
#
# Environment:
#   IMAGE_REGISTRY  registry (and path) the images are pushed to, e.g. ghcr.io/acme; default
#                   none (a local name, aurora/<service>)
#   IMAGE_TAG       tag, default the chart's appVersion (k8s/aurora/Chart.yaml), which is the
#                   workspace version in Cargo.toml: the tag the chart pulls when none is set
#   PUSH=1          push each image after building it
#
# Without a working container engine it says so and exits 1: nothing was built.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ALL_SERVICES=(mqtt-bridge device-registry ws-gateway federation-gateway eve-ingest)

die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

ops_port() {
  case "$1" in
    mqtt-bridge) echo 9101 ;;
    device-registry) echo 9102 ;;
    ws-gateway) echo 9103 ;;
    federation-gateway) echo 9104 ;;
    eve-ingest) echo 9105 ;;
    *) die "unknown service: $1 (one of: ${ALL_SERVICES[*]})" ;;
  esac
}

http_port() {
  case "$1" in
    ws-gateway) echo 8000 ;;
    device-registry) echo 8081 ;;
    *) ops_port "$1" ;;
  esac
}

# The renamed variable: its value was a prefix ("ghcr.io/acme/aurora-"), which would now
# silently name other images.
if [[ -n "${IMAGE_PREFIX+set}" ]]; then
  die "IMAGE_PREFIX is no longer read: set IMAGE_REGISTRY to the registry (e.g. ghcr.io/acme); images are <registry>/aurora/<service>:<tag>"
fi

# The tag the chart pulls by default.
app_version() {
  sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' k8s/aurora/Chart.yaml | head -n1
}

image_name() {
  local registry="${IMAGE_REGISTRY:-}"
  registry="${registry%/}"
  printf '%saurora/%s:%s\n' "${registry:+$registry/}" "$1" "$TAG"
}

LIST=0
SERVICES=()
for arg in "$@"; do
  case "$arg" in
    --list) LIST=1 ;;
    --plan) LIST=2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) ops_port "$arg" >/dev/null; SERVICES+=("$arg") ;;
  esac
done
if [[ ${#SERVICES[@]} -eq 0 ]]; then
  SERVICES=("${ALL_SERVICES[@]}")
fi

VERSION="$(app_version)"
[[ -n "$VERSION" ]] || die "no appVersion in k8s/aurora/Chart.yaml"
TAG="${IMAGE_TAG:-$VERSION}"

if [[ "$LIST" != 0 ]]; then
  for svc in "${SERVICES[@]}"; do
    if [[ "$LIST" == 1 ]]; then
      image_name "$svc"
    else
      printf '%s %s %s %s\n' "$svc" "$(image_name "$svc")" "$(ops_port "$svc")" "$(http_port "$svc")"
    fi
  done
  exit 0
fi

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
  die "no container engine here (no docker with a running daemon, no podman, no buildah): no images built. Install one of them, or run \`make images-check\` (buildah, installed with apt)."
fi

REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

echo "build-images: $ENGINE, tag $TAG, services: ${SERVICES[*]}"
for svc in "${SERVICES[@]}"; do
  ops="$(ops_port "$svc")"
  http="$(http_port "$svc")"
  image="$(image_name "$svc")"
  args=(
    -f deploy/Dockerfile
    --build-arg "SERVICE=$svc"
    --build-arg "OPS_PORT=$ops"
    --build-arg "HTTP_PORT=$http"
    --build-arg "VERSION=$VERSION"
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
    *) die "unknown engine $ENGINE (docker, podman or buildah)" ;;
  esac
  if [[ "${PUSH:-0}" == 1 ]]; then
    "$ENGINE" push "$image"
  fi
done
echo "build-images: built ${#SERVICES[@]} image(s)"
