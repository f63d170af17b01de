#!/usr/bin/env bash
# Shared helpers for the project's scripts: find or start PostgreSQL and Redis, install what
# the build needs (idempotently: anything already present is skipped).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
export DATABASE_URL="${DATABASE_URL:-postgres://$PGUSER@$PGHOST:$PGPORT/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

log() { printf '[%s %s] %s\n' "$(basename "$0")" "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || return 1
  [[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null || return 1; }
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
  if [[ $APT_UPDATED -eq 0 ]]; then $sudo apt-get update -qq >&2 || true; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }

# PostgreSQL: use the one at PGHOST:PGPORT; on Debian without one, install and start it.
ensure_postgres() {
  command -v pg_isready >/dev/null || apt_install postgresql-client || true
  if pg_up; then return 0; fi
  if [[ "$PGHOST" == "127.0.0.1" || "$PGHOST" == "localhost" ]]; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      log "PostgreSQL not found; installing it from Debian's packages"
      apt_install postgresql postgresql-contrib || die "no PostgreSQL at $PGHOST:$PGPORT and cannot install one; set DATABASE_URL/PGHOST/PGPORT to an existing server"
    fi
    local v; v=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $v"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 || true
    for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  fi
  pg_up || die "PostgreSQL is not reachable at $PGHOST:$PGPORT; set DATABASE_URL (and PGHOST/PGPORT) to an existing server"
  # Local trust auth for the postgres user is assumed (as on this kind of machine).
}

redis_up() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }

# Redis: use the one at REDIS_URL; on Debian without one, install and start it.
ensure_redis() {
  command -v redis-cli >/dev/null || apt_install redis-tools || true
  if redis_up; then return 0; fi
  if [[ "$REDIS_URL" == redis://127.0.0.1:6379* ]]; then
    command -v redis-server >/dev/null || apt_install redis-server || true
    if command -v redis-server >/dev/null; then
      log "starting Redis"
      mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
      redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 || true
      for _ in $(seq 1 50); do redis_up && break; sleep 0.2; done
    fi
  fi
  redis_up || die "Redis is not reachable at $REDIS_URL; set REDIS_URL to an existing server"
}

# Rust targets the shared crate is checked for.
ensure_wasm_targets() {
  local installed; installed=$(rustup target list --installed 2>/dev/null || true)
  for t in wasm32-unknown-unknown wasm32-wasip2; do
    grep -qx "$t" <<<"$installed" || { log "adding Rust target $t"; rustup target add "$t" >&2; }
  done
}

# sqlx-cli, for `cargo sqlx prepare` (the compile-checked queries' cache in .sqlx/, see
# scripts/sqlx.sh): the pinned version, with only the PostgreSQL driver; installed once.
SQLX_CLI_VERSION=0.8.6
ensure_sqlx_cli() {
  if cargo sqlx --version 2>/dev/null | grep -qE " ${SQLX_CLI_VERSION//./\\.}\$"; then return 0; fi
  log "installing sqlx-cli $SQLX_CLI_VERSION (once)"
  cargo install sqlx-cli --version "$SQLX_CLI_VERSION" --no-default-features \
    --features postgres,rustls --locked >&2
}

# promtool (rule checks and rule unit tests, scripts/prometheus-check.sh): Debian's
# `prometheus` package carries it; installed once, without the recommended extras.
ensure_promtool() {
  command -v promtool >/dev/null && return 0
  log "installing promtool (Debian package prometheus, once)"
  apt_install --no-install-recommends prometheus || die "promtool is missing and cannot be installed: install Debian's prometheus package (or a promtool from https://prometheus.io/download/)"
  command -v promtool >/dev/null || die "the prometheus package did not provide promtool"
}
