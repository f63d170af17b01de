#!/usr/bin/env bash
# What exporting traces costs on the cached-quote path (issue 15): the release origin, the
# demo fleet, loadgen's `cached-quote` workload (closed loop, 64 clients), run with tracing
# off, on, off, on … (alternating: the box is noisy), with the OTLP exporter pointed at a tiny
# local sink (Python, answers 200 and counts bytes) when on.
#
#   scripts/trace-cost.sh            # TRACE_COST_SECS [15] per run, TRACE_COST_ROUNDS [2]
#
# Prints one line per run (ok/s, p99, origin CPU µs per request) and writes
# target/trace-cost/<n>-<off|on>.json (loadgen's summaries). BENCH_NO_BUILD=1 skips the build.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECS="${TRACE_COST_SECS:-15}"
ROUNDS="${TRACE_COST_ROUNDS:-2}"
OUT=target/trace-cost
ensure_postgres
ensure_redis
mkdir -p "$OUT"
rm -f "$OUT"/*.json

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  log "building the release origin, seed-demo and loadgen"
  cargo build --release --locked -p origin -p demo-fleet -p loadgen
fi

SINK_PORT=18471
python3 - "$SINK_PORT" >"$OUT/sink.log" 2>&1 <<'EOF' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    received = 0
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        Sink.received += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
        print(f"export {n} bytes (total {Sink.received})", flush=True)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
SINK=$!

DB=booking_trace_cost
PID=""
cleanup() {
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
  kill "$SINK" 2>/dev/null || true
  psql -X -q -d postgres -c "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "trace-cost:$$:*" | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql -X -q -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB" >/dev/null
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
export JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
export RUST_LOG=warn LOG_FORMAT=json MAX_IN_FLIGHT=128 BIND_ADDR=127.0.0.1:18470
export ORIGIN_ALLOW_DIRECT=1 ORIGIN_USER_LIMIT_PER_MIN=0   # as scripts/bench.sh: no edge in front
export REDIS_KEY_PREFIX="trace-cost:$$:"
unset KAFKA_BROKERS
BASE="http://$BIND_ADDR"
target/release/seed-demo 120 >/dev/null

cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$PID/stat"; }
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    if [[ $mode == on ]]; then export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
    else unset OTEL_EXPORTER_OTLP_ENDPOINT; fi
    target/release/origin serve >>"$OUT/origin.log" 2>&1 & PID=$!
    for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
    curl -sf "$BASE/readyz" >/dev/null || die "the origin did not become ready"
    # Warm the caches (L1, L2) with a short run first, then measure.
    target/release/loadgen run --quiet --origin-pid "$PID" --base-url "$BASE" --workload cached-quote \
      --closed 64 --duration 3 --out "$OUT/warm" >/dev/null
    c0=$(cpu_s)
    target/release/loadgen run --quiet --origin-pid "$PID" --base-url "$BASE" --workload cached-quote \
      --closed 64 --duration "$SECS" --out "$OUT/$round-$mode" >/dev/null
    c1=$(cpu_s)
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    ok=$(sed -nE 's/^  "ok_per_s": ([0-9.]+),?$/\1/p' "$OUT/$round-$mode.json")
    p99=$(grep -oE '"p99_ms": [0-9.]+' "$OUT/$round-$mode.json" | head -n 1 | grep -oE '[0-9.]+$')
    per=$(awk -v a="$c0" -v b="$c1" -v ok="$ok" -v s="$SECS" 'BEGIN { printf "%.1f", (b - a) * 1e6 / (ok * s) }')
    printf 'round %s tracing %-3s  %8s ok/s  p99 %6s ms  origin CPU %6s µs/request\n' "$round" "$mode" "$ok" "$p99" "$per"
  done
done
log "the sink received $(tail -n 1 "$OUT/sink.log" | grep -oE 'total [0-9]+' || echo 'no') bytes of spans"
