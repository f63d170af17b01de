//! Pure booking & pricing domain shared by the edge workers and the origin.
//!
//! Everything here is synchronous and deterministic: no clock, no random numbers and no I/O.
//! The current time (`now`) and fresh identifiers are passed in by the caller, which is what
//! lets the same code run inside a Wasm edge worker, inside the origin, and inside exhaustive
//! property tests. Types are built so that an invalid value cannot be constructed
//! ("parse, don't validate"): a [`window::TimeWindow`] is always non-empty and minute-aligned,
//! a [`ids::VehicleId`] always carries its home [`region::Region`], and so on.
//!
//! The booking rules meet in one place, the aggregate [`booking::Booking`]: it takes an action
//! with `now` and the policies and returns the transition to write (next state, history row,
//! events) or the rule it breaks, so the origin's storage and HTTP layers only load, write and
//! translate.

pub mod api_key;
pub mod area;
pub mod auth;
pub mod block;
pub mod booking;
pub mod cancellation;
pub mod deny;
pub mod edge_auth;
pub mod edge_cache;
pub mod ids;
pub mod money;
pub mod multiplier;
pub mod pricing;
pub mod quote_token;
pub mod ratelimit;
pub mod region;
pub mod search;
pub mod state;
pub mod trace;
pub mod vehicle;
pub mod webhook;
pub mod window;

pub use booking::{Booking, BookingError, Transition};
pub use ids::{BookingId, VehicleId};
pub use money::{Currency, Money};
pub use multiplier::Multiplier;
pub use region::Region;
pub use state::{BookingEvent, BookingStatus};
pub use vehicle::VehicleClass;
pub use window::TimeWindow;
