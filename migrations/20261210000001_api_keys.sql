-- API keys for apps (origin/src/http/api_keys.rs; rules in domain::api_key): each region's
-- origin issues and keeps its keys and publishes them to the edges' Upstash
-- (origin/src/redis/key_sync.rs), which check every presented key and apply its plan.
--
-- The secret itself is never stored: it is shown once, in the answer that made the key. The
-- row keeps its SHA-256 (the edges find a key by it) and its first characters (`bpk_euw_AbCd`,
-- so ops can tell keys apart). Rows are never deleted: a revocation sets
-- `revoked_at`/`revoked_by`, so the table is also the audit log of who issued and revoked what.
-- The bounds match domain::api_key (`Plan::new`, `MAX_ORIGINS`).
create table api_keys (
    id              uuid        primary key,
    region          text        not null check (region in ('EUW', 'EUN')),
    name            text        not null check (length(name) between 1 and 100),
    -- Lower-case hex SHA-256 of the secret (domain::api_key::secret_hash).
    secret_hash     text        not null unique check (secret_hash ~ '^[0-9a-f]{64}$'),
    secret_prefix   text        not null check (length(secret_prefix) between 1 and 16),
    per_minute      integer     not null check (per_minute between 1 and 1000000),
    per_day         integer     not null check (per_day >= per_minute and per_day <= 1000000000),
    burst_secs      integer     not null default 0 check (burst_secs between 0 and 60),
    -- Canonical origins (domain::api_key::parse_origin); empty: any.
    allowed_origins text[]      not null default '{}'
                                check (cardinality(allowed_origins) <= 16
                                       and array_position(allowed_origins, null) is null),
    created_at      timestamptz not null default now(),
    created_by      text        not null,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    revoked_by      text,
    check ((revoked_at is null) = (revoked_by is null))
);

create index api_keys_log on api_keys (region, created_at desc);

-- Each region's key set has a version, moved by every change in the change's transaction: the
-- publisher sends it with the set, and the edges' copy only ever moves forward, so two origins
-- publishing at once cannot put an older set back (a revoked key live again).
create table api_key_versions (
    region  text   primary key check (region in ('EUW', 'EUN')),
    version bigint not null
);
