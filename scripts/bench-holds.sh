#!/usr/bin/env bash
# Measures, in one run:
#  1. committed holds per second through the origin's HTTP API over distinct vehicles, next to
#     the box's raw ceiling (`pg_hold_tps` from ../shared/bench/limits.sh, same run);
#  2. the L1/L2 cache hit ratios on a replayed mixed workload (95 % search and quotes, 5 % holds);
#  3. events per second the outbox relay publishes to the broker, draining the backlog that
#     steps 1-2 left (the first origin runs without KAFKA_BROKERS, so its outbox grows).
#   scripts/bench-holds.sh [holds] [concurrency] [mixed-requests]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
HOLDS="${1:-4000}"; CONC="${2:-32}"; MIXED="${3:-20000}"
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
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
unset KAFKA_BROKERS
cargo build --release --locked -p origin -p e2e --bins
target/release/origin seed-demo 120 >/dev/null
target/release/origin serve & PID=$!
PID2=""
trap 'kill $PID $PID2 2>/dev/null; wait $PID $PID2 2>/dev/null; psql -X -q -d test -c "drop database if exists '$BENCH_DB' with (force)" >/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$BIND_ADDR/readyz" >/dev/null && break; sleep 0.1; done
OUT=$(target/release/hold-bench "http://$BIND_ADDR" "$HOLDS" "$CONC")
echo "$OUT"
RATE=$(sed -nE 's/.* = ([0-9.]+) holds\/s.*/\1/p' <<<"$OUT")
if [[ -n "$PG_HOLD_TPS" && -n "$RATE" ]]; then
  awk -v r="$RATE" -v c="$PG_HOLD_TPS" 'BEGIN { printf "pg_hold_tps %.1f; API holds %.1f/s = %.2f x pg_hold_tps\n", c, r, r / c }'
fi

# The same mixed workload twice: the first pass meets cold L1 entries, the replay (within L1's
# 60 s) shows what repeated questions cost.
for pass in 1 2; do
  echo "mixed pass $pass:"
  target/release/hold-bench "http://$BIND_ADDR" "$MIXED" "$CONC" mixed
done

if (exec 3<>"/dev/tcp/${BROKERS%:*}/${BROKERS##*:}") 2>/dev/null; then
  BACKLOG=$(psql -X -q -d "$BENCH_DB" -Atc "select count(*) from outbox where published_at is null")
  log "relay: draining $BACKLOG outbox rows to $BROKERS"
  T0=$(date +%s.%N)
  KAFKA_BROKERS="$BROKERS" BIND_ADDR=127.0.0.1:18082 target/release/origin serve & PID2=$!
  while :; do
    LEFT=$(psql -X -q -d "$BENCH_DB" -Atc "select count(*) from outbox where published_at is null")
    [[ "$LEFT" == 0 ]] && break
    sleep 0.2
  done
  awk -v n="$BACKLOG" -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "relay: %d events published in %.2fs = %.0f events/s (origin start and topic check included)\n", n, t1 - t0, n / (t1 - t0) }'
else
  log "no broker at $BROKERS: relay throughput not measured (scripts/broker.sh starts one)"
fi
