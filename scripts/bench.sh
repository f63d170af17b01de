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
#    With BENCH_BEFORE=<git ref> (e.g. main) it first builds that code in its own worktree
#    (target/bench-before-src) and runs the headline workloads against its origin, in the same
#    session, as runs named before-<run>: the report sets each figure next to the code before.
#    The origin's CPU time per request is read from /proc/<pid>/stat around every run.
# 4. Writes target/bench/report.{json,md}, one <run>.{json,md} per run, the plot of every
#    path's throughput and p99 (target/bench/paths.svg) and the burst plot
#    target/bench/burst.svg, and prints the report: every figure with its ratio to its ceiling.
#
# Knobs (environment): BENCH_SECS [15] seconds per run; MIXED_SECS [BENCH_SECS] (600 for the
# memory soak); LIMITS_DURATION [10]; BENCH_MAX_IN_FLIGHT [128] the origin's MAX_IN_FLIGHT;
# BENCH_EDGE [auto] 1 = run scripts/bench-edge.sh (both edge runtimes, the JavaScript way and
# the code before, then the seed mix and the 5× burst through each runtime), 0 = skip, auto = run
# it when both edge builds exist (scripts/edge.sh build); BENCH_EDGE_URLS ["name=url,..."] also
# runs cached-quote and mixed through already running edges;
# BENCH_SKIP_LIMITS=1 reuses target/bench/limits.txt; BENCH_BEFORE [unset] a git ref to compare;
# BENCH_NO_BUILD=1 uses the binaries already built; BENCH_PROFILE=1 profiles every origin run:
# the CPU seconds of each process kind on the box during the run (origin, postgres, redis-server,
# loadgen, wrk, ...: where the 2 cores went) in <run>.cpu.txt, and `perf record` of the origin
# (flat, by symbol: release builds have no frame pointers) in <run>.perf.txt; with the edges, it
# builds them keeping function names (EDGE_KEEP_NAMES=1) and profiles each runtime during one
# more cached-quote run (EDGE_BENCH_PROFILE: edge-<runtime>.perf.txt, and V8's own profile of
# workerd's isolates in edge-cloudflare.profile.txt).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECS="${BENCH_SECS:-15}"
MIXED_SECS="${MIXED_SECS:-$SECS}"
OUT=target/bench
LIMITS_SH="${LIMITS_SH:-$ROOT/../shared/bench/limits.sh}"

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
if [[ "${BENCH_NO_BUILD:-0}" == 1 ]]; then
  log "BENCH_NO_BUILD=1: using the binaries in target/release as they are"
else
  log "building the release origin and loadgen"
  cargo build --release --locked -p origin -p demo-fleet -p loadgen
fi
# The code before (BENCH_BEFORE=<git ref>): checked out in its own worktree under target/ and
# built into its own target dir (seeded with hard links of ours, so only what changed builds).
BEFORE_BIN=""
if [[ -n "${BENCH_BEFORE:-}" ]]; then
  BSRC="$ROOT/target/bench-before-src"; BTARGET="$ROOT/target/bench-before"
  rev=$(git rev-parse --verify "$BENCH_BEFORE^{commit}") || die "BENCH_BEFORE=$BENCH_BEFORE is not a commit"
  if [[ -d "$BSRC" ]]; then git -C "$BSRC" checkout -q --detach "$rev"
  else git worktree add -q --detach "$BSRC" "$rev"; fi
  if [[ ! -d "$BTARGET/release" ]]; then
    mkdir -p "$BTARGET"; cp -al target/release "$BTARGET/release"
    rm -f "$BTARGET/release/.cargo-lock"   # its own lock, not a link to ours
  fi
  log "building the code before: $BENCH_BEFORE ($(git rev-parse --short "$rev"))"
  [[ "${BENCH_NO_BUILD:-0}" == 1 && -x "$BTARGET/release/origin" ]] \
    || (cd "$BSRC" && CARGO_TARGET_DIR="$BTARGET" cargo build --release --locked -p origin -p demo-fleet)
  BEFORE_BIN="$BTARGET/release"
