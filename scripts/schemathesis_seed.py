"""Seeds for a schemathesis run (scripts/schemathesis.sh): creates, through the API itself,
the quotes, bookings in each state, admin rows, maintenance blocks, webhooks, deny-list
entries, API keys and waitlist entries that the action routes need, and writes
them as JSON for scripts/schemathesis_hooks.py (`ST_SEEDS`).

    python3 schemathesis_seed.py BASE_URL TOKEN OUT.json VEHICLE_ID...

Every booking belongs to the run's ops user (the token's subject), so the hooks' requests
with that token are allowed to act on them.
"""

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import requests


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    def __init__(self, base, token):
        self.base = base
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token}"

    def post(self, path, body=None, expect=(200, 201)):
        r = self.s.post(
            self.base + path,
            json=body,
            headers={"Idempotency-Key": str(uuid.uuid4())},
            timeout=15,
        )
        if r.status_code not in expect:
            raise SystemExit(f"seed: POST {path} -> {r.status_code} {r.text[:300]}")
        return r.json()


def main():
    base, token, out, vehicles = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    # Each pass of a run (origin, then each edge runtime) seeds its own slice of the fleet:
    # the previous pass's bookings still occupy theirs.
    slot = int(os.environ.get("ST_SEED_SLOT", "0"))
    vehicles = vehicles[slot * 13 : (slot + 1) * 13]
    if len(vehicles) < 13:
        raise SystemExit(f"seed: need 13 vehicles for slot {slot}, got {len(vehicles)}")
    api = Api(base, token)
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    free = iter(vehicles)

    def hold(vehicle, start, hours=2):
        quote = api.post(
            "/v1/quotes",
            {"vehicle_id": vehicle, "start": iso(start), "end": iso(start + timedelta(hours=hours))},
        )
        booking = api.post("/v1/bookings", {"quote_token": quote["quote_token"]}, expect=(201, 409))
        if "id" not in booking:
            return None  # a fuzzed booking took the window: the caller tries another
        return {"id": booking["id"], "vehicle": vehicle, "start": iso(start),
                "end": iso(start + timedelta(hours=hours))}

    # Far-future bookings share vehicles by day; near-now ones (startable: from 15 minutes
    # before the start) each get a vehicle of their own, their windows overlap.
    far = next(free)
    day = iter(range(2, 178))

    def far_hold():
        while True:
            b = hold(far, now + timedelta(days=next(day), minutes=7 * slot))
            if b:
                return b

    reserving = [far_hold() for _ in range(8)]
    confirmed = []
    for _ in range(12):
        b = far_hold()
        api.post(f"/v1/bookings/{b['id']}/confirm")
        confirmed.append(b)
    startable, in_progress = [], []
    for i in range(12):
        b = hold(next(free), now + timedelta(minutes=7))
        if b is None:
            raise SystemExit("seed: a near-now window of this slot's fleet is taken")
        api.post(f"/v1/bookings/{b['id']}/confirm")
        if i < 6:
            startable.append(b)
        else:
            api.post(f"/v1/bookings/{b['id']}/start")
            in_progress.append(b)

    # Unused quotes for the holds of both versions (a quote is good for one booking).
    quote_tokens = {}
    for version in ("v1", "v2"):
        quote_tokens[version] = []
        for _ in range(15):
            start = now + timedelta(days=next(day), minutes=7 * slot)
            q = api.post(
                f"/{version}/quotes",
                {"vehicle_id": far, "start": iso(start), "end": iso(start + timedelta(hours=1))},
            )
            quote_tokens[version].append(q["quote_token"])

    # Admin rows to update and delete. A time multiplier may not overlap the region's others
    # (the demo fleet has some): slots are tried until six are taken.
    admin = {}
    for region in ("EUW", "EUN"):
        tm, dr = [], []
        slots = [(day, hour) for hour in range(0, 24) for day in range(7)]
        for day, hour in slots:
            if len(tm) == 6:
                break
            row = api.post(
                f"/v1/admin/pricing/{region}/time-multipliers",
                {"days_mask": 1 << day, "start_hour": hour, "end_hour": hour + 1, "multiplier_bp": 11000},
                expect=(201, 422),
            )
            if "key" in row:
                tm.append({"region": region, "id": row["key"]})
        for i in range(6):
            row = api.post(
                f"/v1/admin/pricing/{region}/discount-rules",
                {"kind": "long_duration", "percent_bp": 100 + i, "min_duration_minutes": 600 + i},
                expect=(201,),
            )
            dr.append({"region": region, "id": row["key"]})
        if len(tm) < 6:
            raise SystemExit(f"seed: only {len(tm)} time multipliers fit in {region}")
        admin.setdefault("/v1/admin/pricing/{region}/time-multipliers/{id}", []).extend(tm)
        admin.setdefault("/v1/admin/pricing/{region}/discount-rules/{id}", []).extend(dr)

    # Maintenance blocks to list, change and end: one per vehicle of the slot, years ahead
    # (beyond any booking's reach, so no booking is in their way).
    for i, vehicle in enumerate(vehicles):
        start = now + timedelta(days=400 + 3 * i, minutes=7 * slot)
        row = api.post(
            f"/v1/admin/vehicles/{vehicle}/blocks",
            {"start": iso(start), "end": iso(start + timedelta(hours=4)), "reason": "seed"},
            expect=(201,),
        )
        admin.setdefault("/v1/admin/vehicles/{vehicle_id}/blocks", []).append({"vehicle_id": vehicle})
        admin.setdefault("/v1/admin/vehicles/{vehicle_id}/blocks/{block_id}", []).append(
            {"vehicle_id": vehicle, "block_id": row["block"]["id"]}
        )

    # Webhooks of EUW to read, rotate, enable and remove (public address literals; nothing is
    # sent: no broker, no dispatcher in this run), each with one delivery in its log, written
    # as the fan-out writes it (DATABASE_URL is the origin's database).
    for i in range(6):
        row = api.post(
            "/v1/admin/webhooks?region=EUW",
            {"url": f"https://1.1.1.{i + 1}/hook/{slot}", "event_types": ["booking.created"]},
            expect=(201,),
        )
        webhook = row["webhook"]["id"]
        delivery = str(uuid.uuid4())
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", os.environ["DATABASE_URL"], "-c",
             "insert into webhook_deliveries (id, endpoint_id, event_id, topic, vehicle, sequence,"
             " payload, give_up_at, state) values"
             f" ('{delivery}', '{webhook.rsplit('_', 1)[1]}', gen_random_uuid(), 'booking.created',"
             f" '{vehicles[0]}', 1, '{{}}', now() + interval '1 day', 'failed')"],
            check=True,
        )
        for path in ("/v1/admin/webhooks/{webhook_id}", "/v1/admin/webhooks/{webhook_id}/rotate",
                     "/v1/admin/webhooks/{webhook_id}/enable",
                     "/v1/admin/webhooks/{webhook_id}/deliveries"):
            admin.setdefault(path, []).append({"webhook_id": webhook})
        admin.setdefault(
            "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", []
        ).append({"webhook_id": webhook, "delivery_id": delivery})

    # Deny-list entries of EUW to read and remove (users no request of the run is made by).
    for i in range(6):
        row = api.post(
            "/v1/admin/deny-list?region=EUW",
            {"kind": "user", "value": f"seed-denied-{slot}-{i}", "reason": "seed"},
            expect=(201,),
        )
        admin.setdefault("/v1/admin/deny-list/{entry_id}", []).append({"entry_id": row["id"]})

    # API keys of EUW to read and revoke.
    for i in range(6):
        row = api.post(
            "/v1/admin/api-keys?region=EUW",
            {"name": f"seed key {slot}-{i}", "per_minute": 60, "per_day": 10_000},
            expect=(201,),
        )
        admin.setdefault("/v1/admin/api-keys/{key_id}", []).append({"key_id": row["id"]})

    # The waitlist: the run's user waits for the windows of six confirmed bookings (entries
    # to read and withdraw); the other six confirmed windows are left for the join route.
    for b in confirmed[:6]:
        row = api.post("/v1/waitlist", {"vehicle_id": b["vehicle"], "start": b["start"], "end": b["end"]},
                       expect=(201,))
        admin.setdefault("/v1/waitlist/{waitlist_id}", []).append({"waitlist_id": row["id"]})

    seeds = {
        "vehicles": vehicles,
        "waitlist_windows": [{"vehicle_id": b["vehicle"], "start": b["start"], "end": b["end"]}
                             for b in confirmed[6:]],
        "quote_tokens": quote_tokens,
        "bookings": {
            "any": reserving + confirmed + startable + in_progress,
            "reserving": reserving,
            "cancellable": reserving + confirmed,
            "extendable": confirmed,
            "reschedulable": reserving + confirmed,
            "startable": startable,
            "startable_v1": startable[:3],
            "startable_v2": startable[3:],
            "in_progress": in_progress,
        },
        "admin": admin,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(seeds, f, indent=1)
    print(
        f"seeded: {len(reserving)} reserving, {len(confirmed)} confirmed, {len(startable)} startable, "
        f"{len(in_progress)} in progress, {sum(map(len, quote_tokens.values()))} quotes, "
        f"{sum(map(len, admin.values()))} admin rows",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
