-- The waitlist (`/v1/waitlist`): customers wait for a window of a vehicle that is taken (or of
-- any vehicle of a class at a bay, when every one of them is taken); when a
-- booking releasing part of it is cancelled, expires, fails or moves (or a maintenance block
-- ends), the first waiter whose whole window is now free gets an **offer**: for `offer_secs`
-- (`WAITLIST_OFFER_SECS`, 2 minutes by default) only that user can book any part of it, and a
-- `waitlist.available` event says so. An offer the waiter lets pass goes to the next waiter
-- (the sweeper notices within a tick); an entry whose window has begun expires.
--
-- Like blocks, all of it runs under the vehicle's write lock (`lock_vehicle_writes`), which
-- every booking and block change of the vehicle takes before its row changes. So, under any
-- concurrency:
--
-- * the offer is made in the very transaction that frees the window (a trigger on `bookings`
--   and `vehicle_blocks`): no other hold can slip in between the release and the offer;
-- * a booking written over a live offer of another user is refused by the database
--   (`bookings_waitlist_offer`, SQLSTATE 23P01 named after its rule, answered 409 like the
--   other occupancy rules), whatever path wrote it;
-- * the waiter's own booking over the window takes the offer (`booked`).
--
-- Order: FIFO by the time of joining. A waiter is passed over (and stays first in line) while
-- part of their window is still taken or offered to someone earlier; a later waiter for a
-- window that is wholly free may be offered meanwhile, since nobody before them wants it.

create table waitlist_entries (
    id                  uuid primary key,
    region              text not null,
    -- What the waiter wants: one vehicle, or any vehicle of `class` parked at `bay_id`.
    vehicle_id          uuid references vehicles (id),
    class               text,
    bay_id              uuid references parking_bays (id),
    -- The vehicle an offer is for (the entry's own, or the class's vehicle that was freed).
    offered_vehicle_id  uuid references vehicles (id),
    user_id             text not null,
    period              tstzrange not null
                        check (not isempty(period) and not lower_inf(period) and not upper_inf(period)),
    -- waiting: in line; offered: the window is theirs until `offer_until`; booked: they booked
    -- part of it; lapsed: the offer passed unused; expired: the window began while waiting;
    -- withdrawn: the user left the line.
    state               text not null
                        check (state in ('waiting', 'offered', 'booked', 'lapsed', 'expired', 'withdrawn')),
    offer_secs          integer not null check (offer_secs between 1 and 3600),
    offered_at          timestamptz,
    offer_until         timestamptz,
    created_at          timestamptz not null,
    updated_at          timestamptz not null,
    check ((vehicle_id is not null and class is null and bay_id is null)
           or (vehicle_id is null and class is not null and bay_id is not null)),
    check (state not in ('offered', 'lapsed')
           or (offer_until is not null and offered_vehicle_id is not null))
);

-- The line of a vehicle, and of a class at a bay, in order (offers, triggers, positions).
create index waitlist_line on waitlist_entries (vehicle_id, created_at, id)
    where state in ('waiting', 'offered');
create index waitlist_class_line on waitlist_entries (region, class, bay_id, created_at, id)
    where state in ('waiting', 'offered') and vehicle_id is null;
-- Live offers of a vehicle (the booking triggers).
create index waitlist_offers on waitlist_entries (offered_vehicle_id) where state = 'offered';
-- A user's entries, newest first.
create index waitlist_user on waitlist_entries (user_id, created_at desc);
-- Offers whose time is up, waits whose window began (the sweeper).
create index waitlist_offers_due on waitlist_entries (offer_until) where state = 'offered';
create index waitlist_starts on waitlist_entries (lower(period)) where state = 'waiting';

-- The event topic.
alter table outbox drop constraint outbox_topic_check;
alter table outbox add constraint outbox_topic_check
    check (topic in ('booking.created', 'booking.cancelled', 'booking.extended',
                     'vehicle.reserved', 'vehicle.released', 'booking.confirmed',
                     'booking.started', 'booking.completed', 'booking.failed',
                     'booking.rescheduled', 'vehicle.blocked', 'vehicle.unblocked',
                     'waitlist.available')) not valid;
alter table outbox validate constraint outbox_topic_check;

