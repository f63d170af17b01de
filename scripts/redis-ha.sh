#!/usr/bin/env bash
# The scaled-out Redis of one region (README, "Scaling out"), on loopback ports, in a directory
# of its own, from Debian's redis-server (which is also the sentinel: `--sentinel`).
#
#   scripts/redis-ha.sh cluster <dir> <port>[:<bus_port>] ×6
#       a Redis Cluster of 3 masters + 3 replicas (`redis-cli --cluster create
#       --cluster-replicas 1`); cluster-node-timeout 1000 ms, so a dead master's replica takes
#       over within about 2 s. The bus port defaults to port + 10000.
#   scripts/redis-ha.sh sentinel <dir> <master_port> <replica_port> <sentinel_port> ×3
#       a master, its replica and three sentinels watching the set `$SENTINEL_MASTER` (default
#       `bp`) with quorum 2, down-after 1000 ms: a dead master is replaced within about 2–3 s.
#   scripts/redis-ha.sh stop <dir>        stop every server the directory holds
#
# `cluster` and `sentinel` are idempotent: servers that run are left running, and a cluster
# whose nodes already agree is not created again. Every server runs without persistence
# (the origin rebuilds what Redis holds from PostgreSQL) and writes its log to <dir>.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SENTINEL_MASTER="${SENTINEL_MASTER:-bp}"

# Starts one redis-server on $2 with extra arguments, unless one answers there already.
start_server() {
  local dir=$1 port=$2
  shift 2
  if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then return 0; fi
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log" "$@" \
    || die "redis-server on $port did not start (see $dir/redis-$port.log)"
}

wait_for() {
  local what=$1 tries=${3:-100}
  local i
  for ((i = 0; i < tries; i++)); do
    if eval "$2"; then return 0; fi
    sleep 0.1
  done
  die "timed out waiting for $what"
}

cluster() {
  local dir=$1
  shift
  [[ $# -eq 6 ]] || die "cluster: six ports expected (3 masters + 3 replicas), got $#"
  mkdir -p "$dir"
  local nodes=() spec port bus
  for spec in "$@"; do
    port=${spec%%:*}
    bus=${spec#*:}
    [[ $bus == "$spec" ]] && bus=$((port + 10000))
    # repl-diskless-sync-delay 0: one replica per master, nothing to wait for before the
    # first sync. cluster-replica-validity-factor 0: a replica takes over however long it was
    # cut off, since what Redis holds is rebuilt from PostgreSQL after any topology change
    # (README, "Scaling out"); availability of the locks and caches matters more than its age.
    start_server "$dir" "$port" --cluster-enabled yes --cluster-port "$bus" \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 1000 \
      --repl-diskless-sync-delay 0 --cluster-replica-validity-factor 0
    nodes+=("127.0.0.1:$port")
  done
  for spec in "${nodes[@]}"; do
    wait_for "redis on $spec" "redis-cli -p ${spec#*:} ping 2>/dev/null | grep -q PONG"
  done
  local first=${nodes[0]#*:}
  if ! redis-cli -p "$first" cluster info | grep -q '^cluster_state:ok'; then
    log "creating a Redis Cluster: ${nodes[*]} (3 masters, 1 replica each)"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
      || die "redis-cli --cluster create failed: $(tail -5 "$dir/create.log")"
  fi
  # Every node must agree before a client is let in: slots assigned, replicas attached.
  for spec in "${nodes[@]}"; do
    wait_for "cluster_state:ok on $spec" \
      "redis-cli -p ${spec#*:} cluster info | grep -q '^cluster_state:ok'" 200
  done
  wait_for "three replicas attached" \
    "[[ \$(redis-cli -p $first cluster nodes | grep -c ' slave ') -eq 3 ]]" 200
  # A replica that has not finished its first sync cannot take over: a master killed in that
  # window (5 s with the default sync delay) would leave its slots unserved for good.
  for spec in "${nodes[@]}"; do
    if redis-cli -p "${spec#*:}" info replication | grep -q '^role:slave'; then
      wait_for "the replica on $spec in sync" \
        "redis-cli -p ${spec#*:} info replication | grep -q '^master_link_status:up'" 300
    fi
  done
  log "Redis Cluster up: ${nodes[*]}"
}

sentinel() {
  local dir=$1 master=$2 replica=$3
  shift 3
  [[ $# -eq 3 ]] || die "sentinel: three sentinel ports expected, got $#"
  mkdir -p "$dir"
  start_server "$dir" "$master" --repl-diskless-sync-delay 0
  # The replica may take over: it must not refuse writes then; until then, writes to it are
  # refused by the (default) replica-read-only.
  start_server "$dir" "$replica" --replicaof 127.0.0.1 "$master"
  wait_for "the replica's link to the master" \
    "redis-cli -p $replica info replication | grep -q '^master_link_status:up'" 200
  local port conf
  for port in "$@"; do
    conf="$dir/sentinel-$port.conf"
    # A sentinel rewrites its configuration file (what it learned): written once.
    if [[ ! -f $conf ]]; then
      cat >"$conf" <<EOF
port $port
bind 127.0.0.1
sentinel monitor $SENTINEL_MASTER 127.0.0.1 $master 2
sentinel down-after-milliseconds $SENTINEL_MASTER 1000
sentinel failover-timeout $SENTINEL_MASTER 5000
sentinel parallel-syncs $SENTINEL_MASTER 1
EOF
    fi
    if ! redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      redis-server "$conf" --sentinel --daemonize yes --pidfile "$dir/sentinel-$port.pid" \
        --logfile "$dir/sentinel-$port.log" --dir "$dir" \
        || die "sentinel on $port did not start (see $dir/sentinel-$port.log)"
    fi
  done
  for port in "$@"; do
    wait_for "sentinel $port to see the replica and the other sentinels" \
      "redis-cli -p $port sentinel master $SENTINEL_MASTER 2>/dev/null | tr '\n' ' ' | grep -Eq 'num-slaves 1 num-other-sentinels 2'" 300
  done
  log "Sentinel set $SENTINEL_MASTER up: master $master, replica $replica, sentinels $*"
}

stop() {
  local dir=$1 pidfile pid
  [[ -d $dir ]] || return 0
  for pidfile in "$dir"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  cluster) shift; cluster "$@" ;;
  sentinel) shift; sentinel "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: $0 cluster <dir> <port>[:<bus>] ×6 | sentinel <dir> <master> <replica> <sentinel> ×3 | stop <dir>" ;;
esac
