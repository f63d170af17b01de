#!/usr/bin/env bash
# Fault injection during a booking run, checked by the history checker (tests/faults,
# tests/src/{cluster,fault_proxy,history}.rs). Starts its own PostgreSQL (initdb into a temp
# dir, fsync on), Redis and tansu broker (data on a small tmpfs) on ports 18420-18426 — never
# the shared ones — and two origin processes; a nemesis drawn from a seed injects every fault
# kind (kills, SIGSTOP, clock skew via libfaketime, PostgreSQL crash, RST / dead-peer /
# partition / latency links, broker disk full, overload), each checked to have had an effect.
# Prints the seed, the per-fault table and the checker's report; writes
# target/faults/report-<seed>.json.
#
#   scripts/faults.sh                          bounded: one seed (random, printed), < 4 min
#   FAULTS_SEED=42 scripts/faults.sh           reproduce a seed's schedule
#   FAULTS_SEEDS=20 scripts/faults.sh          long run: 20 seeds one after the other
#   FAULTS_HOLDS=10000 FAULTS_VEHICLES=50 FAULTS_CLIENTS=16 FAULTS_SLOTS=2000 scripts/faults.sh
#                                              contended holds (outside CI): rounds of faults
#                                              until 10,000 holds were attempted
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

command -v initdb >/dev/null || command -v /usr/lib/postgresql/*/bin/initdb >/dev/null \
  || die "initdb not found (PostgreSQL server binaries are needed)"
if ! command -v initdb >/dev/null; then PATH="$(dirname /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1):$PATH"; fi
command -v redis-server >/dev/null || apt_install redis-server || die "redis-server not found"
# The clock-skew fault preloads libfaketime into one origin.
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || apt_install faketime \
  || die "libfaketime not found and cannot install the faketime package"
[[ -x "${TANSU_BIN:-$HOME/.cargo/bin/tansu}" ]] || bash scripts/broker.sh
log "building the origin binary and the fault harness"
# Workspace-wide selections (not `-p`), so cargo resolves the same features as the test suite's
# build and reuses its artifacts instead of rebuilding the dependency tree.
# With nextest, the test runs from the suite's own build (a `cargo test --test faults`
# selection rebuilds part of the dependency tree: about 2 minutes on 2 cores).
cargo build --workspace --bins --tests --locked -q

# run_tests [name filter]: the fault suite's ignored tests (the seeded run and the dead-peer
# regression test), one at a time (they share the port range).
run_tests() {
  if command -v cargo-nextest >/dev/null; then
    local expr='binary(faults)'; [[ -n ${1:-} ]] && expr+=" & test(/$1/)"
    cargo nextest run --workspace --locked --run-ignored only -E "$expr" --no-capture --test-threads 1
  else
    cargo test --workspace --test faults --locked -q -- --include-ignored --nocapture --test-threads 1 ${1:-}
  fi
}

# A failing run's error is its last word: no backtrace after it (CI logs are read from the tail).
export RUST_BACKTRACE=0
# On failure, the checker's summary (written by the test) is printed last.
failure_summary() {
  local f=target/faults/failure.txt
  if [[ -s $f ]]; then
    printf '\n[faults.sh] failure summary (%s):\n' "$f" >&2
    head -c 4000 "$f" >&2
  fi
}
rm -f target/faults/failure.txt

seeds=${FAULTS_SEEDS:-1}
if [[ $seeds -le 1 ]]; then
  started=$SECONDS
  # One short seed (CI): without the disk-full fault unless asked for, since a full tmpfs does
  # not always stop the broker within one run (its SQLite reuses free pages); the long modes
  # and FAULTS_DISK_FULL=1 keep it.
  [[ -n "${FAULTS_HOLDS:-}" ]] || export FAULTS_DISK_FULL="${FAULTS_DISK_FULL:-0}"
  run_tests || { failure_summary; die "the fault run failed (its seed and rerun command are above)"; }
  log "fault suite passed in $((SECONDS - started)) s"
  exit 0
fi
# Long mode: N seeds (FAULTS_SEED, when set, is the first; the rest follow it).
first=${FAULTS_SEED:-$(( (RANDOM << 15 | RANDOM) ))}
failed=()
for i in $(seq 0 $((seeds - 1))); do
  seed=$((first + i))
  log "seed $((i + 1))/$seeds: FAULTS_SEED=$seed"
  FAULTS_SEED=$seed run_tests under_seeded_faults || { failure_summary; failed+=("$seed"); }
done
[[ ${#failed[@]} -eq 0 ]] || die "failed seeds (rerun each with FAULTS_SEED=<seed>): ${failed[*]}"
log "all $seeds seeds passed (reports in target/faults/report-<seed>.json)"
