-- Core schema: fleet, bookings with their history, holds, outbox and idempotency keys.
-- PostgreSQL is the only truth: "no double booking" is the exclusion constraint below.

create extension if not exists btree_gist;

create table parking_bays (
    id          uuid primary key,
    region      text not null check (region in ('EUW', 'EUN')),
    name        text not null,
    city        text not null,
    lat         double precision not null check (lat between -90 and 90),
    lon         double precision not null check (lon between -180 and 180),
    timezone    text not null,
    capacity    integer not null check (capacity > 0),
    created_at  timestamptz not null default now()
);
create index parking_bays_region_lat_lon on parking_bays (region, lat, lon);

create table vehicles (
    id          uuid primary key,
    region      text not null check (region in ('EUW', 'EUN')),
    bay_id      uuid not null references parking_bays (id),
    class       text not null check (class in ('compact', 'sedan', 'suv', 'van', 'premium')),
    make        text not null,
    model       text not null,
    seats       smallint not null check (seats between 1 and 9),
    fuel        text not null check (fuel in ('petrol', 'diesel', 'hybrid', 'electric')),
    plate       text not null unique,
    status      text not null default 'active' check (status in ('active', 'maintenance', 'retired')),
    created_at  timestamptz not null default now()
);
create index vehicles_bay on vehicles (bay_id);
create index vehicles_region_class on vehicles (region, class);

-- Pricing tables, per region and vehicle class.
create table base_rates (
    region          text not null check (region in ('EUW', 'EUN')),
    class           text not null,
    currency        text not null check (currency in ('EUR', 'SEK')),
    per_hour_minor  bigint not null check (per_hour_minor > 0),
    per_day_minor   bigint not null check (per_day_minor > 0),
    updated_at      timestamptz not null default now(),
    primary key (region, class),
    check ((region = 'EUW' and currency = 'EUR') or (region = 'EUN' and currency = 'SEK'))
);

create table vehicle_config (
    region          text not null check (region in ('EUW', 'EUN')),
    class           text not null,
    floor_minor     bigint not null check (floor_minor >= 0),
    ceiling_minor   bigint not null,
    updated_at      timestamptz not null default now(),
    primary key (region, class),
    check (ceiling_minor >= floor_minor)
);

create table time_multipliers (
    id              uuid primary key,
    region          text not null check (region in ('EUW', 'EUN')),
    days_mask       smallint not null check (days_mask between 1 and 127),
    start_hour      smallint not null check (start_hour between 0 and 23),
    end_hour        smallint not null check (end_hour between 1 and 24 and end_hour > start_hour),
    multiplier_bp   integer not null check (multiplier_bp > 0 and multiplier_bp <= 100000),
    label           text not null default '',
    updated_at      timestamptz not null default now()
);
create index time_multipliers_region on time_multipliers (region);

create table discount_rules (
    id                    uuid primary key,
    region                text not null check (region in ('EUW', 'EUN')),
    kind                  text not null check (kind in ('promo', 'long_duration', 'membership')),
    code                  text,
    percent_bp            integer not null check (percent_bp > 0 and percent_bp <= 5000),
    min_duration_minutes  bigint,
    membership_tier       text,
    valid_from            timestamptz,
    valid_until           timestamptz,
    active                boolean not null default true,
    updated_at            timestamptz not null default now(),
    check (kind <> 'promo' or code is not null),
    check (kind <> 'long_duration' or min_duration_minutes is not null),
    check (kind <> 'membership' or membership_tier is not null)
);
create unique index discount_rules_promo_code on discount_rules (region, lower(code)) where kind = 'promo';

create table bookings (
    id                      uuid primary key,
    region                  text not null check (region in ('EUW', 'EUN')),
    vehicle_id              uuid not null references vehicles (id),
    user_id                 text not null,
    bay_id                  uuid not null references parking_bays (id),
    destination_bay_id      uuid references parking_bays (id),
    period                  tstzrange not null,
    status                  text not null check (status in
                              ('RESERVING', 'CONFIRMED', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED')),
    currency                text not null check (currency in ('EUR', 'SEK')),
    price_minor             bigint not null check (price_minor >= 0),
    breakdown               jsonb not null,
    quote_id                uuid not null,
    hold_expires_at         timestamptz,
    cancellation_fee_minor  bigint,
    -- Each extension: {"from": old end, "to": new end, "amount_minor": n}; price_minor includes them.
    extensions              jsonb not null default '[]'::jsonb,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    -- Half-open, bounded, non-empty: [start, end) with start < end.
    constraint bookings_period_half_open check (
        not isempty(period) and lower_inc(period) and not upper_inc(period)
        and not lower_inf(period) and not upper_inf(period)),
    constraint bookings_hold_has_expiry check (status <> 'RESERVING' or hold_expires_at is not null),
    -- The guarantee: two bookings that occupy one vehicle never overlap in time.
    constraint bookings_no_overlap exclude using gist (vehicle_id with =, period with &&)
        where (status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS'))
);
-- The seed's indexes.
create index bookings_vehicle_period on bookings using gist (vehicle_id, period);
create index bookings_user_status on bookings (user_id, status, created_at desc);
create index bookings_bay_period on bookings using gist (bay_id, period);
create index bookings_status_created on bookings (status, created_at);
create index bookings_holds_expiry on bookings (hold_expires_at) where status = 'RESERVING';
-- A quote buys at most one booking.
create unique index bookings_quote on bookings (quote_id);

create table booking_history (
    id           bigserial primary key,
    booking_id   uuid not null references bookings (id),
    from_status  text,
    to_status    text not null,
    event        text not null,
    reason       text,
    actor        text not null,
    request_id   text,
    details      jsonb not null default '{}'::jsonb,
    at           timestamptz not null default now()
);
create index booking_history_booking on booking_history (booking_id, id);

-- Lease per vehicle: the PostgreSQL fallback for the Redis reservation lock.
create table reservation_locks (
    vehicle_id   uuid primary key references vehicles (id),
    token        uuid not null,
    holder       text not null,
    expires_at   timestamptz not null,
    created_at   timestamptz not null default now()
);

-- Transactional outbox: written in the same transaction as the state change it describes.
create table outbox (
    id             bigserial primary key,
    event_id       uuid not null unique,
    -- The seed's five topics, plus one per remaining lifecycle step so every state change is an event.
    topic          text not null check (topic in ('booking.created', 'booking.cancelled', 'booking.extended',
                                                  'vehicle.reserved', 'vehicle.released', 'booking.confirmed',
                                                  'booking.started', 'booking.completed', 'booking.failed')),
    partition_key  text not null,
    aggregate_id   uuid not null,
    payload        jsonb not null,
    created_at     timestamptz not null default now(),
    published_at   timestamptz
);
create index outbox_unpublished on outbox (id) where published_at is null;
create index outbox_aggregate on outbox (aggregate_id, id);

-- Idempotency keys: the stored response of a POST, committed with its effect.
create table idempotency_keys (
    user_id          text not null,
    key              text not null,
    request_hash     bytea not null,
    response_status  smallint not null,
    response_body    bytea not null,
    created_at       timestamptz not null default now(),
    primary key (user_id, key)
);
create index idempotency_keys_created on idempotency_keys (created_at);
