//! Idempotency keys: a retried POST gets the first answer, and its effect happens once.
//!
//! How it works, inside ONE transaction that also carries the effect:
//! 1. `pg_try_advisory_xact_lock(hash(user, key))` — if another transaction holds it, the first
//!    request with this key is still running: answer 409 at once instead of queueing behind it.
//! 2. Look up a stored response for (user, key). Under READ COMMITTED each statement sees what
//!    committed before it started, and we hold the lock, so a finished first request is visible.
//!    Same request hash → replay the stored status and body; another hash → 422.
//! 3. Otherwise run the effect and store its response in the same transaction, then commit.
//!    Effect and key commit together or not at all: a crash in between leaves neither.
//!
//! Only successful (2xx) responses are stored. An error (conflict, validation) rolled back the
//! effect, so a retry re-executes, as Stripe does: a 409 "vehicle taken" may be a 201 later.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::http::error::{ApiError, ApiResult};

/// A response ready to send and to store: status and JSON body.
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// True when this response is a replay of a stored one.
    pub replayed: bool,
}

impl Stored {
    /// A fresh JSON response.
    pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> ApiResult<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("encode response")))?;
        Ok(Stored {
            status,
            body,
            replayed: false,
        })
    }
}

impl IntoResponse for Stored {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The fingerprint of a request: method, path and body (its canonical JSON form).
pub fn fingerprint(method: &str, path: &str, body: &impl serde::Serialize) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    hasher.finalize().to_vec()
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

/// Runs `effect` in a transaction, exactly once per (user, key) when a key is given.
pub async fn run<F>(
    pool: &PgPool,
    user: &str,
    key: Option<&str>,
    request_hash: Vec<u8>,
    effect: F,
) -> ApiResult<Stored>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, ApiResult<Stored>>,
{
    let mut tx = pool.begin().await?;
    if let Some(key) = key {
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(lock_key(user, key))
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Err(ApiError::IdempotencyInProgress);
        }
        let existing: Option<(Vec<u8>, i16, Vec<u8>)> = sqlx::query_as(
            "select request_hash, response_status, response_body
               from idempotency_keys where user_id = $1 and key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((hash, status, body)) = existing {
            if hash != request_hash {
                return Err(ApiError::IdempotencyMismatch);
            }
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            return Ok(Stored {
                status,
                body,
                replayed: true,
            });
        }
    }

    let stored = effect(&mut tx).await?;

    if let Some(key) = key {
        if stored.status.is_success() {
            sqlx::query(
                "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body)
                 values ($1, $2, $3, $4, $5)",
            )
            .bind(user)
            .bind(key)
            .bind(&request_hash)
            .bind(i16::try_from(stored.status.as_u16()).unwrap_or(200))
            .bind(&stored.body)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(stored)
}

/// Deletes keys older than `max_age` (called by the sweeper): retries are expected within
/// hours, not weeks.
pub async fn purge_older_than(pool: &PgPool, max_age: chrono::Duration) -> sqlx::Result<u64> {
    let done = sqlx::query("delete from idempotency_keys where created_at < now() - $1")
        .bind(max_age)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
