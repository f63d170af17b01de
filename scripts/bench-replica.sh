#!/usr/bin/env bash
# Hold and read throughput of one origin, direct to PostgreSQL vs through PgBouncer (session
# pooling) vs through PgBouncer with the read replica, in one run (README, "Scaling out"):
#
#   scripts/bench-replica.sh [bin dir]        (default: target/release; target/debug works, slower)
#
# Variants (BENCH_VARIANTS): direct, bouncer, bouncer+replica, bouncer+replica-ryw-off.
# Per variant: a fresh primary + replica + PgBouncer (scripts/replica.sh), the demo fleet,
# the origin, then loadgen's `holds` (closed loop, HOLDS_CLOSED [16] clients) and `mixed`
# (closed loop, MIXED_CLOSED [16] clients: search, quotes, holds, reads) for BENCH_SECS [10] s
# each. Prints one line per (variant, workload): ok/s, p50, p99.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
BIN="${1:-target/release}"
SECS="${BENCH_SECS:-10}"
OUT="${BENCH_OUT:-target/bench-replica}"
LOADGEN="${LOADGEN:-$BIN/loadgen}"
PORTS=(${BENCH_PORTS:-18541 18542 18543 18544})   # primary, replica, bouncer, origin
[[ -x "$BIN/origin" && -x "$BIN/seed-demo" && -x "$LOADGEN" ]] || die "build first: cargo build --release -p origin -p demo-fleet -p loadgen"
ensure_redis
mkdir -p "$OUT"
export JWT_ISSUER=booking-dev JWT_AUDIENCE=booking-api
export JWT_HS256_SECRET=dev-only-secret-change-me-0123456789
export QUOTE_SIGNING_KEYS=dev1=dev-only-quote-key-change-me-0123456789
export RUST_LOG=warn MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-128}" ORIGIN_ALLOW_DIRECT=1 ORIGIN_USER_LIMIT_PER_MIN=0
unset KAFKA_BROKERS DATABASE_READ_URL DATABASE_SESSION_URL
TOPO="$OUT/topology"
PID=""
cleanup() {
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
  bash scripts/replica.sh stop "$TOPO" >/dev/null 2>&1 || true
  rm -rf "$TOPO"
}
trap cleanup EXIT
P="postgres://postgres@127.0.0.1"
for variant in ${BENCH_VARIANTS:-direct bouncer bouncer+replica bouncer+replica-ryw-off}; do
  cleanup; PID=""
  bash scripts/replica.sh start "$TOPO" "${PORTS[0]}" "${PORTS[1]}" "${PORTS[2]}" >/dev/null 2>&1 || die "scripts/replica.sh start failed"
  DATABASE_URL="$P:${PORTS[0]}/booking" "$BIN/seed-demo" 120 >/dev/null
  env=(BIND_ADDR="127.0.0.1:${PORTS[3]}" REDIS_KEY_PREFIX="bench-replica:$$:$variant:")
  case $variant in
    direct) env+=(DATABASE_URL="$P:${PORTS[0]}/booking") ;;
    bouncer) env+=(DATABASE_URL="$P:${PORTS[2]}/booking") ;;
    bouncer+replica) env+=(DATABASE_URL="$P:${PORTS[2]}/booking" DATABASE_READ_URL="$P:${PORTS[2]}/booking_replica") ;;
    # What read-your-writes costs the write path (one primary query and one Redis script).
    bouncer+replica-ryw-off) env+=(DATABASE_URL="$P:${PORTS[2]}/booking" DATABASE_READ_URL="$P:${PORTS[2]}/booking_replica" REPLICA_RYW=0) ;;
  esac
  env "${env[@]}" "$BIN/origin" serve & PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${PORTS[3]}/readyz" >/dev/null && break; sleep 0.1; done
  sleep 1   # the replica probe's first rounds
  for workload in holds mixed; do
    name="$OUT/$variant-$workload"
    closed=$([[ $workload == holds ]] && echo "${HOLDS_CLOSED:-16}" || echo "${MIXED_CLOSED:-16}")
    "$LOADGEN" run --quiet --origin-pid "$PID" --out "$name" --base-url "http://127.0.0.1:${PORTS[3]}" \
      --workload "$workload" --closed "$closed" --duration "$SECS" >/dev/null
    python3 - "$name.json" "$variant" "$workload" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<16} {sys.argv[3]:<6} ok/s {r['ok_per_s']:7.1f}  p50 {r['all']['p50_ms']:6.1f} ms  "
      f"p99 {r['all']['p99_ms']:6.1f} ms  non-2xx/s {r['requests_per_s'] - r['ok_per_s']:.1f}")
PY
  done
  curl -s "http://127.0.0.1:${PORTS[3]}/metrics" | grep '^db_reads_total' | sed "s/^/  $variant: /" || true
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
done
