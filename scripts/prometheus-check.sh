#!/usr/bin/env bash
# Checks the alerting and recording rules offline (called by scripts/test.sh):
#
# - `promtool check rules deploy/prometheus/rules.yml`: syntax, PromQL, templates;
# - `promtool test rules deploy/prometheus/rules.test.yml`: two alerts (outbox lag, p95)
#   unit-tested on synthetic series, each silent below its threshold and firing above it;
# - the planted check: the same tests against a copy of the rules whose outbox threshold is
#   raised tenfold must FAIL, so the unit tests can see a wrong rule.
#
# That every metric the rules and the dashboard read is exported by a running origin, and that
# the dashboard has Grafana's shape, is tested in tests/api/observability.rs (the test suite).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_promtool

log "promtool check rules deploy/prometheus/rules.yml"
promtool check rules deploy/prometheus/rules.yml >&2
log "promtool test rules deploy/prometheus/rules.test.yml"
promtool test rules deploy/prometheus/rules.test.yml >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed 's/(outbox_oldest_unpublished_age_seconds) > 30$/(outbox_oldest_unpublished_age_seconds) > 300/' \
  deploy/prometheus/rules.yml >"$work/rules.yml"
cmp -s deploy/prometheus/rules.yml "$work/rules.yml" && die "planted check: the outbox threshold was not found to change"
cp deploy/prometheus/rules.test.yml "$work/"
if promtool test rules "$work/rules.test.yml" >/dev/null 2>&1; then
  die "planted check: the rule unit tests pass with a wrong outbox threshold"
fi
log "rules OK (the unit tests also caught the planted wrong threshold)"
