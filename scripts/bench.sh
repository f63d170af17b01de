#!/usr/bin/env bash
# The benchmark report, in one command:
#
#   scripts/bench.sh
#
# 1. Measures the box's ceilings with limits.sh (raw SQL hold commits, Redis SET NX, axum
#    hello-world), looked up at ${LIMITS_SH:-<repo>/../shared/bench/limits.sh}; without it the
#    report has figures but no ratios (said so in the report).
# 2. Builds the release origin and loadgen, creates the database booking_bench, loads the demo
#    fleet (seed-demo) and starts the origin (with the outbox relay when a broker
#    answers on KAFKA_BROKERS, default 127.0.0.1:9092).
# 3. Runs the workloads (tests/loadgen): cached-quote at its max (loadgen and wrk) and at half
#    of it, mixed (closed loop to find the max, then open loop at 80 % of it), burst (5× step
#    over 60 % of the mixed max, so the step offers 3× capacity), contention, and holds (closed loop) last.
# 4. Writes target/bench/report.{json,md}, one <run>.{json,md} per run and the burst plot
#    target/bench/burst.svg, and prints the report: every figure with its ratio to its ceiling.
#
# Knobs (environment): BENCH_SECS [15] seconds per run; MIXED_SECS [BENCH_SECS] (600 for the
# memory soak); LIMITS_DURATION [10]; BENCH_MAX_IN_FLIGHT [128] the origin's MAX_IN_FLIGHT;
# BENCH_EDGE_URLS ["name=url,..."] also runs cached-quote and mixed through each edge URL;
# BENCH_SKIP_LIMITS=1 reuses target/bench/limits.txt.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECS="${BENCH_SECS:-15}"
MIXED_SECS="${MIXED_SECS:-$SECS}"
OUT=target/bench
LIMITS_SH="${LIMITS_SH:-$ROOT/../shared/bench/limits.sh}"
PORT=18381
export BIND_ADDR="127.0.0.1:$PORT"
BASE="http://$BIND_ADDR"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_postgres
ensure_redis
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.md "$OUT"/*.svg

# ---------------------------------------------------------------- 1. ceilings
if [[ "${BENCH_SKIP_LIMITS:-0}" == 1 && -s "$OUT/limits.txt" ]]; then
  log "reusing $OUT/limits.txt"
elif [[ -f "$LIMITS_SH" ]]; then
  log "measuring the box's ceilings: $LIMITS_SH (a few minutes)"
  rm -f "$OUT/limits.txt"
  if ! DURATION="${LIMITS_DURATION:-10}" HTTP_PORT=18380 LIMITS_OUT="$ROOT/$OUT/limits.txt" \
      bash "$LIMITS_SH" >/dev/null 2>"$OUT/limits.log"; then
    log "limits.sh failed (see $OUT/limits.log): the report will have no ratios"
    rm -f "$OUT/limits.txt"
  fi
else
  log "no limits.sh at $LIMITS_SH (set LIMITS_SH): the report will have no ratios"
  rm -f "$OUT/limits.txt"
fi

# ---------------------------------------------------------------- 2. stack
log "building the release origin and loadgen"
cargo build --release --locked -p origin -p demo-fleet -p loadgen
BENCH_DB=booking_bench
psql -X -q -d postgres -c "drop database if exists $BENCH_DB with (force)" -c "create database $BENCH_DB" >/dev/null
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$BENCH_DB"
export JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
export REDIS_KEY_PREFIX="bench:$$:" RUST_LOG=warn
export MAX_IN_FLIGHT="${BENCH_MAX_IN_FLIGHT:-128}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
if (exec 3<>"/dev/tcp/${BROKERS%:*}/${BROKERS##*:}") 2>/dev/null; then
  export KAFKA_BROKERS="$BROKERS"
else
  unset KAFKA_BROKERS
  log "no broker at $BROKERS: the outbox relay is off (no events/s figure)"
fi
target/release/seed-demo 120 >/dev/null
target/release/origin serve & PID=$!
cleanup() {
  kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
  psql -X -q -d postgres -c "drop database if exists $BENCH_DB with (force)" >/dev/null 2>&1
  redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_KEY_PREFIX*" | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$BASE/readyz" >/dev/null || die "the origin did not become ready on $BASE"

# ---------------------------------------------------------------- 3. workloads
LG=(target/release/loadgen run --quiet --origin-pid "$PID")
field() { sed -nE "s/^  \"$2\": ([0-9.]+),?$/\1/p" "$OUT/$1.json"; }
LOADS=()
run() { # <name> <loadgen args...>
  local name=$1; shift
  log "run $name: $*"
  "${LG[@]}" --out "$OUT/$name" "$@" >/dev/null
  LOADS+=("$OUT/$name.json")
}

run cached-quote-max --base-url "$BASE" --workload cached-quote --closed 64 --duration "$SECS"
# The same endpoint under wrk, the client limits.sh measures hello-world with: the fair ratio
# (loadgen's reqwest client costs this 2-core box more CPU per request than wrk does).
if command -v wrk >/dev/null; then
  TOKEN=$(target/release/origin dev-token bench-wrk)
  S=$(date -u -d "tomorrow 09:00" +%Y-%m-%dT%H:%M:%SZ); E=$(date -u -d "tomorrow 12:00" +%Y-%m-%dT%H:%M:%SZ)
  {
    printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    printf 'wrk.headers["Authorization"] = "Bearer %s"\nlocal bodies = {\n' "$TOKEN"
    curl -sf -H "authorization: Bearer $TOKEN" \
      "$BASE/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=50000&limit=64&start=$S&end=$E" \
      | grep -o '"vehicle_id":"[^"]*"' \
      | sed -E "s/.*:\"([^\"]*)\"/  [[{\"vehicle_id\":\"\\1\",\"start\":\"$S\",\"end\":\"$E\"}]],/"
    printf '}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(nil, nil, nil, bodies[(i %% #bodies) + 1])\nend\n'
  } >"$OUT/cached-quote.lua"
  wrk -t2 -c64 -d2s -s "$OUT/cached-quote.lua" "$BASE/v1/quotes" >/dev/null   # warm L1
  log "run cached-quote-wrk: wrk -t2 -c64 -d${SECS}s"
  wrk -t2 -c64 -d"${SECS}s" --latency -s "$OUT/cached-quote.lua" "$BASE/v1/quotes" >"$OUT/cached-quote-wrk.txt"
  awk '/^Requests\/sec:/ { rps = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { bad = $NF }
       END { u = p99; v = u + 0; if (u ~ /us$/) v /= 1000; else if (u ~ /[^m]s$/) v *= 1000;
             printf "{\"workload\": \"cached-quote\", \"mode\": \"closed (wrk -t2 -c64)\", \"ok_per_s\": %s, \"non_2xx\": %d, \"all\": {\"p99_ms\": %.2f}}\n", rps, bad + 0, v }' \
    "$OUT/cached-quote-wrk.txt" >"$OUT/cached-quote-wrk.json"
  LOADS+=("$OUT/cached-quote-wrk.json")
fi
MAXQ=$(field cached-quote-max ok_per_s)
[[ -s "$OUT/cached-quote-wrk.json" ]] && MAXQ=$(sed -nE 's/.*"ok_per_s": ([0-9.]+).*/\1/p' "$OUT/cached-quote-wrk.json")
HALF=$(awk -v r="$MAXQ" 'BEGIN { printf "%.0f", r / 2 }')
run cached-quote-half --base-url "$BASE" --workload cached-quote --rate "$HALF" --duration "$SECS"
run mixed-max --base-url "$BASE" --workload mixed --closed 64 --duration "$SECS"
MAX_OPS=$(field mixed-max achieved_ops_per_s)
MIXED_RATE=$(awk -v r="$MAX_OPS" 'BEGIN { printf "%.0f", r * 0.8 }')
run mixed --base-url "$BASE" --workload mixed --rate "$MIXED_RATE" --duration "$MIXED_SECS"
# Base at 0.6 × the measured capacity, so the 5× step offers 3× capacity: the design's 5× burst
# and the overload case (admitted p99 within 2× of steady, the excess shed fast) in one run.
BURST_BASE=$(awk -v r="$MAX_OPS" 'BEGIN { printf "%.0f", r * 0.6 }')
run burst --base-url "$BASE" --workload burst --rate "$BURST_BASE" --burst-factor 5 \
  --duration "$(( SECS * 2 ))" --plot --max-in-flight 4096 --timeout-ms 5000
