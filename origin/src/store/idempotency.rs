//! Idempotency keys: a retried POST gets the first answer, and its effect happens once.
//!
//! Two phases, in ONE transaction that also carries the effect:
//!
//! 1. [`begin`] opens the transaction. With a key it takes
//!    `pg_try_advisory_xact_lock(hash(user, key))` — if another transaction holds it, the first
//!    request with this key is still running: [`IdempotencyError::InProgress`] at once instead
//!    of queueing behind it. Then it looks up a stored response for (user, key). Under READ
//!    COMMITTED each statement sees what committed before it started, and we hold the lock, so
//!    a finished first request is visible. Same fingerprint → [`Begun::Replay`] with the stored
//!    status and body; another fingerprint → [`IdempotencyError::Mismatch`]. Otherwise
//!    [`Begun::Fresh`]: a [`Pending`] request holding the transaction.
//! 2. The handler does its work on [`Pending::conn`] — locks, repository calls — in its own
//!    scope, then [`Pending::finish`] stores the response (with a key, 2xx only) and commits.
//!    Effect and key commit together or not at all: a crash in between leaves neither.
//!    Dropping a `Pending` (an error, a cancelled request) rolls everything back.
//!
//! Only successful (2xx) responses are stored. An error (conflict, validation) rolled back the
//! effect, so a retry re-executes, as Stripe does: a 409 "vehicle taken" may be a 201 later.
//!
//! This module knows statuses only as numbers and bodies only as bytes; making them HTTP
//! responses (and the `idempotent-replayed` header) is `http::idempotent`'s business.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// Why [`begin`] or [`Pending::finish`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdempotencyError {
    /// The same key is being processed by another request right now.
    #[error("a request with this Idempotency-Key is still in progress")]
    InProgress,
    /// The key was used before with another request.
    #[error("this Idempotency-Key was used with a different request")]
    Mismatch,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What identifies a request for its key: a hash of the method, the path and the body's
/// canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<u8>);

impl Fingerprint {
    /// `sha256(method ‖ 0 ‖ path ‖ 0 ‖ json(body))` — the bytes stored as `request_hash`, so
    /// they must never change for the same request, or retries across a deploy stop replaying.
    pub(crate) fn new(method: &str, path: &str, body: &impl serde::Serialize) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update([0]);
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(body).unwrap_or_default());
        Fingerprint(hasher.finalize().to_vec())
    }

    /// The stored form.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A stored response: what the first request with this key answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    /// Its HTTP status.
    pub status: u16,
    /// Its body (JSON).
    pub body: Vec<u8>,
}

/// The outcome of [`begin`].
#[derive(Debug)]
pub(crate) enum Begun {
    /// The key was used before with this very request: answer what it answered.
    Replay(Saved),
    /// Nothing stored: do the work on the pending transaction, then [`Pending::finish`] it.
    Fresh(Pending),
}

/// A request in progress: its transaction (holding the key's advisory lock, if any) and what
/// [`Pending::finish`] needs to store its response.
#[derive(Debug)]
pub(crate) struct Pending {
    tx: Transaction<'static, Postgres>,
    key: Option<Key>,
}

#[derive(Debug)]
struct Key {
    user: String,
    key: String,
    fingerprint: Fingerprint,
}

/// A key the one-statement hold (`store::bookings::at_once`) claims, looks up and stores
/// inside its own statement: the same lock, lookup and row as [`begin`] and
/// [`Pending::finish`], in the SQL function `hold_booking`.
#[derive(Debug)]
pub(crate) struct KeyClaim<'a> {
    /// The caller (keys are per user).
    pub user: &'a str,
    /// The `Idempotency-Key`.
    pub key: &'a str,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
}

impl KeyClaim<'_> {
    /// The key's advisory lock id, the one [`begin`] takes.
    pub(crate) fn lock_id(&self) -> i64 {
        lock_key(self.user, self.key)
    }
}

