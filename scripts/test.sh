#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, the shared crate's wasm builds, and the whole
# test suite against the real PostgreSQL (each test makes its own database).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
T0=$SECONDS

ensure_postgres
ensure_redis
# The Kafka-protocol broker (tansu, durable SQLite storage) the event tests publish to.
bash scripts/broker.sh
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:${BROKER_PORT:-9092}}"
ensure_wasm_targets

log "cargo fmt --check"
cargo fmt --all -- --check
log "dependency advisories (vendored RustSec snapshot), licences, bans and sources (cargo deny, offline)"
bash scripts/deny.sh
log "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Builds read the queries' types from .sqlx/ (no database): prove it matches the migrations.
log "compile-checked queries: .sqlx/ against a freshly migrated private database"
bash scripts/sqlx.sh check
# The edge workers depend on the shared domain crate, so building them also proves that it
# compiles for wasm32-unknown-unknown (Cloudflare) and wasm32-wasip2 (Spin).
log "edge workers for workerd and wasmtime, with the domain crate for both wasm targets"
bash scripts/edge.sh build
log "deploy manifests: wrangler deploy --dry-run (euw, eun), spin manifests against Spin's schema"
bash scripts/deploy-check.sh
log "Kubernetes manifests: both overlays rendered (kubectl kustomize), validated offline (kubernetes-validate) and checked against the code"
bash scripts/k8s-check.sh
log "Prometheus rules: promtool check rules, promtool test rules (two alerts)"
bash scripts/prometheus-check.sh
log "Containerfile lint (multi-stage, scratch, non-root, no HEALTHCHECK; self-test first)"
bash scripts/container-check.sh --self-test
# The replica tests (tests/api/replica.rs) start PgBouncer through scripts/replica.sh: installed
# once here, before the tests run in parallel.
bash scripts/replica.sh install
log "build (every binary and test target; the suite and the scripts below reuse it)"
cargo build --workspace --bins --tests --locked
log "tests (DATABASE_URL=$DATABASE_URL)"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# A representative subset of the api suite again with the origin's pool behind PgBouncer in
# session pooling (README, "Scaling out"): holds, idempotency keys (advisory locks), 200-way
# contention, locks, the lifecycle, rescheduling (50 concurrent moves), maintenance blocks (the
# vehicle write lock and both block rules, holds racing a forced block).
PGBOUNCER_PORT="${PGBOUNCER_PORT:-16432}"
log "api subset through PgBouncer (session pooling, 127.0.0.1:$PGBOUNCER_PORT)"
bash scripts/replica.sh bouncer "$ROOT/.dev/pgbouncer" "$PGBOUNCER_PORT" "$PGPORT"
POOLED_SUITE=(holds idempotency concurrency locks lifecycle reschedule blocks)
pooled=0
if command -v cargo-nextest >/dev/null; then
  E2E_PGBOUNCER_PORT=$PGBOUNCER_PORT cargo nextest run --test api --locked --no-fail-fast \
    -E "test(/^($(IFS='|'; echo "${POOLED_SUITE[*]}"))::/)" || pooled=$?
else
  E2E_PGBOUNCER_PORT=$PGBOUNCER_PORT cargo test --test api --locked --no-fail-fast -- \
    "${POOLED_SUITE[@]/%/::}" || pooled=$?
fi
bash scripts/replica.sh stop "$ROOT/.dev/pgbouncer"
[[ $pooled -eq 0 ]] || die "the api subset failed through PgBouncer"

# The api suite's lock, cache, availability and booking tests again with every origin on a local
# Redis Cluster (3 masters + 3 replicas, scripts/redis-ha.sh; README "Scaling out"): the
# hash-tagged keys, the cluster client's routing and the cross-slot MGET. Tests that kill a
# Redis of their own keep it (single mode). A script over keys of two slots fails with
# CROSSSLOT, which the origin treats as Redis being unavailable and answers from PostgreSQL:
# the subset holds tests that fail on that fallback (availability:: removes a vehicle from the
# index and expects search not to list it; front_door:: expects a replayed signature and a
# user past the origin's limit to be refused, which needs the front-door script to run).
CLUSTER_DIR="$ROOT/.dev/redis-cluster"
CLUSTER_PORTS=(17101 17102 17103 17104 17105 17106)
log "api subset on a Redis Cluster (127.0.0.1:${CLUSTER_PORTS[0]}-${CLUSTER_PORTS[5]})"
bash scripts/redis-ha.sh stop "$CLUSTER_DIR"
rm -rf "$CLUSTER_DIR"
bash scripts/redis-ha.sh cluster "$CLUSTER_DIR" "${CLUSTER_PORTS[@]}"
CLUSTER_URLS=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
CLUSTER_SUITE=(locks cache availability search holds concurrency front_door)
clustered=0
if command -v cargo-nextest >/dev/null; then
  E2E_REDIS_CLUSTER=${CLUSTER_URLS%,} cargo nextest run --test api --locked --no-fail-fast \
    -E "test(/^($(IFS='|'; echo "${CLUSTER_SUITE[*]}"))::/)" || clustered=$?
else
  E2E_REDIS_CLUSTER=${CLUSTER_URLS%,} cargo test --test api --locked --no-fail-fast -- \
    "${CLUSTER_SUITE[@]/%/::}" || clustered=$?
fi
bash scripts/redis-ha.sh stop "$CLUSTER_DIR"
[[ $clustered -eq 0 ]] || die "the api subset failed on a Redis Cluster"

# Bounded passes of the reliability suite; each has a long mode (see the script's header).
log "fault injection + history checker (bounded: one pass of every fault)"
bash scripts/faults.sh
log "schema fuzzing of the origin (schemathesis, bounded)"
bash scripts/schemathesis.sh
log "cargo fuzz targets (bounded)"
bash scripts/fuzz.sh
bash scripts/fuzz.sh --self-test
log "all checks passed in $((SECONDS - T0))s"
