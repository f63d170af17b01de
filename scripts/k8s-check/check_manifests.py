#!/usr/bin/env python3
"""Cross-checks rendered Kubernetes manifests against the code (scripts/k8s-check.sh runs it).

    check_manifests.py ROOT RENDERED.yaml...   check each rendered overlay; exit 1 on a finding
    check_manifests.py ROOT --self-test RENDERED.yaml
                                             plant one violation of each rule in a copy of the
                                             rendered objects and fail unless each is caught

Rules, each tied to the source it reads:
- every variable the origin reads (origin/src/config.rs and the modules it calls:
  `env.var("X")`, `parsed(env, "X", ..)` and friends) is set for every origin container, and
  every variable the inference binary reads (`std::env::var("X")`) for the inference
  container, through envFrom ConfigMaps/Secrets only (no inline `value:`);
- each origin Deployment origin-<role> sets ORIGIN_ROLE=<role>;
- every probe path is a route of that binary's router (the `path = "..."` of the origin's
  #[utoipa::path] routes, `.route("...")` of the inference router), on a declared port that is
  the bind port the ConfigMap gives (BIND_ADDR, INFERENCE_BIND_ADDR); liveness is /healthz and
  readiness /readyz for the origin; every container has startup, liveness and readiness probes;
- terminationGracePeriodSeconds >= SHUTDOWN_GRACE_SECS + the preStop sleep;
- pricing, booking, relay, jobs and inference Deployments exist, each with CPU/memory
  requests, a zone topology spread and a PodDisruptionBudget; pricing and booking have an HPA
  of 10 to 50 pods on CPU and on a per-pod requests/s metric;
- the migration Job runs `migrate`, and the Deployments run with MIGRATE_ON_START=false.
"""
import copy
import re
import sys
from pathlib import Path

import yaml

ORIGIN_ENV_SOURCES = ["origin/src/config.rs", "origin/src/redis/edge_gen.rs"]
INFERENCE_ENV_SOURCES = ["origin/inference/src/main.rs"]
ORIGIN_ROUTE_SOURCES = "origin/src/http"
INFERENCE_ROUTES = "origin/inference/src/lib.rs"
ROLES = ["pricing", "booking", "relay", "jobs"]
ENV_CALL = re.compile(
    r'(?:\bvar|\bparsed|\bmillis|\bsecs|\bat_least_one|\brequired|\bpem_files|\bflag)\(\s*(?:env,\s*)?"([A-Z][A-Z0-9_]+)"'
)
STD_ENV = re.compile(r'std::env::var\("([A-Z][A-Z0-9_]+)"\)')


def origin_env_vars(root):
    found = set()
    for src in ORIGIN_ENV_SOURCES:
        found |= set(ENV_CALL.findall((root / src).read_text()))
    return found


def inference_env_vars(root):
    found = set()
    for src in INFERENCE_ENV_SOURCES:
        found |= set(STD_ENV.findall((root / src).read_text()))
    return found


def origin_routes(root):
    paths = set()
    for f in sorted((root / ORIGIN_ROUTE_SOURCES).glob("*.rs")):
        text = f.read_text()
        paths |= set(re.findall(r'#\[utoipa::path\([^\]]*?\bpath\s*=\s*"([^"]+)"', text, re.S))
        paths |= set(re.findall(r'\.route\(\s*"([^"]+)"', text))
    return paths


def inference_routes(root):
    return set(re.findall(r'\.route\(\s*"([^"]+)"', (root / INFERENCE_ROUTES).read_text()))


def index(docs):
    by = {}
    for d in docs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return by


