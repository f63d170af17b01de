//! `/v1/admin/vehicles/{vehicle_id}/blocks`: maintenance blocks, the ops role's out-of-service
//! windows per vehicle (rules in `domain::block`, the use cases in `app::blocks`).
//!
//! Writes read as the booking writes do: parse, open the idempotent transaction (a replay
//! answers at once), let the service decide and write, settle (the block, the bookings it
//! withdrew, their history and every event commit together), then tell the caches: a block
//! changes when the vehicle is free exactly as a booking does, so it goes through the same
//! `occupancy_changed` (origin caches and the edge's generation).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::block::Reason;
use domain::ids::VehicleId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::blocks::{self, Placed, Plan};
use crate::app::booking;
use crate::http::admin::{misdirected_unless_served, require_ops};
use crate::http::auth::AuthUser;
use crate::http::bookings::occupancy_changed;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, WriteCall};
use crate::http::idempotent;
use crate::state::AppState;
use crate::store::blocks::Block;
use crate::store::bookings::Actor;
use crate::store::idempotency::Begun;

/// Body of `POST …/blocks` and `PUT …/blocks/{block_id}`: the out-of-service window (whole
/// minutes; it may have begun, it may not have passed) and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"start": "2027-03-01T08:00:00Z", "end": "2027-03-01T18:00:00Z", "reason": "brake pads", "force": false}))]
pub(crate) struct BlockRequest {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Why the vehicle is out of service: 1–500 characters, no control characters.
    pub reason: String,
    /// Cancel the holds and confirmed bookings in the way, each with a full refund and its
    /// events, instead of answering 409 naming them. A trip under way is never cancelled.
    #[serde(default)]
    pub force: bool,
}

/// Where a block stands at the time of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BlockState {
    /// Not begun yet.
    Scheduled,
    /// The vehicle is out of service now.
    InEffect,
    /// Its window has passed.
    Over,
    /// Ended before it began: it never took the vehicle.
    Cancelled,
    /// Ended while under way: its window was cut at the end time.
    Ended,
}

/// A maintenance block.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct BlockDto {
    pub id: Uuid,
    pub vehicle_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
    pub state: BlockState,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

impl BlockDto {
    fn render(block: &Block, now: DateTime<Utc>) -> Self {
        let state = match block.ended_at {
            Some(at) if at <= block.window.start() => BlockState::Cancelled,
            Some(_) => BlockState::Ended,
            None if now < block.window.start() => BlockState::Scheduled,
            None if now < block.window.end() => BlockState::InEffect,
            None => BlockState::Over,
        };
        BlockDto {
            id: block.id,
            vehicle_id: block.vehicle.to_string(),
            start: block.window.start(),
            end: block.window.end(),
            reason: block.reason.as_str().to_owned(),
            state,
            created_by: block.created_by.clone(),
            created_at: block.created_at,
            updated_at: block.updated_at,
            ended_at: block.ended_at,
            ended_by: block.ended_by.clone(),
        }
    }
}

/// A booking a forced block cancelled, with its refund (the whole price).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct WithdrawnDto {
    pub id: String,
    pub refund_minor: i64,
    pub currency: String,
}

/// A block as written, with the bookings it cancelled (empty unless `force`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PlacedDto {
    pub block: BlockDto,
    pub cancelled_bookings: Vec<WithdrawnDto>,
}

impl PlacedDto {
    fn render(placed: &Placed, now: DateTime<Utc>) -> Self {
        PlacedDto {
            block: BlockDto::render(&placed.block, now),
            cancelled_bookings: placed
                .withdrawn
                .iter()
                .map(|b| WithdrawnDto {
                    id: b.id.to_string(),
                    refund_minor: b.price.minor,
                    currency: b.price.currency.code().to_owned(),
                })
                .collect(),
        }
    }
}

/// Query of `GET …/blocks`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct BlockListQuery {
    /// 1–200 (default 50), latest window first.
    pub limit: Option<u32>,
}

/// The vehicle of the path, for ops: 403 without the role, 404 for a malformed id, 421 for
/// another origin's vehicle.
fn ops_vehicle(state: &AppState, user: &AuthUser, raw: &str) -> ApiResult<VehicleId> {
    require_ops(user)?;
    let vehicle: VehicleId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("vehicle {raw:?} not found")))?;
    misdirected_unless_served(state, vehicle.region, || format!("vehicle {vehicle}"))?;
    Ok(vehicle)
}

/// The body's window and reason, each refused naming its field.
fn plan(body: &BlockRequest) -> ApiResult<Plan> {
    let window = crate::http::quotes::window_of(body.start, body.end)?;
    let reason =
        Reason::parse(&body.reason).map_err(|e| ApiError::field("reason", e.to_string()))?;
    Ok(Plan {
        window,
        reason,
        force: body.force,
    })
}

fn actor(call: &WriteCall) -> Actor<'_> {
    Actor {
        id: &call.user.id,
        request_id: call.request_id.0.as_deref(),
        traceparent: call.traceparent.as_deref(),
    }
}

/// After a committed block change: the vehicle's availability changed, and so may have that
/// of the bookings' owners it cancelled (their own reads go to the primary for a while).
async fn settled(call: &WriteCall, vehicle: &VehicleId, placed: Option<&Placed>) {
    occupancy_changed(&call.state, vehicle).await;
    for booking in placed.iter().flat_map(|p| &p.withdrawn) {
        call.state.reads.wrote(&booking.user_id).await;
    }
}

