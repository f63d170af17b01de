#!/usr/bin/env bash
# The compile-checked queries' cache (.sqlx/): every `sqlx::query!`-family statement with the
# types PostgreSQL gave it. Builds read it (SQLX_OFFLINE=true in .cargo/config.toml) and need
# no database; this script is how it is written and checked.
#
#   scripts/sqlx.sh check     fail if .sqlx/ is missing a statement or differs from what the
#                             migrations give (CI: scripts/test.sh runs this)
#   scripts/sqlx.sh prepare   rewrite .sqlx/ after changing a statement or a migration; commit it
#
# Either way against a private database, created, migrated from migrations/ and dropped here,
# so the result never depends on the state of a shared server or of the `test` database.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

mode="${1:-check}"
case "$mode" in
  check) args=(--workspace --check -- --locked) ;;
  prepare) args=(--workspace -- --locked) ;;
  *) die "usage: scripts/sqlx.sh [check|prepare]" ;;
esac

ensure_postgres
ensure_sqlx_cli

SQLX_DB="sqlx_${mode}_$$"
drop_db() { psql -X -q -d postgres -c "drop database if exists $SQLX_DB with (force)" >/dev/null 2>&1 || true; }
trap drop_db EXIT
psql -X -q -d postgres -c "create database $SQLX_DB" >/dev/null
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$SQLX_DB"
cargo sqlx migrate run --source migrations >&2
log "cargo sqlx prepare ${args[*]} (database $SQLX_DB, freshly migrated)"
cargo sqlx prepare "${args[@]}"
