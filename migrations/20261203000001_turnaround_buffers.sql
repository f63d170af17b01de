-- Turnaround buffers: time to clean or charge a car between two rentals (Odoo rental padding,
-- cal.com buffers). Each vehicle class of a region has `turnaround_minutes` (pricing admin,
-- audited); a booking keeps the buffer its class had when it was made, and occupies its
-- vehicle from its start to its end plus that buffer. The exclusion constraint now compares
-- these occupied ranges, so two bookings of one car are at least the earlier one's buffer
-- apart, under any concurrency, with no code path able to forget it.
--
-- Why the buffer is copied onto the booking: a class's buffer can change while bookings exist.
-- Copied, an existing booking keeps the range it was accepted with (nothing already accepted
-- becomes a violation, no constraint re-check of old rows is needed), and a longer buffer
-- applies from the next booking on. Why a trigger and not a generated column: `timestamptz +
-- interval` is STABLE, and generated columns need IMMUTABLE expressions.

alter table vehicle_config
    add column turnaround_minutes integer not null default 0
        check (turnaround_minutes between 0 and 1440);

-- No default on purpose: an insert that does not name the buffer gets its class's from the
-- trigger below; the hold paths name it (joined in their one statement, no second lookup).
alter table bookings
    add column turnaround_minutes integer
        check (turnaround_minutes between 0 and 1440),
    add column occupied tstzrange;
update bookings set turnaround_minutes = 0, occupied = period;
alter table bookings alter column turnaround_minutes set not null,
                     alter column occupied set not null;

-- The range a booking of `p_vehicle` for [p_start, p_end) would occupy: its window plus its
-- class's buffer now. Search, quotes and the hold's guards ask `occupied && booking_occupied(…)`,
-- the constraint's own predicate.
create function booking_occupied(p_vehicle uuid, p_start timestamptz, p_end timestamptz)
returns tstzrange
language sql stable
as $$
    select tstzrange(p_start,
                     p_end + make_interval(mins => coalesce(
                         (select c.turnaround_minutes
                            from vehicles v
                            join vehicle_config c on c.region = v.region and c.class = v.class
                           where v.id = p_vehicle), 0)),
                     '[)')
$$;

-- On insert without a buffer the booking takes its class's; on every change of its window (an
-- extension) its occupied range follows, with the buffer it was made with.
create function bookings_occupied() returns trigger
language plpgsql
as $$
begin
    if tg_op = 'INSERT' and new.turnaround_minutes is null then
        new.turnaround_minutes := coalesce(
            (select c.turnaround_minutes
               from vehicles v
               join vehicle_config c on c.region = v.region and c.class = v.class
              where v.id = new.vehicle_id), 0);
    end if;
    new.occupied := tstzrange(lower(new.period),
                              upper(new.period) + make_interval(mins => new.turnaround_minutes),
                              '[)');
    return new;
end;
$$;

create trigger bookings_occupied
    before insert or update of period, turnaround_minutes on bookings
    for each row execute function bookings_occupied();

-- The guarantee, restated on the occupied ranges (same name: callers map 23P01 by it).
alter table bookings drop constraint bookings_no_overlap;
alter table bookings add constraint bookings_no_overlap
    exclude using gist (vehicle_id with =, occupied with &&)
    where (status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS'));

-- The hold's guards ("an expired hold is in the way") compare occupied ranges too, or an
-- expired hold inside the new booking's buffer would surface as a conflict instead of being
-- ended first; and the insert names the class's buffer, read in the same statement (a join on
-- `vehicle_config`), so the trigger does not look it up again. Only the insert and those two
-- predicates differ from 20261202000001_hold_in_one_statement.sql.
create or replace function hold_booking(
    p_user text,
    p_key_lock bigint, p_key text, p_request_hash bytea,
    p_lock_namespace integer,
    p_key_wait text, p_lock_wait text,
    p_id uuid, p_vehicle uuid, p_region text, p_destination_bay uuid,
    p_start timestamptz, p_end timestamptz, p_status text, p_currency text, p_price bigint,
    p_breakdown jsonb, p_quote uuid, p_hold_expires timestamptz, p_at timestamptz,
    p_from text, p_event text, p_reason text, p_actor text, p_request_id text, p_details jsonb,
    p_partition_key text, p_event_ids uuid[], p_topics text[], p_payloads jsonb[],
    p_traceparent text,
    p_response_status smallint, p_response_body text, p_bay_placeholder text
) returns table (outcome text, stored_status smallint, body bytea, bay_id uuid)
language plpgsql volatile
as $$
#variable_conflict use_column
declare
    v_old_timeout text := current_setting('lock_timeout');
    v_hash bytea;
    v_bay uuid;
