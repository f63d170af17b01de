#!/usr/bin/env bash
# The holds figure alone, next to its ceiling measured right before it, a few rounds in a row
# (the box is shared and noisy: a ratio means something only within one round):
#
#   scripts/bench-holds.sh [origin bin dir[,VAR=value...] ...]     (default: target/release)
#
# Each round: limits.sh's PostgreSQL hold ceiling (pg_hold_tps: pgbench, prepared, 8 clients),
# then, for each bin dir in turn, a fresh database with the demo fleet, that origin, and the
# `holds` workload (closed loop, HOLDS_CLOSED [32] clients, BENCH_SECS [15] s, as in
# scripts/bench.sh). Prints one line per (round, bin dir): pg_hold_tps, holds/s, p50, p99, the
# ratio, the non-2xx answers, and the origin's CPU time per hold. Configuration for the origin
# comes from the environment, and per variant from the assignments after its bin dir, so an
# A/B of one binary is `scripts/bench-holds.sh target/release target/release,VEHICLE_LOCK=off`.
#
# Knobs: ROUNDS [2], BENCH_SECS [15], HOLDS_CLOSED [32], HOLDS_PREPARED [12000] (a run that uses
# them up ends early and says so), LIMITS_DURATION [10],
# LIMITS_SH [<repo>/../shared/bench/limits.sh], HOLDS_PORT [18391], HOLDS_OUT [target/bench-holds].
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
BINS=("$@")
(( ${#BINS[@]} )) || BINS=(target/release)
ROUNDS="${ROUNDS:-2}"
SECS="${BENCH_SECS:-15}"
CLOSED="${HOLDS_CLOSED:-32}"
LIMITS_SH="${LIMITS_SH:-$ROOT/../shared/bench/limits.sh}"
OUT="${HOLDS_OUT:-target/bench-holds}"
PORT="${HOLDS_PORT:-18391}"
LOADGEN="${LOADGEN:-target/release/loadgen}"
[[ -f "$LIMITS_SH" ]] || die "no limits.sh at $LIMITS_SH (set LIMITS_SH)"
[[ -x "$LOADGEN" ]] || die "no loadgen at $LOADGEN (cargo build --release -p loadgen)"
ensure_postgres
ensure_redis
mkdir -p "$OUT"
export JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
export RUST_LOG=warn MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-128}"
export ORIGIN_ALLOW_DIRECT=1 ORIGIN_USER_LIMIT_PER_MIN=0   # as scripts/bench.sh: no edge in front
unset KAFKA_BROKERS
DB=booking_bench_holds_$$
PID=""
cleanup() {
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
  psql -X -q -d postgres -c "drop database if exists $DB with (force)" >/dev/null 2>&1
  redis-cli -u "$REDIS_URL" --scan --pattern "bench-holds:$$:*" | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
}
trap cleanup EXIT
for round in $(seq 1 "$ROUNDS"); do
  DURATION="${LIMITS_DURATION:-10}" LIMITS_OUT="$ROOT/$OUT/limits-$round.txt" \
    bash "$LIMITS_SH" pg >/dev/null 2>"$OUT/limits-$round.log" || die "limits.sh failed: $OUT/limits-$round.log"
  ceiling=$(awk '$1 == "pg_hold_tps" { print $2 }' "$OUT/limits-$round.txt")
  for variant in "${BINS[@]}"; do
    IFS=',' read -r -a parts <<<"$variant"
    bin=${parts[0]}; assign=("${parts[@]:1}")
    psql -X -q -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB" >/dev/null
    export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
    export REDIS_KEY_PREFIX="bench-holds:$$:$round:" BIND_ADDR="127.0.0.1:$PORT"
    "$bin/seed-demo" 120 >/dev/null
    env "${assign[@]}" "$bin/origin" serve & PID=$!
    for _ in $(seq 1 100); do curl -sf "http://$BIND_ADDR/readyz" >/dev/null && break; sleep 0.1; done
    curl -sf "http://$BIND_ADDR/readyz" >/dev/null || die "the origin ($bin) did not become ready"
    name="$OUT/round$round-$(tr -c 'A-Za-z0-9=_-' '_' <<<"$variant")"
    "$LOADGEN" run --quiet --origin-pid "$PID" --out "$name" --base-url "http://$BIND_ADDR" \
      --workload holds --closed "$CLOSED" --duration "$SECS" --prepared-holds "${HOLDS_PREPARED:-12000}" >/dev/null
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    python3 - "$name.json" "$round" "$variant" "$ceiling" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = float(sys.argv[4])
ok = r["ok_per_s"]
print(f"round {sys.argv[2]}  {sys.argv[3]:<40} pg_hold_tps {c:6.0f}  holds/s {ok:6.0f}  "
      f"p50 {r['all']['p50_ms']:5.1f} ms  p99 {r['all']['p99_ms']:5.1f} ms  ratio {ok / c if c else 0:.2f}  "
      f"non-2xx/s {r['requests_per_s'] - ok:.1f}  origin CPU {r.get('origin_cpu_us_per_request') or 0:.0f} us/hold"
      f"{'  (ran out of prepared holds after %.1f s)' % r['duration_s'] if r.get('exhausted') else ''}")
PY
  done
done
