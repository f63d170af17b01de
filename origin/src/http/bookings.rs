//! Booking routes: hold (create), read, list, confirm, cancel, extend, reschedule, start,
//! complete.
//!
//! v1 and v2 share one core per operation; the versioned handlers only choose the body shape.
//! Each pair is written by `versioned!` (`http/versioned.rs`) from one response table, and the
//! writes share theirs through `booking_write!`.
//!
//! A write reads top to bottom: parse the request, open the idempotent transaction
//! (`store::idempotency::begin`: a replay answers at once), take the vehicle's lock in it,
//! let the booking service (`app::booking`) decide and write, settle the transaction (the effect,
//! its history and outbox rows and the stored response commit together), release the lock, and
//! only then invalidate caches.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SubsecRound, Utc};
use domain::booking::{Booking, Transition};
use domain::cancellation::CancellationFee;
use domain::ids::{BookingId, VehicleId};
use domain::state::BookingStatus;
use uuid::Uuid;

use super::dto::{
    BookingPage, BookingV1, BookingV2, CreateBookingRequest, ExtendRequest, ListQuery,
    RescheduleRequest,
};
use crate::app::booking::{self, Actor, BookingFailure, Command, ListFilter, Viewer};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, WriteCall};
use crate::http::idempotent;
use crate::http::versioned::{versioned, Version};
use crate::redis::locks::{HoldLock, LockError, VehicleLock, LOCK_NAMESPACE};
use crate::state::AppState;
use crate::store::bookings::at_once::{self, Outcome, StatementLock, Waits};
use crate::store::idempotency::{Begun, IdempotencyError};

/// The booking in the body shape of `version`.
fn render(
    version: Version,
    booking: &Booking,
    cancellation: Option<&CancellationFee>,
) -> serde_json::Value {
    let value = match version {
        Version::V1 => serde_json::to_value(BookingV1::render(booking, cancellation)),
        Version::V2 => serde_json::to_value(BookingV2::render(booking, cancellation)),
    };
    value.unwrap_or_default()
}

/// A booking id from the path: 404 if it names no booking, 421 if another origin owns it.
fn parse_id(state: &AppState, raw: &str) -> ApiResult<BookingId> {
    let id: BookingId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("booking {raw:?} not found")))?;
    crate::http::admin::misdirected_unless_served(state, id.region, || format!("booking {id}"))?;
    Ok(id)
}

fn actor(call: &WriteCall) -> Actor<'_> {
    Actor {
        id: &call.user.id,
        request_id: call.request_id.0.as_deref(),
        traceparent: call.traceparent.as_deref(),
    }
}

/// After a committed write that changed when `vehicle` is taken: its cached quotes (origin L1
/// and the edge's) may offer a window that is now taken, or refuse one that is now free. The
/// sweeper calls it too, for the vehicles of the holds it ended.
pub(crate) async fn occupancy_changed(state: &AppState, vehicle: &VehicleId) {
    state.caches.invalidate_vehicle(vehicle).await;
    state.edge_gen.bump(vehicle);
}

/// After a committed write of `call`'s user (or a replay of one): that user's next reads of
/// their own bookings must see it, even on the replica (`store/reads.rs`).
async fn wrote(call: &WriteCall) {
    call.state.reads.wrote(&call.user.id).await;
}

