-- A gapless per-vehicle event sequence, in commit order: `outbox.sequence`.
--
-- Why: the outbox id is drawn from a sequence when a row is inserted, not when it commits, so
-- two independent transactions on one vehicle (the sweeper ending a hold, a new hold on
-- another window) could commit in the opposite order of their ids, and a consumer had no way
-- to tell "later" from "committed later" nor to notice a missing event. Now every outbox row
-- gets the next number of its partition key (the vehicle's public id), taken under a row lock
-- on `outbox_sequences` that lasts until the transaction ends: a second transaction writing
-- events of the same vehicle waits for the first to commit (or roll back, which gives its
-- numbers back) before it gets its own. So per vehicle, sequence order is commit order and the
-- numbers have no holes; the relay publishes in that order and consumers can both order and
-- detect gaps (README, "Events").
--
-- Triggers, not application code, so every write path numbers its events, including the ones
-- that do not exist yet, and the previous release (which inserts outbox rows without a
-- sequence) keeps working during a rollout.
--
-- Lock order: the vehicle's sequence row is locked *before* any of its booking rows changes
-- (`bookings_lock_vehicle_sequence`), not only when the outbox row is written. Without it a
-- transaction that has written events (say a hold that first ended an expired hold in its
-- way) could wait on the exclusion constraint for a booking another transaction just changed,
-- while that one waits for the sequence row: a deadlock. With it, whoever holds the sequence
-- row is the only transaction with uncommitted changes to that vehicle's bookings, so the
-- constraint never makes it wait on one that waits for it. The sweeper ends each hold in a
-- transaction of its own (store/bookings), so it never holds two vehicles' rows at once.
--
-- Compatibility: the old release's inserts are numbered by the trigger; its relay keeps
-- publishing in id order with the id in the `sequence` header until it is replaced (README).
-- The backfill rewrites `outbox` under this migration's lock; a bounded wait makes a busy
-- moment fail the migration (retry it) instead of queueing every booking behind it.
set local lock_timeout = '5s';

create table outbox_sequences (
    -- The outbox rows' partition key: the vehicle's public id (`veh_euw_<hex>`).
    partition_key  text primary key,
    -- The last number given out (0: the row exists, no event yet).
    last           bigint not null check (last >= 0)
);

alter table outbox add column sequence bigint;

-- Existing rows: numbered per vehicle in id order, the order the relay published them in.
update outbox o
   set sequence = n.sequence
  from (select id, row_number() over (partition by partition_key order by id) as sequence
          from outbox) n
 where o.id = n.id;

insert into outbox_sequences (partition_key, last)
select partition_key, max(sequence) from outbox group by partition_key;

alter table outbox alter column sequence set not null;
-- Uniqueness is the gapless numbering's other half, and the relay's per-vehicle order reads it.
create unique index outbox_vehicle_sequence on outbox (partition_key, sequence);

-- Numbers each new outbox row; the row lock on `outbox_sequences` lasts until commit.
create function outbox_assign_sequence() returns trigger
language plpgsql as $$
begin
    insert into outbox_sequences as s (partition_key, last)
    values (new.partition_key, 1)
    on conflict (partition_key) do update set last = s.last + 1
    returning s.last into new.sequence;
    return new;
end
$$;

create trigger outbox_sequence
    before insert on outbox
    for each row execute function outbox_assign_sequence();

-- Locks the vehicle's sequence row before a booking of it changes (see "Lock order" above).
-- The key is the vehicle's public id as the origin writes it (`domain::VehicleId`'s display:
-- `veh_<region, lower case>_<uuid without dashes>`).
create function bookings_lock_vehicle_sequence() returns trigger
language plpgsql as $$
declare
    vehicle text := 'veh_' || lower(new.region) || '_' || replace(new.vehicle_id::text, '-', '');
begin
    perform 1 from outbox_sequences where partition_key = vehicle for update;
    if not found then
        insert into outbox_sequences (partition_key, last) values (vehicle, 0)
        on conflict (partition_key) do nothing;
        perform 1 from outbox_sequences where partition_key = vehicle for update;
    end if;
    return new;
end
$$;

create trigger bookings_lock_vehicle_sequence
    before insert or update on bookings
    for each row execute function bookings_lock_vehicle_sequence();