def base_name(name):
    """A generated ConfigMap/Secret's name without kustomize's hash suffix."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def env_of(container, objs):
    """Variables a container gets, with their values (Secrets: '<secret>'); inline values too."""
    env, problems = {}, []
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            cm = objs.get("ConfigMap", {}).get(src["configMapRef"]["name"])
            if cm is None:
                problems.append(f"ConfigMap {src['configMapRef']['name']} is not in the manifests")
                continue
            env.update(cm.get("data", {}))
        elif "secretRef" in src:
            sec = objs.get("Secret", {}).get(src["secretRef"]["name"])
            if sec is None:
                problems.append(f"Secret {src['secretRef']['name']} is not in the manifests")
                continue
            env.update({k: "<secret>" for k in sec.get("data", {})})
    for e in container.get("env", []):
        if "value" in e:
            problems.append(f"env {e['name']} is set inline: use a ConfigMap or a Secret")
        env[e["name"]] = "<ref>"
    return env, problems


def workloads(objs):
    for kind in ("Deployment", "Job"):
        for name, obj in objs.get(kind, {}).items():
            yield kind, name, obj["spec"]["template"]["spec"]


def check(root, docs):
    objs = index(docs)
    errors = []
    need_origin = origin_env_vars(root)
    need_inference = inference_env_vars(root)
    routes = {"origin": origin_routes(root), "inference": inference_routes(root)}
    if not need_origin or not routes["origin"]:
        errors.append("found no variables or routes in the sources: the extraction is broken")
    deployments = objs.get("Deployment", {})
    for want in [f"origin-{r}" for r in ROLES] + ["inference"]:
        if want not in deployments:
            errors.append(f"Deployment {want} is missing")
    for kind, name, pod in workloads(objs):
        where = f"{kind} {name}"
        for c in pod["containers"]:
            binary = "inference" if "inference" in " ".join(c.get("command", [])) else "origin"
            env, problems = env_of(c, objs)
            errors += [f"{where}: {p}" for p in problems]
            need = need_inference if binary == "inference" else need_origin
            if kind == "Job":
                # `origin migrate` reads the whole configuration but not the role (serve only).
                need = need - {"ORIGIN_ROLE"}
            for var in sorted(need - set(env)):
                errors.append(f"{where}: {var} (read by the {binary}) is not set")
            if binary == "origin" and kind == "Deployment":
                role = name.removeprefix("origin-")
                if env.get("ORIGIN_ROLE") != role:
                    errors.append(f"{where}: ORIGIN_ROLE is {env.get('ORIGIN_ROLE')!r}, expected {role!r}")
                if env.get("MIGRATE_ON_START") != "false":
                    errors.append(f"{where}: MIGRATE_ON_START must be false (the Job migrates)")
            if kind == "Job":
                if c.get("args", [None])[0] != "migrate":
                    errors.append(f"{where}: the migration Job must run `origin migrate`")
                continue
            bind = env.get("INFERENCE_BIND_ADDR" if binary == "inference" else "BIND_ADDR", "")
            bind_port = int(bind.rsplit(":", 1)[1]) if ":" in bind else None
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if bind_port not in ports.values():
                errors.append(f"{where}: no containerPort for the bind address {bind!r}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                spec = c.get(probe)
                if not spec or "httpGet" not in spec:
                    errors.append(f"{where}: no HTTP {probe}")
                    continue
                path, port = spec["httpGet"]["path"], spec["httpGet"]["port"]
                if path not in routes[binary]:
                    errors.append(f"{where}: {probe} path {path} is not a route of the {binary}")
                number = ports.get(port) if isinstance(port, str) else port
                if number != bind_port:
                    errors.append(f"{where}: {probe} port {port} is not the bind port {bind_port}")
            if binary == "origin":
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        errors.append(f"{where}: {probe} should be {path}, is {got}")
            req = c.get("resources", {}).get("requests", {})
            if not {"cpu", "memory"} <= set(req):
                errors.append(f"{where}: CPU and memory requests are needed (HPA, scheduling)")
            grace = int(env.get("SHUTDOWN_GRACE_SECS", "20"))
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            term = pod.get("terminationGracePeriodSeconds", 30)
            if binary == "origin" and term < grace + pause:
                errors.append(
                    f"{where}: terminationGracePeriodSeconds {term} < SHUTDOWN_GRACE_SECS {grace} + preStop {pause}"
                )
        if kind == "Deployment":
            keys = [t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])]
            if "topology.kubernetes.io/zone" not in keys:
                errors.append(f"{where}: no topology spread across zones")
            labels = objs["Deployment"][name]["spec"]["selector"]["matchLabels"]
            pdbs = [
                p for p in objs.get("PodDisruptionBudget", {}).values()
                if p["spec"]["selector"].get("matchLabels") == labels
            ]
            if not pdbs:
                errors.append(f"{where}: no PodDisruptionBudget selects it")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in objs.get("HorizontalPodAutoscaler", {}).values()}
    for name in ("origin-pricing", "origin-booking"):
        h = hpas.get(name)
        if h is None:
            errors.append(f"HorizontalPodAutoscaler for {name} is missing")
            continue
        if (h["spec"].get("minReplicas"), h["spec"]["maxReplicas"]) != (10, 50):
            errors.append(f"HPA {name}: replicas must be 10 to 50")
        types = {m["type"] for m in h["spec"].get("metrics", [])}
        if not {"Resource", "Pods"} <= types:
            errors.append(f"HPA {name}: needs a CPU (Resource) and a requests/s (Pods) metric")
    if "Job" not in objs or not objs["Job"]:
        errors.append("no migration Job")
    return errors


def self_test(root, docs):
    """Each planted violation must be reported; the clean manifests must not be."""
    clean = check(root, docs)
    if clean:
        return [f"self-test: the clean manifests fail: {e}" for e in clean]

    def origin_container(ds, role):
        for d in ds:
            if d["kind"] == "Deployment" and d["metadata"]["name"] == f"origin-{role}":
                return d, d["spec"]["template"]["spec"]["containers"][0]
        raise KeyError(role)

    def drop_var(ds):
        for d in ds:
            if d["kind"] == "ConfigMap" and "HOLD_TTL_SECS" in d.get("data", {}):
                del d["data"]["HOLD_TTL_SECS"]

    def bad_probe(ds):
        origin_container(ds, "booking")[1]["readinessProbe"]["httpGet"]["path"] = "/ready"

    def bad_port(ds):
        origin_container(ds, "pricing")[1]["livenessProbe"]["httpGet"]["port"] = 9090

    def short_grace(ds):
        origin_container(ds, "jobs")[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10

    def inline_env(ds):
        origin_container(ds, "relay")[1]["env"] = [{"name": "DATABASE_URL", "value": "postgres://x"}]

    def no_hpa_max(ds):
        for d in ds:
            if d["kind"] == "HorizontalPodAutoscaler":
                d["spec"]["maxReplicas"] = 5

    def drop_jobs(ds):
        ds[:] = [d for d in ds if d["metadata"]["name"] != "origin-jobs"]

    failures = []
    for plant, expect in [
        (drop_var, "HOLD_TTL_SECS"),
        (bad_probe, "/ready is not a route"),
        (bad_port, "is not the bind port"),
        (short_grace, "terminationGracePeriodSeconds 10"),
        (inline_env, "set inline"),
        (no_hpa_max, "10 to 50"),
        (drop_jobs, "Deployment origin-jobs is missing"),
    ]:
        planted = copy.deepcopy(docs)
        plant(planted)
        found = check(root, planted)
        if not any(expect in e for e in found):
            failures.append(f"self-test: {plant.__name__} was not caught (wanted {expect!r}, got {found})")
        else:
            print(f"self-test: {plant.__name__} caught")
    return failures


def main(argv):
    root = Path(argv[1])
    self_testing = argv[2] == "--self-test"
    files = argv[3:] if self_testing else argv[2:]
    errors = []
    for f in files:
        docs = [d for d in yaml.safe_load_all(Path(f).read_text()) if d]
        found = self_test(root, docs) if self_testing else check(root, docs)
        errors += [f"{f}: {e}" for e in found]
        if not found and not self_testing:
            print(f"{f}: {len(docs)} objects: env, probes, grace, HPA, PDB, spread OK")
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
