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
cargo build -p origin --locked -q
cargo test -p e2e --test faults --locked --no-run -q
cargo test -p e2e --test faults --locked -q -- --include-ignored --nocapture
