-- The deny list (origin/src/http/deny_list.rs; rules in domain::deny): networks and users ops
-- refuse at every edge. Each region's origin keeps its own entries and publishes the active
-- ones to the edges' Upstash (origin/src/redis/deny_sync.rs).
--
-- Rows are never deleted: a removal sets `removed_at`/`removed_by`, so the table is also the
-- audit log of who denied what, why, and who lifted it. An entry past `expires_at` stops
-- denying at once (the edges compare the expiry themselves) and is marked removed by
-- `expired` when the same target is added again.
create table deny_list (
    id          uuid        primary key,
    region      text        not null check (region in ('EUW', 'EUN')),
    kind        text        not null check (kind in ('network', 'user')),
    -- Canonical: a network in CIDR form (host bits zero), or the user id.
    value       text        not null,
    -- The field the edges look up: `n:<network>` or `u:<user id>` (domain::deny).
    field       text        not null,
    reason      text        not null check (length(reason) between 1 and 500),
    expires_at  timestamptz,
    created_by  text        not null,
    created_at  timestamptz not null default now(),
    removed_at  timestamptz,
    removed_by  text,
    check ((removed_at is null) = (removed_by is null))
);

-- One active entry per target and region: adding it twice is a conflict, not a duplicate.
create unique index deny_list_active on deny_list (region, field) where removed_at is null;
create index deny_list_log on deny_list (region, created_at desc);

-- Each region's list has a version, moved by every change in the change's transaction: the
-- publisher sends it with the list, and the edges' copy only ever moves forward, so two
-- origins publishing at once cannot put an older list back.
create table deny_list_versions (
    region  text   primary key check (region in ('EUW', 'EUN')),
    version bigint not null
);