async fn create(
    call: WriteCall,
    version: Version,
    req: CreateBookingRequest,
) -> ApiResult<Response> {
    let state = &call.state;
    // Microseconds, as PostgreSQL stores times: the answer is rendered before the insert
    // (`store::bookings::at_once`) and must read the same as the booking read back.
    let now = Utc::now().trunc_subsecs(6);
    let rules = booking::rules(state)?;
    let hold = match booking::prepare_hold(
        &state.quotes,
        &state.config.regions,
        &call.user.id,
        &req.quote_token,
        &rules,
        now,
    ) {
        Ok(hold) => hold,
        // The key first: a retry of a hold that succeeded replays its answer even when the
        // quote has expired since (or this origin's clock says so: the fault suite's clock
        // skew found a replay answered 422 "quote expired" on the other origin).
        Err(e) if call.key.0.is_some() => {
            return match call.begin(&[], &req).await? {
                Begun::Replay(saved) => Ok(idempotent::replay(saved)),
                Begun::Fresh(pending) => {
                    pending.abort().await;
                    Err(e.into())
                }
            };
        }
        Err(e) => return Err(e.into()),
    };
    let vehicle = hold.booking.vehicle_id;
    // Serialises contenders for this vehicle so they fail fast (409 after LOCK_WAIT_MS); the
    // exclusion constraint stays the guarantee. A Redis lock held by someone else sends the
    // hold the multi-statement way, which looks at the idempotency key before it waits.
    let (mut redis_lock, statement_lock) = match state.locks.for_hold(&vehicle).await {
        HoldLock::Busy => return create_in_steps(&call, version, &req, &hold, None).await,
        HoldLock::Redis(lock) => (Some(lock), StatementLock::None),
        HoldLock::InStatement => (
            None,
            StatementLock::Advisory {
                namespace: LOCK_NAMESPACE,
            },
        ),
        HoldLock::None => (None, StatementLock::None),
    };
    // The answer before the bay is known: a placeholder the statement replaces.
    let placeholder = Uuid::new_v4();
    let mut draft = hold.booking.clone();
    draft.bay_id = placeholder;
    let response = at_once::Response {
        status: StatusCode::CREATED.as_u16(),
        body: render(version, &draft, None).to_string(),
        placeholder,
    };
    let key = call.key_claim(&[], &req)?;
    let outcome = booking::hold_at_once(
        &state.db,
        &hold,
        actor(&call),
        key.as_ref(),
        statement_lock,
        Waits {
            key: if redis_lock.is_some() {
                std::time::Duration::ZERO
            } else {
                state.locks.wait()
            },
            vehicle: state.locks.wait(),
        },
        &response,
    )
    .await;
    if !matches!(outcome, Ok(Outcome::ExpiredInTheWay)) {
        if let Some(lock) = redis_lock.take() {
            lock.release().await;
        }
    }
    match outcome? {
        Outcome::Created { body, .. } => {
            // Independent after the commit: side by side.
            tokio::join!(wrote(&call), occupancy_changed(state, &vehicle));
            Ok(idempotent::fresh(StatusCode::CREATED, body))
        }
        Outcome::Replay(saved) => {
            wrote(&call).await;
            Ok(idempotent::replay(saved))
        }
        Outcome::Mismatch => Err(IdempotencyError::Mismatch.into()),
        Outcome::InProgress => Err(IdempotencyError::InProgress.into()),
        Outcome::Busy => Err(LockError::Busy(vehicle).into()),
        Outcome::Unavailable => Err(BookingFailure::VehicleUnavailable(vehicle).into()),
        Outcome::ExpiredInTheWay => create_in_steps(&call, version, &req, &hold, redis_lock).await,
    }
}

/// A hold in several statements (the idempotent transaction, the vehicle lock, the insert
/// that ends expired holds in its way, the stored answer): for what the one statement hands
/// back — a Redis lock held by someone else, an expired hold in the way. `lock` is the
/// vehicle lock already held, if any.
async fn create_in_steps(
    call: &WriteCall,
    version: Version,
    req: &CreateBookingRequest,
    hold: &Transition,
    lock: Option<VehicleLock>,
) -> ApiResult<Response> {
    let state = &call.state;
    let vehicle = hold.booking.vehicle_id;
    let mut pending = match call.begin(&[], req).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    // Taken in the transaction after the idempotency check, released after commit or
    // rollback (see `locks.rs`).
    let lock = match lock {
        Some(lock) => {
            lock.fence().enter(pending.conn()).await?;
            lock
        }
        None => state.locks.lock_in(pending.conn(), &vehicle).await?,
    };
    let made = booking::hold(pending.conn(), hold, actor(call))
        .await
        .map_err(ApiError::from);
    let settled = idempotent::settle(pending, made, StatusCode::CREATED, |b| {
        render(version, b, None)
    })
    .await;
    lock.release().await;
    let (response, _) = settled?;
    tokio::join!(wrote(call), occupancy_changed(state, &vehicle));
    Ok(response)
}

