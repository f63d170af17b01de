"""Schemathesis hooks for scripts/schemathesis.sh: project-specific checks, seeded ids and
per-operation accounting.

`problem_json_for_errors`: every 4xx and 5xx answer is an RFC 9457 problem
(`application/problem+json` with `type`, `title`, `status`, `detail`), documented or not
(413, 415, 405 are produced by middleware for any route).

Seeds (`ST_SEEDS`, a JSON file written by scripts/schemathesis_seed.py before the run): real
vehicle ids, unused quote tokens, bookings in each state, admin rows. Random strings almost
never name an existing booking, so without them every action route answers 404 and its
success path is never exercised. `map_case` puts a seeded value into about half of the
*positive* cases of the operations that need one (negative cases are left alone: their
invalid value is the point of the case).

Accounting (`ST_COUNTS`, a file): `after_call` appends one line per request — operation,
status, generation mode — and scripts/schemathesis_coverage.py fails the run if an
operation got too few cases or no 2xx at all.
"""

import json
import os
import random
from datetime import datetime, timedelta, timezone

import schemathesis

_SEEDS = None
_RNG = random.Random(int(os.environ.get("SCHEMATHESIS_SEED", "20261125")))


def _seeds():
    global _SEEDS
    if _SEEDS is None:
        path = os.environ.get("ST_SEEDS")
        _SEEDS = {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                _SEEDS = json.load(f)
    return _SEEDS


def _header(response, name):
    value = response.headers.get(name) or response.headers.get(name.title()) or ""
    if isinstance(value, list):
        value = value[0] if value else ""
    return value


def _label(case):
    return f"{case.method.upper()} {case.path}"


def _mode(case):
    meta = getattr(case, "_meta", None) or getattr(case, "meta", None)
    try:
        return str(meta.generation.mode.value)
    except AttributeError:
        return "unknown"


def _negative_at(case, location):
    meta = getattr(case, "_meta", None) or getattr(case, "meta", None)
    try:
        from schemathesis.core.parameters import ParameterLocation

        return meta.is_negative_at(ParameterLocation(location))
    except (AttributeError, ValueError, ImportError):
        return True  # unknown: leave the case alone


def _iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _future_window():
    """A window the booking policy accepts: whole minutes, 1 to 60 days ahead, 1 to 4 hours."""
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(
        days=_RNG.randint(1, 60), minutes=_RNG.randint(0, 1439)
    )
    return start, start + timedelta(minutes=30 * _RNG.randint(2, 8))


# Which seeded bookings make each action succeed (by the last path segment).
_ACTION_POOL = {
    "confirm": "reserving",
    "cancel": "cancellable",
    "start": "startable",
    "complete": "in_progress",
    "extend": "extendable",
    "reschedule": "reschedulable",
}


@schemathesis.hook
def map_case(ctx, case):
    seeds = _seeds()
    if not seeds or _RNG.random() < 0.5:
        return case
    path = case.path
    parts = path.strip("/").split("/")
    # Booking actions and reads: a seeded booking in the state the action needs.
    if len(parts) >= 3 and parts[1] == "bookings" and "{id}" in path:
        if _negative_at(case, "path"):
            return case
        action = parts[3] if len(parts) > 3 else "read"
        kind = _ACTION_POOL.get(action, "any")
        # A start uses its booking up: each version starts bookings of its own half, so one
        # version's cases cannot use up the other's (v2 once got no 2xx in 112 cases).
        if action == "start":
            kind = f"startable_{parts[0]}"
        pool = seeds.get("bookings", {}).get(kind, [])
        if not pool:
            return case
        booking = _RNG.choice(pool)
        case.path_parameters["id"] = booking["id"]
        if action == "extend" and isinstance(case.body, dict) and not _negative_at(case, "body"):
            end = datetime.fromisoformat(booking["end"].replace("Z", "+00:00"))
            case.body["end"] = _iso(end + timedelta(minutes=30 * _RNG.randint(1, 4)))
        if action == "reschedule" and isinstance(case.body, dict) and not _negative_at(case, "body"):
            start, end = _future_window()
            case.body.update(start=_iso(start), end=_iso(end))
        return case
    # A hold: an unused quote of the right version.
    if len(parts) == 2 and parts[1] == "bookings" and case.method.upper() == "POST":
        tokens = seeds.get("quote_tokens", {}).get(parts[0], [])
        if tokens and isinstance(case.body, dict) and not _negative_at(case, "body"):
            case.body["quote_token"] = tokens.pop()
        return case
    # A quote: a real vehicle and a window the policy accepts.
    if len(parts) == 2 and parts[1] == "quotes" and isinstance(case.body, dict):
        if not _negative_at(case, "body") and seeds.get("vehicles"):
            start, end = _future_window()
            case.body.update(vehicle_id=_RNG.choice(seeds["vehicles"]), start=_iso(start), end=_iso(end))
            case.body.pop("destination_bay_id", None)
            case.body.pop("promo_code", None)
        return case
    # Search and surge: a point in Frankfurt, a window the policy accepts.
    if path.endswith("/vehicles/search") and isinstance(case.query, dict):
        if not _negative_at(case, "query"):
            start, end = _future_window()
            case.query.update(lat=50.1109, lon=8.6821, start=_iso(start), end=_iso(end))
            case.query.pop("cursor", None)
        return case
    # Webhooks: registered and listed in EUW, a public address literal (no DNS here) and a
    # known event type.
    if path == "/v1/admin/webhooks":
        if not _negative_at(case, "query"):
            case.query = {**(case.query or {}), "region": "EUW"}
        if case.method.upper() == "POST" and isinstance(case.body, dict) and not _negative_at(case, "body"):
            case.body.update(url=f"https://1.1.1.{_RNG.randint(1, 254)}/hook", event_types=["booking.created"])
        return case
    # The deny list: kept by EUW; a valid entry of a fresh target (a user or a /32), so adding
    # it is not a conflict, and no expiry field that could disagree with the other.
    if path == "/v1/admin/deny-list":
        if not _negative_at(case, "query"):
            case.query = {**(case.query or {}), "region": "EUW"}
        if case.method.upper() == "POST" and isinstance(case.body, dict) and not _negative_at(case, "body"):
            if _RNG.random() < 0.5:
                case.body.update(kind="user", value=f"st-{_RNG.randint(0, 10**9)}")
            else:
                case.body.update(kind="network", value=f"10.{_RNG.randint(0, 255)}.{_RNG.randint(0, 255)}.{_RNG.randint(0, 255)}")
            case.body.update(reason="fuzzed entry")
            case.body.pop("expires_at", None)
            if "ttl_secs" in case.body:
                case.body["ttl_secs"] = _RNG.randint(1, 86_400)
        return case
    # API keys: issued and listed in EUW; a plan whose limits agree (per_day at least
    # per_minute: the schema bounds each alone), canonical origins and an expiry within the
    # two years the route accepts.
    if path == "/v1/admin/api-keys":
        if not _negative_at(case, "query"):
            case.query = {**(case.query or {}), "region": "EUW"}
        if case.method.upper() == "POST" and isinstance(case.body, dict) and not _negative_at(case, "body"):
            per_minute = _RNG.randint(1, 10_000)
            case.body.update(
                name=f"st key {_RNG.randint(0, 10**9)}",
                per_minute=per_minute,
                per_day=per_minute * _RNG.randint(1, 1_000),
            )
            if "burst_secs" in case.body:
                case.body["burst_secs"] = _RNG.randint(0, 60)
            if "allowed_origins" in case.body:
                case.body["allowed_origins"] = [
                    f"https://app{i}.example.com" for i in range(_RNG.randint(0, 3))
                ]
            if "expires_at" in case.body:
                case.body["expires_at"] = _iso(
                    datetime.now(timezone.utc) + timedelta(days=_RNG.randint(1, 700))
                )
        return case
    # Joining a waitlist: the window of a seeded confirmed booking (taken, so the line is open).
    if path == "/v1/waitlist" and isinstance(case.body, dict) and not _negative_at(case, "body"):
        windows = seeds.get("waitlist_windows", [])
        if windows:
            case.body.update(_RNG.choice(windows))
            for other in ("class", "bay_id", "region"):
                case.body.pop(other, None)
        return case
    if path in ("/v1/surge", "/v1/admin/surge/recompute") and not _negative_at(case, "query"):
        case.query = {"region": _RNG.choice(["EUW", "EUN"])}
        return case
    # Admin items: an id that exists (update and delete need one), and bodies whose fields
    # agree with each other (the schema states each field's range, not how they relate).
    admin = seeds.get("admin", {}).get(path)
    if admin and not _negative_at(case, "path"):
        case.path_parameters.update(_RNG.choice(admin))
    if parts[:3] == ["v1", "admin", "pricing"] and isinstance(case.body, dict):
        if not _negative_at(case, "body"):
            _agreeing_admin_body(case, parts)
    # A maintenance block: a window years ahead (no booking reaches it, and blocks of one
    # vehicle rarely meet there) and a printable reason.
    if parts[:3] == ["v1", "admin", "vehicles"] and isinstance(case.body, dict):
        if not _negative_at(case, "body"):
            start = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(
                days=_RNG.randint(500, 5000), minutes=_RNG.randint(0, 1439)
            )
            case.body.update(start=_iso(start), end=_iso(start + timedelta(hours=2)), reason="fuzzed block")
    return case


def _agreeing_admin_body(case, parts):
    region = str(case.path_parameters.get("region", "EUW")).upper()
    body = case.body
    kind = parts[4] if len(parts) > 4 else ""
    if kind == "base-rates":
        body["currency"] = "SEK" if region == "EUN" else "EUR"
        body["per_day_minor"] = max(body.get("per_day_minor", 1), body.get("per_hour_minor", 1))
    elif kind == "vehicle-config":
        lo, hi = sorted((body.get("floor_minor", 0), body.get("ceiling_minor", 0)))
        body.update(floor_minor=lo, ceiling_minor=hi)
    elif kind == "time-multipliers":
        start = _RNG.randint(0, 23)
        body.update(days_mask=1 << _RNG.randint(0, 6), start_hour=start, end_hour=start + 1)
    elif kind == "discount-rules":
        body.update(kind="long_duration", min_duration_minutes=_RNG.randint(60, 10_000))
        for field in ("valid_from", "valid_until"):
            body.pop(field, None)


@schemathesis.hook
def after_call(ctx, case, response):
    path = os.environ.get("ST_COUNTS")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{_label(case)}\t{response.status_code}\t{_mode(case)}\n")


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
