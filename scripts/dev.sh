#!/usr/bin/env bash
# Runs the two-region stack locally, as deployed: per region (EUW Frankfurt, EUN Sweden) its own
# PostgreSQL cluster (initdb'd under .dev/regions/<region>/pg, its own port), its own
# redis-server, its own reference inference service, the region's demo fleet only, and an origin
# serving only that region (ORIGIN_REGIONS); then a Frankfurt edge (EDGE_REGION=EUW) and a
# Sweden edge (EDGE_REGION=EUN) in front of both origins. Prints every URL and a dev JWT.
#
#   scripts/dev.sh                          both regions, both edges in workerd (miniflare)
#   EDGE_RUNTIME=spin scripts/dev.sh        the edges as the Spin component under wasmtime
#   REGIONS=EUW scripts/dev.sh              one region (the EUN origin URL of the edge is dead)
#   EDGE=0 scripts/dev.sh                   origins only
#   DEMO_VEHICLES_PER_CITY=20 scripts/dev.sh
#   DEV_PROFILE=debug scripts/dev.sh        reuse the debug build of the tests (no release build)
#   STACK=ha scripts/dev.sh                 each region's data tier scaled out (README "Scaling
#                                           out"): a PostgreSQL primary + streaming replica behind
#                                           PgBouncer (scripts/replica.sh) and a Redis Cluster of
#                                           3 masters + 3 replicas (scripts/redis-ha.sh); with
#                                           HA_REDIS=sentinel a master + replica + 3 sentinels
#
# Ports: origins EUW 8080 / EUN 8081, inference 8090 / 8091, PostgreSQL 15441 / 15442,
# Redis 16381 / 16382, the edges' Redis 16380 behind the Upstash REST gateway 8079, edges EUW
# 8787 / EUN 8788. STACK=ha: PostgreSQL primary 15451 / 15452, replica 15461 / 15462, PgBouncer
# 16451 / 16452, Redis Cluster 16401–16406 / 16411–16416 (sentinel: master, replica, then three
# sentinels from the same first port). Ctrl-C stops everything; the clusters' data stays in
# .dev/regions.
#
# Why this shape:
# - Nothing preconfigured is assumed: the clusters are our own (initdb, trust auth on
#   127.0.0.1 only, superuser postgres; run as root, the server runs as the `postgres` user,
#   which initdb demands), so the machine's PostgreSQL service, its pg_hba and its databases do
#   not matter. Missing binaries (PostgreSQL server and client, redis-server) come from Debian's
#   packages (apt_install, skipped when present).
# - Inference: one per region. It reads its region's database (read-only role `inference_ro`),
#   and no database holds both fleets.
# - Broker: shared (scripts/broker.sh, 127.0.0.1:9092). Both regions publish the same topics;
#   every event carries its `region`, so one consumer tells them apart, and a second local tansu
#   would cost memory and a build without testing anything more. Production runs one per region.
# - Edges: one Redis and gateway for both (in production each edge has its own Upstash database;
#   locally that only makes rate limits global).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

IFS=, read -r -a REGION_LIST <<<"${REGIONS:-EUW,EUN}"
for r in "${REGION_LIST[@]}"; do [[ $r == EUW || $r == EUN ]] || die "REGIONS: unknown region $r (EUW, EUN)"; done
EDGE_RUNTIME="${EDGE_RUNTIME:-cloudflare}"
[[ $EDGE_RUNTIME == cloudflare || $EDGE_RUNTIME == spin ]] || die "EDGE_RUNTIME must be cloudflare or spin"
DEV="$ROOT/.dev/regions"
declare -A ORIGIN_PORT=([EUW]=8080 [EUN]=8081) INFER_PORT=([EUW]=8090 [EUN]=8091)
declare -A PG_PORT=([EUW]=15441 [EUN]=15442) REDIS_PORT=([EUW]=16381 [EUN]=16382)
declare -A EDGE_PORT=([EUW]=8787 [EUN]=8788)
EDGE_REDIS_PORT=16380 GATEWAY_PORT=8079
STACK="${STACK:-single}"
[[ $STACK == single || $STACK == ha ]] || die "STACK must be single or ha"
HA_REDIS="${HA_REDIS:-cluster}"
[[ $HA_REDIS == cluster || $HA_REDIS == sentinel ]] || die "HA_REDIS must be cluster or sentinel"
declare -A HA_PG_PORT=([EUW]=15451 [EUN]=15452) HA_REPLICA_PORT=([EUW]=15461 [EUN]=15462)
declare -A HA_BOUNCER_PORT=([EUW]=16451 [EUN]=16452) HA_REDIS_BASE=([EUW]=16401 [EUN]=16411)