fn lock_key(user: &str, key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(user.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Phase one: opens the request's transaction and, with a key, replays or refuses a request
/// already seen (see the module docs). Without a key every request is fresh.
#[tracing::instrument(level = "debug", name = "db.idempotency.begin", skip_all)]
pub(crate) async fn begin(
    pool: &PgPool,
    user: &str,
    key: Option<&str>,
    fingerprint: Fingerprint,
) -> Result<Begun, IdempotencyError> {
    let mut tx = pool.begin().await?;
    let Some(key) = key else {
        return Ok(Begun::Fresh(Pending { tx, key: None }));
    };
    let locked = sqlx::query_scalar!(
        r#"select pg_try_advisory_xact_lock($1) as "locked!""#,
        lock_key(user, key)
    )
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Err(IdempotencyError::InProgress);
    }
    let existing = sqlx::query!(
        "select request_hash, response_status, response_body
           from idempotency_keys where user_id = $1 and key = $2",
        user,
        key
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(saved) = existing {
        // End the transaction before answering: a dropped sqlx transaction rolls back only
        // when its connection is next used, so the key's advisory lock would outlive the
        // answer and a client's immediate next request with the key would be refused as
        // "in progress" (seen under load in idempotency.rs's tests).
        tx.rollback().await?;
        if saved.request_hash != fingerprint.as_bytes() {
            return Err(IdempotencyError::Mismatch);
        }
        return Ok(Begun::Replay(Saved {
            status: u16::try_from(saved.response_status).unwrap_or(200),
            body: saved.response_body,
        }));
    }
    Ok(Begun::Fresh(Pending {
        tx,
        key: Some(Key {
            user: user.to_owned(),
            key: key.to_owned(),
            fingerprint,
        }),
    }))
}

impl Pending {
    /// The transaction's connection: every write of the request goes through it.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Whether [`Pending::finish`] will store the response, so its body must exist before the
    /// commit. Without a key the body can be rendered after it.
    pub(crate) fn stores_response(&self) -> bool {
        self.key.is_some()
    }

    /// Phase two: stores the response under the key (2xx only), then commits the effect and
    /// the key together.
    #[tracing::instrument(level = "debug", name = "db.idempotency.finish", skip_all)]
    pub(crate) async fn finish(mut self, status: u16, body: &[u8]) -> Result<(), IdempotencyError> {
        if let Some(key) = &self.key {
            if (200..300).contains(&status) {
                sqlx::query!(
                    "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body)
                     values ($1, $2, $3, $4, $5)",
                    key.user,
                    key.key,
                    key.fingerprint.as_bytes(),
                    i16::try_from(status).unwrap_or(200),
                    body,
                )
                .execute(&mut *self.tx)
                .await?;
            }
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Commits a request that has no key ([`Pending::stores_response`] is false), so its
    /// response can be rendered after the commit. With a key, use [`Pending::finish`]: a
    /// response not stored would make a retry run the effect again.
    #[tracing::instrument(level = "debug", name = "db.idempotency.commit", skip_all)]
    pub(crate) async fn commit(self) -> Result<(), IdempotencyError> {
        debug_assert!(
            self.key.is_none(),
            "a keyed request must store its response"
        );
        self.tx.commit().await?;
        Ok(())
    }

    /// Rolls the effect back now (rather than when the connection is next used), so locks
    /// released after it are released after the rollback.
    #[tracing::instrument(level = "debug", name = "db.idempotency.abort", skip_all)]
    pub(crate) async fn abort(self) {
        if let Err(e) = self.tx.rollback().await {
            tracing::debug!(error = %e, "rollback; the connection discards the transaction");
        }
    }
}

/// Deletes keys older than `max_age` (called by the sweeper): retries are expected within
/// hours, not weeks.
#[tracing::instrument(level = "debug", name = "db.idempotency.purge_older_than", skip_all)]
pub(crate) async fn purge_older_than(
    pool: &PgPool,
    max_age: chrono::Duration,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from idempotency_keys where created_at < now() - $1::interval",
        sqlx::postgres::types::PgInterval::try_from(max_age).map_err(sqlx::Error::Encode)?
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
