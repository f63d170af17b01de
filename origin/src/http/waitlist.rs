//! `/v1/waitlist`: customers wait in line for a taken window of a vehicle, or of any vehicle of
//! a class at a bay. When a booking that held part of it is cancelled, expires, fails or moves
//! (or a maintenance block ends), the first waiter whose whole window is free gets an offer of
//! that vehicle: for `WAITLIST_OFFER_SECS` only they can quote or book any part of it (other
//! users' quotes and holds are 409), and a `waitlist.available` event (and webhook) says so. The rules are the database's (migration `20261208000001_waitlist.sql`);
//! this module joins, shows and withdraws entries.
//!
//! An entry lives in its vehicle's (or bay's) region (`wlt_<region>_<hex>`), so the edges route
//! it as they route the vehicle's bookings.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::ids::{VehicleId, WaitlistId};
use domain::region::Region;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::admin::misdirected_unless_served;
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, WriteCall};
use crate::http::idempotent;
use crate::state::AppState;
use crate::store::idempotency::Begun;
use crate::store::waitlist::{self as store, Entry, JoinError, Wanted, WithdrawError};

/// Body of `POST /v1/waitlist`: what is wanted — a vehicle (`vehicle_id`), or any vehicle of a
/// class at a parking bay (`class`, `bay_id` and the bay's `region`) — and the window (the
/// booking policy's rules: whole minutes, in the future, within the longest booking).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"vehicle_id": "veh_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e", "start": "2027-03-01T08:00:00Z", "end": "2027-03-01T10:00:00Z"}))]
pub(crate) struct WaitlistRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle_id: Option<String>,
    /// `compact`, `sedan`, `suv`, `van` or `premium` (with `bay_id` and `region`, instead of
    /// `vehicle_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bay_id: Option<Uuid>,
    /// `EUW` or `EUN`: the bay's region (the edges route the request by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The vehicle classes a waiter may name.
const CLASSES: [&str; 5] = ["compact", "sedan", "suv", "van", "premium"];

/// What the body wants, each fault named by its field.
fn wanted(state: &AppState, body: &WaitlistRequest) -> ApiResult<Wanted> {
    match (&body.vehicle_id, &body.class, &body.bay_id, &body.region) {
        (Some(raw), None, None, None) => {
            let vehicle: VehicleId = raw
                .parse()
                .map_err(|e: domain::ids::IdError| ApiError::field("vehicle_id", e.to_string()))?;
            misdirected_unless_served(state, vehicle.region, || format!("vehicle {vehicle}"))?;
            Ok(Wanted::Vehicle(vehicle))
        }
        (None, Some(class), Some(bay), Some(region)) => {
            if !CLASSES.contains(&class.as_str()) {
                return Err(ApiError::field(
                    "class",
                    format!("one of {}", CLASSES.join(", ")),
                ));
            }
            let region: Region = region
                .parse()
                .map_err(|_| ApiError::field("region", "EUW or EUN"))?;
            misdirected_unless_served(state, region, || format!("region {region}"))?;
            Ok(Wanted::Class {
                region,
                class: class.clone(),
                bay: *bay,
            })
        }
        (Some(_), ..) => Err(ApiError::field(
            "vehicle_id",
            "either vehicle_id, or class with bay_id and region, not both",
        )),
        (None, None, ..) => Err(ApiError::field(
            "vehicle_id",
            "required (or class with bay_id and region)",
        )),
        (None, Some(_), None, _) => Err(ApiError::field("bay_id", "required with class")),
        (None, Some(_), Some(_), None) => Err(ApiError::field(
            "region",
            "required with class and bay_id: the bay's region",
        )),
    }
}

/// A waitlist entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct WaitlistDto {
    /// `wlt_<region>_<32 hex>`.
    pub id: String,
    /// The vehicle waited for (none for a wait for a class at a bay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vehicle_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bay_id: Option<Uuid>,
    /// The vehicle of the offer, once there is one: quote and book that one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_vehicle_id: Option<String>,
    pub user_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `waiting` (in line), `offered` (the window is yours until `offer_until`: quote and book
    /// it), `booked`, `lapsed` (the offer passed unused), `expired` (the window began while
    /// waiting) or `withdrawn`.
    pub state: String,
    /// While waiting: your place among those waiting for an overlapping window (1: next).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WaitlistDto {
    fn render(e: &Entry) -> Self {
        let region = e.region.parse::<Region>().unwrap_or(Region::Euw);
        WaitlistDto {
            id: WaitlistId::new(region, e.id).to_string(),
            vehicle_id: e.vehicle_id.map(|v| VehicleId::new(region, v).to_string()),
            class: e.class.clone(),
            bay_id: e.bay_id,
            offered_vehicle_id: e
                .offered_vehicle_id
                .map(|v| VehicleId::new(region, v).to_string()),
            user_id: e.user_id.clone(),
            start: e.start,
            end: e.end,
            state: e.state.clone(),
            position: e.position,
            offered_at: e.offered_at,
            offer_until: e.offer_until,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::NoVehicle(_) | JoinError::NoVehicleOfClass { .. } => {
                ApiError::NotFound(e.to_string())
            }
            JoinError::Free(_) | JoinError::AlreadyWaiting { .. } => {
                ApiError::Conflict(e.to_string())
            }
            JoinError::Database(db) => ApiError::from(db),
        }
    }
}