fi
export JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
# loadgen calls the origin directly (no edge signs), and its Zipf users would pass the
# origin's own per-user limit (the top user of 1000 sends ~13 % of the load): both off here,
# the bench measures the paths, not the front door (its cost: README, "Edge → origin").
export ORIGIN_ALLOW_DIRECT=1 ORIGIN_USER_LIMIT_PER_MIN=0
export RUST_LOG=warn
export MAX_IN_FLIGHT="${BENCH_MAX_IN_FLIGHT:-128}"
# tansu polls its storage while a fetch waits: at the consumers' default 100 ms wait, one idle
# origin's fetches cost it 0.3-0.5 of a core of this 2-core box (measured with BENCH_PROFILE=1),
# which Kafka would not spend. 1 s keeps the consumers on and that cost ~5x smaller.
export CONSUMER_FETCH_WAIT_MS="${BENCH_CONSUMER_FETCH_WAIT_MS:-1000}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
if (exec 3<>"/dev/tcp/${BROKERS%:*}/${BROKERS##*:}") 2>/dev/null; then
  export KAFKA_BROKERS="$BROKERS"
else
  unset KAFKA_BROKERS
  log "no broker at $BROKERS: the outbox relay is off (no events/s figure)"
fi
PID=""; DBS=(); PREFIXES=()
cleanup() {
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
  for db in "${DBS[@]}"; do
    psql -X -q -d postgres -c "drop database if exists $db with (force)" >/dev/null 2>&1
  done
  for p in "${PREFIXES[@]}"; do
    redis-cli -u "$REDIS_URL" --scan --pattern "$p*" | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
  done
}
trap cleanup EXIT
# Starts the origin built in <bin dir> on its own database and Redis prefix (named after <tag>)
# with the demo fleet; sets PID and BASE.
start_origin() { # <bin dir> <tag> <port>
  local bin=$1 db="booking_bench_$2"
  psql -X -q -d postgres -c "drop database if exists $db with (force)" -c "create database $db" >/dev/null
  DBS+=("$db")
  export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db"
  export REDIS_KEY_PREFIX="bench:$$:$2:" BIND_ADDR="127.0.0.1:$3"
  PREFIXES+=("$REDIS_KEY_PREFIX")
  BASE="http://$BIND_ADDR"
  "$bin/seed-demo" 120 >/dev/null
  "$bin/origin" serve & PID=$!
  for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "$BASE/readyz" >/dev/null || die "the origin ($bin) did not become ready on $BASE"
}
stop_origin() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=""; }

