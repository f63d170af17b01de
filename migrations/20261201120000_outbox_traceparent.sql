-- The W3C `traceparent` of the span that wrote an outbox row (issue 15): the relay sends it as
-- the Kafka record's `traceparent` header so a consumer continues the request's trace.
-- Nullable and without a default: the previous release keeps inserting rows without it, and
-- rows of background work (the sweeper) have no trace.
alter table outbox add column traceparent text;