begin
    if p_key is not null then
        if not pg_try_advisory_xact_lock(p_key_lock) then
            if p_key_wait = '0' then
                return query select 'in_progress', null::smallint, null::bytea, null::uuid;
                return;
            end if;
            begin
                perform set_config('lock_timeout', p_key_wait, true);
                perform pg_advisory_xact_lock(p_key_lock);
            exception when lock_not_available then
                return query select 'in_progress', null::smallint, null::bytea, null::uuid;
                return;
            end;
            perform set_config('lock_timeout', v_old_timeout, true);
        end if;
        select k.request_hash, k.response_status, k.response_body
          into v_hash, stored_status, body
          from idempotency_keys k
         where k.user_id = p_user and k.key = p_key;
        if found then
            if v_hash = p_request_hash then
                return query select 'replay', stored_status, body, null::uuid;
            else
                return query select 'mismatch', null::smallint, null::bytea, null::uuid;
            end if;
            return;
        end if;
    end if;

    if p_lock_namespace is not null
       and not pg_try_advisory_xact_lock(p_lock_namespace, hashtext(p_vehicle::text)) then
        if p_lock_wait = '0' then
            return query select 'busy', null::smallint, null::bytea, null::uuid;
            return;
        end if;
        begin
            perform set_config('lock_timeout', p_lock_wait, true);
            perform pg_advisory_xact_lock(p_lock_namespace, hashtext(p_vehicle::text));
        exception when lock_not_available then
            return query select 'busy', null::smallint, null::bytea, null::uuid;
            return;
        end;
        perform set_config('lock_timeout', v_old_timeout, true);
    end if;

    with b as (
        insert into bookings (id, region, vehicle_id, user_id, bay_id, destination_bay_id,
                              period, status, currency, price_minor, breakdown, quote_id,
                              hold_expires_at, created_at, updated_at, turnaround_minutes)
        select p_id, v.region, v.id, p_user, v.bay_id, p_destination_bay,
               tstzrange(p_start, p_end, '[)'), p_status, p_currency, p_price, p_breakdown,
               p_quote, p_hold_expires, p_at, p_at, coalesce(c.turnaround_minutes, 0)
          from vehicles v
          left join vehicle_config c on c.region = v.region and c.class = v.class
         where v.id = p_vehicle and v.region = p_region and v.status = 'active'
           and not exists (select 1 from bookings x
                            where x.vehicle_id = v.id and x.status = 'RESERVING'
                              and x.hold_expires_at <= p_at
                              and x.occupied && tstzrange(p_start,
                                  p_end + make_interval(mins => coalesce(c.turnaround_minutes, 0)),
                                  '[)'))
        returning bookings.id, bookings.bay_id, bookings.status),
    h as (
        insert into booking_history (booking_id, from_status, to_status, event, reason, actor,
                                     request_id, details, at)
        select b.id, p_from, b.status, p_event, p_reason, p_actor, p_request_id, p_details, p_at
          from b),
    o as (
        insert into outbox (event_id, topic, partition_key, aggregate_id, payload, traceparent)
        select e.event_id, e.topic, p_partition_key, b.id, e.payload, p_traceparent
          from b, unnest(p_event_ids, p_topics, p_payloads)
                  with ordinality as e(event_id, topic, payload, n)
         order by e.n)
    select b.bay_id into v_bay from b;

    if v_bay is null then
        if exists (select 1 from bookings x
                    where x.vehicle_id = p_vehicle and x.status = 'RESERVING'
                      and x.hold_expires_at <= p_at
                      and x.occupied && booking_occupied(p_vehicle, p_start, p_end)) then
            return query select 'expired_in_the_way', null::smallint, null::bytea, null::uuid;
        else
            return query select 'unavailable', null::smallint, null::bytea, null::uuid;
        end if;
        return;
    end if;

    body := convert_to(replace(p_response_body, p_bay_placeholder, v_bay::text), 'UTF8');
    if p_key is not null then
        insert into idempotency_keys (user_id, key, request_hash, response_status, response_body)
        values (p_user, p_key, p_request_hash, p_response_status, body);
    end if;
    return query select 'created', p_response_status, body, v_bay;
end;
$$;
