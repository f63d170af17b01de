#!/usr/bin/env bash
# Runs the stack locally: PostgreSQL (and Redis) checked or started, a database of its own
# (`booking_dev`), migrations, the demo fleet (120 vehicles in Frankfurt, 120 in Stockholm),
# then the origin on http://127.0.0.1:8080 — and prints how to call it with a dev JWT.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_postgres
ensure_redis
bash scripts/broker.sh
# The origin's outbox relay publishes booking events here (unset it to keep them in the outbox).
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:${BROKER_PORT:-9092}}"

DEV_DB="${DEV_DB:-booking_dev}"
export DATABASE_URL="${DEV_DATABASE_URL:-postgres://$PGUSER@$PGHOST:$PGPORT/$DEV_DB}"
if ! psql -X -q -d test -Atc "select 1 from pg_database where datname = '$DEV_DB'" | grep -q 1; then
  log "creating database $DEV_DB"
  psql -X -q -d test -c "create database $DEV_DB" >/dev/null
fi

# Development settings; every one can be overridden from the environment.
export BIND_ADDR="${BIND_ADDR:-127.0.0.1:8080}"
export JWT_ISSUER="${JWT_ISSUER:-booking-dev}"
export JWT_AUDIENCE="${JWT_AUDIENCE:-booking-api}"
export JWT_HS256_SECRET="${JWT_HS256_SECRET:-dev-only-secret-change-me-0123456789}"
export QUOTE_SIGNING_KEYS="${QUOTE_SIGNING_KEYS:-dev1=dev-only-quote-key-change-me-0123456789}"
export RUST_LOG="${RUST_LOG:-info,sqlx=warn}"

log "building the origin, the demo fleet's seeder and the reference inference service"
cargo build -p origin -p demo-fleet -p inference --release --locked
BIN="$ROOT/target/release/origin"

"$ROOT/target/release/seed-demo" "${DEMO_VEHICLES_PER_CITY:-120}"

# The reference AI inference service (origin/inference) reads the same database through its
# read-only role (created by the migrations); the origin's pricing calls it at INFERENCE_URL.
# Point INFERENCE_URL at another service to replace it.
INFERENCE_BIND_ADDR="${INFERENCE_BIND_ADDR:-127.0.0.1:8090}"
if [[ -z "${INFERENCE_URL:-}" ]]; then
  export INFERENCE_URL="http://$INFERENCE_BIND_ADDR"
  INFERENCE_DATABASE_URL="${INFERENCE_DATABASE_URL:-postgres://inference_ro@$PGHOST:$PGPORT/$DEV_DB}" \
    INFERENCE_BIND_ADDR="$INFERENCE_BIND_ADDR" "$ROOT/target/release/inference" &
  INFERENCE_PID=$!
  trap 'kill "$INFERENCE_PID" 2>/dev/null || true' EXIT
  log "reference inference service on $INFERENCE_URL (pid $INFERENCE_PID)"
fi
TOKEN=$("$BIN" dev-token demo-user)
OPS_TOKEN=$("$BIN" dev-token demo-ops --ops)
START=$(date -u -d 'tomorrow 10:00' +%Y-%m-%dT%H:%M:%SZ)
END=$(date -u -d 'tomorrow 14:00' +%Y-%m-%dT%H:%M:%SZ)
BASE="http://$BIND_ADDR"

cat <<MSG

  Booking & Pricing origin: $BASE   (OpenAPI: $BASE/openapi.json)

  export TOKEN=$TOKEN
  export OPS_TOKEN=$OPS_TOKEN        # role "ops"

  # vehicles near Frankfurt Hbf tomorrow 10:00-14:00 UTC
  curl -s -H "authorization: Bearer \$TOKEN" '$BASE/v1/vehicles/search?lat=50.1071&lon=8.6638&radius_m=3000&start=$START&end=$END'
  # a quote (v2 shows the breakdown); put a vehicle_id from the search in
  curl -s -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
       -d '{"vehicle_id":"<vehicle_id>","start":"$START","end":"$END"}' $BASE/v2/quotes
  # hold it with the quote's token, then confirm
  curl -s -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' -H "idempotency-key: \$(uuidgen || date +%s%N)" \\
       -d '{"quote_token":"<quote_token>"}' $BASE/v1/bookings
  curl -s -X POST -H "authorization: Bearer \$TOKEN" $BASE/v1/bookings/<booking_id>/confirm
  # the surge multiplier near Frankfurt Hbf; the pricing tables (ops role)
  curl -s -H "authorization: Bearer \$TOKEN" '$BASE/v1/surge?lat=50.1071&lon=8.6638'
  curl -s -H "authorization: Bearer \$OPS_TOKEN" $BASE/v1/admin/pricing/EUW

MSG
# Both edge workers (Cloudflare worker in workerd on :8787, Spin component in wasmtime on :8788)
# in front of this origin, with the Upstash REST gateway; they print their URLs when up.
# The first run installs their tools (see scripts/edge.sh). EDGE=0 skips them.
if [[ "${EDGE:-1}" == 1 ]]; then
  export UPSTASH_GATEWAY_TOKEN="${UPSTASH_GATEWAY_TOKEN:-dev-only-upstash-token}"
  export EDGE_CACHE_REST_URL="${EDGE_CACHE_REST_URL:-http://127.0.0.1:${UPSTASH_GATEWAY_PORT:-8079}}"
  export EDGE_CACHE_REST_TOKEN="${EDGE_CACHE_REST_TOKEN:-$UPSTASH_GATEWAY_TOKEN}"
  ORIGIN_URL="$BASE" bash scripts/edge.sh run &
  EDGE_PID=$!
  # A background job ignores Ctrl-C: stop it (and, by its trap, the edges) with the origin.
  trap 'kill "$EDGE_PID" "${INFERENCE_PID:-}" 2>/dev/null || true' EXIT
fi
"$BIN" serve