impl From<WithdrawError> for ApiError {
    fn from(e: WithdrawError) -> Self {
        match e {
            WithdrawError::Settled(_) => ApiError::Conflict(e.to_string()),
            WithdrawError::Database(db) => ApiError::from(db),
        }
    }
}

/// The entry of the path: 404 for a malformed id, 421 for another origin's.
fn entry_id(state: &AppState, raw: &str) -> ApiResult<WaitlistId> {
    let id: WaitlistId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("waitlist entry {raw:?} not found")))?;
    misdirected_unless_served(state, id.region, || format!("waitlist entry {id}"))?;
    Ok(id)
}

/// The entry if `user` may see it (`acting`: only its owner; reading: the owner and ops, as
/// with bookings); to anyone else it is as absent as a missing one.
fn visible(
    entry: Option<Entry>,
    user: &AuthUser,
    id: &WaitlistId,
    acting: bool,
) -> ApiResult<Entry> {
    entry
        .filter(|e| e.user_id == user.id || (user.is_ops && !acting))
        .ok_or_else(|| ApiError::NotFound(format!("waitlist entry {id} not found")))
}

/// Wait in line for a taken window of a vehicle, or of every vehicle of a class at a bay.
#[utoipa::path(
    post, path = "/v1/waitlist", tag = "bookings",
    request_body = WaitlistRequest,
    responses(
        (status = 201, description = "In line; `position` is your place", body = WaitlistDto),
        (status = 404, description = "No such active vehicle, or none of the class at the bay", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A vehicle is free for the window (book it), or you already wait for part of it", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's vehicle or bay", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid vehicle, class, bay, region or window (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn join(
    call: WriteCall,
    ApiJson(body): ApiJson<WaitlistRequest>,
) -> ApiResult<Response> {
    let now = Utc::now();
    let wanted = wanted(&call.state, &body)?;
    let window = crate::http::quotes::parse_window(&call.state, body.start, body.end, now)?;
    let mut pending = match call.begin(&[], &body).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let done = store::join(
        pending.conn(),
        Uuid::now_v7(),
        &wanted,
        &call.user.id,
        &window,
        call.state.config.waitlist_offer_secs,
        now,
    )
    .await
    .map_err(ApiError::from);
    let (response, entry) =
        idempotent::settle(pending, done, StatusCode::CREATED, WaitlistDto::render).await?;
    tracing::info!(user = %call.user.id, ?wanted, entry = %entry.id, position = ?entry.position, "joined a waitlist");
    Ok(response)
}

/// An entry: its state, place in line, and the offer's end while it has one.
#[utoipa::path(
    get, path = "/v1/waitlist/{waitlist_id}", tag = "bookings",
    params(("waitlist_id" = String, Path, description = "wlt_<region>_<32 hex>")),
    responses(
        (status = 200, description = "The entry", body = WaitlistDto),
        (status = 404, description = "No such entry of yours", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's entry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_entry(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let id = entry_id(&state, &raw)?;
    // The primary: an entry's state moves by triggers a replica may not have replayed yet, and
    // a waiter polling for their offer must see it at once.
    let entry = visible(store::get(&state.db, id.uuid).await?, &user, &id, false)?;
    Ok(axum::Json(WaitlistDto::render(&entry)))
}

/// Leave the line; an offer held goes to the next waiter at once.
#[utoipa::path(
    delete, path = "/v1/waitlist/{waitlist_id}", tag = "bookings",
    params(("waitlist_id" = String, Path, description = "wlt_<region>_<32 hex>")),
    responses(
        (status = 200, description = "Withdrawn", body = WaitlistDto),
        (status = 404, description = "No such entry of yours (ops may read entries, not withdraw them)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The entry is settled (booked, lapsed, expired or withdrawn)", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another region's entry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn withdraw(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Response> {
    let id = entry_id(&call.state, &raw)?;
    let mut pending = match call.begin(&[("waitlist_id", &id)], &()).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    // Someone else's entry is absent: read it first, in the same transaction.
    let owned = store::get(pending.conn(), id.uuid)
        .await
        .map_err(ApiError::from)
        .and_then(|e| visible(e, &call.user, &id, true));
    let done = match owned {
        Ok(_) => store::withdraw(pending.conn(), id.uuid)
            .await
            .map_err(ApiError::from)
            .and_then(|e| {
                e.ok_or_else(|| ApiError::NotFound(format!("waitlist entry {id} not found")))
            }),
        Err(e) => Err(e),
    };
    let (response, _) =
        idempotent::settle(pending, done, StatusCode::OK, WaitlistDto::render).await?;
    tracing::info!(user = %call.user.id, entry = %id, "left a waitlist");
    Ok(response)
}
