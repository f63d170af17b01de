//! The HTTP side of idempotent writes (`store::idempotency` is the storage side): a replay
//! becomes the stored answer with `idempotent-replayed: true`, and a fresh request is settled —
//! committed with its stored response, or rolled back — before the handler lets go of its
//! vehicle lock.
//!
//! A response that must be stored (the request has a key) is rendered before the commit, since
//! it commits with the effect; one that need not be is rendered after the commit, so the
//! transaction is not held open for it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::error::{ApiError, ApiResult};
use crate::store::idempotency::{Pending, Saved};

/// A JSON response; `replayed` marks a stored answer given again.
fn json_response(status: StatusCode, body: Vec<u8>, replayed: bool) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// A fresh answer whose body is already encoded (and, with a key, stored).
pub(crate) fn fresh(status: StatusCode, body: Vec<u8>) -> Response {
    json_response(status, body, false)
}

/// The stored answer to a request seen before.
pub(crate) fn replay(saved: Saved) -> Response {
    let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
    json_response(status, saved.body, true)
}

fn encode(value: &impl serde::Serialize) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("encode response")))
}

/// Phase two for a handler: on success, stores the rendered answer (with a key) and commits,
/// then answers `status` with it; on failure, rolls back and returns the error. Either way the
/// transaction is over when this returns, so the caller may release its locks. The outcome is
/// handed back for what the handler does after the commit (cache invalidation).
pub(crate) async fn settle<T, B: serde::Serialize>(
    pending: Pending,
    outcome: ApiResult<T>,
    status: StatusCode,
    render: impl FnOnce(&T) -> B,
) -> ApiResult<(Response, T)> {
    let value = match outcome {
        Ok(value) => value,
        Err(e) => {
            pending.abort().await;
            return Err(e);
        }
    };
    let body = if pending.stores_response() {
        let body = encode(&render(&value))?;
        pending.finish(status.as_u16(), &body).await?;
        body
    } else {
        pending.commit().await?;
        encode(&render(&value))?
    };
    Ok((json_response(status, body, false), value))
}
