-- Consumers of the outbox topics (origin/src/events/consumer.rs) remember what they processed:
-- one row per (consumer group, event id), written in the same transaction as the handler's own
-- writes, so an event redelivered after a crash (offsets are committed after processing) is
-- seen as a repeat and skipped. Rows older than the broker's retention are purged by the
-- sweeper; a redelivery can only come from the uncommitted tail, seconds old.
create table processed_events (
    consumer     text        not null,
    event_id     uuid        not null,
    topic        text        not null,
    processed_at timestamptz not null default now(),
    primary key (consumer, event_id)
);

create index processed_events_age on processed_events (processed_at);
