//! Application services: bookings, pricing, search and the surge grid, between the HTTP layer
//! and the adapters (PostgreSQL, Redis, the inference API).

pub(crate) mod blocks;
pub(crate) mod booking;
pub mod pricing;
pub(crate) mod search;
pub mod surge;
