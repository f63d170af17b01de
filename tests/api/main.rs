//! One integration test binary (fast to link, shares the harness in `e2e`).

mod admin_pricing;
mod atomicity;
mod auth;
mod authz;
mod availability;
mod cache;
mod concurrency;
mod events;
mod holds;
mod idempotency;
mod inference_fake;
mod inference_reference;
mod jwt_attacks;
mod lifecycle;
mod limits;
mod loadgen_smoke;
mod locks;
mod log_secrets;
mod openapi;
mod pricing_orchestrator;
mod pricing_validation;
mod quotes;
mod search;
mod shedding;
mod surge_grid;
mod validation;
