-- Maintenance blocks (`/v1/admin/vehicles/{id}/blocks`): windows in which operations take a
-- vehicle out of service. A block occupies its vehicle as a booking does, and the database,
-- not the code path, keeps the two apart, under any concurrency:
--
-- * blocks of one vehicle never overlap each other: an exclusion constraint of their own
--   (`vehicle_blocks_no_overlap`);
-- * a block never overlaps an occupying booking (RESERVING, CONFIRMED, IN_PROGRESS; its
--   occupied range, turnaround buffer included, as `bookings_no_overlap` compares them), in
--   either order of arrival: `vehicle_blocks_over_bookings` refuses a block written over a
--   booking, `bookings_not_blocked` a booking written over a block.
--
-- Why two triggers and not the booking constraint itself: an exclusion constraint covers one
-- table, and a block is not a booking (no customer, no price, no lifecycle); folding blocks
-- into `bookings` would put a kind test in every booking query. Triggers alone would race
-- (each side checks the other's committed rows), so both sides first take the vehicle's
-- write lock: the row of `outbox_sequences` that every booking change of the vehicle already
-- locks before it writes (`bookings_lock_vehicle_sequence`, 20261202071500). Whoever holds it
-- is the only transaction with uncommitted changes to that vehicle's bookings or blocks; the
-- other waits, and its check, a statement run after the wait, sees what the first committed.
-- Both raise SQLSTATE 23P01 (exclusion_violation) named after their rule, so callers answer
-- them as they answer the booking constraint.
--
-- Ending a block keeps its row: a block that had not begun is cancelled (`ended_at`, its
-- window kept for the record), one under way is cut at the end time. Only blocks with no
-- `ended_at` take the vehicle.

create table vehicle_blocks (
    id          uuid primary key,
    region      text not null,
    vehicle_id  uuid not null references vehicles (id),
    period      tstzrange not null
                check (not isempty(period) and not lower_inf(period) and not upper_inf(period)),
    reason      text not null check (length(reason) between 1 and 500),
    created_by  text not null,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    ended_at    timestamptz,
    ended_by    text,
    constraint vehicle_blocks_no_overlap
        exclude using gist (vehicle_id with =, period with &&) where (ended_at is null)
);

-- A vehicle's blocks, newest window first (the list route), and search's "is it blocked".
create index vehicle_blocks_vehicle on vehicle_blocks (vehicle_id, lower(period) desc);

-- The vehicle's write lock (see above), by the key `bookings_lock_vehicle_sequence` uses.
create function lock_vehicle_writes(p_region text, p_vehicle uuid) returns void
language plpgsql as $$
declare
    vehicle text := 'veh_' || lower(p_region) || '_' || replace(p_vehicle::text, '-', '');
begin
    perform 1 from outbox_sequences where partition_key = vehicle for update;
    if not found then
        insert into outbox_sequences (partition_key, last) values (vehicle, 0)
        on conflict (partition_key) do nothing;
        perform 1 from outbox_sequences where partition_key = vehicle for update;
    end if;
end
$$;

-- The bookings' own trigger function now calls it: one body for the lock, whichever table.
create or replace function bookings_lock_vehicle_sequence() returns trigger
language plpgsql as $$
begin
    perform lock_vehicle_writes(new.region, new.vehicle_id);
    return new;
end
$$;

create function vehicle_blocks_lock() returns trigger
language plpgsql as $$
begin
    perform lock_vehicle_writes(new.region, new.vehicle_id);
    return new;
end
$$;

create trigger vehicle_blocks_lock
    before insert or update on vehicle_blocks
    for each row execute function vehicle_blocks_lock();

-- A block written over an occupying booking. Expired holds count, as they do for the booking
-- constraint: the writer ends them first.
create function vehicle_blocks_over_bookings() returns trigger
language plpgsql as $$
declare
    v_booking uuid;
begin
    if new.ended_at is not null then
        return null;
    end if;
    select k.id into v_booking
      from bookings k
     where k.vehicle_id = new.vehicle_id
       and k.status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
       and k.occupied && new.period
     limit 1;
    if found then
        raise exception 'block % of vehicle % overlaps booking %', new.id, new.vehicle_id, v_booking
            using errcode = 'exclusion_violation',
                  constraint = 'vehicle_blocks_over_bookings',
                  table = 'vehicle_blocks';
    end if;
    return null;
end
$$;

create trigger vehicle_blocks_over_bookings
    after insert or update of period, ended_at on vehicle_blocks
    for each row execute function vehicle_blocks_over_bookings();

-- A booking written (or moved, or extended) over an active block. The booking's own trigger
-- `bookings_lock_vehicle_sequence` took the vehicle's write lock before the row changed.
create function bookings_not_blocked() returns trigger
language plpgsql as $$
declare
    v_block uuid;
begin
    if new.status not in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS') then
        return null;
    end if;
    select b.id into v_block
      from vehicle_blocks b
     where b.vehicle_id = new.vehicle_id
       and b.ended_at is null
       and b.period && new.occupied
     limit 1;
    if found then
        raise exception 'booking % of vehicle % overlaps maintenance block %', new.id, new.vehicle_id, v_block
            using errcode = 'exclusion_violation',
                  constraint = 'bookings_not_blocked',
                  table = 'bookings';
    end if;
    return null;
end
$$;

create trigger bookings_not_blocked
    after insert or update of period, turnaround_minutes on bookings
    for each row execute function bookings_not_blocked();

-- The events of a block: `vehicle.blocked` (made, or changed: the payload has the window now)
-- and `vehicle.unblocked` (ended). Added `not valid`, then validated (see 20261204000001).
alter table outbox drop constraint outbox_topic_check;
alter table outbox add constraint outbox_topic_check
    check (topic in ('booking.created', 'booking.cancelled', 'booking.extended',
                     'vehicle.reserved', 'vehicle.released', 'booking.confirmed',
                     'booking.started', 'booking.completed', 'booking.failed',
                     'booking.rescheduled', 'vehicle.blocked', 'vehicle.unblocked')) not valid;
alter table outbox validate constraint outbox_topic_check;
