"""Per-operation case counts of a schemathesis run (scripts/schemathesis.sh).

Reads the OpenAPI document and the counts file the `after_call` hook wrote (one line per
request: operation, status, generation mode), prints a table — cases, 2xx, 4xx, 5xx per
operation — and exits 1 if any documented operation got fewer than `--min` cases or no 2xx
answer: a run that only ever saw 404s or 422s of an operation did not test its success path,
whatever it counted overall.

    python3 schemathesis_coverage.py DOC.json COUNTS --min 20 [--exclude /metrics ...]
"""

import argparse
import json
import sys
from collections import Counter, defaultdict

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("doc")
    p.add_argument("counts")
    p.add_argument("--min", type=int, required=True, dest="minimum")
    p.add_argument("--exclude", action="append", default=[])
    a = p.parse_args()

    with open(a.doc, encoding="utf-8") as f:
        doc = json.load(f)
    operations = sorted(
        f"{m.upper()} {path}"
        for path, item in doc.get("paths", {}).items()
        if path not in a.exclude
        for m in item
        if m in METHODS
    )
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
        if total < a.minimum:
            failures.append(f"{op}: {total} cases (minimum {a.minimum})")
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
