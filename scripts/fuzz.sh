#!/usr/bin/env bash
# cargo-fuzz targets (fuzz/): quote-token verification, JWT verification, search-cursor
# decoding, request-body parsing of the domain's wire types, and the price calculator (no
# panic; totals within floor and ceiling; breakdown sums to the total).
#
#   scripts/fuzz.sh                 bounded: every target for FUZZ_SECONDS (10) each
#   FUZZ_SECONDS=3600 scripts/fuzz.sh [target...]   long runs on demand
#   scripts/fuzz.sh --cmin          after a long run: minimise the committed corpus
#   scripts/fuzz.sh --self-test     shows a fuzzer that cannot start fails this script (CI)
#
# A target passes only if `cargo fuzz run` exited 0, libFuzzer reported executed units and no
# crash artifact was written: a fuzzer that cannot start (unknown target, build or flag
# error, a corpus it cannot read) fails the run. The whole output is in
# target/fuzz-logs/<target>.log; the summary lines are shown as it runs.
#
# cargo-fuzz needs nightly flags; on the pinned stable toolchain RUSTC_BOOTSTRAP=1 enables them
# for this build only. Sanitizer `none`: the code under test is safe Rust, so what we look for
# is panics and broken invariants, and the build stays fast. New inputs go to
# target/fuzz-corpus/<target> (the committed corpus under fuzz/corpus is read, not written),
# crashes to fuzz/artifacts/<target>/ (the run fails and prints the reproducer command).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (once, about 4 minutes)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked >&2
fi
export RUSTC_BOOTSTRAP=1
SECONDS_PER_TARGET="${FUZZ_SECONDS:-10}"
ALL=(quote_token jwt cursor request_body price)

if [[ "${1:-}" == "--self-test" ]]; then
  # A target that does not exist: cargo fuzz exits non-zero before libFuzzer starts (the old
  # `... | grep ... || true` pipeline passed it). This script must fail, naming the target.
  out=$(FUZZ_SECONDS=1 bash "$0" no_such_target 2>&1) && die "self-test: a fuzzer that cannot start passed: $out"
  grep -q "fuzz target no_such_target: cargo fuzz exited" <<<"$out" \
    || die "self-test: failed, but not on the fuzzer's exit status: $out"
  log "self-test passed: a fuzzer that cannot start fails the run"
  exit 0
fi

cd fuzz
if [[ "${1:-}" == "--cmin" ]]; then
  for t in "${ALL[@]}"; do cargo fuzz cmin "$t" -s none -O; done
  exit 0
fi
targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=("${ALL[@]}")

log "building fuzz targets"
cargo fuzz build -s none -O >&2
for t in "${targets[@]}"; do
  scratch="$ROOT/target/fuzz-corpus/$t"
  mkdir -p "$scratch"
  fuzz_log="$ROOT/target/fuzz-logs/$t.log"
  mkdir -p "$(dirname "$fuzz_log")"
  log "fuzzing $t for ${SECONDS_PER_TARGET}s (log: $fuzz_log)"
  # The pipeline's statuses are read one by one (PIPESTATUS): cargo fuzz's decides, grep's
  # only says whether a summary line was shown (1 = none, judged below from the log).
  set +e
  cargo fuzz run "$t" -s none -O "$scratch" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "$fuzz_log" \
    | grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|==|thread|.*panicked|SUMMARY|artifact_prefix|Test unit written|error)' >&2
  statuses=("${PIPESTATUS[@]}")
  set -e
  if [[ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]]; then
    die "fuzz target $t found a crash: $(ls "artifacts/$t"); reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t -s none -O artifacts/$t/<file>"
  fi
  [[ ${statuses[0]} -eq 0 ]] \
    || die "fuzz target $t: cargo fuzz exited ${statuses[0]} (the fuzzer did not start, or stopped on an error); see $fuzz_log"
  [[ ${statuses[1]} -eq 0 && ${statuses[2]} -le 1 ]] \
    || die "fuzz target $t: reading its output failed (tee ${statuses[1]}, grep ${statuses[2]})"
  units=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$fuzz_log" | tail -n 1)
  [[ "${units:-0}" -gt 0 ]] || die "fuzz target $t: libFuzzer executed no input; see $fuzz_log"
done
log "fuzzing done: ${#targets[@]} targets, ${SECONDS_PER_TARGET}s each, no crash"
