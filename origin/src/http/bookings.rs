//! Booking routes: hold (create), read, list, confirm, cancel, extend, start, complete.
//!
//! v1 and v2 share one core per operation; the versioned handlers only choose the body shape.
//! Every POST runs through `idempotency::run`, so the effect, its history and outbox rows and
//! the stored response commit together.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::ids::BookingId;
use domain::quote_token::TokenError;
use domain::state::BookingStatus;
use futures_util::FutureExt;
use uuid::Uuid;

use super::dto::{
    BookingPage, BookingV1, BookingV2, CreateBookingRequest, ExtendRequest, ListQuery,
};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, IdempotencyKey, RequestId};
use crate::redis::locks::LockSlot;
use crate::state::AppState;
use crate::store::bookings::{self, Action, Actor, ListFilter, Outcome, Rules};
use crate::store::idempotency::{self, Stored};

/// Which body shape to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn prefix(self) -> &'static str {
        match self {
            Version::V1 => "/v1",
            Version::V2 => "/v2",
        }
    }

    fn render(self, outcome: &Outcome) -> serde_json::Value {
        let value = match self {
            Version::V1 => serde_json::to_value(BookingV1::render(
                &outcome.booking,
                outcome.cancellation.as_ref(),
            )),
            Version::V2 => serde_json::to_value(BookingV2::render(
                &outcome.booking,
                outcome.cancellation.as_ref(),
            )),
        };
        value.unwrap_or_default()
    }
}

fn parse_id(raw: &str) -> ApiResult<BookingId> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("booking {raw:?} not found")))
}

fn outcome(booking: bookings::model::Booking) -> Outcome {
    Outcome {
        booking,
        cancellation: None,
        extension: None,
    }
}

async fn create(
    state: AppState,
    user: AuthUser,
    key: IdempotencyKey,
    request_id: RequestId,
    version: Version,
    req: CreateBookingRequest,
) -> ApiResult<Response> {
    let now = Utc::now();
    let claims = state
        .quotes
        .verify(&req.quote_token, now)
        .map_err(|e| match e {
            TokenError::Expired => {
                ApiError::QuoteExpired("the quote has expired; get a new one".into())
            }
            other => ApiError::QuoteInvalid(format!("quote_token: {other}")),
        })?;
    claims
        .check_binding(&user.id)
        .map_err(|_| ApiError::Forbidden("this quote was issued to another user".into()))?;
    if !state.config.regions.contains(&claims.region) {
        return Err(ApiError::NotFound(format!(
            "region {} is not served by this origin",
            claims.region
        )));
    }
    state
        .policy
        .check(&claims.window, now)
        .map_err(|e| ApiError::field("start", e.to_string()))?;
    let hold_ttl = chrono::Duration::from_std(state.config.hold_ttl)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hold ttl: {e}")))?;
    let path = format!("{}/bookings", version.prefix());
    let hash = idempotency::fingerprint("POST", &path, &req);
    let user_id = user.id.clone();
    let vehicle = claims.vehicle_id;
    // Serialises contenders for this vehicle so they fail fast (409 after LOCK_WAIT_MS); the
    // exclusion constraint stays the guarantee. Taken in the transaction after the
    // idempotency check, released after commit or rollback (see `locks.rs`).
    let slot = LockSlot::default();
    let (slot_in, locks) = (slot.clone(), state.locks.clone());
    let stored = idempotency::run(&state.db, &user.id, key.0.as_deref(), hash, move |conn| {
        async move {
            let actor = Actor {
                id: &user_id,
                request_id: request_id.0.as_deref(),
            };
            slot_in.lock(&locks, conn, &claims.vehicle_id).await?;
            let booking = bookings::create_hold(conn, &claims, actor, hold_ttl, now).await?;
            Stored::json(StatusCode::CREATED, &version.render(&outcome(booking)))
        }
        .boxed()
    })
    .await;
    slot.release().await;
    let stored = stored?;
    if !stored.replayed {
        // Committed: cached quotes of this vehicle may now offer a taken window.
        state.caches.invalidate_vehicle(&vehicle).await;
        state.edge_gen.bump(&vehicle);
    }
    Ok(stored.into_response())
}

