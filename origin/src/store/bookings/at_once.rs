//! A hold in one round trip: the SQL function `hold_booking` (migration
//! `20261202000001_hold_in_one_statement.sql`) called in autocommit, so the statement is the
//! transaction.
//!
//! # Why
//!
//! A hold used to cost eight PostgreSQL round trips (pool check, `begin`, the key's lock, the
//! key's lookup, the insert, the key's insert, `commit`, pool check) and two Redis ones (the
//! vehicle lock and its release); on the shared 2-core box that bounded holds through the API
//! at 0.29 × the raw SQL ceiling. Every step still happens, in the same order and in one
//! transaction — PostgreSQL runs them back to back inside the function:
//!
//! 1. with a key: the key's advisory lock (waiting at most `LOCK_WAIT_MS` — not at all under
//!    a Redis vehicle lock, see [`Waits`] — then `in_progress`), then its lookup — `replay` or `mismatch` when it was used before. The
//!    function is VOLATILE, so the lookup takes a fresh snapshot *after* the wait and sees what
//!    the request we waited for committed (one CTE could not: it sees the calling statement's
//!    snapshot; `tests/api/idempotency.rs` plants exactly that race);
//! 2. the vehicle's advisory lock, when the caller asks for it (the PostgreSQL form of the
//!    vehicle lock, see `redis/locks.rs`), or `busy` after `LOCK_WAIT_MS`;
//! 3. `insert_hold`'s statement, guarded the same way (an expired hold in the way hands the
//!    request back to the multi-statement path, which ends it through the aggregate);
//! 4. with a key: the response, stored with the effect.
//!
//! # The response before the bay
//!
//! The stored response must commit with the effect, but the booking's bay is the vehicle's,
//! read by the insert. So the handler renders the response before the call with a random
//! placeholder UUID as the bay, and the function replaces that placeholder with the bay's
//! canonical text (`uuid::text`, the hyphenated lower case serde writes) before storing and
//! returning it. Every other field is known before the insert: the aggregate made the booking,
//! its times are whole minutes (windows) or microseconds (the handler truncates `now`, as
//! PostgreSQL stores it). `tests/api/holds.rs` checks the answer against the booking read back.

use domain::booking::Transition;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Actor, OutboxRows, StoreError};
use crate::store::idempotency::{KeyClaim, Saved};

/// Which vehicle lock the statement takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementLock {
    /// None: the caller holds the Redis lock, or locks are off.
    None,
    /// The vehicle's advisory lock `(namespace, hashtext(vehicle id))`.
    Advisory { namespace: i32 },
}

/// How long the statement waits for the key's lock and for the vehicle's (zero: one try).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// Zero when the caller holds the vehicle's Redis lock: the multi-statement path takes
    /// the key's lock before the vehicle's, and waiting for them in the other order could
    /// leave two requests waiting for each other.
    pub key: std::time::Duration,
    pub vehicle: std::time::Duration,
}

/// The response the statement stores and returns: the body with `placeholder` where the bay
/// id goes.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub body: String,
    pub placeholder: Uuid,
}

/// What the statement did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The hold is written; the response (bay filled in) is stored under the key, if any.
    Created { body: Vec<u8>, bay_id: Uuid },
    /// The key was used before with this request: its stored answer.
    Replay(Saved),
    /// The key was used before with another request.
    Mismatch,
    /// Another request with the key still ran after `LOCK_WAIT_MS`.
    InProgress,
    /// Another hold held the vehicle's lock after `LOCK_WAIT_MS`.
    Busy,
    /// The vehicle is missing, not active, or not in the booking's region.
    Unavailable,
    /// An expired hold overlaps the window: nothing was written; end it first.
    ExpiredInTheWay,
}

/// `lock_timeout` for a wait: `0` asks the function for one try.
fn lock_wait(wait: std::time::Duration) -> String {
    match wait.as_millis() {
        0 => "0".to_owned(),
        ms => format!("{ms}ms"),
    }
}

/// Runs the hold `hold` in one statement (see the module docs).
#[tracing::instrument(level = "debug", name = "db.bookings.hold_at_once", skip_all)]
pub(crate) async fn hold(
    pool: &PgPool,
    hold: &Transition,
    actor: Actor<'_>,
    key: Option<&KeyClaim<'_>>,
    lock: StatementLock,
    waits: Waits,
    response: &Response,
) -> Result<Outcome, StoreError> {
    let b = &hold.booking;
    let outbox = OutboxRows::of(hold)?;
    let breakdown = serde_json::to_value(&b.breakdown)?;
    let namespace = match lock {
        StatementLock::None => None,
        StatementLock::Advisory { namespace } => Some(namespace),
    };
    let row = sqlx::query!(
        r#"select outcome as "outcome!", stored_status, body, bay_id
             from hold_booking($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                               $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28,
                               $29, $30, $31, $32, $33, $34)"#,
        b.user_id,
        key.map(KeyClaim::lock_id),
        key.map(|k| k.key),
        key.map(|k| k.fingerprint.as_bytes()),
        namespace,
        lock_wait(waits.key),
        lock_wait(waits.vehicle),
        b.id.uuid,
        b.vehicle_id.uuid,
        b.region().code(),
        b.destination_bay_id,
        b.window.start(),
        b.window.end(),
        b.status.as_str(),
        b.price.currency.code(),
        b.price.minor,
        breakdown,
        b.quote_id,
        b.hold_expires_at,
        hold.at,
        hold.from.as_str(),
        hold.record.event,
        hold.record.reason,
        actor.id,
        actor.request_id,
        hold.record.details,
        b.vehicle_id.to_string(),
        &outbox.ids,
        &outbox.topics,
        &outbox.payloads,
        crate::telemetry::current_traceparent(actor.traceparent),
        i16::try_from(response.status).unwrap_or(201),
        response.body,
        response.placeholder.to_string(),
    )
    .fetch_one(pool)
    .await?;
    let missing = |what: &str| StoreError::Corrupt {
        id: b.id.uuid,
        detail: format!("hold_booking said {} without {what}", row.outcome),
    };
    // The vehicle lock's counter, as the other lock paths keep it (`redis/locks.rs`): the
    // statement reached the lock unless the key answered first.
    if namespace.is_some() {
        let outcome = match row.outcome.as_str() {
            "busy" => Some("busy"),
            "created" | "unavailable" | "expired_in_the_way" => Some("acquired"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            metrics::counter!("vehicle_locks_total", "backend" => "postgres", "outcome" => outcome)
                .increment(1);
        }
    }
    Ok(match row.outcome.as_str() {
        "created" => Outcome::Created {
            body: row.body.clone().ok_or_else(|| missing("a body"))?,
            bay_id: row.bay_id.ok_or_else(|| missing("a bay"))?,
        },
        "replay" => Outcome::Replay(Saved {
            status: row
                .stored_status
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(200),
            body: row.body.clone().ok_or_else(|| missing("a body"))?,
        }),
        "mismatch" => Outcome::Mismatch,
        "in_progress" => Outcome::InProgress,
        "busy" => Outcome::Busy,
        "unavailable" => Outcome::Unavailable,
        "expired_in_the_way" => Outcome::ExpiredInTheWay,
        other => {
            return Err(StoreError::Corrupt {
                id: b.id.uuid,
                detail: format!("hold_booking answered {other:?}"),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_wait_is_one_try_and_others_are_milliseconds() {
        assert_eq!(lock_wait(std::time::Duration::ZERO), "0");
        assert_eq!(lock_wait(std::time::Duration::from_millis(50)), "50ms");
    }
}
