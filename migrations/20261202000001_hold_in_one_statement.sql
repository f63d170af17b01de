-- A hold in one statement: the idempotency key's lock and lookup, the vehicle's lock, the
-- booking with its history and outbox rows, and the key's stored response, in one round trip
-- (called in autocommit: the statement is the transaction). See `store/bookings/hold.rs` for
-- the caller and why; the multi-statement path (`store/idempotency.rs` + `insert_hold`) stays
-- for the rare cases this function hands back ('expired_in_the_way', a busy Redis lock).
--
-- VOLATILE on purpose: under READ COMMITTED each statement inside a VOLATILE function takes a
-- fresh snapshot, so the key lookup after waiting on the key's advisory lock sees the response
-- the previous holder of that lock committed. A STABLE function (or one CTE) would look with
-- the snapshot of the calling statement, taken before the wait, miss that response, run the
-- effect again and fail on the key's primary key. tests/api/idempotency.rs pins this.
--
-- Outcomes (column `outcome`):
--   created             the hold, its history, its events and (with a key) its response are
--                       written; `body` is the response, `bay_id` the booking's bay
--   replay              the key was used before with this very request: `stored_status`, `body`
--   mismatch            the key was used before with another request
--   in_progress         another request with the key still runs (waited `p_key_wait`)
--   busy                another hold holds the vehicle's lock (waited `p_lock_wait`)
--   unavailable         the vehicle is missing, not active, or not in `p_region`
--   expired_in_the_way  an expired hold overlaps the window: nothing written, the caller ends
--                       it through the aggregate and inserts in its own transaction
-- A violated constraint (bookings_no_overlap, bookings_quote) is raised as usual.
create function hold_booking(
    -- The caller, who owns the booking and the key.
    p_user text,
    -- The idempotency key: its advisory lock id, the key and the request's fingerprint (all
    -- null without a key).
    p_key_lock bigint, p_key text, p_request_hash bytea,
    -- The vehicle lock: advisory (namespace, hashtext(vehicle id)); null namespace = no lock.
    p_lock_namespace integer,
    -- How long to wait for the key's lock and for the vehicle's ('0' = one try), as
    -- lock_timeout values. The key's must be '0' when the caller holds the vehicle's lock in
    -- Redis: the multi-statement path takes the key's lock first and the vehicle's second, and
    -- waiting here in the other order could leave each request waiting for the other.
    p_key_wait text, p_lock_wait text,
    -- The booking, as the aggregate made it (the bay is the vehicle's, filled in here).
    p_id uuid, p_vehicle uuid, p_region text, p_destination_bay uuid,
    p_start timestamptz, p_end timestamptz, p_status text, p_currency text, p_price bigint,
    p_breakdown jsonb, p_quote uuid, p_hold_expires timestamptz, p_at timestamptz,
    -- Its history row.
    p_from text, p_event text, p_reason text, p_actor text, p_request_id text, p_details jsonb,
    -- Its outbox rows, in order.
    p_partition_key text, p_event_ids uuid[], p_topics text[], p_payloads jsonb[],
    -- The trace the outbox rows carry on (W3C traceparent, or null).
    p_traceparent text,
    -- The response: rendered before the bay is known, with `p_bay_placeholder` where the bay
    -- id goes; stored under the key (if any) and returned with the bay filled in.
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
        -- A fresh snapshot (VOLATILE): sees what the lock's previous holder committed.
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

    -- The statement `insert_hold` runs, guarded the same way: nothing is inserted when an
    -- expired hold overlaps the window (it must be ended first, as an event of its own).
    with b as (
        insert into bookings (id, region, vehicle_id, user_id, bay_id, destination_bay_id,
                              period, status, currency, price_minor, breakdown, quote_id,
                              hold_expires_at, created_at, updated_at)
        select p_id, v.region, v.id, p_user, v.bay_id, p_destination_bay,
               tstzrange(p_start, p_end, '[)'), p_status, p_currency, p_price, p_breakdown,
               p_quote, p_hold_expires, p_at, p_at
          from vehicles v
         where v.id = p_vehicle and v.region = p_region and v.status = 'active'
           and not exists (select 1 from bookings x
                            where x.vehicle_id = v.id and x.status = 'RESERVING'
                              and x.hold_expires_at <= p_at
                              and x.period && tstzrange(p_start, p_end, '[)'))
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
                      and x.period && tstzrange(p_start, p_end, '[)')) then
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
