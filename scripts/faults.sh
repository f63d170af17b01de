#!/usr/bin/env bash
# Fault injection during a booking run, checked by the history checker (tests/faults,
# tests/src/{cluster,fault_proxy,history}.rs). Starts its own PostgreSQL (initdb into a temp
# dir), Redis and tansu broker on ports 18420-18426 — never the shared ones — and two origin
# processes; prints the checker's report and writes target/faults/report.json.
#
#   scripts/faults.sh                  bounded: one pass of the 10 faults (about 75 s)
#   FAULTS_ROUNDS=20 scripts/faults.sh  long run: the cycle 20 times
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

command -v initdb >/dev/null || command -v /usr/lib/postgresql/*/bin/initdb >/dev/null \
  || die "initdb not found (PostgreSQL server binaries are needed)"
if ! command -v initdb >/dev/null; then PATH="$(dirname /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1):$PATH"; fi
command -v redis-server >/dev/null || apt_install redis-server || die "redis-server not found"
[[ -x "${TANSU_BIN:-$HOME/.cargo/bin/tansu}" ]] || bash scripts/broker.sh
log "building the origin binary and the fault harness"
# Workspace-wide selections (not `-p`), so cargo resolves the same features as the test suite's
# build and reuses its artifacts instead of rebuilding the dependency tree.
# With nextest, the test runs from the suite's own build (a `cargo test --test faults`
# selection rebuilds part of the dependency tree: about 2 minutes on 2 cores).
cargo build --workspace --bins --tests --locked -q
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --run-ignored only -E 'binary(faults)' --no-capture
else
  cargo test --workspace --test faults --locked -q -- --include-ignored --nocapture
fi
