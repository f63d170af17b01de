#!/usr/bin/env bash
# The edge benchmark (issue 17): a cached quote through the Rust worker in workerd and the Spin
# component in wasmtime, with wrk -t2 -c64, side by side in the same run with
#   - the JavaScript way: edge/js-baseline (@upstash/ratelimit + @upstash/redis, pinned by its
#     package-lock), bundled with esbuild, as a second worker in the same workerd;
#   - the code before: BENCH_EDGE_BEFORE (default feb0111, the commit before issue 17) built
#     from a `git worktree` into target/edge-before/<commit>/ (kept: built once), run as a
#     third worker in the same workerd and in a second wasmtime serve with its old flags.
# Prints throughput, p99, runtime CPU per request, Upstash requests per request, and the
# ratios against the issue's targets with met / not met.
#
# EDGE_BENCH_PROFILE=1 adds a profiled run of each runtime (tests/src/bin/edge_bench.rs, `profile`);
# with EDGE_KEEP_NAMES=1 the workers keep their function names for it.
#
#   scripts/bench-edge.sh [seconds=10] [connections=64]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECS="${1:-10}" CONNS="${2:-64}"
BEFORE="${BENCH_EDGE_BEFORE:-feb0111}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
CF_DIR="$ROOT/edge/cloudflare"
ESBUILD="$CF_DIR/node_modules/@esbuild/linux-x64/bin/esbuild"

ensure_postgres
ensure_redis
command -v wrk >/dev/null || apt_install wrk || die "wrk is needed (apt-get install wrk)"
bash scripts/edge.sh build

# The JavaScript way.
log "bundling the JavaScript worker (edge/js-baseline)"
(cd edge/js-baseline && { [[ -d node_modules/@upstash/ratelimit ]] || npm ci --no-audit --no-fund >&2; } \
  && "$ESBUILD" worker.mjs --bundle --format=esm --platform=neutral --main-fields=module,main \
       --conditions=workerd,worker,browser --log-level=warning --outfile=build/worker.js >&2)

# The code before, built once per commit, the way that commit's scripts/edge.sh built it.
commit=$(git rev-parse --short=7 "$BEFORE")
OLD="$TARGET_DIR/edge-before/$commit"
if [[ ! -e "$OLD/cloudflare/index_bg.wasm" || ! -e "$OLD/edge_spin.wasm" ]]; then
  log "building the workers of $commit (git worktree; once)"
  wt=$(mktemp -d)
  git worktree add --detach "$wt" "$commit" >&2
  ln -s "$CF_DIR/node_modules" "$wt/edge/cloudflare/node_modules"
  mkdir -p "$wt/.dev" && ln -s "$ROOT/.dev/edge-tools" "$wt/.dev/edge-tools"
  (cd "$wt" && CARGO_TARGET_DIR="$TARGET_DIR/edge-before/target" bash scripts/edge.sh build >&2)
  mkdir -p "$OLD/cloudflare"
  cp "$wt/edge/cloudflare/build/"* "$OLD/cloudflare/" 2>/dev/null || cp -r "$wt/edge/cloudflare/build/." "$OLD/cloudflare/"
  cp "$TARGET_DIR/edge-before/target/wasm32-wasip2/release/edge_spin.wasm" "$OLD/edge_spin.wasm"
  git worktree remove --force "$wt" >&2
fi

log "module sizes: now"
bash scripts/edge.sh sizes >&2
log "module sizes: $commit"
for f in "$OLD/cloudflare/index_bg.wasm" "$OLD/edge_spin.wasm"; do
  printf '%8d bytes (%s gzip)  %s\n' "$(stat -c %s "$f")" "$(gzip -9c "$f" | wc -c)" "$f" >&2
done

cargo build -p e2e --release --locked --bin edge-bench >&2
EDGE_BENCH_JS_DIR="$ROOT/edge/js-baseline/build" \
EDGE_BENCH_BEFORE_CF_DIR="$OLD/cloudflare" \
EDGE_BENCH_BEFORE_SPIN_WASM="$OLD/edge_spin.wasm" \
  "$TARGET_DIR/release/edge-bench" "$SECS" "$CONNS"
