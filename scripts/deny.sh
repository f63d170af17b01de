#!/usr/bin/env bash
# Dependency policy (deny.toml): RustSec advisories, licences, banned crates and sources,
# checked offline.
#
#   scripts/deny.sh                 install cargo-deny if missing, check advisories licenses
#                                   bans sources
#
# Advisories come from a dated snapshot of the RustSec advisory database vendored in
# scripts/advisory-db/advisory-db-<YYYYMMDD>-<commit>.tar.xz (CC0; this machine reaches only
# the package registries, which do not carry it — see scripts/advisory-db/README.md). The
# newest snapshot is unpacked into target/advisory-dbs/ as a git repository committed at the
# snapshot's date, where cargo-deny looks for the default database; it reports how old the
# snapshot is, and refuses one older than deny.toml's maximum-db-staleness.
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

snapshot=$(ls "$ROOT"/scripts/advisory-db/advisory-db-*.tar.xz 2>/dev/null | sort | tail -n 1)
[[ -n "$snapshot" ]] || die "no advisory database snapshot in scripts/advisory-db/"
name=$(basename "$snapshot" .tar.xz)
day=${name#advisory-db-}; day=${day%%-*}
day="${day:0:4}-${day:4:2}-${day:6:2}"
# cargo-deny's directory for the default database URL (github.com/rustsec/advisory-db).
db="$ROOT/target/advisory-dbs/advisory-db-3157b0e258782691"
if [[ "$(cat "$db/.git/snapshot-name" 2>/dev/null)" != "$name" ]]; then
  rm -rf "$db" && mkdir -p "$db"
  tar -xJf "$snapshot" -C "$db" --strip-components=1
  git -C "$db" init -q
  git -C "$db" add -A
  GIT_AUTHOR_DATE="${day}T00:00:00Z" GIT_COMMITTER_DATE="${day}T00:00:00Z" \
    git -C "$db" -c user.name=deny.sh -c user.email=deny.sh@localhost commit -q -m "$name"
  touch -d "${day}T00:00:00Z" "$db/.git/HEAD"
  echo "$name" >"$db/.git/snapshot-name"
fi
log "RustSec advisories from $name ($(( ($(date +%s) - $(date -d "$day" +%s)) / 86400 )) days old)"

cargo deny --offline --locked check advisories licenses bans sources
