#!/usr/bin/env bash
# A PostgreSQL primary with a streaming replica and PgBouncer in front of both: the scaled-out
# data tier of one region (README, "Scaling out"), on loopback ports, in a directory of its own.
#
#   scripts/replica.sh install                         install Debian's pgbouncer if missing
#   scripts/replica.sh start <dir> <primary_port> <replica_port> <bouncer_port>
#   scripts/replica.sh stop <dir>                      stop PgBouncer, the replica, the primary
#   scripts/replica.sh node <dir> primary|replica start|stop   one server (tests: the replica's loss)
#   scripts/replica.sh bouncer <dir> <bouncer_port> <host_port>   PgBouncer alone in front of an
#                                                      existing server (every database name)
#
# `start` is idempotent: what exists is reused, what runs is left running. It makes
# - <dir>/primary: `initdb` (trust auth, as the `postgres` user when run as root: initdb and
#   postgres refuse root), started on <primary_port>;
# - <dir>/replica: `pg_basebackup -R -X stream` of the primary (standby.signal and
#   primary_conninfo written by -R), started on <replica_port> as a hot standby;
# - <dir>/pgbouncer.ini: PgBouncer on <bouncer_port> in SESSION pooling with two pools per
#   database $REPLICA_DB (default `booking`): `booking` → the primary, `booking_replica` → the
#   replica; any other name goes to the primary (`*`). `pgbouncer` is the admin console
#   (SHOW POOLS, SHOW STATS) for the user postgres.
#
# Why session pooling, not transaction pooling (README "Scaling out"): Debian ships PgBouncer
# 1.18, which does not track prepared statements (1.21's max_prepared_statements), and sqlx 0.8
# cannot run without them through a transaction pooler: it names every statement even with its
# statement cache off (seen here: "prepared statement sqlx_s_1 already exists" on a shared
# server session), and it sends Sync between a statement's Parse/Describe and its
# Bind/Execute, where a transaction pooler may hand the next half to another server session.
# In session pooling a client keeps its server session until it disconnects; DISCARD ALL
# (server_reset_query) then clears its prepared statements, settings and advisory locks.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPLICA_DB="${REPLICA_DB:-booking}"
# PgBouncer's own bound on a transaction left idle by a vanished client, as the origin's
# idle_in_transaction_session_timeout (REQUEST_TIMEOUT_MS's default plus 5 s, `startup.rs`).
IDLE_TRANSACTION_TIMEOUT="${IDLE_TRANSACTION_TIMEOUT:-15}"

