#!/usr/bin/env bash
# cargo-fuzz targets (fuzz/): quote-token verification, JWT verification, search-cursor
# decoding, request-body parsing of the domain's wire types, and the price calculator (no
# panic; totals within floor and ceiling; breakdown sums to the total).
#
#   scripts/fuzz.sh                 bounded: every target for FUZZ_SECONDS (10) each
#   FUZZ_SECONDS=3600 scripts/fuzz.sh [target...]   long runs on demand
#   scripts/fuzz.sh --cmin          after a long run: minimise the committed corpus
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
  log "fuzzing $t for ${SECONDS_PER_TARGET}s"
  cargo fuzz run "$t" -s none -O "$scratch" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|==|thread|.*panicked|SUMMARY|artifact_prefix|Test unit written)' >&2 \
    || true
  if [[ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]]; then
    die "fuzz target $t found a crash: $(ls "artifacts/$t"); reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t -s none -O artifacts/$t/<file>"
  fi
done
log "fuzzing done: ${#targets[@]} targets, ${SECONDS_PER_TARGET}s each, no crash"
