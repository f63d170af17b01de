-- Drops `reservation_locks`, the seed's lease table for a PostgreSQL vehicle lock. No release
-- ever read or wrote it: holds carry `hold_expires_at`, and the lock's PostgreSQL fallback is a
-- transaction-scoped advisory lock (origin/src/redis/locks.rs). So the previous release keeps
-- working while and after this runs.
--
-- Dropping the table also drops its foreign key to `vehicles`, which briefly locks `vehicles`
-- against writes; a bounded wait makes a busy moment fail this migration (retry it) instead
-- of queueing every booking behind it.
set local lock_timeout = '5s';
drop table if exists reservation_locks;