run contention --base-url "$BASE" --workload contention --rate 200 --duration "$SECS"
# Last: its ~10 000 live holds raise the demand signal (surge) of every later quote.
run holds --base-url "$BASE" --workload holds --closed 32 --duration "$SECS" --prepared-holds 12000

IFS=',' read -r -a EDGES <<<"${BENCH_EDGE_URLS:-}"
for edge in "${EDGES[@]}"; do
  [[ -n "$edge" ]] || continue
  name=${edge%%=*}; url=${edge#*=}
  run "edge-$name-cached-quote" --base-url "$url" --metrics-url "$BASE/metrics" \
    --workload cached-quote --closed 64 --duration "$SECS"
  run "edge-$name-mixed" --base-url "$url" --metrics-url "$BASE/metrics" \
    --workload mixed --rate "$MIXED_RATE" --duration "$SECS"
done

# ---------------------------------------------------------------- 4. report
NOTE="$(nproc) cores; load average at the start $LOAD0, at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box makes figures pessimistic; ratios come from the same session); $SECS s per run, mixed $MIXED_SECS s; MAX_IN_FLIGHT $MAX_IN_FLIGHT; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
LIMITS_ARG=()
[[ -s "$OUT/limits.txt" ]] && LIMITS_ARG=(--limits "$OUT/limits.txt")
target/release/loadgen summary "${LIMITS_ARG[@]}" --out "$OUT" --note "$NOTE" "${LOADS[@]}"
log "report: $OUT/report.md, $OUT/report.json; burst plot: $OUT/burst.svg"
