"""Per-operation case counts of a schemathesis run (scripts/schemathesis.sh).

Reads the OpenAPI document and the counts file the `after_call` hook wrote (one line per
request: operation, status, generation mode), prints a table — cases, 2xx, 4xx, 5xx per
operation — and exits 1 if any documented operation with inputs got fewer than `--min` cases (one without any: fewer than one), or no 2xx
answer: a run that only ever saw 404s or 422s of an operation did not test its success path,
whatever it counted overall.

    python3 schemathesis_coverage.py DOC.json COUNTS --min 20 [--exclude /metrics ...]
"""

import argparse
import json
import sys
from collections import Counter, defaultdict

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def self_test() -> int:
    """The check fires: an operation that only ever got 404s, and one with too few cases."""
    import os
    import subprocess
    import tempfile

    doc = {
        "paths": {
            "/things/{id}": {"get": {"parameters": [{"name": "id", "in": "path"}]}},
            "/healthz": {"get": {}},
        }
    }
    cases = {
        "only 404s": ["GET /things/{id}\t404\tpositive"] * 30 + ["GET /healthz\t200\tpositive"],
        "too few": ["GET /things/{id}\t200\tpositive"] * 5 + ["GET /healthz\t200\tpositive"],
        "healthz never called": ["GET /things/{id}\t200\tpositive"] * 30,
    }
    with tempfile.TemporaryDirectory() as d:
        doc_path = os.path.join(d, "doc.json")
        with open(doc_path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        for name, lines in list(cases.items()) + [("all good", None)]:
            if lines is None:
                lines = ["GET /things/{id}\t200\tpositive"] * 30 + ["GET /healthz\t200\tpositive"]
            counts = os.path.join(d, "counts")
            with open(counts, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            run = subprocess.run(
                [sys.executable, __file__, doc_path, counts, "--min", "20"], capture_output=True
            )
            if (run.returncode == 0) != (name == "all good"):
                print(f"self-test failed: {name}: exit {run.returncode}", file=sys.stderr)
                return 1
    print("self-test passed: too few cases, no 2xx and a missing operation each fail")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    p = argparse.ArgumentParser()
    p.add_argument("doc")
    p.add_argument("counts")
    p.add_argument("--min", type=int, required=True, dest="minimum")
    p.add_argument("--exclude", action="append", default=[])
    a = p.parse_args()

    with open(a.doc, encoding="utf-8") as f:
        doc = json.load(f)
    # An operation without parameters or body (/healthz) has one request to make: it needs
    # one case, not the minimum.
    minimum = {
        f"{m.upper()} {path}": (
            a.minimum if op.get("parameters") or item.get("parameters") or op.get("requestBody") else 1
        )
        for path, item in doc.get("paths", {}).items()
        if path not in a.exclude
        for m, op in item.items()
        if m in METHODS
    }
    operations = sorted(minimum)
    seen: dict[str, Counter] = defaultdict(Counter)
    with open(a.counts, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or not fields[1].isdigit():
                continue
            seen[fields[0]][fields[1][0] + "xx"] += 1

    failures = []
    print(f"{'operation':<62} {'cases':>6} {'2xx':>5} {'4xx':>5} {'5xx':>5}")
    for op in operations:
        c = seen.get(op, Counter())
        total = sum(c.values())
        print(f"{op:<62} {total:>6} {c['2xx']:>5} {c['4xx']:>5} {c['5xx']:>5}")
        if total < minimum[op]:
            failures.append(f"{op}: {total} cases (minimum {minimum[op]})")
        elif c["2xx"] == 0:
            failures.append(f"{op}: no 2xx answer in {total} cases")
    total = sum(sum(c.values()) for c in seen.values())
    print(f"{len(operations)} operations, {total} requests")
    if failures:
        print("operations not exercised enough:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
