//! The regional origin of the Booking & Pricing API.
//!
//! Layers, outside in (the domain rules themselves live in the pure `domain` crate, shared with
//! the edge):
//! - `http`: routes, extractors, wire types (DTOs), the error mapping, the OpenAPI document;
//! - `app`: the services the routes call (pricing, search, the surge grid);
//! - `store`: PostgreSQL repositories, each owning its tables and their SQL;
//! - `redis`: the Redis link, vehicle locks, the GEO availability index, the caches;
//! - `events`: the transactional outbox's events and the Kafka relay;
//! - `inference`: the AI inference API client and its circuit breakers;
//! - `jobs`: background work, owned and stopped together (sweeper, surge refresh, availability
//!   rebuild, Redis probes, the outbox relay);
//! - `config` (environment), `startup` (serve, migrate, shut down), `state` (shared handles);
//! - `backoff`: the one retry pause schedule (the relay, the inference client);
//! - `telemetry`: logs, and traces over OTLP (W3C trace context in and out).

// What the binary, the tests and the benches use is `pub`; everything else is `pub(crate)`, so
// the dead-code lint sees what nothing calls. This lint keeps it that way.
#![warn(unreachable_pub)]

pub mod app;
pub(crate) mod backoff;
pub mod config;
pub mod events;
pub(crate) mod http;
pub mod inference;
pub(crate) mod jobs;
pub mod redis;
pub mod role;
pub mod startup;
pub(crate) mod state;
pub(crate) mod store;
pub mod telemetry;
pub(crate) mod webhooks;
