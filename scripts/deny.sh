#!/usr/bin/env bash
# Dependency policy (deny.toml): licences, banned crates and sources, checked offline.
#
#   scripts/deny.sh                 install cargo-deny if missing, check licenses bans sources
#   scripts/deny.sh --advisories    also check RustSec advisories (fetches the advisory DB)
#
# cargo-deny is installed once with `cargo install cargo-deny --locked` (about 6 minutes on
# 2 busy cores) and reused from ~/.cargo/bin; the check itself takes about 2 seconds and reads
# only Cargo.lock and ~/.cargo/registry (`--offline --locked`), so CI needs no network for it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  log "installing cargo-deny $DENY_VERSION (once)"
  cargo install cargo-deny --version "$DENY_VERSION" --locked >&2
fi

# `cargo deny` reads every package of the lockfile (all targets, windows-only crates too) from
# ~/.cargo/registry; on a new machine the build has not downloaded those yet.
cargo fetch --locked >&2

checks=(licenses bans sources)
if [[ "${1:-}" == "--advisories" ]]; then
  cargo deny --locked check advisories
fi
cargo deny --offline --locked check "${checks[@]}"