is_root() { [[ $(id -u) -eq 0 ]]; }
# Runs a command as the postgres user when root (initdb, postgres and pgbouncer refuse root).
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_bin() {
  local name=$1 d
  for d in /usr/lib/postgresql/*/bin; do [[ -x "$d/$name" ]] && { echo "$d/$name"; return; }; done
  command -v "$name" || die "$name not found (install Debian's postgresql)"
}

ensure_pgbouncer() {
  command -v pgbouncer >/dev/null && return 0
  log "installing pgbouncer (Debian package, once)"
  # Tests start topologies in parallel: one installer at a time (apt's own lock would fail the
  # others instead of making them wait).
  exec 9>"${TMPDIR:-/tmp}/replica-sh-install.lock"
  flock 9
  command -v pgbouncer >/dev/null && return 0
  apt_install --no-install-recommends pgbouncer \
    || die "pgbouncer is missing and cannot be installed: apt-get install pgbouncer"
  command -v pgbouncer >/dev/null || die "the pgbouncer package did not provide pgbouncer"
  # Debian's package starts a system instance on 6432 where it can; ours run on their own
  # ports with their own configuration, so that one is left alone.
}

own_dir() { mkdir -p "$1"; if is_root; then chown postgres:postgres "$1"; fi; }
# A data directory: the postgres user's, mode 0700 (the server refuses anything wider).
data_dir() { own_dir "$1"; chmod 700 "$1"; }

pg_running() { [[ -f "$1/postmaster.pid" ]] && as_pg "$(pg_bin pg_ctl)" -D "$1" status >/dev/null 2>&1; }

node_start() {
  local data=$1
  pg_running "$data" && return 0
  # The log beside the data directory, not in it (pg_basebackup would copy it).
  as_pg "$(pg_bin pg_ctl)" -D "$data" -l "$data.log" -w -t 60 start >&2 \
    || { tail -n 20 "$data.log" >&2; die "PostgreSQL in $data did not start"; }
}

node_stop() {
  local data=$1
  pg_running "$data" || return 0
  as_pg "$(pg_bin pg_ctl)" -D "$data" -m fast -w -t 60 stop >&2
}

bouncer_pid() { [[ -f "$1/pgbouncer.pid" ]] && cat "$1/pgbouncer.pid"; }

bouncer_start() {
  local dir=$1 port=$2 pid
  pid=$(bouncer_pid "$dir" || true)
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then return 0; fi
  as_pg pgbouncer -d "$dir/pgbouncer.ini" >&2 || { tail -n 20 "$dir/pgbouncer.log" >&2; die "pgbouncer did not start"; }
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p "$port" -d pgbouncer 2>/dev/null && return 0; sleep 0.1; done
  tail -n 20 "$dir/pgbouncer.log" >&2
  die "pgbouncer does not answer on 127.0.0.1:$port"
}

bouncer_stop() {
  local dir=$1 pid
  pid=$(bouncer_pid "$dir" || true)
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -INT "$pid"   # SIGINT: immediate shutdown (SIGTERM waits for clients to leave)
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Writes <dir>/pgbouncer.ini: $databases (the [databases] section) on $port; $4 more settings.
write_bouncer_ini() {
  local dir=$1 port=$2 databases=$3 extra=${4:-}
  cat >"$dir/pgbouncer.ini" <<EOF
; written by scripts/replica.sh
[databases]
$databases

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
stats_users = postgres
pool_mode = session
server_reset_query = DISCARD ALL
; sqlx sends extra_float_digits as a start-up parameter; PgBouncer does not track it.
ignore_startup_parameters = extra_float_digits,options
max_client_conn = 2000
default_pool_size = 40
reserve_pool_size = 10
server_lifetime = 3600
idle_transaction_timeout = $IDLE_TRANSACTION_TIMEOUT
log_connections = 0
log_disconnections = 0
$extra
EOF
  printf '"postgres" ""\n' >"$dir/userlist.txt"
  if is_root; then chown postgres:postgres "$dir/pgbouncer.ini" "$dir/userlist.txt"; fi
}

cmd_start() {
  local dir=$1 pport=$2 rport=$3 bport=$4
  ensure_pgbouncer
  dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
  own_dir "$dir"
  local primary="$dir/primary" replica="$dir/replica"
  if [[ ! -f "$primary/PG_VERSION" ]]; then
    log "initdb $primary"
    data_dir "$primary"
    as_pg "$(pg_bin initdb)" -D "$primary" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    # initdb's pg_hba.conf already trusts replication connections from 127.0.0.1.
    cat >>"$primary/postgresql.conf" <<EOF
# scripts/replica.sh
port = $pport
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
wal_level = replica
max_wal_senders = 5
wal_keep_size = '512MB'
# The replica's lag is measured by the origin against pg_current_wal_lsn(); a short
# wal_writer_delay keeps an idle primary's last commit from waiting 200 ms to be streamed.
wal_writer_delay = '10ms'
EOF
  fi
  node_start "$primary"
  if ! psql -h 127.0.0.1 -p "$pport" -U postgres -d postgres -tAc "select 1 from pg_database where datname = '$REPLICA_DB'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$pport" -U postgres -d postgres -qc "create database \"$REPLICA_DB\"" >&2
  fi
  if [[ ! -f "$replica/PG_VERSION" ]]; then
    log "pg_basebackup -R into $replica"
    rm -rf "$replica"
    data_dir "$replica"
    as_pg "$(pg_bin pg_basebackup)" -h 127.0.0.1 -p "$pport" -U postgres -D "$replica" -R -X stream -c fast >&2
    cat >>"$replica/postgresql.conf" <<EOF
# scripts/replica.sh: the replica
port = $rport
hot_standby = on
hot_standby_feedback = on
EOF
  fi
  node_start "$replica"
  write_bouncer_ini "$dir" "$bport" "$REPLICA_DB = host=127.0.0.1 port=$pport dbname=$REPLICA_DB
${REPLICA_DB}_replica = host=127.0.0.1 port=$rport dbname=$REPLICA_DB
* = host=127.0.0.1 port=$pport"
  bouncer_start "$dir" "$bport"
  log "primary 127.0.0.1:$pport, replica 127.0.0.1:$rport, pgbouncer 127.0.0.1:$bport (session pooling: $REPLICA_DB, ${REPLICA_DB}_replica)"
}

cmd_stop() {
  local dir=$1
  [[ -d "$dir" ]] || return 0
  bouncer_stop "$dir"
  node_stop "$dir/replica"
  node_stop "$dir/primary"
}

case "${1:-}" in
  install) ensure_pgbouncer ;;
  start)
    [[ $# -eq 5 ]] || die "usage: $0 start <dir> <primary_port> <replica_port> <bouncer_port>"
    cmd_start "$2" "$3" "$4" "$5" ;;
  stop)
    [[ $# -eq 2 ]] || die "usage: $0 stop <dir>"
    cmd_stop "$2" ;;
  node)
    [[ $# -eq 4 ]] || die "usage: $0 node <dir> primary|replica start|stop"
    case "$3:$4" in
      primary:start|replica:start) node_start "$2/$3" ;;
      primary:stop|replica:stop) node_stop "$2/$3" ;;
      *) die "usage: $0 node <dir> primary|replica start|stop" ;;
    esac ;;
  bouncer)
    [[ $# -eq 4 ]] || die "usage: $0 bouncer <dir> <bouncer_port> <host_port>"
    ensure_pgbouncer
    mkdir -p "$2"; own_dir "$2"
    # In front of a shared server with a database per test: at most an origin's pool per
    # database, and server sessions closed a second after their client left (session pooling
    # would otherwise keep them for server_idle_timeout's 10 minutes, holding the server's
    # max_connections and each test's database open).
    write_bouncer_ini "$2" "$3" "* = host=127.0.0.1 port=$4" "default_pool_size = 20
reserve_pool_size = 0
server_idle_timeout = 1"
    bouncer_start "$2" "$3" ;;
  *) die "usage: $0 install | start <dir> <pport> <rport> <bport> | stop <dir> | node <dir> primary|replica start|stop | bouncer <dir> <bport> <host_port>" ;;
esac