# --- binaries ------------------------------------------------------------------------------
if ! command -v initdb >/dev/null; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql \
    || die "initdb not found and PostgreSQL cannot be installed"
  PATH="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)"):$PATH"
fi
command -v psql >/dev/null || apt_install postgresql-client || die "psql not found"
command -v redis-server >/dev/null || apt_install redis-server || die "redis-server not found"
command -v redis-cli >/dev/null || apt_install redis-tools || die "redis-cli not found"

as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

PIDS=()
CLUSTERS=()
HA_DIRS=()
cleanup() {
  log "stopping the origins, edges, clusters and Redis servers this script started"
  kill "${PIDS[@]}" 2>/dev/null || true
  for dir in "${CLUSTERS[@]}"; do as_pg pg_ctl -D "$dir" -m fast -w stop >/dev/null 2>&1 || true; done
  for dir in "${HA_DIRS[@]}"; do
    bash scripts/replica.sh stop "$dir/pg" >/dev/null 2>&1 || true
    bash scripts/redis-ha.sh stop "$dir/redis" >/dev/null 2>&1 || true
  done
  for port in "${REDIS_PORT[@]}" "$EDGE_REDIS_PORT"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_pg() { # region
  local r=$1 dir="$DEV/${1,,}/pg" port=${PG_PORT[$1]}
  if [[ ! -f $dir/PG_VERSION ]]; then
    log "$r: initdb $dir"
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$dir"
    as_pg initdb -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! pg_isready -q -h 127.0.0.1 -p "$port"; then
    as_pg pg_ctl -D "$dir" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" -l "$dir/log" -w start >/dev/null
  fi
  CLUSTERS+=("$dir")
  psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc \
    "select 1 from pg_database where datname = 'booking'" | grep -q 1 \
    || psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "create database booking" >/dev/null
}

start_redis() { # port dir
  mkdir -p "$2"
  redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$2" \
    --daemonize yes --logfile "$2/redis.log" >/dev/null
  for _ in $(seq 1 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "redis-server on $1 did not start"
}

# DEV_PROFILE=debug reuses the test suite's debug build instead of a release build.
PROFILE="${DEV_PROFILE:-release}"
[[ $PROFILE == release || $PROFILE == debug ]] || die "DEV_PROFILE must be release or debug"
log "building the origin, the demo fleet's seeder, the inference service and the gateway ($PROFILE)"
profile_flag=(); [[ $PROFILE == release ]] && profile_flag=(--release)
cargo build -p origin -p demo-fleet -p inference -p upstash-gateway "${profile_flag[@]}" --locked
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
bash scripts/broker.sh
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:${BROKER_PORT:-9092}}"

export JWT_ISSUER="${JWT_ISSUER:-booking-dev}" JWT_AUDIENCE="${JWT_AUDIENCE:-booking-api}"
export JWT_HS256_SECRET="${JWT_HS256_SECRET:-dev-only-secret-change-me-0123456789}"
export QUOTE_SIGNING_KEYS="${QUOTE_SIGNING_KEYS:-dev1=dev-only-quote-key-change-me-0123456789}"
export RUST_LOG="${RUST_LOG:-info,sqlx=warn}"
export UPSTASH_GATEWAY_TOKEN="${UPSTASH_GATEWAY_TOKEN:-dev-only-upstash-token}"
# The edges sign what they forward with this key and the origins check it; the origins also let
# unsigned requests in (ORIGIN_ALLOW_DIRECT=1) so the curl examples can call them directly.
EDGE_SIGNING_KID="${EDGE_SIGNING_KID:-dev1}"
EDGE_SIGNING_KEY="${EDGE_SIGNING_KEY:-dev-only-edge-signing-key-change-me-0123}"
export EDGE_SIGNING_KEYS="${EDGE_SIGNING_KEYS:-$EDGE_SIGNING_KID=$EDGE_SIGNING_KEY}"
export ORIGIN_ALLOW_DIRECT="${ORIGIN_ALLOW_DIRECT:-1}"
EDGE_PREFIX="edge:"

# STACK=ha: one region's scaled-out data tier; sets `db` (the primary, directly) and the origin's
# data settings in `data_env`.
start_ha() { # region
  local r=$1 ha="$DEV/${1,,}/ha" base=${HA_REDIS_BASE[$1]} urls p
  HA_DIRS+=("$ha")
  bash scripts/replica.sh start "$ha/pg" "${HA_PG_PORT[$r]}" "${HA_REPLICA_PORT[$r]}" "${HA_BOUNCER_PORT[$r]}"
  db="postgres://postgres@127.0.0.1:${HA_PG_PORT[$r]}/booking"
  data_env=(
    "DATABASE_URL=postgres://postgres@127.0.0.1:${HA_BOUNCER_PORT[$r]}/booking"
    "DATABASE_READ_URL=postgres://postgres@127.0.0.1:${HA_BOUNCER_PORT[$r]}/booking_replica"
    "DATABASE_SESSION_URL=$db"
  )
  if [[ $HA_REDIS == sentinel ]]; then
    bash scripts/redis-ha.sh sentinel "$ha/redis" "$base" $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4))
    urls=$(for p in $((base + 2)) $((base + 3)) $((base + 4)); do printf 'redis://127.0.0.1:%s,' "$p"; done)
    data_env+=("REDIS_MODE=sentinel" "REDIS_SENTINEL_MASTER=bp" "REDIS_URL=${urls%,}")
  else
    bash scripts/redis-ha.sh cluster "$ha/redis" $(seq "$base" $((base + 5)))
    urls=$(for p in $(seq "$base" $((base + 5))); do printf 'redis://127.0.0.1:%s,' "$p"; done)
    data_env+=("REDIS_MODE=cluster" "REDIS_URL=${urls%,}")
  fi
}

