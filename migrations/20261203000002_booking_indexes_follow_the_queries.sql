-- The bookings indexes, matched to the queries that exist (issue 17: less PostgreSQL work per
-- hold). Every hold inserts one entry into each index of `bookings`, and GiST inserts are the
-- expensive kind:
-- - `bookings_vehicle_period` (GiST on vehicle_id, period) served the "is this vehicle taken
--   in this window" questions. Since turnaround buffers those ask about `occupied`, which the
--   exclusion constraint `bookings_no_overlap` already indexes (GiST on vehicle_id, occupied):
--   the old index serves no query and is dropped.
-- - `bookings_bay_period` (GiST on bay_id, period) served no query: the one per-bay question,
--   the surge grid's bay load (`store/vehicles.rs::bay_loads`), asks for a bay's bookings made
--   in the last hour. A B-tree on (bay_id, created_at) answers that (the seed's "bay_id +
--   time") and costs a B-tree insert per hold instead of a GiST one.
drop index bookings_vehicle_period;
drop index bookings_bay_period;
create index bookings_bay_created on bookings (bay_id, created_at);
