#!/usr/bin/env bash
# The main job (`make run`): every service of site A, a second site B federated with it, a
# simulated device fleet (a few tampered), a Suricata replay, agent thoughts and approval
# requests; prints the console URL with a ready token and a live summary until Ctrl-C, then
# stops everything it started.
#
# Site A and site B share the namespace (one federation: docs/contract.md#namespace) and the
# NATS server; each has its own Redis database (A: 0, B: 1) and its own gateways. Variables
# follow docs/configuration.md: shared ones are AURORA_<FLAG>, a service's own
# AURORA_<SERVICE>_<FLAG>.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DEVICES=${DEVICES:-20}
TAMPERED=${TAMPERED:-2}
NS=${AURORA_NAMESPACE:-aurora}
REDIS=${REDIS_BASE:-redis://127.0.0.1:6379}
RUN_DIR=$(mktemp -d /tmp/aurora-run.XXXXXX)
PIDS=()

for b in mqtt-bridge device-registry ws-gateway federation-gateway eve-ingest aurora; do
  [ -x "$BIN/$b" ] || { echo "run: $BIN/$b is missing: run 'make release' first" >&2; exit 1; }
done
command -v curl >/dev/null 2>&1 || { echo "run: curl is needed (apt-get install curl)" >&2; exit 1; }

stop_all() {
  trap - INT TERM EXIT
  printf '\nstopping %d processes...\n' "${#PIDS[@]}"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; logs are in $RUN_DIR"
}
trap stop_all INT TERM EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 8000 8081 8100 9101 9102 9103 9104 9105 9203 9204; do
  port_free "$p" || { echo "run: port $p is taken (another 'make run'?)" >&2; exit 1; }
done

export AURORA_NAMESPACE=$NS
export AURORA_LOG_FORMAT=json
AURORA_JWT_SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export AURORA_JWT_SECRET

# The registry keeps its devices in a database of its own when psql can make one.
DB_URL=postgres://postgres@127.0.0.1:5432/postgres
if command -v psql >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='aurora_run'" 2>/dev/null | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE aurora_run' >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='aurora_run'" 2>/dev/null | grep -q 1 \
    && DB_URL=postgres://postgres@127.0.0.1:5432/aurora_run
fi

# start NAME LOG-NAME ENV=VALUE... -- ARGS...
start() {
  local bin=$1 name=$2; shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  env "${envs[@]}" "$BIN/$bin" "$@" >"$RUN_DIR/$name.log" 2>&1 &
  PIDS+=("$!")
}

wait_ready() {
  local name=$1 port=$2
  for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "run: $name did not become ready; its log:" >&2
  tail -n 20 "$RUN_DIR/$name.log" >&2
  exit 1
}

# The key site A's gateway signs approved device actions with; the bridge and the registry
# carry out only what it signed (docs/contract.md#device-actions).
APPROVAL_PUBLIC_KEY=$("$BIN/aurora" approval-key --out "$RUN_DIR/approval.key" | awk '$1 == "public_key" {print $2}')

echo "starting site A (Redis db 0) and site B (Redis db 1); logs in $RUN_DIR"
start mqtt-bridge mqtt-bridge AURORA_SITE_ID=site-a AURORA_REDIS_URL="$REDIS/0" \
  AURORA_OPS_ADDR=127.0.0.1:9101 AURORA_INSTANCE_ID=run-bridge-a \
  AURORA_MQTT_BRIDGE_APPROVAL_PUBLIC_KEYS="$APPROVAL_PUBLIC_KEY"
start device-registry device-registry AURORA_SITE_ID=site-a AURORA_REDIS_URL="$REDIS/0" \
  AURORA_DEVICE_REGISTRY_APPROVAL_PUBLIC_KEYS="$APPROVAL_PUBLIC_KEY" \
  AURORA_OPS_ADDR=127.0.0.1:9102 AURORA_DEVICE_REGISTRY_HTTP_ADDR=127.0.0.1:8081 \
  AURORA_DEVICE_REGISTRY_DATABASE_URL="$DB_URL" AURORA_INSTANCE_ID=run-registry-a \
  AURORA_DEVICE_REGISTRY_TRUST_ON_FIRST_USE=true AURORA_DEVICE_REGISTRY_ATTESTATION_TIMEOUT=60s
start ws-gateway ws-gateway AURORA_SITE_ID=site-a AURORA_REDIS_URL="$REDIS/0" \
  AURORA_OPS_ADDR=127.0.0.1:9103 AURORA_WS_GATEWAY_HTTP_ADDR=127.0.0.1:8000 AURORA_INSTANCE_ID=run-ws-a \
  AURORA_WS_GATEWAY_APPROVAL_SIGNING_KEY="$RUN_DIR/approval.key"
start federation-gateway federation-gateway AURORA_SITE_ID=site-a AURORA_REDIS_URL="$REDIS/0" \
  AURORA_OPS_ADDR=127.0.0.1:9104 AURORA_INSTANCE_ID=run-fed-a
start eve-ingest eve-ingest AURORA_SITE_ID=site-a AURORA_REDIS_URL="$REDIS/0" \
  AURORA_OPS_ADDR=127.0.0.1:9105 AURORA_INSTANCE_ID=run-eve-a
start ws-gateway ws-gateway-b AURORA_SITE_ID=site-b AURORA_REDIS_URL="$REDIS/1" \
  AURORA_OPS_ADDR=127.0.0.1:9203 AURORA_WS_GATEWAY_HTTP_ADDR=127.0.0.1:8100 AURORA_INSTANCE_ID=run-ws-b
start federation-gateway federation-gateway-b AURORA_SITE_ID=site-b AURORA_REDIS_URL="$REDIS/1" \
  AURORA_OPS_ADDR=127.0.0.1:9204 AURORA_INSTANCE_ID=run-fed-b

wait_ready mqtt-bridge 9101
wait_ready device-registry 9102
wait_ready ws-gateway 9103
wait_ready federation-gateway 9104
wait_ready eve-ingest 9105
wait_ready ws-gateway-b 9203
wait_ready federation-gateway-b 9204

AURORA="$BIN/aurora"
token() { "$AURORA" token --sub "$1" --permissions "$2" --ttl 12h; }
ADMIN=$(token run-admin firmware:manage,devices:read,devices:write)
CONSOLE=$(token analyst ws:alerts,ws:agent_thoughts,approvals:manage)

# The fleet's genuine firmware goes on the allow-list; the tampered devices report another hash.
read -r MODEL VERSION SHA < <("$AURORA" simulate firmware-hash)
curl -fsS -X POST http://127.0.0.1:8081/api/v1/firmware \
  -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$MODEL\",\"version\":\"$VERSION\",\"sha256\":\"$SHA\"}" >/dev/null

start aurora simulate-devices AURORA_REDIS_URL="$REDIS/0" -- simulate devices \
  --devices "$DEVICES" --tampered "$TAMPERED" --rate 20
start aurora simulate-agents AURORA_REDIS_URL="$REDIS/0" -- simulate agents \
  --thought-every 2 --approval-every 30
EVE_FILES=()
for f in services/eve-ingest/tests/fixtures/*.jsonl ../shared/data/suricata/*.jsonl; do
  [ -f "$f" ] && EVE_FILES+=("$f")
done
if [ ${#EVE_FILES[@]} -gt 0 ]; then
  start aurora simulate-suricata AURORA_REDIS_URL="$REDIS/0" -- simulate suricata \
    --rate 10 --repeat 1000 "${EVE_FILES[@]}"
fi

cat <<EOF

  Aurora event transport is running.

  Console (site A):  http://127.0.0.1:8000/      Console (site B): http://127.0.0.1:8100/
  Paste this token:  $CONSOLE

  Registry API:      curl -H "Authorization: Bearer $ADMIN" http://127.0.0.1:8081/api/v1/devices
  The bus:           $AURORA status        $AURORA tail alerts
  Ops endpoints:     http://127.0.0.1:91{01..05}/metrics  (site B: 9203, 9204)

EOF
sleep 3

# One line per service: messages in and out, dead letters, lag, from its /metrics.
metric() { # PORT NAME: the sum of a metric family over its labels
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d", s }'
}
summary() {
  printf '\033[H\033[2J'
  printf 'Aurora event transport: live summary (%s), Ctrl-C stops everything\n\n' "$(date +%T)"
  printf '%-22s %12s %12s %12s %12s\n' SERVICE IN OUT DEAD-LETTERS LAG/CONN
  printf '%-22s %12s %12s %12s %12s\n' mqtt-bridge \
    "$(metric 9101 aurora_mqtt_bridge_messages_total)" "$(metric 9101 aurora_mqtt_bridge_commands_total)" \
    "$(metric 9101 aurora_mqtt_bridge_dead_letters_total)" "$(metric 9101 aurora_mqtt_bridge_queue_messages)"
  printf '%-22s %12s %12s %12s %12s\n' device-registry \
    "$(metric 9102 aurora_device_registry_sightings_total)" "$(metric 9102 aurora_device_registry_attestations_total)" \
    "$(metric 9102 aurora_device_registry_dead_letters_total)" "-"
  printf '%-22s %12s %12s %12s %12s\n' ws-gateway \
    "$(metric 9103 aurora_ws_gateway_messages_total)" "$(metric 9103 aurora_ws_gateway_deliveries_total)" \
    "$(metric 9103 aurora_ws_gateway_invalid_entries_total)" "$(metric 9103 aurora_ws_gateway_connections)"
  printf '%-22s %12s %12s %12s %12s\n' eve-ingest \
    "$(metric 9105 aurora_eve_ingest_lines_total)" "$(metric 9105 aurora_eve_ingest_events_total)" \
    "$(metric 9105 aurora_eve_ingest_dead_letters_total)" "-"
  printf '%-22s %12s %12s %12s %12s\n' federation-gateway-a \
    "$(metric 9104 aurora_federation_gateway_messages_total)" "-" \
    "$(metric 9104 aurora_federation_gateway_dead_letters_total)" "$(metric 9104 aurora_federation_gateway_consumer_lag)"
  printf '%-22s %12s %12s %12s %12s\n' federation-gateway-b \
    "$(metric 9204 aurora_federation_gateway_messages_total)" "-" \
    "$(metric 9204 aurora_federation_gateway_dead_letters_total)" "$(metric 9204 aurora_federation_gateway_consumer_lag)"
  printf '\nSite A streams (length / pending):\n'
  AURORA_REDIS_URL="$REDIS/0" "$AURORA" status --no-nats 2>/dev/null \
    | awk 'NR > 1 && $2 > 0 { g = ""; for (i = 3; i <= NF; i++) g = g " " $i; printf "  %-34s %9s %s\n", $1, $2, g }' | head -n 14
  printf '\nConsole: http://127.0.0.1:8000/ (site B: http://127.0.0.1:8100/); paste this token:\n%s\n' "$CONSOLE"
}
while true; do
  summary
  sleep 2
done