for r in "${REGION_LIST[@]}"; do
  dir="$DEV/${r,,}"
  if [[ $STACK == ha ]]; then
    start_ha "$r"
  else
    start_pg "$r"
    start_redis "${REDIS_PORT[$r]}" "$dir/redis"
    db="postgres://postgres@127.0.0.1:${PG_PORT[$r]}/booking"
    data_env=("DATABASE_URL=$db" "REDIS_URL=redis://127.0.0.1:${REDIS_PORT[$r]}")
  fi
  DATABASE_URL="$db" "$BIN/origin" migrate >/dev/null
  DATABASE_URL="$db" "$BIN/seed-demo" "${DEMO_VEHICLES_PER_CITY:-120}" >/dev/null
  # Only the home fleet: the seeder writes both cities.
  psql -X -q -d "$db" -v ON_ERROR_STOP=1 -v r="$r" >/dev/null <<'SQL'
delete from vehicles where region <> :'r';
delete from parking_bays where region <> :'r';
delete from base_rates where region <> :'r';
delete from vehicle_config where region <> :'r';
delete from time_multipliers where region <> :'r';
delete from discount_rules where region <> :'r';
SQL
  INFERENCE_DATABASE_URL="${db/postgres@/inference_ro@}" \
    INFERENCE_BIND_ADDR="127.0.0.1:${INFER_PORT[$r]}" "$BIN/inference" >>"$dir/inference.log" 2>&1 &
  PIDS+=($!)
  env "${data_env[@]}" ORIGIN_REGIONS="$r" \
    BIND_ADDR="127.0.0.1:${ORIGIN_PORT[$r]}" INFERENCE_URL="http://127.0.0.1:${INFER_PORT[$r]}" \
    EDGE_CACHE_REST_URL="http://127.0.0.1:$GATEWAY_PORT" EDGE_CACHE_REST_TOKEN="$UPSTASH_GATEWAY_TOKEN" \
    EDGE_CACHE_KEY_PREFIX="$EDGE_PREFIX" "$BIN/origin" serve >>"$dir/origin.log" 2>&1 &
  PIDS+=($!)