#[allow(clippy::too_many_arguments)]
async fn act(
    state: AppState,
    user: AuthUser,
    key: IdempotencyKey,
    request_id: RequestId,
    version: Version,
    raw_id: String,
    action: Action,
    verb: &'static str,
) -> ApiResult<Response> {
    let id = parse_id(&raw_id)?;
    let now = Utc::now();
    let path = format!("{}/bookings/{id}/{verb}", version.prefix());
    let body = match action {
        Action::Extend { new_end } => serde_json::json!({ "end": new_end }),
        _ => serde_json::Value::Null,
    };
    let hash = idempotency::fingerprint("POST", &path, &body);
    // Extending changes the vehicle's occupancy: it takes the same lock as a hold.
    let slot = LockSlot::default();
    let slot_in = slot.clone();
    let user_id = user.id.clone();
    let touched = std::sync::Arc::new(std::sync::Mutex::new(None));
    let touched_in = touched.clone();
    let effect_state = state.clone();
    let stored = idempotency::run(&state.db, &user.id, key.0.as_deref(), hash, move |conn| {
        async move {
            let actor = Actor {
                id: &user_id,
                request_id: request_id.0.as_deref(),
            };
            let rules = Rules {
                policy: &effect_state.policy,
                cancellation: &effect_state.cancellation,
            };
            if let Action::Extend { .. } = action {
                if let Some(vehicle) = bookings::vehicle_of(conn, &id).await? {
                    slot_in.lock(&effect_state.locks, conn, &vehicle).await?;
                }
            }
            let outcome = bookings::act(conn, &id, action, actor, rules, now).await?;
            if let Ok(mut slot) = touched_in.lock() {
                *slot = Some(outcome.booking.vehicle_id);
            }
            Stored::json(StatusCode::OK, &version.render(&outcome))
        }
        .boxed()
    })
    .await;
    slot.release().await;
    let stored = stored?;
    let vehicle = touched.lock().ok().and_then(|slot| *slot);
    if let Some(vehicle) = vehicle {
        // Committed: the vehicle's occupancy changed, so its cached quotes are stale.
        state.caches.invalidate_vehicle(&vehicle).await;
        state.edge_gen.bump(&vehicle);
    }
    Ok(stored.into_response())
}

async fn get(
    state: AppState,
    user: AuthUser,
    version: Version,
    raw_id: String,
) -> ApiResult<Response> {
    let id = parse_id(&raw_id)?;
    let booking = bookings::get_visible(&state.db, &user, &id).await?;
    Ok(axum::Json(version.render(&outcome(booking))).into_response())
}

fn encode_list_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}.{}",
        created_at.timestamp_micros(),
        id.simple()
    ))
}

fn decode_list_cursor(raw: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    use base64::Engine;
    let bad = || ApiError::BadRequest("cursor: not a cursor from a previous page".into());
    if raw.len() > 128 {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (micros, id) = text.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = Uuid::try_parse(id).map_err(|_| bad())?;
    Ok((at, id))
}

async fn list(
    state: AppState,
    user: AuthUser,
    version: Version,
    q: ListQuery,
) -> ApiResult<Response> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<BookingStatus>()
                .map_err(|_| ApiError::BadRequest(format!("status: unknown status {s:?}")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit: must be between 1 and 100".into(),
        ));
    }
    let user_id = match q.user_id {
        Some(other) if other != user.id => {
            if !user.is_ops {
                return Err(ApiError::Forbidden(
                    "only ops may list another user's bookings".into(),
                ));
            }
            other
        }
        _ => user.id.clone(),
    };
    let after = q.cursor.as_deref().map(decode_list_cursor).transpose()?;
    let mut rows = bookings::list(
        &state.db,
        &ListFilter {
            user_id,
            status,
            limit: i64::from(limit) + 1,
            after,
        },
    )
    .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last()
            .map(|b| encode_list_cursor(b.created_at, b.id.uuid))
    } else {
        None
    };
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|b| version.render(&outcome(b)))
        .collect();
    Ok(axum::Json(BookingPage { items, next_cursor }).into_response())
}

