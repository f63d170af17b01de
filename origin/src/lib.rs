//! The regional origin of the Booking & Pricing API.
//!
//! Layout: `config` (environment), `startup` (serve, migrate, shut down), `state` (the shared
//! handles), `http` (routes and wire types), and the adapters that own their SQL: `bookings`
//! (the write path), `pricing`, `search`, `idempotency`, `events` (the outbox). The domain
//! rules themselves live in the pure `domain` crate, shared with the edge.

pub mod auth;
pub mod availability;
pub mod bookings;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod demo;
pub mod edge_gen;
pub mod error;
pub mod events;
pub mod extract;
pub mod http;
pub mod idempotency;
pub mod inference;
pub mod locks;
pub mod metrics;
pub mod pricing;
pub mod redis_link;
pub mod relay;
pub mod search;
pub mod startup;
pub mod state;
pub mod surge;
pub mod sweeper;

/// Sets up structured logging (JSON in production, pretty locally); `RUST_LOG` filters.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