done
for r in "${REGION_LIST[@]}"; do
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:${ORIGIN_PORT[$r]}/healthz" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:${ORIGIN_PORT[$r]}/healthz" >/dev/null \
    || die "the $r origin did not start: see $DEV/${r,,}/origin.log"
done

if [[ "${EDGE:-1}" == 1 ]]; then
  bash scripts/edge.sh build >/dev/null
  start_redis "$EDGE_REDIS_PORT" "$DEV/edge-redis"
  REDIS_URL="redis://127.0.0.1:$EDGE_REDIS_PORT" UPSTASH_GATEWAY_ADDR="127.0.0.1:$GATEWAY_PORT" \
    "$BIN/upstash-gateway" >>"$DEV/gateway.log" 2>&1 &
  PIDS+=($!)
  for r in EUW EUN; do
    vars=(
      "EDGE_REGION=$r"
      "ORIGIN_EUW_URL=http://127.0.0.1:${ORIGIN_PORT[EUW]}"
      "ORIGIN_EUN_URL=http://127.0.0.1:${ORIGIN_PORT[EUN]}"
      "UPSTASH_REDIS_REST_URL=http://127.0.0.1:$GATEWAY_PORT"
      "UPSTASH_REDIS_REST_TOKEN=$UPSTASH_GATEWAY_TOKEN"
      "EDGE_KEY_PREFIX=$EDGE_PREFIX"
      "JWT_ISSUER=$JWT_ISSUER" "JWT_AUDIENCE=$JWT_AUDIENCE" "JWT_HS256_SECRET=$JWT_HS256_SECRET"
      "EDGE_SIGNING_KID=$EDGE_SIGNING_KID" "EDGE_SIGNING_KEY=$EDGE_SIGNING_KEY"
    )
    if [[ $EDGE_RUNTIME == spin ]]; then
      args=(); for v in "${vars[@]}"; do args+=(--env "$v"); done
      "$ROOT/.dev/edge-tools/wasmtime" serve -S cli=y -S http=y --addr "127.0.0.1:${EDGE_PORT[$r]}" \
        "${args[@]}" "${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip2/release/edge_spin.wasm" \
        >>"$DEV/edge-${r,,}.log" 2>&1 &
    else
      json=$(printf '%s\n' "${vars[@]}" | python3 -c 'import json,sys; print(json.dumps(dict(l.rstrip("\n").split("=",1) for l in sys.stdin)))')
      (cd edge/cloudflare && EDGE_PORT="${EDGE_PORT[$r]}" EDGE_STOP_ON_STDIN_CLOSE=0 EDGE_BINDINGS="$json" \
        exec node run.mjs) >>"$DEV/edge-${r,,}.log" 2>&1 &
    fi
    PIDS+=($!)
  done
  for r in EUW EUN; do
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:${EDGE_PORT[$r]}/healthz" >/dev/null && break; sleep 0.1; done
    curl -fs "http://127.0.0.1:${EDGE_PORT[$r]}/healthz" >/dev/null \
      || die "the $r edge did not start: see $DEV/edge-${r,,}.log"
  done
fi

