//! `GET /v{1,2}/vehicles/search`: available vehicles near a point for a window.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::search::{GeoPoint, SearchCursor};
use domain::vehicle::VehicleClass;

use super::dto::{SearchPage, SearchParams, VehicleHitV1, VehicleHitV2};
use crate::app::search::{self, Hit, SearchQuery, MAX_LIMIT, MAX_RADIUS_M};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiQuery;
use crate::http::quotes::parse_window;
use crate::http::versioned::{versioned, Version};
use crate::state::AppState;

const FUELS: [&str; 4] = ["petrol", "diesel", "hybrid", "electric"];

fn validate(state: &AppState, p: SearchParams) -> ApiResult<SearchQuery> {
    let now = Utc::now();
    let center =
        GeoPoint::new(p.lat, p.lon).map_err(|e| ApiError::BadRequest(format!("lat/lon: {e}")))?;
    let radius_m = p.radius_m.unwrap_or(2_000);
    if !(1..=MAX_RADIUS_M).contains(&radius_m) {
        return Err(ApiError::BadRequest(format!(
            "radius_m: must be between 1 and {MAX_RADIUS_M}"
        )));
    }
    near_served_area(state, &center, radius_m)?;
    let limit = p.limit.unwrap_or(20);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let class = match &p.class {
        Some(class) => Some(class.parse::<VehicleClass>().map_err(|_| {
            ApiError::BadRequest(format!("class: must be one of {}", VehicleClass::names()))
        })?),
        None => None,
    };
    let fuel = match (p.fuel, p.electric) {
        (Some(f), Some(true)) if f != "electric" => {
            return Err(ApiError::BadRequest(
                "fuel and electric=true contradict each other".into(),
            ))
        }
        (_, Some(true)) => Some("electric".to_owned()),
        (f, _) => f,
    };
    if let Some(f) = &fuel {
        if !FUELS.contains(&f.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "fuel: must be one of {}",
                FUELS.join(", ")
            )));
        }
    }
    if p.min_seats.is_some_and(|s| !(1..=9).contains(&s)) {
        return Err(ApiError::BadRequest(
            "min_seats: must be between 1 and 9".into(),
        ));
    }
    if p.max_price_minor.is_some_and(|m| m < 0) {
        return Err(ApiError::BadRequest(
            "max_price_minor: must not be negative".into(),
        ));
    }
    let window = parse_window(state, p.start, p.end, now)?;
    let mut query = SearchQuery {
        center,
        radius_m,
        window,
        class,
        min_seats: p.min_seats,
        fuel,
        max_price_minor: p.max_price_minor,
        limit,
        cursor: None,
    };
    if let Some(raw) = p.cursor {
        let cursor =
            SearchCursor::decode(&raw).map_err(|e| ApiError::BadRequest(format!("cursor: {e}")))?;
        if cursor.query_hash != query.fingerprint() {
            return Err(ApiError::BadRequest(
                "cursor: it belongs to a different search".into(),
            ));
        }
        query.cursor = Some(cursor);
    }
    Ok(query)
}

/// 422 naming `lat` when the circle is outside every service area (nobody serves it), 421 when
/// it only reaches other origins' areas (the edge should have sent it there). A circle that
/// crosses a boundary is served by each origin it reaches, for its own vehicles: the edge asks
/// both and merges.
fn near_served_area(state: &AppState, center: &GeoPoint, radius_m: u32) -> ApiResult<()> {
    let near = state.config.areas.regions_near(center, f64::from(radius_m));
    if near.is_empty() {
        return Err(ApiError::field(
            "lat",
            format!(
                "lat/lon: the search circle ({}, {}, {radius_m} m) is outside every service area",
                center.lat(),
                center.lon()
            ),
        ));
    }
    if near.iter().any(|r| state.config.regions.contains(r)) {
        return Ok(());
    }
    let first = near[0];
    crate::http::admin::misdirected_unless_served(state, first, || {
        format!(
            "the search circle around ({}, {})",
            center.lat(),
            center.lon()
        )
    })
}

/// Validates and runs a search; shared by v1 and v2.
async fn run(state: &AppState, p: SearchParams) -> ApiResult<search::Page> {
    let query = validate(state, p)?;
    let now = Utc::now();
    Ok(crate::read_on!(state.reads.stale_ok(), |pool| {
        search::search(
            pool,
            &state.availability,
            &state.caches,
            &state.config.regions,
            &query,
            now,
        )
        .await
    })?)
}

/// The page in the body shape of one version.
fn render<T>(page: search::Page) -> Response
where
    T: serde::Serialize + for<'h> From<&'h Hit>,
{
    axum::Json(SearchPage {
        items: page.hits.iter().map(T::from).collect::<Vec<T>>(),
        next_cursor: page.next.map(|c| c.encode()),
    })
    .into_response()
}

versioned!(
    get, tag = "search", [params(SearchParams),],
    errors(
        400 "Bad query",
        401 "Missing or invalid token",
        421 "The point is in another origin's service area",
        422 "Invalid window, or a point outside every service area",
    ),
    /// Search available vehicles near a point (v1).
    search_v1 "/v1/vehicles/search" => (status = 200, description = "Available vehicles, nearest first, then cheapest", body = SearchPage<VehicleHitV1>),
    /// Search available vehicles near a point (v2).
    search_v2 "/v2/vehicles/search" => (status = 200, description = "Available vehicles, nearest first, then cheapest", body = SearchPage<VehicleHitV2>),
    |version| (State(state): State<AppState>, _user: AuthUser, ApiQuery(p): ApiQuery<SearchParams>) -> ApiResult<Response> {
        let page = run(&state, p).await?;
        Ok(match version {
            Version::V1 => render::<VehicleHitV1>(page),
            Version::V2 => render::<VehicleHitV2>(page),
        })
    }
);
