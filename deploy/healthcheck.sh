#!/bin/bash
# Container health check without curl or wget: GET a path (default /healthz) on the ops port
# named by AURORA_OPS_ADDR, through bash's /dev/tcp, and succeed on HTTP 200.
#   aurora-healthcheck [/healthz|/readyz]
set -euo pipefail

addr="${AURORA_OPS_ADDR:-0.0.0.0:9100}"
port="${addr##*:}"
path="${1:-/healthz}"

exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3
case "$status" in
  "HTTP/"*" 200"*) exit 0 ;;
  *) echo "unhealthy: GET $path -> ${status%$'\r'}" >&2; exit 1 ;;
esac