TOKEN=$("$BIN/origin" dev-token demo-user)
OPS_TOKEN=$("$BIN/origin" dev-token demo-ops --ops)
START=$(date -u -d 'tomorrow 10:00' +%Y-%m-%dT%H:%M:%SZ)
END=$(date -u -d 'tomorrow 14:00' +%Y-%m-%dT%H:%M:%SZ)
# Every example through the Frankfurt edge (it routes each to the owning region); with EDGE=0,
# straight to the owning origin.
EDGE_BASE="http://127.0.0.1:${EDGE_PORT[EUW]}" EUN_BASE="$EDGE_BASE" VIA="the Frankfurt edge"
if [[ "${EDGE:-1}" != 1 ]]; then
  EDGE_BASE="http://127.0.0.1:${ORIGIN_PORT[EUW]}" EUN_BASE="http://127.0.0.1:${ORIGIN_PORT[EUN]}"
  VIA="each region's origin (EDGE=0)"
fi

echo
for r in "${REGION_LIST[@]}"; do
  if [[ $STACK == ha ]]; then
    printf '  %s origin:    http://127.0.0.1:%s   (PostgreSQL primary 127.0.0.1:%s, replica :%s, PgBouncer :%s; Redis %s from 127.0.0.1:%s; inference http://127.0.0.1:%s; logs .dev/regions/%s/)\n' \
      "$r" "${ORIGIN_PORT[$r]}" "${HA_PG_PORT[$r]}" "${HA_REPLICA_PORT[$r]}" "${HA_BOUNCER_PORT[$r]}" "$HA_REDIS" "${HA_REDIS_BASE[$r]}" "${INFER_PORT[$r]}" "${r,,}"
  else
    printf '  %s origin:    http://127.0.0.1:%s   (PostgreSQL 127.0.0.1:%s, Redis 127.0.0.1:%s, inference http://127.0.0.1:%s; logs .dev/regions/%s/)\n' \
      "$r" "${ORIGIN_PORT[$r]}" "${PG_PORT[$r]}" "${REDIS_PORT[$r]}" "${INFER_PORT[$r]}" "${r,,}"
  fi
done
if [[ "${EDGE:-1}" == 1 ]]; then
  printf '  EUW edge (Frankfurt, %s): http://127.0.0.1:%s\n' "$EDGE_RUNTIME" "${EDGE_PORT[EUW]}"
  printf '  EUN edge (Sweden, %s):    http://127.0.0.1:%s\n' "$EDGE_RUNTIME" "${EDGE_PORT[EUN]}"
  printf '  Upstash REST gateway: http://127.0.0.1:%s (Redis 127.0.0.1:%s)\n' "$GATEWAY_PORT" "$EDGE_REDIS_PORT"
fi
printf '  Broker (shared): %s\n' "$KAFKA_BROKERS"
cat <<MSG

  export TOKEN=$TOKEN
  export OPS_TOKEN=$OPS_TOKEN        # role "ops"

  # Stockholm and Frankfurt, through $VIA
  curl -s -H "authorization: Bearer \$TOKEN" '$EUN_BASE/v1/vehicles/search?lat=59.3303&lon=18.0586&radius_m=3000&start=$START&end=$END'
  curl -s -H "authorization: Bearer \$TOKEN" '$EDGE_BASE/v1/vehicles/search?lat=50.1071&lon=8.6638&radius_m=3000&start=$START&end=$END'
  # a quote (v2 shows the breakdown), a hold with its token, the confirmation
  curl -s -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
       -d '{"vehicle_id":"<vehicle_id>","start":"$START","end":"$END"}' $EDGE_BASE/v2/quotes
  curl -s -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' -H "idempotency-key: \$(uuidgen || date +%s%N)" \\
       -d '{"quote_token":"<quote_token>"}' $EDGE_BASE/v1/bookings
  curl -s -X POST -H "authorization: Bearer \$TOKEN" $EDGE_BASE/v1/bookings/<booking_id>/confirm
  # the user's bookings of both regions; the pricing tables of a region (ops role)
  curl -s -H "authorization: Bearer \$TOKEN" $EDGE_BASE/v2/bookings
  curl -s -H "authorization: Bearer \$OPS_TOKEN" $EUN_BASE/v1/admin/pricing/EUN

MSG
wait
