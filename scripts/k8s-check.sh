#!/usr/bin/env bash
# Renders and validates the Kubernetes manifests offline (called by scripts/test.sh):
#
# 1. `kubectl kustomize` renders deploy/k8s/overlays/euw and eun (kubectl ≥ 1.27 carries
#    kustomize v5; a standalone `kustomize` binary is used when kubectl is missing). Neither
#    is in Debian 12 in a usable version (its kubernetes-client is 1.20, without kustomize
#    v5): install kubectl from https://pkgs.k8s.io (apt) or kustomize from its GitHub
#    releases. The overlays' Secret inputs (secrets/*.env) are not committed: the render runs
#    on a temporary copy where each missing one is its committed *.env.example.
# 2. `kubernetes-validate` (PyPI, pinned, venv under .dev/) checks every rendered object
#    against the Kubernetes $K8S_VERSION OpenAPI schemas, strictly (unknown fields fail).
# 3. scripts/k8s-check/check_manifests.py cross-checks the objects with the code: every env
#    var the origin and inference read is set from a ConfigMap/Secret, probe paths are routes
#    of the router on the bind port, grace ≥ SHUTDOWN_GRACE_SECS, HPA 10–50, PDBs, zone spread
#    (its --self-test first plants one violation of each rule and must see each caught).
# 4. No Secret input file is tracked by git.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version the manifests are validated for (the clusters' version).
K8S_VERSION=1.32.0
TOOLS="$ROOT/.dev/k8s-tools"
OUT="$ROOT/.dev/k8s-check"
mkdir -p "$TOOLS" "$OUT"

if command -v kubectl >/dev/null; then
  render() { kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null; then
  render() { kustomize build "$1"; }
else
  die "neither kubectl nor kustomize is installed: install kubectl (>= 1.27, from https://pkgs.k8s.io; Debian's kubernetes-client 1.20 is too old) or kustomize v5 (https://github.com/kubernetes-sigs/kustomize/releases)"
fi
if ! "$TOOLS/venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI, venv under .dev/)"
  [[ -x $TOOLS/venv/bin/pip ]] || python3 -m venv "$TOOLS/venv" >&2 \
    || { apt_install python3-venv && python3 -m venv "$TOOLS/venv" >&2; } || die "python3 -m venv failed"
  "$TOOLS/venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
fi

tracked=$(git ls-files 'deploy/k8s/**/secrets/*.env')
[[ -z $tracked ]] || die "Secret inputs are tracked by git (remove them, they are in .gitignore): $tracked"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r deploy "$work/"
for example in "$work"/deploy/k8s/overlays/*/secrets/*.env.example; do
  [[ -e ${example%.example} ]] || cp "$example" "${example%.example}"
done

rendered=()
for overlay in euw eun; do
  log "kubectl kustomize deploy/k8s/overlays/$overlay"
  render "$work/deploy/k8s/overlays/$overlay" >"$OUT/$overlay.yaml" \
    || die "deploy/k8s/overlays/$overlay does not render"
  log "kubernetes-validate --strict -k $K8S_VERSION ($overlay: $(grep -c '^kind:' "$OUT/$overlay.yaml") objects)"
  "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/$overlay.yaml" >&2 \
    || die "deploy/k8s/overlays/$overlay: objects invalid for Kubernetes $K8S_VERSION (above)"
  rendered+=("$OUT/$overlay.yaml")
done

log "manifests against the code: self-test (planted violations), then both overlays"
"$TOOLS/venv/bin/python" scripts/k8s-check/check_manifests.py "$ROOT" --self-test "$OUT/euw.yaml" >&2 \
  || die "the manifest checker missed a planted violation"
"$TOOLS/venv/bin/python" scripts/k8s-check/check_manifests.py "$ROOT" "${rendered[@]}" >&2 \
  || die "the manifests disagree with the code (above)"
log "k8s manifests OK (Kubernetes $K8S_VERSION)"
