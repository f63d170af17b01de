-- Pricing orchestrator (issue 6): the audit trail of pricing changes, refused prices, and the
-- read-only role of the reference AI inference service. Additive only: the previous release
-- keeps working with this schema.

-- Every change made through the pricing admin API: who, when, what, and the row before/after.
create table pricing_audit (
    id          bigserial primary key,
    at          timestamptz not null default now(),
    region      text not null check (region in ('EUW', 'EUN')),
    actor       text not null,
    action      text not null check (action in ('create', 'update', 'delete')),
    entity      text not null check (entity in ('base_rate', 'vehicle_config', 'time_multiplier', 'discount_rule')),
    entity_key  text not null,
    before      jsonb,
    after       jsonb,
    request_id  text
);
create index pricing_audit_region_at on pricing_audit (region, at desc);

-- Prices the validator refused to quote (the alert metric counts them; this keeps the detail).
create table price_refusals (
    id           bigserial primary key,
    at           timestamptz not null default now(),
    region       text not null,
    vehicle_id   uuid not null,
    user_id      text not null,
    period       tstzrange not null,
    total_minor  bigint not null,
    reason       text not null,
    detail       text not null
);
create index price_refusals_at on price_refusals (at desc);

-- The reference inference service reads bookings through this role and nothing else. Roles
-- are cluster-wide while every database (each test's too) runs this migration, possibly at
-- the same moment: create it only if absent, and let a concurrent creator win quietly.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'inference_ro') then
        create role inference_ro login;
        -- Even a mistaken write through this role fails.
        alter role inference_ro set default_transaction_read_only = on;
    end if;
exception
    when duplicate_object or unique_violation then null;
end
$$;
grant select on parking_bays, vehicles, bookings, booking_history to inference_ro;
