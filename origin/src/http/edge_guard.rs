//! The front door: only edges reach the public routes, and no user gets more than the
//! origin's own coarse limit.
//!
//! Every request except `/healthz`, `/readyz`, `/metrics` and `/openapi.json` (what the
//! cluster and tooling need; the NetworkPolicies say who may reach them) passes here before
//! any handler, extractor, database or cache work:
//!
//! 1. **Edge signature** (`domain::edge_auth`): the body is read whole (bounded by
//!    `MAX_BODY_BYTES`, 413 past it; bodies are small), hashed, and the `X-Edge-Signature`
//!    checked against the method, the path and query as received, the body's hash,
//!    `X-Request-Id` and `X-Edge-Region`, with every key of `EDGE_SIGNING_KEYS`, within
//!    ±60 s. Missing, malformed, unknown key, outside the window or not matching: **401**
//!    `/problems/edge-signature`, counted in `edge_signature_refusals_total{reason}`. With
//!    `ORIGIN_ALLOW_DIRECT=1` a request *without* the header goes on (development, tests of
//!    the origin alone); one *with* it is still checked, so a misconfigured edge is loud there
//!    too.
//! 2. **The caller's token** is verified here (the same `domain::auth` rules as the
//!    [`AuthUser`] extractor, which then takes the result from the request instead of
//!    verifying again), only to know whom to count; a bad token is the extractor's 401 later.
//! 3. **One Redis round trip** ([`crate::redis::front_door`]): the signature must not have
//!    been seen before (replay: 401, same type), and the user must be under
//!    `ORIGIN_USER_LIMIT_PER_MIN` (**429** `/problems/rate-limited` with `Retry-After` and the
//!    `RateLimit-*` headers). With Redis down both are skipped (see that module).
//!
//! Refusals cost nothing else: no pool connection, no cache lookup, no handler. The layer
//! sits inside the request deadline (a client stalling mid-body gets its 503) and the load
//! shedder (a flood of unsigned requests is shed like any other).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::edge_auth::{self, EdgeAuthError, RequestParts};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::http::auth::AuthUser;
use crate::http::error::ApiError;
use crate::redis::front_door::Verdict;
use crate::state::AppState;

/// Routes every caller may reach without an edge: liveness, readiness, metrics (scraped in
/// the cluster) and the API description.
pub(crate) const UNSIGNED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn refuse(reason: &'static str, detail: String) -> Response {
    metrics::counter!("edge_signature_refusals_total", "reason" => reason).increment(1);
    ApiError::EdgeSignature(detail).into_response()
}

fn reason(e: &EdgeAuthError) -> &'static str {
    match e {
        EdgeAuthError::Missing => "missing",
        EdgeAuthError::Malformed | EdgeAuthError::WeakKey => "malformed",
        EdgeAuthError::UnknownKey => "unknown-key",
        EdgeAuthError::Expired => "expired",
        EdgeAuthError::BadSignature => "bad-signature",
    }
}

/// The middleware (see the module doc).
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if UNSIGNED_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let header = parts.headers.get(edge_auth::SIGNATURE_HEADER).cloned();
    let now = now_ms();

    // 1. The edge signature.
    let (sig, body) = if header.is_none() {
        if !state.config.front_door.allow_direct {
            // Refused before the body is even read.
            return refuse("missing", EdgeAuthError::Missing.to_string());
        }
        (None, body)
    } else {
        let limit = state.config.max_body_bytes;
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return ApiError::PayloadTooLarge(format!(
                    "the request body is larger than {limit} bytes"
                ))
                .into_response()
            }
            Err(e) => {
                return ApiError::BadRequest(format!("could not read the body: {e}"))
                    .into_response()
            }
        };
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let hash = edge_auth::body_sha256(&bytes);
        let signed = RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            body_sha256: &hash,
            request_id: text("x-request-id"),
            region: text(edge_auth::REGION_HEADER),
        };
        let value = match header.as_ref().map(|h| h.to_str()) {
            Some(Ok(v)) => Some(v),
            _ => return refuse("malformed", EdgeAuthError::Malformed.to_string()),
        };
        let now_secs = i64::try_from(now / 1000).unwrap_or(i64::MAX);
        match state.edge_verifier.verify(value, &signed, now_secs) {
            Ok(verified) => (Some(verified.sig), Body::from(bytes)),
            Err(e) => return refuse(reason(&e), e.to_string()),
        }
    };

    // 2. Whom to count: the token, verified once for the whole request.
    let user = AuthUser::from_headers(&parts.headers, &state).ok();
    let user_id = user.as_ref().map(|u| u.id.clone());
    if let Some(user) = user {
        // The access log names the caller (hashed) even when this guard refuses the request.
        if let Some(access) = parts.extensions.get::<crate::http::access::AccessUser>() {
            access.set(&user.id);
        }
        parts.extensions.insert(user);
    }

    // 3. Replay and the per-user limit: one Redis round trip.
    match state
        .front_door
        .check(sig.as_deref(), user_id.as_deref(), now)
        .await
    {
        Ok(Verdict::Pass) => {
            metrics::counter!("origin_front_door_total", "result" => "pass").increment(1);
        }
        Ok(Verdict::Replayed) => {
            metrics::counter!("origin_front_door_total", "result" => "replayed").increment(1);
            return refuse(
                "replayed",
                "the edge signature was already used (a replayed request)".into(),
            );
        }
        Ok(Verdict::Limited { decision, limit }) => {
            metrics::counter!("origin_front_door_total", "result" => "limited").increment(1);
            return ApiError::RateLimited { decision, limit }.into_response();
        }
        Err(e) => {
            metrics::counter!("origin_front_door_total", "result" => "redis-down").increment(1);
            tracing::debug!(error = %e, "front door: replay and user limit skipped (Redis)");
        }
    }
    next.run(Request::from_parts(parts, body)).await
}
