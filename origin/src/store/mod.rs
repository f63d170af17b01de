//! PostgreSQL repositories: each module owns its tables and their SQL. Nothing outside `store/`
//! writes SQL against these tables (the outbox's statements live with the relay, in
//! `events/outbox.rs`).
//!
//! Every static statement is a compile-checked `sqlx::query!`/`query_as!`/`query_scalar!`,
//! checked against the migrations when `.sqlx/` is prepared (see README, "Queries"). Rows
//! become domain types at this boundary; a value the domain refuses is a decode error
//! ([`corrupt`]), never a string that travels on.
//!
//! Each public function is one statement group and one `DEBUG` span, `db.<module>.<function>`
//! (`#[tracing::instrument]`): exported as a child of the request's span when traces are on,
//! a disabled call site otherwise (`telemetry.rs`).

pub(crate) mod api_keys;
pub(crate) mod blocks;
pub(crate) mod bookings;
pub(crate) mod deny_list;
pub(crate) mod idempotency;
pub(crate) mod pricing;
pub(crate) mod pricing_admin;
pub(crate) mod reads;
pub(crate) mod search;
pub(crate) mod vehicles;
pub(crate) mod waitlist;
pub(crate) mod webhooks;

use sqlx::PgPool;

/// A row value the domain refuses (a check the schema lacks, or a value a newer release
/// wrote): a decode error of that row, which the HTTP layer answers as a 500.
pub(crate) fn corrupt(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

/// Whether PostgreSQL answers (readiness).
pub(crate) async fn ping(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query_scalar!(r#"select 1 as "one!""#)
        .fetch_one(pool)
        .await?;
    Ok(())
}
