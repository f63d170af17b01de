//! Application services: bookings, pricing, search and the surge grid, between the HTTP layer
//! and the adapters (PostgreSQL, Redis, the inference API).

pub mod booking;
pub mod pricing;
pub mod search;
pub mod surge;
