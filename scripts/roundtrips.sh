#!/usr/bin/env bash
# Round trips per request, counted at the servers: PostgreSQL statements (log_statement=all on
# a database of our own, counted in the server log by its name) and Redis commands (MONITOR,
# counted by our key prefix), for each request kind of the hot paths:
#
#   scripts/roundtrips.sh [origin bin dir, default target/release]
#
# search, quote (L1 miss: a new window each time), quote (cached: the same request again),
# hold (POST /v1/bookings with an Idempotency-Key; its quote is made before counting starts).
# Each kind runs N [20] times, one request at a time; the background jobs run rarely (long
# intervals, no relay), and an idle stretch as long as each kind's is subtracted. Prints one
# "kind pg_statements_per_request redis_commands_per_request" line per kind.
# Needs: root (reads the PostgreSQL server log), a built origin and seed-demo.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
BIN="${1:-target/release}"
N="${N:-20}"
PGLOG="${PGLOG:-$(ls -t /var/log/postgresql/postgresql-*.log | head -n 1)}"
[[ -r "$PGLOG" ]] || die "cannot read the PostgreSQL log ($PGLOG); set PGLOG"
ensure_postgres
ensure_redis
DB=booking_rt_$$
psql -X -q -d postgres -c "create database $DB" >/dev/null
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
export JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
# Called directly (no edge); the per-user limit stays on: its EVALSHA is one of the counted.
export ORIGIN_ALLOW_DIRECT=1
export REDIS_KEY_PREFIX="rt:$$:" RUST_LOG=warn BIND_ADDR=127.0.0.1:18383
export SWEEPER_INTERVAL_MS=600000 AVAILABILITY_REBUILD_SECS=600 SURGE_RECOMPUTE_SECS=600
unset KAFKA_BROKERS
BASE="http://$BIND_ADDR"
"$BIN/seed-demo" 120 >/dev/null
"$BIN/origin" serve & PID=$!
MON=$(mktemp)
redis-cli -u "$REDIS_URL" monitor >"$MON" & MPID=$!
cleanup() {
  kill "$PID" "$MPID" 2>/dev/null; wait "$PID" "$MPID" 2>/dev/null || true
  psql -X -q -d postgres -c "drop database if exists $DB with (force)" >/dev/null 2>&1
  redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_KEY_PREFIX*" | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
  rm -f "$MON"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$BASE/readyz" >/dev/null || die "the origin did not become ready on $BASE"
psql -X -q -d postgres -c "alter database $DB set log_statement = 'all'" >/dev/null
# Connections opened before the setting keep the old value: restart the origin's pool.
kill "$PID"; wait "$PID" 2>/dev/null || true
"$BIN/origin" serve & PID=$!
for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done

TOKEN=$("$BIN/origin" dev-token rt-user)
day() { date -u -d "+$1 days 09:00" +%Y-%m-%dT%H:%M:%SZ; }
day_end() { date -u -d "+$1 days 11:00" +%Y-%m-%dT%H:%M:%SZ; }
VEHICLES=($(curl -sf -H "authorization: Bearer $TOKEN" \
  "$BASE/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=50000&limit=100&start=$(day 2)&end=$(day_end 2)" \
  | grep -o '"vehicle_id":"[^"]*"' | cut -d'"' -f4))
(( ${#VEHICLES[@]} >= N )) || die "only ${#VEHICLES[@]} vehicles found"
post() { curl -sf -o /dev/null -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
quote_body() { printf '{"vehicle_id":"%s","start":"%s","end":"%s"}' "$1" "$(day "$2")" "$(day_end "$2")"; }

pg_count() { grep -c -E "@$DB (LOG|STATEMENT):  (statement|execute)" "$PGLOG" || true; }
redis_count() { grep -c -F "$REDIS_KEY_PREFIX" "$MON" || true; }
# Warm: the prepared statements and caches of every path, so the counts are of warm requests.
for i in 0 1; do
  curl -sf -o /dev/null -H "authorization: Bearer $TOKEN" "$BASE/v1/vehicles/search?lat=50.11&lon=8.68&radius_m=5000&start=$(day 3)&end=$(day_end 3)"
  post -X POST "$BASE/v1/quotes" -d "$(quote_body "${VEHICLES[$i]}" 3)"
done

measure() { # <kind> <function run once per i>
  local kind=$1 fn=$2 p0 r0 p1 r1 t0 t1
  sleep 0.3; p0=$(pg_count); r0=$(redis_count); t0=$(date +%s%N)
  for i in $(seq 0 $((N - 1))); do "$fn" "$i"; done
  sleep 0.3; p1=$(pg_count); r1=$(redis_count); t1=$(date +%s%N)
  # The idle stretch: what the background jobs did in as long a time.
  local pi0 ri0; pi0=$(pg_count); ri0=$(redis_count)
  sleep "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')"
  local pi1 ri1; pi1=$(pg_count); ri1=$(redis_count)
  awk -v k="$kind" -v n="$N" -v p=$((p1 - p0 - (pi1 - pi0))) -v r=$((r1 - r0 - (ri1 - ri0))) \
    'BEGIN { printf "%-14s pg_statements/req %5.2f   redis_commands/req %5.2f\n", k, p / n, r / n }'
}
search_once() { curl -sf -o /dev/null -H "authorization: Bearer $TOKEN" \
  "$BASE/v1/vehicles/search?lat=50.11&lon=8.68&radius_m=5000&start=$(day $((4 + $1 % 20)))&end=$(day_end $((4 + $1 % 20)))&limit=20"; }
quote_miss_once() { post -X POST "$BASE/v1/quotes" -d "$(quote_body "${VEHICLES[$1]}" 5)"; }
quote_hit_once() { post -X POST "$BASE/v1/quotes" -d "$(quote_body "${VEHICLES[$1]}" 5)"; }
QUOTES=()
hold_once() { post -X POST "$BASE/v1/bookings" -H "idempotency-key: rt-$$-$1" \
  -d "{\"quote_token\":\"${QUOTES[$1]}\"}"; }
measure search search_once
measure quote-miss quote_miss_once
measure quote-hit quote_hit_once
for i in $(seq 0 $((N - 1))); do
  QUOTES+=("$(curl -sf -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -X POST "$BASE/v1/quotes" -d "$(quote_body "${VEHICLES[$i]}" 6)" | grep -o '"quote_token":"[^"]*"' | cut -d'"' -f4)")
done
measure hold hold_once
