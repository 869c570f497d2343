#!/usr/bin/env bash
# Makes sure the servers the product talks to run on loopback: Redis (6379), NATS with
# JetStream (4222), Mosquitto (1883) and PostgreSQL (5432). A server already listening is left
# alone; a missing one is installed with apt (Debian) and started. Safe to run again.
set -euo pipefail

log() { printf 'services: %s\n' "$*"; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 50); do
    if listening "$port"; then log "$name is up on 127.0.0.1:$port"; return 0; fi
    sleep 0.2
  done
  log "$name did not come up on 127.0.0.1:$port"
  return 1
}

apt_updated=0
ensure_pkg() {
  local bin=$1; shift
  command -v "$bin" >/dev/null 2>&1 && return 0
  [ -x "$bin" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    log "$bin is missing and this is not a Debian machine: install $* yourself"
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $sudo apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
  listening 6379 && { log "Redis already runs"; return 0; }
  ensure_pkg redis-server redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/aurora-redis.log
  wait_for Redis 6379
}

start_nats() {
  listening 4222 && { log "NATS already runs"; return 0; }
  ensure_pkg nats-server nats-server
  local bin store
  bin=$(command -v nats-server)
  store=/var/lib/nats-server
  mkdir -p "$store" 2>/dev/null || store=/tmp/aurora-nats
  mkdir -p "$store"
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$store" >/tmp/aurora-nats.log 2>&1 &
  wait_for NATS 4222
}

start_mosquitto() {
  listening 1883 && { log "Mosquitto already runs"; return 0; }
  ensure_pkg mosquitto mosquitto mosquitto-clients
  if [ -f /etc/mosquitto/mosquitto.conf ]; then
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    mosquitto -d -p 1883
  fi
  wait_for Mosquitto 1883
}

# The highest version-numbered directory under $1 (PostgreSQL keeps one per major version).
newest_version() {
  find "$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1
}

start_postgres() {
  listening 5432 && { log "PostgreSQL already runs"; return 0; }
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    ensure_pkg /usr/lib/postgresql/15/bin/initdb postgresql
  fi
  local version
  version=$(newest_version /etc/postgresql)
  if [ -z "$version" ]; then
    version=$(newest_version /usr/lib/postgresql)
    pg_createcluster "$version" main >/dev/null
  fi
  # Trust on loopback, as the tests and the default AURORA_DEVICE_REGISTRY_DATABASE_URL expect.
  local hba=/etc/postgresql/$version/main/pg_hba.conf
  if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for PostgreSQL 5432
  if command -v psql >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null 2>&1 || true
  fi
}

# The console test of ws-gateway drives Debian's Chromium headless.
ensure_browser() {
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  ensure_pkg chromium chromium || log "Chromium could not be installed: the console test will fail"
}

# promtool (`make test` tests the alert rules) and the Prometheus server the scrape test of
# tests/tests/it/prometheus.rs starts on a free port: Debian's prometheus package. Its system
# service is not started (policy-rc.d, or no systemd here); the tests start their own.
ensure_prometheus() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then return 0; fi
  ensure_pkg promtool prometheus || log "prometheus could not be installed: the alert rule and scrape checks will fail"
}

start_redis
start_nats
start_mosquitto
start_postgres
ensure_browser
ensure_prometheus
log "all four servers are up"