/// Generates the v1 and v2 handler of one route around a shared core, each with its own
/// OpenAPI description (utoipa needs one annotated function per path).
macro_rules! versioned {
    ($(#[$doc:meta])* $v1:ident, $v2:ident, $p1:literal, $p2:literal, [$($extra:tt)*], |$state:ident, $user:ident, $ver:ident| ($($arg:ident : $ty:ty),*) $body:block, $ok:literal) => {
        $(#[$doc])*
        #[utoipa::path(
            post, path = $p1, tag = "bookings",
            $($extra)*
            responses(
                (status = $ok, description = "The booking", body = BookingV1),
                (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub async fn $v1(State($state): State<AppState>, $user: AuthUser, $($arg: $ty),*) -> ApiResult<Response> {
            let $ver = Version::V1;
            $body
        }

        $(#[$doc])*
        #[utoipa::path(
            post, path = $p2, tag = "bookings",
            $($extra)*
            responses(
                (status = $ok, description = "The booking", body = BookingV2),
                (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub async fn $v2(State($state): State<AppState>, $user: AuthUser, $($arg: $ty),*) -> ApiResult<Response> {
            let $ver = Version::V2;
            $body
        }
    };
}

versioned!(
    /// Hold a vehicle with a quote token: a RESERVING booking that expires unless confirmed.
    create_v1, create_v2, "/v1/bookings", "/v2/bookings",
    [request_body = CreateBookingRequest,
     params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST return the first answer")),],
    |state, user, version| (key: IdempotencyKey, rid: RequestId, body: ApiJson<CreateBookingRequest>) {
        create(state, user, key, rid, version, body.0).await
    },
    201
);

macro_rules! action {
    ($(#[$doc:meta])* $v1:ident, $v2:ident, $p1:literal, $p2:literal, $verb:literal, $action:expr) => {
        versioned!(
            $(#[$doc])* $v1, $v2, $p1, $p2,
            [params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST return the first answer"),
                    ("id" = String, Path, description = "Booking id, e.g. bkg_euw_…")),],
            |state, user, version| (key: IdempotencyKey, rid: RequestId, id: ApiPath<String>) {
                act(state, user, key, rid, version, id.0, $action, $verb).await
            },
            200
        );
    };
}

action!(
    /// Confirm a hold before it expires.
    confirm_v1, confirm_v2, "/v1/bookings/{id}/confirm", "/v2/bookings/{id}/confirm", "confirm", Action::Confirm
);
action!(
    /// Cancel a hold or a confirmed booking; the response shows the fee (by how close to the start).
    cancel_v1, cancel_v2, "/v1/bookings/{id}/cancel", "/v2/bookings/{id}/cancel", "cancel", Action::Cancel
);
action!(
    /// Start a confirmed booking (from 15 minutes before its start).
    start_v1, start_v2, "/v1/bookings/{id}/start", "/v2/bookings/{id}/start", "start", Action::Start
);
action!(
    /// Complete a booking in progress; the vehicle is released.
    complete_v1, complete_v2, "/v1/bookings/{id}/complete", "/v2/bookings/{id}/complete", "complete", Action::Complete
);

versioned!(
    /// Extend a booking's end if the vehicle is free after it; the extra time is priced.
    extend_v1, extend_v2, "/v1/bookings/{id}/extend", "/v2/bookings/{id}/extend",
    [request_body = ExtendRequest,
     params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST return the first answer"),
            ("id" = String, Path, description = "Booking id, e.g. bkg_euw_…")),],
    |state, user, version| (key: IdempotencyKey, rid: RequestId, id: ApiPath<String>, body: ApiJson<ExtendRequest>) {
        let new_end = body.0.end;
        act(state, user, key, rid, version, id.0, Action::Extend { new_end }, "extend").await
    },
    200
);

/// Read one booking: your own, or any for ops.
#[utoipa::path(
    get, path = "/v1/bookings/{id}", tag = "bookings",
    params(("id" = String, Path, description = "Booking id, e.g. bkg_euw_…")),
    responses(
        (status = 200, description = "The booking", body = BookingV1),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_v1(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    get(state, user, Version::V1, id).await
}

/// Read one booking with its breakdown (v2).
#[utoipa::path(
    get, path = "/v2/bookings/{id}", tag = "bookings",
    params(("id" = String, Path, description = "Booking id, e.g. bkg_euw_…")),
    responses(
        (status = 200, description = "The booking", body = BookingV2),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_v2(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    get(state, user, Version::V2, id).await
}

/// List your bookings, newest first (ops may pass `user_id`).
#[utoipa::path(
    get, path = "/v1/bookings", tag = "bookings",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of bookings", body = BookingPage<BookingV1>),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_v1(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    list(state, user, Version::V1, q).await
}

/// List your bookings (v2 bodies).
#[utoipa::path(
    get, path = "/v2/bookings", tag = "bookings",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of bookings", body = BookingPage<BookingV2>),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_v2(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    list(state, user, Version::V2, q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_cursors_round_trip_and_garbage_is_refused() -> ApiResult<()> {
        let at = DateTime::<Utc>::from_timestamp_micros(1_800_000_000_123_456)
            .ok_or_else(|| ApiError::BadRequest("time".into()))?;
        let id = Uuid::now_v7();
        assert_eq!(decode_list_cursor(&encode_list_cursor(at, id))?, (at, id));
        for bad in ["", "!!!", "bm90LWEtY3Vyc29y", &"A".repeat(500)] {
            assert!(decode_list_cursor(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
