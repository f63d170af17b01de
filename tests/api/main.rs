//! One integration test binary (fast to link, shares the harness in `e2e`).

mod atomicity;
mod auth;
mod concurrency;
mod holds;
mod idempotency;
mod lifecycle;
mod openapi;
mod quotes;
mod search;
mod validation;