# ---------------------------------------------------------------- 3. workloads
field() { sed -nE "s/^  \"$2\": ([0-9.]+),?$/\1/p" "$OUT/$1.json"; }
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$PID/stat"; }  # USER_HZ is 100
# CPU ticks (user + system) of every process now, summed by command name (`comm` may hold
# spaces: the fields are counted from the closing parenthesis).
cpu_by_comm() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
    lp = index($0, "("); rp = 0
    for (i = length($0); i > 0; i--) if (substr($0, i, 1) == ")") { rp = i; break }
    comm = substr($0, lp + 1, rp - lp - 1); sub(/[:\/].*/, "", comm); gsub(/ /, "_", comm)
    split(substr($0, rp + 2), f, " ")
    t[comm] += f[12] + f[13]
  } END { for (c in t) print c, t[c] }'
}
# The children's user + system time in a `times` output file, in ticks (1/100 s).
child_ticks() {
  awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
                 printf "%d", t * 100 }' "$1"
}
# BENCH_PROFILE=1: wraps one run (the command in "$@"), writing $OUT/<name>.cpu.txt and .perf.txt.
profiled() { # <name> <command...>
  local name=$1; shift
  if [[ "${BENCH_PROFILE:-0}" != 1 ]]; then "$@"; return; fi
  command -v perf >/dev/null || apt_install linux-perf || die "BENCH_PROFILE=1 needs perf"
  local before after rc=0 t0 t1
  local client0 client1
  # The load client exits before the second snapshot: its CPU comes from this shell's waited-for
  # children (`times`, second line; in this shell, not a subshell, whose counters start at 0).
  times >"$OUT/$name.times0"
  before=$(cpu_by_comm); t0=$(date +%s.%N)
  perf record -q -F 499 -p "$PID" -o "$OUT/$name.perf.data" >/dev/null 2>&1 &
  local perf_pid=$!
  "$@" || rc=$?
  kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true
  after=$(cpu_by_comm); t1=$(date +%s.%N)
  times >"$OUT/$name.times1"
  client0=$(child_ticks "$OUT/$name.times0"); client1=$(child_ticks "$OUT/$name.times1")
  after+=$'\n'"client:$(basename "$1") $(( client1 - client0 ))"
  rm -f "$OUT/$name.times0" "$OUT/$name.times1"
  awk -v secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" '
    NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d > 0) { c[$1] = d; all += d } }
    END {
      printf "CPU of the box during the run (%.1f s, 2 cores = %.1f CPU-s), by process kind:\n", secs, 2 * secs
      n = 0; for (k in c) order[++n] = k
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (c[order[j]] > c[order[i]]) { x = order[i]; order[i] = order[j]; order[j] = x }
      for (i = 1; i <= n && i <= 12; i++) printf "  %-18s %7.2f CPU-s  %5.1f %%\n", order[i], c[order[i]] / 100, 100 * c[order[i]] / all
    }' <(echo "$before") <(echo "$after") >"$OUT/$name.cpu.txt"
  perf report -i "$OUT/$name.perf.data" --no-children --sort dso,symbol --stdio --percent-limit 0.7 \
    2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 45 >"$OUT/$name.perf.txt" || true
  rm -f "$OUT/$name.perf.data"
  return "$rc"
}
LOADS=()
# Every workload against the origin at BASE (PID); run files are named <prefix><run>.
workloads() { # <prefix>
  local P=$1
  local LG=(target/release/loadgen run --quiet --origin-pid "$PID")
  run() { # <name> <loadgen args...>
    local name=$P$1; shift
    log "run $name: $*"
    profiled "$name" "${LG[@]}" --out "$OUT/$name" "$@" >/dev/null
    LOADS+=("$OUT/$name.json")
  }
  run cached-quote-max --base-url "$BASE" --workload cached-quote --closed 64 --duration "$SECS"
  # The same endpoint under wrk, the client limits.sh measures hello-world with: the fair ratio
  # (loadgen's reqwest client costs this 2-core box more CPU per request than wrk does).
  if command -v wrk >/dev/null; then
    local TOKEN S E c0 c1
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
    } >"$OUT/${P}cached-quote.lua"
    wrk -t2 -c64 -d2s -s "$OUT/${P}cached-quote.lua" "$BASE/v1/quotes" >/dev/null   # warm L1
    log "run ${P}cached-quote-wrk: wrk -t2 -c64 -d${SECS}s"
    c0=$(cpu_s)
    profiled "${P}cached-quote-wrk" wrk -t2 -c64 -d"${SECS}s" --latency -s "$OUT/${P}cached-quote.lua" \
      "$BASE/v1/quotes" >"$OUT/${P}cached-quote-wrk.txt"
    c1=$(cpu_s)
    awk -v cpu="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" \
      '/^Requests\/sec:/ { rps = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { bad = $NF }
       / requests in / { n = $1 }
       END { u = p99; v = u + 0; if (u ~ /us$/) v /= 1000; else if (u ~ /[^m]s$/) v *= 1000;
             per = n > 0 ? cpu * 1e6 / n : 0;
             printf "{\"workload\": \"cached-quote\", \"mode\": \"closed (wrk -t2 -c64)\", \"ok_per_s\": %s, \"non_2xx\": %d, \"origin_cpu_s\": %.2f, \"origin_cpu_us_per_request\": %.1f, \"all\": {\"p99_ms\": %.2f}}\n", rps, bad + 0, cpu, per, v }' \
      "$OUT/${P}cached-quote-wrk.txt" >"$OUT/${P}cached-quote-wrk.json"
    LOADS+=("$OUT/${P}cached-quote-wrk.json")
  fi
  local MAXQ HALF MAX_OPS MIXED_RATE BURST_BASE
  MAXQ=$(field "${P}cached-quote-max" ok_per_s)
  [[ -s "$OUT/${P}cached-quote-wrk.json" ]] && MAXQ=$(sed -nE 's/.*"ok_per_s": ([0-9.]+).*/\1/p' "$OUT/${P}cached-quote-wrk.json")
  HALF=$(awk -v r="$MAXQ" 'BEGIN { printf "%.0f", r / 2 }')
  run cached-quote-half --base-url "$BASE" --workload cached-quote --rate "$HALF" --duration "$SECS"
  run mixed-max --base-url "$BASE" --workload mixed --closed 64 --duration "$SECS"
  MAX_OPS=$(field "${P}mixed-max" achieved_ops_per_s)
  MIXED_RATE=$(awk -v r="$MAX_OPS" 'BEGIN { printf "%.0f", r * 0.8 }')
  [[ -z "$P" ]] && AFTER_MIXED_RATE=$MIXED_RATE
  run mixed --base-url "$BASE" --workload mixed --rate "$MIXED_RATE" --duration "$MIXED_SECS"
  if [[ -z "$P" ]]; then
    # Base at 0.6 × the measured capacity, so the 5× step offers 3× capacity: the design's 5×
    # burst and the overload case (admitted p99 within 2× of steady, the excess shed fast).
    BURST_BASE=$(awk -v r="$MAX_OPS" 'BEGIN { printf "%.0f", r * 0.6 }')
    run burst --base-url "$BASE" --workload burst --rate "$BURST_BASE" --burst-factor 5 \
      --duration "$(( SECS * 2 ))" --plot --max-in-flight 4096 --timeout-ms 5000
    run contention --base-url "$BASE" --workload contention --rate 200 --duration "$SECS"
  fi
  # Last: its ~10 000 live holds raise the demand signal (surge) of every later quote.
  run holds --base-url "$BASE" --workload holds --closed 32 --duration "$SECS" --prepared-holds 12000
}

