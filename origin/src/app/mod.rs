//! Application services: pricing, search and the surge grid, between the HTTP layer and the
//! adapters (PostgreSQL, Redis, the inference API).

pub mod pricing;
pub mod search;
pub mod surge;