-- RFC 3339 in UTC with a `Z`, as the origin's own events write times.
create function rfc3339(p_at timestamptz) returns text
language sql immutable as $$
    select to_char(p_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- Offers the vehicle's free windows to the first waiters in line for it: those waiting for
-- the vehicle itself and those waiting for any vehicle of its class at its bay, in the order
-- they joined. Returns the number of offers made. The caller holds the vehicle's write lock
-- (every caller below does).
create function waitlist_offer_next(p_region text, p_vehicle uuid) returns integer
language plpgsql as $$
declare
    e        record;
    offered  integer := 0;
    vehicle  text := 'veh_' || lower(p_region) || '_' || replace(p_vehicle::text, '-', '');
    v_class  text;
    v_bay    uuid;
    v_until  timestamptz;
    v_event  uuid;
begin
    select v.class, v.bay_id into v_class, v_bay
      from vehicles v where v.id = p_vehicle and v.status = 'active';
    if not found then
        return 0;
    end if;
    for e in select w.id, w.user_id, w.period, w.offer_secs, w.region, w.class, w.bay_id
               from waitlist_entries w
              where w.state = 'waiting' and lower(w.period) > now()
                and (w.vehicle_id = p_vehicle
                     or (w.vehicle_id is null and w.region = p_region
                         and w.class = v_class and w.bay_id = v_bay))
              order by w.created_at, w.id
    loop
        -- Part of the window is offered to someone before them.
        continue when exists (
            select 1 from waitlist_entries o
             where o.offered_vehicle_id = p_vehicle and o.state = 'offered' and o.offer_until > now()
               and booking_occupied(p_vehicle, lower(o.period), upper(o.period))
                   && booking_occupied(p_vehicle, lower(e.period), upper(e.period)));
        -- Part of it is still taken (the predicates of `is_occupied`: an expired hold does not
        -- count, the next hold ends it).
        continue when exists (
            select 1 from bookings k
             where k.vehicle_id = p_vehicle and k.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
               and not (k.status = 'RESERVING' and k.hold_expires_at <= now())
               and k.occupied && booking_occupied(p_vehicle, lower(e.period), upper(e.period)));
        continue when exists (
            select 1 from vehicle_blocks b
             where b.vehicle_id = p_vehicle and b.ended_at is null
               and b.period && booking_occupied(p_vehicle, lower(e.period), upper(e.period)));
        v_until := now() + make_interval(secs => e.offer_secs);
        -- Still waiting (the sweeper may have expired it a moment ago).
        update waitlist_entries
           set state = 'offered', offered_vehicle_id = p_vehicle, offered_at = now(),
               offer_until = v_until, updated_at = now()
         where id = e.id and state = 'waiting';
        continue when not found;
        v_event := gen_random_uuid();
        insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
        values (v_event, 'waitlist.available', vehicle, e.id, jsonb_build_object(
            'event_id', v_event,
            'type', 'waitlist.available',
            'occurred_at', rfc3339(now()),
            'region', e.region,
            'waitlist', jsonb_strip_nulls(jsonb_build_object(
                'id', 'wlt_' || lower(e.region) || '_' || replace(e.id::text, '-', ''),
                'user_id', e.user_id,
                'vehicle_id', vehicle,
                'class', e.class,
                'bay_id', e.bay_id,
                'start', rfc3339(lower(e.period)),
                'end', rfc3339(upper(e.period)),
                'offer_until', rfc3339(v_until)))));
        offered := offered + 1;
    end loop;
    return offered;
end
$$;

-- A booking that stops occupying (cancelled, failed, expired, completed) or occupies less
-- (moved, shortened): its vehicle's line may move. The booking's before-trigger took the lock.
create function bookings_release_to_waitlist() returns trigger
language plpgsql as $$
begin
    if old.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
       and (new.status not in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
            or not (new.occupied @> old.occupied)) then
        perform waitlist_offer_next(new.region, new.vehicle_id);
    end if;
    return null;
end
$$;

create trigger bookings_release_to_waitlist
    after update of status, period, turnaround_minutes on bookings
    for each row execute function bookings_release_to_waitlist();

-- A block ended or shrunk. Its before-trigger (`vehicle_blocks_lock`) took the lock.
create function vehicle_blocks_release_to_waitlist() returns trigger
language plpgsql as $$
begin
    if old.ended_at is null and (new.ended_at is not null or not (new.period @> old.period)) then
        perform waitlist_offer_next(new.region, new.vehicle_id);
    end if;
    return null;
end
$$;

create trigger vehicle_blocks_release_to_waitlist
    after update of period, ended_at on vehicle_blocks
    for each row execute function vehicle_blocks_release_to_waitlist();

-- A booking written (or moved) over a window offered to another user is refused; the
-- waiter's own booking over their window takes the offer (and ends their other waits for that
-- vehicle's window).
create function bookings_waitlist_offer() returns trigger
language plpgsql as $$
declare
    v_entry uuid;
    v_until timestamptz;
begin
    -- The common case, a vehicle nobody waits for, costs a probe of two small indexes.
    if new.status not in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
       or not exists (select 1 from waitlist_entries w
                       where (w.offered_vehicle_id = new.vehicle_id and w.state = 'offered')
                          or (w.vehicle_id = new.vehicle_id and w.state = 'waiting')) then
        return null;
    end if;
    select w.id, w.offer_until into v_entry, v_until
      from waitlist_entries w
     where w.offered_vehicle_id = new.vehicle_id and w.state = 'offered' and w.offer_until > now()
       and w.user_id <> new.user_id
       and booking_occupied(new.vehicle_id, lower(w.period), upper(w.period)) && new.occupied
     order by w.offer_until
     limit 1;
    if found then
        raise exception 'booking % of vehicle % overlaps a window offered to waitlist entry % until %',
                        new.id, new.vehicle_id, v_entry, rfc3339(v_until)
            using errcode = 'exclusion_violation',
                  constraint = 'bookings_waitlist_offer',
                  table = 'bookings',
                  detail = rfc3339(v_until);
    end if;
    update waitlist_entries w
       set state = 'booked', updated_at = now()
     where w.user_id = new.user_id and w.period && new.period
       and ((w.state = 'offered' and w.offered_vehicle_id = new.vehicle_id)
            or (w.state = 'waiting' and w.vehicle_id = new.vehicle_id));
    return null;
end
$$;

create trigger bookings_waitlist_offer
    after insert or update of period, turnaround_minutes on bookings
    for each row execute function bookings_waitlist_offer();

-- The sweeper's step for one vehicle: its offers whose time is up lapse, waits for it whose
-- window has begun expire, and the line moves on. Returns the offers made. (Waits for a class
-- at a bay expire by the sweeper's own statement: they hold no vehicle.)
create function waitlist_advance(p_region text, p_vehicle uuid) returns integer
language plpgsql as $$
begin
    perform lock_vehicle_writes(p_region, p_vehicle);
    update waitlist_entries
       set state = 'lapsed', updated_at = now()
     where offered_vehicle_id = p_vehicle and state = 'offered' and offer_until <= now();
    update waitlist_entries
       set state = 'expired', updated_at = now()
     where vehicle_id = p_vehicle and state = 'waiting' and lower(period) <= now();
    return waitlist_offer_next(p_region, p_vehicle);
end
$$;