if [[ -n "$BEFORE_BIN" ]]; then
  start_origin "$BEFORE_BIN" before 18382
  workloads before-
  stop_origin
fi
start_origin target/release after 18381
workloads ""

IFS=',' read -r -a EDGES <<<"${BENCH_EDGE_URLS:-}"
for edge in "${EDGES[@]}"; do
  [[ -n "$edge" ]] || continue
  name=${edge%%=*}; url=${edge#*=}
  P=""
  run() { local name=$1; shift; log "run $name: $*"
    target/release/loadgen run --quiet --out "$OUT/$name" "$@" >/dev/null; LOADS+=("$OUT/$name.json"); }
  run "edge-$name-cached-quote" --base-url "$url" --metrics-url "$BASE/metrics" \
    --workload cached-quote --closed 64 --duration "$SECS"
  run "edge-$name-mixed" --base-url "$url" --metrics-url "$BASE/metrics" \
    --workload mixed --rate "$AFTER_MIXED_RATE" --duration "$SECS"
done

# The edges, in their runtimes, in front of their own origin (the edge suite's stack): wrk rows
# for the cached quote (the Rust worker, the code before, the JavaScript way), then the seed
# mix and the 5× burst through each runtime with the load generator.
EDGE_MODE="${BENCH_EDGE:-auto}"
if [[ "$EDGE_MODE" == auto ]]; then
  EDGE_MODE=0
  [[ -s edge/cloudflare/build/index_bg.wasm && -s "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/edge_spin.wasm" ]] \
    && EDGE_MODE=1
  [[ "$EDGE_MODE" == 0 ]] && log "edge builds not found: no edge runs (scripts/edge.sh build, or BENCH_EDGE=1)"
fi
if [[ "$EDGE_MODE" == 1 ]]; then
  log "the edges: scripts/bench-edge.sh $SECS 64"
  rm -f "$OUT"/edge-*.json "$OUT"/before-edge-*.json
  profile_vars=()
  [[ "${BENCH_PROFILE:-0}" == 1 ]] && profile_vars=(EDGE_KEEP_NAMES=1 EDGE_BENCH_PROFILE=1)
  env "${profile_vars[@]}" EDGE_BENCH_OUT="$ROOT/$OUT" EDGE_BENCH_LOADGEN="$ROOT/target/release/loadgen" \
    EDGE_BENCH_MIXED_RATE="$AFTER_MIXED_RATE" \
    bash scripts/bench-edge.sh "$SECS" 64 | tee "$OUT/edge-bench.txt"
  for f in "$OUT"/edge-*.json "$OUT"/before-edge-*.json; do [[ -s "$f" ]] && LOADS+=("$f"); done
fi

# ---------------------------------------------------------------- 4. report
NOTE="$(nproc) cores; load average at the start $LOAD0, at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box makes figures pessimistic; ratios come from the same session); $SECS s per run, mixed $MIXED_SECS s; MAX_IN_FLIGHT $MAX_IN_FLIGHT; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
LIMITS_ARG=()
[[ -s "$OUT/limits.txt" ]] && LIMITS_ARG=(--limits "$OUT/limits.txt")
target/release/loadgen summary "${LIMITS_ARG[@]}" --out "$OUT" --note "$NOTE" "${LOADS[@]}"
log "report: $OUT/report.md, $OUT/report.json; plots: $OUT/paths.svg (every path), $OUT/burst.svg"
