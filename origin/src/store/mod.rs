//! PostgreSQL repositories: each module owns its tables and their SQL. Nothing outside `store/`
//! writes SQL against these tables.

pub mod bookings;
pub mod idempotency;
