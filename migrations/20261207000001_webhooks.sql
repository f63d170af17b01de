-- Signed webhooks (origin/src/webhooks): endpoints ops register per region, and one delivery
-- row per (endpoint, event) that the dispatcher works through.
--
-- The secrets are kept as the Standard Webhooks scheme writes them (`whsec_<base64>`): the
-- dispatcher must sign with them, so they cannot be stored as hashes. During a rotation the
-- previous secret stays until `previous_until`, and deliveries carry both signatures.
create table webhook_endpoints (
    id              uuid        primary key,
    region          text        not null check (region in ('EUW', 'EUN')),
    url             text        not null,
    -- Topics delivered (`booking.created`, …); never empty.
    event_types     text[]      not null check (cardinality(event_types) > 0),
    secret          text        not null,
    previous_secret text,
    previous_until  timestamptz,
    enabled         boolean     not null default true,
    -- Why the dispatcher turned it off (sustained failure), until ops enable it again.
    disabled_reason text,
    -- First failure of the current run of failures; cleared by any success.
    failing_since   timestamptz,
    created_by      text        not null,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    check ((previous_secret is null) = (previous_until is null))
);

create index webhook_endpoints_region on webhook_endpoints (region, created_at desc);

-- A delivery is `pending` until the receiver answers 2xx (`delivered`) or its retries run out
-- at `give_up_at` (`failed`). `next_attempt_at` is also the dispatcher's lease: a claimed
-- delivery's is pushed past the attempt's timeout, so a dispatcher that dies mid-attempt
-- leaves it due again, and two dispatchers never send it at once.
create table webhook_deliveries (
    id              uuid        primary key,
    endpoint_id     uuid        not null references webhook_endpoints (id) on delete cascade,
    event_id        uuid        not null,
    topic           text        not null,
    vehicle         text        not null,
    -- The event's number among its vehicle's events: an endpoint gets a vehicle's events in
    -- this order (a later one waits while an earlier one is pending).
    sequence        bigint      not null,
    payload         jsonb       not null,
    state           text        not null default 'pending'
                                check (state in ('pending', 'delivered', 'failed')),
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    give_up_at      timestamptz not null,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    unique (endpoint_id, event_id)
);

create index webhook_deliveries_due on webhook_deliveries (next_attempt_at)
    where state = 'pending';
create index webhook_deliveries_order on webhook_deliveries (endpoint_id, vehicle, sequence)
    where state = 'pending';
create index webhook_deliveries_log on webhook_deliveries (endpoint_id, created_at desc);

-- Per-vehicle order across topics. A vehicle's events reach the fan-out in order within a
-- topic but not across topics (booking.confirmed may come before the vehicle.reserved numbered
-- ahead of it), and an endpoint may hear only some types. So the fan-out notes every event of a
-- vehicle it sees, subscribed or not: `seen` is the highest sequence below which it has seen
-- them all, `ahead` the ones seen past a gap. A delivery is due once `seen` reaches its
-- sequence (or it has waited `WEBHOOK_ORDER_WAIT_MS` for a gap that never fills: an event
-- dead-lettered, or one published before the fan-out's consumer group first started); waiting
-- past a gap moves `seen` over it. A vehicle with no row starts from 0 (its first event is 1);
-- every vehicle with events so far starts here from its last number.
create table webhook_vehicle_order (
    vehicle text   primary key,
    seen    bigint not null,
    ahead   bigint[] not null default '{}'
);

insert into webhook_vehicle_order (vehicle, seen)
select partition_key, last from outbox_sequences;
