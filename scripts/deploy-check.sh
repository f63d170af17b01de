#!/usr/bin/env bash
# Validates the deploy manifests offline, with the real tools (called by scripts/test.sh):
#
# - wrangler.toml: `wrangler deploy --dry-run --outdir … --env euw|eun` with wrangler 4.86.0
#   from npm (pinned by scripts/deploy-check/package-lock.json; the newest release whose engines
#   allow this machine's Node 20 — 4.87.0 wants Node 22). The dry run runs the [build] command
#   (scripts/edge.sh build, a no-op when the worker is current), reads the environment, bundles
#   the worker into .dev/deploy-check/<env> and uploads nothing. Offline: no account, no
#   metrics; a missing secret is not an error (secrets live in `wrangler secret`).
# - spin.toml and spin.eun.toml: `check-jsonschema` (PyPI, pinned, in a venv under .dev/)
#   against the vendored Spin manifest schema scripts/deploy-check/spin-manifest.schema.json
#   (source and licence: scripts/deploy-check/SPIN-SCHEMA-SOURCE.md); it reads TOML itself.
# - Neither manifest holds a secret (a check of the variable names, so a placeholder secret
#   cannot slip back in).
#
# Installs are idempotent: npm ci only when the lock changed, pip only when the venv lacks
# the pinned version.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CHECK_JSONSCHEMA_VERSION=0.39.0
SRC="$ROOT/scripts/deploy-check"
TOOLS="$ROOT/.dev/deploy-tools"
OUT="$ROOT/.dev/deploy-check"
mkdir -p "$TOOLS" "$OUT"

command -v node >/dev/null || apt_install nodejs npm || die "Node.js 20 is needed for wrangler"
if ! cmp -s "$SRC/package-lock.json" "$TOOLS/package-lock.json" || [[ ! -x $TOOLS/node_modules/.bin/wrangler ]]; then
  log "installing wrangler (npm ci, pinned by scripts/deploy-check/package-lock.json)"
  cp "$SRC/package.json" "$SRC/package-lock.json" "$TOOLS/"
  (cd "$TOOLS" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
if ! "$TOOLS/venv/bin/check-jsonschema" --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
  log "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION (PyPI, venv under .dev/)"
  [[ -x $TOOLS/venv/bin/pip ]] || python3 -m venv "$TOOLS/venv" >&2 \
    || { apt_install python3-venv && python3 -m venv "$TOOLS/venv" >&2; } || die "python3 -m venv failed"
  "$TOOLS/venv/bin/pip" install -q "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" >&2
fi

# No secrets in the manifests.
# A variable whose name says secret, token, password or signing key(s) must not be set here.
if grep -nE '^[[:space:]]*[A-Z0-9_]*(SECRET|TOKEN|PASSWORD|SIGNING_KEYS?)[[:space:]]*=' \
    wrangler.toml spin.toml spin.eun.toml; then
  die "a secret is set in a manifest (above): use wrangler secret / spin up --env"
fi

for env in euw eun; do
  log "wrangler deploy --dry-run --env $env"
  rm -rf "${OUT:?}/$env"
  out=$(WRANGLER_SEND_METRICS=false CI=1 \
        "$TOOLS/node_modules/.bin/wrangler" deploy --dry-run --outdir "$OUT/$env" --env "$env" 2>&1) \
    || { printf '%s\n' "$out" >&2; die "wrangler dry run failed for --env $env"; }
  region=${env^^}
  grep -q "EDGE_REGION.*\"$region\"" <<<"$out" \
    || { printf '%s\n' "$out" >&2; die "--env $env does not bind EDGE_REGION=$region"; }
  [[ -s "$OUT/$env/index.js" ]] || die "--env $env: no bundle in $OUT/$env"
done

for manifest in spin.toml spin.eun.toml; do
  log "check-jsonschema $manifest against Spin's manifest schema"
  "$TOOLS/venv/bin/check-jsonschema" --schemafile "$SRC/spin-manifest.schema.json" "$manifest" >&2
done
log "deploy manifests valid: wrangler euw and eun, spin.toml and spin.eun.toml"
