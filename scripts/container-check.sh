#!/usr/bin/env bash
# Lints the Containerfile (called by scripts/test.sh). The image is not built in CI: buildah
# from Debian runs here (`--isolation chroot --storage-driver vfs`), but the builder stage needs
# a Rust image and no registry can be pulled; the runtime stage was verified by hand (README,
# "Deploy"). This checks the properties the deployment relies on:
#
# - multi-stage: a `build` stage that runs `cargo build --release --locked` for the origin and
#   inference binaries, and a final stage `FROM scratch` with no RUN (no shell needed);
# - the final stage runs as a numeric non-root USER, has no HEALTHCHECK (Kubernetes probes),
#   an exec-form ENTRYPOINT /usr/local/bin/origin, and EXPOSEs the ports the manifests use;
# - both binaries land where deploy/k8s runs them (/usr/local/bin/origin, …/inference);
# - .containerignore keeps target/, .git and the Secret inputs out of the build context.
#
# --self-test first plants one violation of each rule in a copy and fails unless each is caught.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

# Prints one line per problem of Containerfile $1 (with ignore file $2); silent when clean.
lint() {
  local file=$1 ignore=$2 froms final
  froms=$(grep -cE '^FROM ' "$file" || true)
  [[ $froms -ge 2 ]] || echo "not multi-stage ($froms FROM lines)"
  grep -qE '^FROM .* AS build$' "$file" || echo "no 'AS build' stage"
  # The final stage: from the last FROM to the end.
  final=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$file")
  head -n1 <<<"$final" | grep -qE '^FROM scratch$' || echo "the final stage is not FROM scratch"
  grep -qE '^RUN ' <<<"$final" && echo "the final stage has a RUN (it must need no shell)"
  grep -qiE '^HEALTHCHECK' "$file" && echo "HEALTHCHECK is set (Kubernetes probes do it)"
  local user; user=$(grep -E '^USER ' <<<"$final" | tail -n1 | awk '{print $2}')
  [[ $user =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || echo "the final stage's USER ${user:-<none>} is not a numeric non-root uid"
  grep -qE '^ENTRYPOINT \["/usr/local/bin/origin"\]$' <<<"$final" || echo "ENTRYPOINT is not exec-form /usr/local/bin/origin"
  grep -qE 'cargo build --release --locked -p origin -p inference' "$file" || echo "the build does not make both release binaries (--locked)"
  grep -qE 'cp target/release/origin target/release/inference /out/usr/local/bin/' "$file" \
    || echo "the binaries are not copied to /usr/local/bin"
  local port
  for port in 8080 8090; do
    grep -qE "^EXPOSE .*\\b$port\\b" <<<"$final" || echo "port $port is not exposed"
    grep -rqE "containerPort: $port\$" deploy/k8s/base || echo "port $port is not a containerPort in deploy/k8s"
  done
  grep -qE 'command: \[/usr/local/bin/inference\]' deploy/k8s/base/inference.yaml \
    || echo "deploy/k8s runs inference from another path"
  for pattern in target .git 'deploy/k8s/overlays/\*/secrets/\*.env'; do
    grep -qxE "$pattern" "$ignore" || echo "$ignore does not exclude $pattern"
  done
}

if [[ ${1:-} == --self-test ]]; then
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  plant() { sed -E "$1" Containerfile >"$work/Containerfile"; cp .containerignore "$work/ignore"; }
  failures=0
  while IFS='|' read -r name script; do
    plant "$script"
    [[ $name == ignore ]] && sed -i '/^\.git$/d' "$work/ignore"
    if [[ -z $(lint "$work/Containerfile" "$work/ignore") ]]; then
      log "self-test: planted '$name' was NOT caught"; failures=1
    fi
  done <<'PLANTS'
root|s/^USER .*/USER 0/
healthcheck|s#^CMD .*#&\nHEALTHCHECK CMD ["/usr/local/bin/origin", "healthz"]#
shell|s#^USER .*#RUN mkdir /data\n&#
base|s/^FROM scratch$/FROM debian:bookworm-slim/
debug|s/cargo build --release --locked/cargo build --locked/
ignore|s/^$//
PLANTS
  [[ $failures -eq 0 ]] || die "the Containerfile lint missed a planted violation"
  log "self-test: every planted violation caught"
fi

problems=$(lint Containerfile .containerignore)
[[ -z $problems ]] || { printf '%s\n' "$problems" >&2; die "Containerfile: the problems above"; }
log "Containerfile OK (multi-stage, scratch runtime, non-root, no HEALTHCHECK, ports and paths match deploy/k8s)"
