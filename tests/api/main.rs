//! One integration test binary (fast to link, shares the harness in `e2e`).

mod atomicity;
mod auth;
mod availability;
mod cache;
mod concurrency;
mod events;
mod holds;
mod idempotency;
mod lifecycle;
mod locks;
mod openapi;
mod quotes;
mod search;
mod validation;
