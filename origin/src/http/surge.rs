//! `GET /v1/surge`: the surge grid (rules in `surge.rs`) for a point or a whole region, and
//! `POST /v1/admin/surge/recompute` for ops (recompute now instead of at the next tick).
//!
//! A point belongs to the region whose service area holds it (`domain::area`, `SERVICE_AREAS`):
//! outside every area is a 422 naming `lat`, in another origin's area a 421 (misdirected).

use axum::extract::State;
use axum::response::IntoResponse;
use domain::region::Region;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::{ops_region, served_region};
use crate::app::surge::{self, CellSurge, SurgeGrid};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::ApiQuery;
use crate::state::AppState;

/// Query of `GET /v1/surge`: a point (`lat` and `lon`) or a `region`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SurgeQuery {
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// EUW or EUN: the whole grid.
    pub region: Option<String>,
}

/// The surge at one point.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct SurgeAtPoint {
    pub region: String,
    /// H3 cell of the point.
    pub cell: String,
    pub resolution: u8,
    /// Published (smoothed) multiplier, e.g. 1.25.
    pub multiplier: f64,
    pub multiplier_bp: u32,
    /// The cell's inputs (absent for a cell without vehicles: ×1.0).
    pub detail: Option<CellSurge>,
    pub computed_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn grid_or_compute(state: &AppState, region: Region) -> ApiResult<std::sync::Arc<SurgeGrid>> {
    if let Some(grid) = state.surge.grid(region).await {
        return Ok(grid);
    }
    state
        .surge
        .recompute(region)
        .await
        .map_err(ApiError::Internal)
}

/// What `GET /v1/surge` answers: one of two shapes, by query (for the OpenAPI document).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[expect(
    dead_code,
    reason = "describes the two response shapes in the OpenAPI document; handlers build the JSON directly"
)]
pub(crate) enum SurgeAnswer {
    /// For `lat` and `lon`.
    Point(SurgeAtPoint),
    /// For `region`.
    Grid(crate::app::surge::SurgeGrid),
}

/// The surge multiplier at a point (`lat`, `lon`) or a region's whole grid (`region`).
#[utoipa::path(
    get, path = "/v1/surge", tag = "pricing",
    params(SurgeQuery),
    responses(
        (status = 200, description = "SurgeAtPoint for a point, SurgeGrid for a region", body = SurgeAnswer),
        (status = 400, description = "Neither a point nor a region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "The point or region belongs to another origin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid coordinate, or outside every service area", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn surge_v1(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiQuery(query): ApiQuery<SurgeQuery>,
) -> ApiResult<axum::response::Response> {
    match (query.lat, query.lon, &query.region) {
        (Some(lat), Some(lon), None) => {
            if !(-90.0..=90.0).contains(&lat) {
                return Err(ApiError::field("lat", "must be between -90 and 90"));
            }
            if !(-180.0..=180.0).contains(&lon) {
                return Err(ApiError::field("lon", "must be between -180 and 180"));
            }
            let cell = surge::cell_of(lat, lon, state.surge.resolution())
                .ok_or_else(|| ApiError::field("lat", "not a valid coordinate"))?;
            let point = domain::search::GeoPoint::new(lat, lon)
                .map_err(|e| ApiError::field("lat", e.to_string()))?;
            // The point's owner by service area: none is a 422, another origin's is a 421.
            let region = state.config.areas.region_of(&point).ok_or_else(|| {
                ApiError::field(
                    "lat",
                    format!("lat/lon: ({lat}, {lon}) is outside every service area"),
                )
            })?;
            super::admin::misdirected_unless_served(&state, region, || {
                format!("the point ({lat}, {lon})")
            })?;
            let grid = grid_or_compute(&state, region).await?;
            let m = grid.multiplier(cell);
            Ok(axum::Json(SurgeAtPoint {
                region: region.code().to_owned(),
                cell: cell.to_string(),
                resolution: state.surge.resolution(),
                multiplier: m.as_f64(),
                multiplier_bp: m.bp(),
                detail: grid.cells.get(&cell.to_string()).cloned(),
                computed_at: Some(grid.computed_at),
            })
            .into_response())
        }
        (None, None, Some(code)) => {
            let region = served_region(&state, code)?;
            let grid = grid_or_compute(&state, region).await?;
            Ok(axum::Json(grid.as_ref().clone()).into_response())
        }
        _ => Err(ApiError::BadRequest(
            "pass either lat and lon, or region".into(),
        )),
    }
}

/// Query of `POST /v1/admin/surge/recompute`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecomputeQuery {
    /// EUW or EUN.
    pub region: String,
}

/// Recompute a region's surge grid now (ops).
#[utoipa::path(
    post, path = "/v1/admin/surge/recompute", tag = "admin",
    params(RecomputeQuery),
    responses(
        (status = 200, description = "The new grid", body = SurgeGrid),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn recompute(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<RecomputeQuery>,
) -> ApiResult<impl IntoResponse> {
    let region = ops_region(&state, &user, &query.region)?;
    let grid = state
        .surge
        .recompute(region)
        .await
        .map_err(ApiError::Internal)?;
    Ok(axum::Json(grid.as_ref().clone()))
}