/// Take a vehicle out of service for a window.
#[utoipa::path(
    post, path = "/v1/admin/vehicles/{vehicle_id}/blocks", tag = "admin",
    params(("vehicle_id" = String, Path, description = "veh_<region>_<32 hex>")),
    request_body = BlockRequest,
    responses(
        (status = 201, description = "Blocked; the bookings it cancelled (with `force`) are listed", body = PlacedDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Bookings in the way (named in `bookings`), a trip under way, or another block", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid window or reason (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_block(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<BlockRequest>,
) -> ApiResult<Response> {
    place(call, &raw, None, body).await
}

/// Change a block's window or reason.
#[utoipa::path(
    put, path = "/v1/admin/vehicles/{vehicle_id}/blocks/{block_id}", tag = "admin",
    params(("vehicle_id" = String, Path, description = "veh_<region>_<32 hex>"), ("block_id" = Uuid, Path)),
    request_body = BlockRequest,
    responses(
        (status = 200, description = "Changed; the bookings it cancelled (with `force`) are listed", body = PlacedDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle or block", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Bookings in the way (named in `bookings`), another block, or the block is over or ended", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid window or reason (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn change_block(
    call: WriteCall,
    ApiPath((raw, id)): ApiPath<(String, Uuid)>,
    ApiJson(body): ApiJson<BlockRequest>,
) -> ApiResult<Response> {
    place(call, &raw, Some(id), body).await
}

/// A new block (`id` none, 201) or a changed one (200): parse, open the idempotent
/// transaction, let the service place it, settle, then tell the caches.
async fn place(
    call: WriteCall,
    raw: &str,
    id: Option<Uuid>,
    body: BlockRequest,
) -> ApiResult<Response> {
    let vehicle = ops_vehicle(&call.state, &call.user, raw)?;
    let plan = plan(&body)?;
    let now = Utc::now();
    let rules = booking::rules(&call.state)?;
    let mut params: Vec<(&str, &(dyn std::fmt::Display + Sync))> = vec![("vehicle_id", &vehicle)];
    if let Some(id) = &id {
        params.push(("block_id", id));
    }
    let mut pending = match call.begin(&params, &body).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let (done, status) = match id {
        None => (
            blocks::create(pending.conn(), &vehicle, plan, actor(&call), &rules, now).await,
            StatusCode::CREATED,
        ),
        Some(id) => (
            blocks::change(
                pending.conn(),
                &vehicle,
                id,
                plan,
                actor(&call),
                &rules,
                now,
            )
            .await,
            StatusCode::OK,
        ),
    };
    let (response, placed) =
        idempotent::settle(pending, done.map_err(ApiError::from), status, |p| {
            PlacedDto::render(p, now)
        })
        .await?;
    tracing::info!(actor = %call.user.id, %vehicle, block = %placed.block.id, changed = id.is_some(), cancelled = placed.withdrawn.len(), "vehicle block placed");
    settled(&call, &vehicle, Some(&placed)).await;
    Ok(response)
}

/// End a block: cancelled if it has not begun, cut now if it has; the vehicle is back.
#[utoipa::path(
    delete, path = "/v1/admin/vehicles/{vehicle_id}/blocks/{block_id}", tag = "admin",
    params(("vehicle_id" = String, Path, description = "veh_<region>_<32 hex>"), ("block_id" = Uuid, Path)),
    responses(
        (status = 200, description = "Ended (state `cancelled` or `ended`)", body = BlockDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle or block", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The block is over or was ended already", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's vehicle", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn end_block(
    call: WriteCall,
    ApiPath((raw, id)): ApiPath<(String, Uuid)>,
) -> ApiResult<Response> {
    let vehicle = ops_vehicle(&call.state, &call.user, &raw)?;
    let now = Utc::now();
    let mut pending = match call
        .begin(&[("vehicle_id", &vehicle), ("block_id", &id)], &())
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let done = blocks::end(pending.conn(), &vehicle, id, actor(&call), now)
        .await
        .map_err(ApiError::from);
    let (response, _) =
        idempotent::settle(pending, done, StatusCode::OK, |b| BlockDto::render(b, now)).await?;
    tracing::info!(actor = %call.user.id, %vehicle, block = %id, "vehicle block ended");
    settled(&call, &vehicle, None).await;
    Ok(response)
}

/// A vehicle's blocks, latest window first (ended ones included, for the record).
#[utoipa::path(
    get, path = "/v1/admin/vehicles/{vehicle_id}/blocks", tag = "admin",
    params(("vehicle_id" = String, Path, description = "veh_<region>_<32 hex>"), BlockListQuery),
    responses(
        (status = 200, description = "`items`: the blocks", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_blocks(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(query): ApiQuery<BlockListQuery>,
) -> ApiResult<impl IntoResponse> {
    let vehicle = ops_vehicle(&state, &user, &raw)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 200"));
    }
    let mut conn = state.db.acquire().await?;
    if !crate::store::blocks::vehicle_exists(&mut conn, &vehicle).await? {
        return Err(ApiError::NotFound(format!("vehicle {vehicle} not found")));
    }
    drop(conn);
    let now = Utc::now();
    let items: Vec<BlockDto> = crate::store::blocks::list(&state.db, &vehicle, i64::from(limit))
        .await?
        .iter()
        .map(|b| BlockDto::render(b, now))
        .collect();
    Ok(axum::Json(serde_json::json!({ "items": items })))
}
