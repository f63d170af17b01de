#!/usr/bin/env bash
# Measures committed holds per second through the origin's HTTP API over distinct vehicles,
# next to the box's raw ceiling (`pg_hold_tps` from ../shared/bench/limits.sh, same run).
#   scripts/bench-holds.sh [holds] [concurrency]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
HOLDS="${1:-4000}"; CONC="${2:-32}"
ensure_postgres

LIMITS="$ROOT/../shared/bench/limits.sh"
PG_HOLD_TPS=""
if [[ -x "$LIMITS" || -f "$LIMITS" ]]; then
  log "measuring the box's ceiling: limits.sh pg"
  PG_HOLD_TPS=$(DURATION="${DURATION:-10}" bash "$LIMITS" pg 2>/dev/null | awk '$1 == "pg_hold_tps" { print $2 }')
fi

BENCH_DB=booking_bench
psql -X -q -d test -c "drop database if exists $BENCH_DB with (force)" -c "create database $BENCH_DB" >/dev/null
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$BENCH_DB"
export BIND_ADDR=127.0.0.1:18081 JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
export RUST_LOG=warn DB_MAX_CONNECTIONS="${DB_MAX_CONNECTIONS:-16}"
cargo build --release --locked -p origin -p e2e --bins
target/release/origin seed-demo 120 >/dev/null
target/release/origin serve & PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; psql -X -q -d test -c "drop database if exists '$BENCH_DB' with (force)" >/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$BIND_ADDR/readyz" >/dev/null && break; sleep 0.1; done
OUT=$(target/release/hold-bench "http://$BIND_ADDR" "$HOLDS" "$CONC")
echo "$OUT"
RATE=$(sed -nE 's/.* = ([0-9.]+) holds\/s.*/\1/p' <<<"$OUT")
if [[ -n "$PG_HOLD_TPS" && -n "$RATE" ]]; then
  awk -v r="$RATE" -v c="$PG_HOLD_TPS" 'BEGIN { printf "pg_hold_tps %.1f; API holds %.1f/s = %.2f x pg_hold_tps\n", c, r, r / c }'
fi