async fn act(
    call: WriteCall,
    version: Version,
    raw_id: &str,
    command: Command,
) -> ApiResult<Response> {
    let state = &call.state;
    let id = parse_id(state, raw_id)?;
    let now = Utc::now();
    let body = match command {
        Command::Extend { new_end } => serde_json::json!({ "end": new_end }),
        Command::Reschedule { window } => {
            serde_json::json!({ "start": window.start(), "end": window.end() })
        }
        _ => serde_json::Value::Null,
    };
    let mut pending = match call.begin(&[("id", &id)], &body).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let rules = booking::rules(state)?;
    // Extending or moving changes the vehicle's occupancy: it takes the same lock as a hold.
    let lock = if command.moves_occupancy() {
        match booking::vehicle_of(pending.conn(), &id).await? {
            Some(vehicle) => Some(state.locks.lock_in(pending.conn(), &vehicle).await?),
            None => None,
        }
    } else {
        None
    };
    let done = booking::act(pending.conn(), &id, command, actor(&call), &rules, now)
        .await
        .map_err(ApiError::from);
    let settled = idempotent::settle(pending, done, StatusCode::OK, |t| {
        render(version, &t.booking, t.cancellation.as_ref())
    })
    .await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let (response, transition) = settled?;
    tokio::join!(
        wrote(&call),
        occupancy_changed(state, &transition.booking.vehicle_id)
    );
    Ok(response)
}

async fn get(
    state: AppState,
    user: AuthUser,
    version: Version,
    raw_id: String,
) -> ApiResult<Response> {
    let id = parse_id(&state, &raw_id)?;
    let viewer = Viewer {
        user_id: &user.id,
        is_ops: user.is_ops,
    };
    // The viewer's own booking (or, for ops, anyone's): read-your-writes for the viewer.
    let booking = crate::read_on!(state.reads.own(&user.id).await, |pool| {
        booking::get(pool, &id, viewer).await
    })?;
    Ok(axum::Json(render(version, &booking, None)).into_response())
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
    let own = user_id == user.id;
    let filter = ListFilter {
        user_id,
        status,
        limit: i64::from(limit) + 1,
        after,
        regions: state
            .config
            .regions
            .iter()
            .map(|r| r.code().to_owned())
            .collect(),
    };
    // A user's own list sees their writes; ops listing another user's get the replica's view.
    let target = if own {
        state.reads.own(&user.id).await
    } else {
        state.reads.stale_ok()
    };
    let mut rows = crate::read_on!(target, |pool| booking::list(pool, &filter).await)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last()
            .map(|b| encode_list_cursor(b.created_at, b.id.uuid))
    } else {
        None
    };
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|b| render(version, &b, None))
        .collect();
    Ok(axum::Json(BookingPage { items, next_cursor }).into_response())
}

