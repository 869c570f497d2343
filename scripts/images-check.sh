#!/usr/bin/env bash
# `make images-check`: builds the five service images here, with no daemon and no registry,
# and runs each one. Not part of `make test` (the release build is too slow for CI).
#
#  1. release binaries of the five services and the `aurora` CLI, built on the host with cargo
#     (AURORA_IMAGES_SKIP_BUILD=1 takes those already in target/release);
#  2. a Debian bookworm base made locally with `debootstrap --variant=minbase` from the Debian
#     mirror of /etc/apt (nothing is pulled from a container registry);
#  3. one image per service from deploy/Dockerfile, the production Dockerfile, with
#     BINARIES=prebuilt and RUNTIME_BASE=<that base>: `buildah bud --storage-driver vfs
#     --isolation chroot --pull=never`, named as deploy/build-images.sh names them
#     ([IMAGE_REGISTRY/]aurora/<service>:<tag>);
#  4. in each image, with `buildah run --isolation chroot`: `<service> --help` and `aurora
#     --help`; then the image's entrypoint with the image's environment (plus loopback
#     addresses of Redis, NATS, Mosquitto and a PostgreSQL database of its own), the image's
#     HEALTHCHECK command until it passes, /readyz, and SIGTERM, after which the service must
#     exit 0.
#
# buildah and debootstrap are installed with apt-get when missing. Images and layers are kept
# in their own storage, $IMAGES_CHECK_DIR/storage (default .cache/images-check): list them with
#   buildah --storage-driver vfs --root .cache/images-check/storage images
# Environment: IMAGES_CHECK_DIR, IMAGE_REGISTRY, IMAGE_TAG (as build-images.sh),
#              AURORA_IMAGES_SKIP_BUILD=1, DEBIAN_MIRROR (default: from /etc/apt).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SERVICES=(mqtt-bridge device-registry ws-gateway federation-gateway eve-ingest)
DIR="${IMAGES_CHECK_DIR:-$ROOT/.cache/images-check}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
SUITE=bookworm
BASE_IMAGE="localhost/aurora/base:${SUITE}-minbase"
REPORT="$DIR/report.txt"
START=$SECONDS

