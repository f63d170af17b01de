-- One definition of "this vehicle is taken for (part of) this window", for every reader that
-- asks it: the quote's check (origin/src/store/vehicles.rs::is_occupied), a waitlist join
-- (origin/src/store/waitlist.rs::taken) and the offers the database makes
-- (waitlist_offer_next). Until now each wrote the predicate out, three times, so a new
-- occupancy rule could be added to one and missed in another.
--
-- Taken at `p_at` means, over the window widened by the vehicle's turnaround buffer
-- (booking_occupied):
--   * an occupying booking (RESERVING, CONFIRMED, IN_PROGRESS) overlaps it, a hold counting
--     only until it expires (the next hold ends it);
--   * an active maintenance block overlaps it;
--   * a live waitlist offer overlaps it, unless it is `p_except_user`'s own (null: every
--     offer counts).
-- PL/pgSQL rather than SQL: a SQL function with sub-selects is not inlined, and its body
-- would be planned again on every call; PL/pgSQL keeps the expression's plan for the session.
create function vehicle_taken(p_vehicle uuid, p_start timestamptz, p_end timestamptz,
                              p_at timestamptz, p_except_user text) returns boolean
language plpgsql stable as $$
begin
    return exists(select 1 from bookings k
                   where k.vehicle_id = p_vehicle
                     and k.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
                     and not (k.status = 'RESERVING' and k.hold_expires_at <= p_at)
                     and k.occupied && booking_occupied(p_vehicle, p_start, p_end))
        or exists(select 1 from vehicle_blocks b
                   where b.vehicle_id = p_vehicle and b.ended_at is null
                     and b.period && booking_occupied(p_vehicle, p_start, p_end))
        or exists(select 1 from waitlist_entries o
                   where o.offered_vehicle_id = p_vehicle and o.state = 'offered'
                     and o.offer_until > p_at
                     and (p_except_user is null or o.user_id <> p_except_user)
                     and booking_occupied(p_vehicle, lower(o.period), upper(o.period))
                         && booking_occupied(p_vehicle, p_start, p_end));
end
$$;

-- waitlist_offer_next as in 20261208000001_waitlist.sql, with its three checks replaced by
-- vehicle_taken (the lines after "Part of it is still taken"); the rest is unchanged.
create or replace function waitlist_offer_next(p_region text, p_vehicle uuid) returns integer
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
        -- Part of it is still taken, or offered to someone before them.
        continue when vehicle_taken(p_vehicle, lower(e.period), upper(e.period), now(), null);
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
