"""Schemathesis hooks for scripts/schemathesis.sh: project-specific checks.

`problem_json_for_errors`: every 4xx and 5xx answer is an RFC 9457 problem
(`application/problem+json` with `type`, `title`, `status`, `detail`), documented or not
(413, 415, 405 are produced by middleware for any route).
"""

import json

import schemathesis


def _header(response, name):
    value = response.headers.get(name) or response.headers.get(name.title()) or ""
    if isinstance(value, list):
        value = value[0] if value else ""
    return value


@schemathesis.check
def problem_json_for_errors(ctx, response, case):
    if response.status_code < 400:
        return None
    content_type = _header(response, "content-type")
    if not content_type.startswith("application/problem+json"):
        raise AssertionError(
            f"{response.status_code} with content-type {content_type!r}, not application/problem+json"
        )
    body = json.loads(response.content or b"null")
    missing = [k for k in ("type", "title", "status", "detail") if k not in (body or {})]
    if missing:
        raise AssertionError(f"problem body lacks {missing}: {body!r}")
    if body["status"] != response.status_code:
        raise AssertionError(f"problem status {body['status']} != HTTP {response.status_code}")
    return None