log() { printf '\n==> %s (%ss)\n' "$*" "$((SECONDS - START))"; }
die() { printf 'images-check: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v buildah >/dev/null 2>&1 || missing+=(buildah)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if [[ ${#missing[@]} -eq 0 ]]; then
    return
  fi
  log "installing ${missing[*]} with apt-get"
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "${missing[*]} missing and apt-get needs root: install them"
    sudo=(sudo)
  fi
  { "${sudo[@]}" apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

ensure_tools
[[ "$(id -u)" == 0 ]] || die "buildah with --isolation chroot and debootstrap need root here"

BUILDAH=(buildah --storage-driver vfs --root "$DIR/storage" --runroot "$DIR/run")

# --- 1. binaries ---------------------------------------------------------------------------

CONTEXT="$DIR/context"
if [[ "${AURORA_IMAGES_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release (the five services and the aurora CLI)"
  pkgs=()
  for svc in "${SERVICES[@]}"; do pkgs+=(-p "$svc"); done
  cargo build --release "${pkgs[@]}" -p aurora-cli --bins
fi
for bin in "${SERVICES[@]}" aurora; do
  [[ -x "target/release/$bin" ]] || die "target/release/$bin is missing (run without AURORA_IMAGES_SKIP_BUILD)"
done

# --- 2. the base image -----------------------------------------------------------------------

debian_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  # deb822 sources (URIs: + Suites: bookworm), then one-line sources.
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    uri="$(awk -v s="$SUITE" '
      /^$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0 }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
      END { if (u != "" && ok) print u }' "$f" | sed -n 1p)"
    if [[ -n "$uri" ]]; then echo "$uri"; return; fi
  done
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk -v s="$SUITE" '$1 == "deb" && $0 ~ " " s " " { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' | sed -n 1p)"
  [[ -n "$uri" ]] || die "no Debian mirror for $SUITE in /etc/apt: set DEBIAN_MIRROR"
  echo "$uri"
}

# What debian:bookworm-slim does as well, in the root file system $1 (never empty): dpkg
# installs no documentation, manuals or translations, apt keeps no package caches (the same two
# files as the official image), and none are left from debootstrap.
slim() {
  local fs="${1:?slim needs the root file system}"
  [[ "$fs" != / && -d "$fs/etc/apt" && -d "$fs/etc/dpkg" ]] || die "slim: $fs is not a debootstrap root"
  printf '%s\n' \
    'path-exclude /usr/share/doc/*' \
    'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/groff/*' \
    'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/lintian/*' \
    'path-exclude /usr/share/linda/*' \
    'path-exclude /usr/share/locale/*' \
    'path-include /usr/share/locale/locale.alias' >"$fs/etc/dpkg/dpkg.cfg.d/docker"
  local clean='rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true'
  printf '%s\n' \
    "DPkg::Post-Invoke { \"$clean\"; };" \
    "APT::Update::Post-Invoke { \"$clean\"; };" \
    'Dir::Cache::pkgcache "";' \
    'Dir::Cache::srcpkgcache "";' >"$fs/etc/apt/apt.conf.d/docker-clean"
  find "$fs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$fs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$fs"/var/cache/apt/archives/*.deb "$fs"/var/cache/apt/*.bin "$fs"/var/lib/apt/lists/* \
    "$fs"/usr/share/man/* "$fs"/usr/share/info/* "$fs"/usr/share/groff/* "$fs"/usr/share/lintian/*
}

if ! "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  rootfs="$DIR/rootfs-$SUITE"
  if [[ ! -f "$rootfs/.complete" ]]; then
    mirror="$(debian_mirror)"
    log "debootstrap --variant=minbase $SUITE from $mirror"
    rm -rf "$rootfs" "$rootfs.tmp"
    debootstrap --variant=minbase "$SUITE" "$rootfs.tmp" "$mirror" >"$DIR/debootstrap.log" 2>&1 \
      || { tail -n 20 "$DIR/debootstrap.log" >&2; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
    slim "$rootfs.tmp"
    mv "$rootfs.tmp" "$rootfs"
    touch "$rootfs/.complete"
  fi
  log "importing the base as $BASE_IMAGE"
  tar --numeric-owner --exclude=./.complete -C "$rootfs" -cf "$DIR/base.tar" .
  ctr="$("${BUILDAH[@]}" from --pull-never scratch)"
  "${BUILDAH[@]}" add "$ctr" "$DIR/base.tar" / >/dev/null
  "${BUILDAH[@]}" config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=debootstrap --variant=minbase $SUITE" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -f "$DIR/base.tar"
fi

# --- 3. the images ---------------------------------------------------------------------------

rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/prebuilt/bin" "$CONTEXT/deploy"
cp deploy/Dockerfile deploy/healthcheck.sh "$CONTEXT/deploy/"
# "<service> <image> <ops port> <http port>", the names and ports `make images` uses.
mapfile -t PLAN < <(bash deploy/build-images.sh --plan "${SERVICES[@]}")
[[ ${#PLAN[@]} -eq ${#SERVICES[@]} ]] || die "deploy/build-images.sh --plan failed"
IMAGES=()
for line in "${PLAN[@]}"; do
  read -r _ image _ _ <<<"$line"
  IMAGES+=("$image")
done
VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' k8s/aurora/Chart.yaml | sed -n 1p)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"


cp target/release/aurora "$CONTEXT/prebuilt/bin/aurora"
{
  printf 'images-check %s, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(buildah --version)"
  printf 'base %s (debootstrap --variant=minbase %s), %s\n' "$BASE_IMAGE" "$SUITE" \
    "$("${BUILDAH[@]}" images --format '{{.Size}}' "$BASE_IMAGE" | sed -n 1p)"
  printf 'binaries of %s%s\n' "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
    "$([[ "${AURORA_IMAGES_SKIP_BUILD:-0}" == 1 ]] && echo ' (AURORA_IMAGES_SKIP_BUILD: as found in target/release)')"
} >"$REPORT"

for i in "${!SERVICES[@]}"; do
  read -r svc image ops http <<<"${PLAN[$i]}"
  # Only this service's binary next to the CLI, with the entrypoint's link.
  find "$CONTEXT/prebuilt/bin" -mindepth 1 ! -name aurora -delete
  cp "target/release/$svc" "$CONTEXT/prebuilt/bin/$svc"
  ln -s "$svc" "$CONTEXT/prebuilt/bin/aurora-service"
  log "buildah bud $image"
  "${BUILDAH[@]}" bud --isolation chroot --pull=never --layers --format docker \
    -f deploy/Dockerfile \
    --build-arg BINARIES=prebuilt --build-arg "RUNTIME_BASE=$BASE_IMAGE" \
    --build-arg "SERVICE=$svc" --build-arg "OPS_PORT=$ops" \
    --build-arg "HTTP_PORT=$http" --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" \
    -t "$image" "$CONTEXT" >"$DIR/build-$svc.log" 2>&1 \
    || { tail -n 30 "$DIR/build-$svc.log" >&2; die "building $image failed (log: $DIR/build-$svc.log)"; }
done

# --- 4. run each image ---------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Every descendant of a process (the service under `buildah run`), deepest first.
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1"); do
    descendants "$child"
    echo "$child"
  done
}

DB="aurora_images_check_$$"
NS="imgcheck$$"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB" >/dev/null \
  || die "cannot create database $DB on 127.0.0.1:5432 (make services)"
CONTAINERS=()
SERVICE_PID=""
cleanup() {
  if [[ -n "$SERVICE_PID" ]]; then
    for pid in $(descendants "$SERVICE_PID") "$SERVICE_PID"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  for c in "${CONTAINERS[@]}"; do "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1 || true; done
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

failures=0
for i in "${!SERVICES[@]}"; do
  svc="${SERVICES[$i]}"
  image="${IMAGES[$i]}"
  log "running $image"
  ctr="$("${BUILDAH[@]}" from --pull-never "$image")"
  CONTAINERS+=("$ctr")
  size="$("${BUILDAH[@]}" images --format '{{.Size}}' "$image" | sed -n 1p)"
  entrypoint="$("${BUILDAH[@]}" inspect --type image --format '{{range .Docker.Config.Entrypoint}}{{.}} {{end}}' "$image")"
  health="$("${BUILDAH[@]}" inspect --type image --format '{{if .Docker.Config.Healthcheck}}{{range .Docker.Config.Healthcheck.Test}}{{.}} {{end}}{{end}}' "$image")"
  user="$("${BUILDAH[@]}" inspect --type image --format '{{.Docker.Config.User}}' "$image")"
  read -r -a health_cmd <<<"$health"
  [[ "${health_cmd[0]:-}" == CMD ]] || die "$image: no exec-form HEALTHCHECK (got: $health)"
  health_cmd=("${health_cmd[@]:1}")
  read -r -a entry_cmd <<<"$entrypoint"

  # Whole outputs first (a pipe closed early makes buildah complain), then their first lines.
  help_out="$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- "/usr/local/bin/$svc" --help)" \
    || die "$image: $svc --help failed"
  cli_out="$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/aurora --help)" \
    || die "$image: aurora --help failed"
  help_line="${help_out%%$'\n'*}"
  cli_line="${cli_out%%$'\n'*}"
  uid="$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- id -u)"
  printf '  %s --help: %s\n  aurora --help: %s\n  runs as uid %s (USER %s), size %s\n' "$svc" "$help_line" "$cli_line" "$uid" "$user" "$size"

  ops="$(free_port)"
  envs=(
    --env "AURORA_OPS_ADDR=127.0.0.1:$ops"
    --env "AURORA_NAMESPACE=$NS"
    --env "AURORA_SITE_ID=images-check"
    --env "AURORA_INSTANCE_ID=$svc-images-check"
    --env "AURORA_REDIS_URL=redis://127.0.0.1:6379"
    --env "AURORA_NATS_URL=nats://127.0.0.1:4222"
    --env "AURORA_SHUTDOWN_TIMEOUT=5s"
  )
  case "$svc" in
    mqtt-bridge) envs+=(--env "AURORA_MQTT_BRIDGE_MQTT_URL=mqtt://127.0.0.1:1883") ;;
    device-registry)
      envs+=(--env "AURORA_DEVICE_REGISTRY_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB"
             --env "AURORA_DEVICE_REGISTRY_HTTP_ADDR=127.0.0.1:$(free_port)"
             --env "AURORA_JWT_SECRET=images-check-only-0123456789abcdef0123456789") ;;
    ws-gateway)
      envs+=(--env "AURORA_WS_GATEWAY_HTTP_ADDR=127.0.0.1:$(free_port)"
             --env "AURORA_JWT_SECRET=images-check-only-0123456789abcdef0123456789") ;;
  esac

  "${BUILDAH[@]}" run --isolation chroot "${envs[@]}" "$ctr" -- "${entry_cmd[@]}" >"$DIR/run-$svc.log" 2>&1 &
  SERVICE_PID=$!
  t_start=$SECONDS
  healthy=""
  for _ in $(seq 1 60); do
    if "${BUILDAH[@]}" run --isolation chroot "${envs[@]}" "$ctr" -- "${health_cmd[@]}" 2>"$DIR/health-$svc.err"; then
      healthy="$((SECONDS - t_start))s after start"
      break
    fi
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.5
  done
  ready="no"
  if "${BUILDAH[@]}" run --isolation chroot "${envs[@]}" "$ctr" -- /usr/local/bin/aurora-healthcheck /readyz 2>/dev/null; then
    ready="yes"
  fi
  # SIGTERM to the service (the deepest process under `buildah run`), as a container runtime sends it.
  service_proc="$(descendants "$SERVICE_PID" | sed -n 1p)"
  t0=$SECONDS
  if [[ -n "$service_proc" ]]; then kill -TERM "$service_proc" 2>/dev/null || true; fi
  exit_code=0
  wait "$SERVICE_PID" || exit_code=$?
  SERVICE_PID=""
  stopped="exit $exit_code $((SECONDS - t0))s after SIGTERM"
  if [[ -z "$healthy" ]]; then
    failures=$((failures + 1))
    printf '  health check (%s): FAILED: %s\n' "${health_cmd[*]}" "$(cat "$DIR/health-$svc.err")"
    tail -n 20 "$DIR/run-$svc.log" | sed 's/^/    /'
  else
    printf '  health check (%s): passed %s; /readyz: %s; %s\n' "${health_cmd[*]}" "$healthy" "$ready" "$stopped"
  fi
  if [[ "$exit_code" != 0 ]]; then
    failures=$((failures + 1))
    tail -n 20 "$DIR/run-$svc.log" | sed 's/^/    /'
  fi
  health_result="FAILED"
  if [[ -n "$healthy" ]]; then health_result="passed $healthy"; fi
  printf '%s  %s  --help: "%s"; health check %s; /readyz %s; %s\n' \
    "$image" "$size" "$help_line" "$health_result" "$ready" "$stopped" >>"$REPORT"
done

log "summary ($REPORT)"
cat "$REPORT"
"${BUILDAH[@]}" images
[[ "$failures" == 0 ]] || die "$failures failure(s)"
printf '\nimages-check: %d images built and run in %ss\n' "${#SERVICES[@]}" "$((SECONDS - START))"