/// A booking write (POST, with an `Idempotency-Key`) in both versions: `[…]` holds its
/// `request_body`, if any, and `params(…)` its path parameters; the answers besides the booking
/// are the same for every write.
macro_rules! booking_write {
    (
        $(#[$doc:meta])* $v1:ident $p1:literal, $v2:ident $p2:literal => $ok:literal,
        [$($request:tt)*], params($($params:tt)*),
        |$call:ident, $version:ident| ($($arg:ident : $ty:ty),*) $body:block
    ) => {
        versioned!(
            post, tag = "bookings",
            [$($request)*
             params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST return the first answer"),
                    $($params)*),],
            errors(
                400 "Malformed request",
                401 "Missing or invalid token",
                403 "Not allowed",
                404 "Not found",
                409 "Conflict",
                421 "The booking or quote belongs to another region's origin",
                422 "Invalid request",
            ),
            $(#[$doc])* $v1 $p1 => (status = $ok, description = "The booking", body = BookingV1),
            $(#[$doc])* $v2 $p2 => (status = $ok, description = "The booking", body = BookingV2),
            |$version| ($call: WriteCall, $($arg: $ty),*) -> ApiResult<Response> $body
        );
    };
}

booking_write!(
    /// Hold a vehicle with a quote token: a RESERVING booking that expires unless confirmed.
    create_v1 "/v1/bookings", create_v2 "/v2/bookings" => 201,
    [request_body = CreateBookingRequest,], params(),
    |call, version| (body: ApiJson<CreateBookingRequest>) {
        create(call, version, body.0).await
    }
);

/// A booking action without a body, in both versions.
macro_rules! action {
    ($(#[$doc:meta])* $v1:ident $p1:literal, $v2:ident $p2:literal, $command:expr) => {
        booking_write!(
            $(#[$doc])* $v1 $p1, $v2 $p2 => 200,
            [], params(("id" = String, Path, description = "Booking id, e.g. bkg_euw_…", pattern = "^bkg_(euw|eun)_[0-9A-Fa-f]{32}$")),
            |call, version| (id: ApiPath<String>) {
                act(call, version, &id.0, $command).await
            }
        );
    };
}

action!(
    /// Confirm a hold before it expires.
    confirm_v1 "/v1/bookings/{id}/confirm", confirm_v2 "/v2/bookings/{id}/confirm", Command::Confirm
);
action!(
    /// Cancel a hold or a confirmed booking; the response shows the fee (by how close to the start).
    cancel_v1 "/v1/bookings/{id}/cancel", cancel_v2 "/v2/bookings/{id}/cancel", Command::Cancel
);
action!(
    /// Start a confirmed booking (from 15 minutes before its start).
    start_v1 "/v1/bookings/{id}/start", start_v2 "/v2/bookings/{id}/start", Command::Start
);
action!(
    /// Complete a booking in progress; the vehicle is released.
    complete_v1 "/v1/bookings/{id}/complete", complete_v2 "/v2/bookings/{id}/complete", Command::Complete
);

booking_write!(
    /// Extend a booking's end if the vehicle is free after it; the extra time is priced.
    extend_v1 "/v1/bookings/{id}/extend", extend_v2 "/v2/bookings/{id}/extend" => 200,
    [request_body = ExtendRequest,], params(("id" = String, Path, description = "Booking id, e.g. bkg_euw_…", pattern = "^bkg_(euw|eun)_[0-9A-Fa-f]{32}$")),
    |call, version| (id: ApiPath<String>, body: ApiJson<ExtendRequest>) {
        let new_end = body.0.end;
        act(call, version, &id.0, Command::Extend { new_end }).await
    }
);

booking_write!(
    /// Move a hold or a confirmed booking to another window of the same vehicle, at once (it
    /// never holds two windows, nor none): 409 if the vehicle is taken then. Repriced with
    /// today's rates (the difference is added or refunded, see `reschedules` in v2), plus the
    /// cancellation fee the booking would pay now if the move is inside its fee period.
    reschedule_v1 "/v1/bookings/{id}/reschedule", reschedule_v2 "/v2/bookings/{id}/reschedule" => 200,
    [request_body = RescheduleRequest,], params(("id" = String, Path, description = "Booking id, e.g. bkg_euw_…", pattern = "^bkg_(euw|eun)_[0-9A-Fa-f]{32}$")),
    |call, version| (id: ApiPath<String>, body: ApiJson<RescheduleRequest>) {
        let window = crate::http::quotes::window_of(body.0.start, body.0.end)?;
        act(call, version, &id.0, Command::Reschedule { window }).await
    }
);

versioned!(
    get, tag = "bookings", [params(("id" = String, Path, description = "Booking id, e.g. bkg_euw_…", pattern = "^bkg_(euw|eun)_[0-9A-Fa-f]{32}$")),],
    errors(
        401 "Missing or invalid token",
        404 "Not found",
        421 "The booking belongs to another region's origin",
    ),
    /// Read one booking: your own, or any for ops.
    get_v1 "/v1/bookings/{id}" => (status = 200, description = "The booking", body = BookingV1),
    /// Read one booking with its breakdown (v2).
    get_v2 "/v2/bookings/{id}" => (status = 200, description = "The booking", body = BookingV2),
    |version| (State(state): State<AppState>, user: AuthUser, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
        get(state, user, version, id).await
    }
);

versioned!(
    get, tag = "bookings", [params(ListQuery),],
    errors(
        400 "Bad query",
        401 "Missing or invalid token",
        403 "Not ops",
    ),
    /// List your bookings, newest first (ops may pass `user_id`).
    list_v1 "/v1/bookings" => (status = 200, description = "A page of bookings", body = BookingPage<BookingV1>),
    /// List your bookings (v2 bodies).
    list_v2 "/v2/bookings" => (status = 200, description = "A page of bookings", body = BookingPage<BookingV2>),
    |version| (State(state): State<AppState>, user: AuthUser, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Response> {
        list(state, user, version, q).await
    }
);

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
