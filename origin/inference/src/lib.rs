//! The reference AI inference service: the HTTP contract the origin's pricing orchestrator
//! calls (`origin::inference`, documented in the origin's `/openapi.json`), served from the
//! same PostgreSQL the origin writes, through the read-only role `inference_ro` (created by the
//! migrations; `default_transaction_read_only` is on for it, so even a bug cannot write).
//!
//! * `POST /v1/risk-score` `{user_id, vehicle_id, region, start, end}` → `{score, model_version}`
//! * `POST /v1/demand` `{region, zones: [h3 cell], buckets: [hour start]}` →
//!   `{predictions: [{zone, bucket, demand, supply}], model_version}`
//! * `GET /healthz`
//!
//! The models are in [`model`]; this module is the adapter (HTTP, SQL). The service keeps no
//! state of its own, so any number of instances can run behind a load balancer.

pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use h3o::{CellIndex, LatLng};
use sqlx::PgPool;

// The contract's types, shared with the origin's client (defined once in `inference-api`).
pub use inference_api::{
    DemandPrediction, DemandRequest, DemandResponse, RiskRequest, RiskResponse,
};

/// Most zones × buckets per demand request (a quote asks 1 × 6, a grid ~50 × 1).
pub const MAX_CELLS: usize = 5_000;

/// A 4xx or 5xx with a JSON `{"error": …}` body.
#[derive(Debug)]
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(error = %self.1, "inference request failed");
        }
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
    }
}

fn invalid(detail: impl Into<String>) -> Failure {
    Failure(StatusCode::UNPROCESSABLE_ENTITY, detail.into())
}

fn region_code(raw: &str) -> Result<&'static str, Failure> {
    match raw.to_ascii_uppercase().as_str() {
        "EUW" => Ok("EUW"),
        "EUN" => Ok("EUN"),
        _ => Err(invalid(format!("unknown region {raw:?} (EUW or EUN)"))),
    }
}

async fn healthz(State(db): State<PgPool>) -> Response {
    match sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(&db)
        .await
    {
        Ok(_) => Json(serde_json::json!({ "status": "ok", "model_version": model::MODEL_VERSION }))
            .into_response(),
        Err(e) => Failure::from(e).into_response(),
    }
}

/// Counts a user's history (see [`model::History`]).
pub async fn history(db: &PgPool, user: &str, now: DateTime<Utc>) -> sqlx::Result<model::History> {
    let (bookings, cancelled, expired, completed, late, first): (
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        "select count(*),
                count(*) filter (where b.status = 'CANCELLED'),
                count(*) filter (where b.status = 'FAILED'),
                count(*) filter (where b.status = 'COMPLETED'),
                count(*) filter (where b.status = 'COMPLETED' and exists (
                    select 1 from booking_history h
                     where h.booking_id = b.id and h.to_status = 'COMPLETED' and h.at > upper(b.period))),
                min(b.created_at)
           from bookings b where b.user_id = $1",
    )
    .bind(user)
    .fetch_one(db)
    .await?;
    let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(model::History {
        bookings: count(bookings),
        cancelled: count(cancelled),
        expired: count(expired),
        completed: count(completed),
        late: count(late),
        account_age_days: first.map_or(0.0, |f| {
            now.signed_duration_since(f).num_seconds().max(0) as f64 / 86_400.0
        }),
    })
}

async fn risk_score(
    State(db): State<PgPool>,
    Json(req): Json<RiskRequest>,
) -> Result<Json<RiskResponse>, Failure> {
    region_code(&req.region)?;
    if req.user_id.is_empty() || req.user_id.len() > 255 {
        return Err(invalid("user_id must be 1 to 255 characters"));
    }
    if req.end <= req.start {
        return Err(invalid("end must be after start"));
    }
    let h = history(&db, &req.user_id, Utc::now()).await?;
    // The vehicle's class, when the id names one we know (`veh_<region>_<uuid hex>`).
    let uuid = req
        .vehicle_id
        .rsplit('_')
        .next()
        .and_then(|hex| sqlx::types::Uuid::try_parse(hex).ok());
    let class: Option<String> = match uuid {
        Some(id) => {
            sqlx::query_scalar("select class from vehicles where id = $1")
                .bind(id)
                .fetch_optional(&db)
                .await?
        }
        None => None,
    };
    Ok(Json(RiskResponse {
        score: model::risk_score(&h, class.as_deref().unwrap_or("")),
        model_version: model::MODEL_VERSION.to_owned(),
    }))
}

/// One booking seen by the demand model: (window start, created at).
type Observation = (DateTime<Utc>, DateTime<Utc>);

/// Predicts demand and supply for zones and hour buckets at `now`.
pub async fn predict(
    db: &PgPool,
    region: &str,
    zones: &[CellIndex],
    buckets: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Result<Vec<DemandPrediction>, Failure> {
    // Bays of the region, each in the zone (at that zone's resolution) it falls in.
    let bays: Vec<(sqlx::types::Uuid, f64, f64, String, i64)> = sqlx::query_as(
        "select b.id, b.lat, b.lon, b.timezone,
                (select count(*) from vehicles v where v.bay_id = b.id and v.status = 'active')
           from parking_bays b where b.region = $1",
    )
    .bind(region)
    .fetch_all(db)
    .await?;
    let mut zone_of_bay: HashMap<sqlx::types::Uuid, CellIndex> = HashMap::new();
    let mut supply: HashMap<CellIndex, i64> = HashMap::new();
    let mut tz_of: HashMap<CellIndex, Tz> = HashMap::new();
    for zone in zones {
        for (id, lat, lon, tz, vehicles) in &bays {
            let Ok(point) = LatLng::new(*lat, *lon) else {
                continue;
            };
            if point.to_cell(zone.resolution()) == *zone {
                zone_of_bay.insert(*id, *zone);
                *supply.entry(*zone).or_default() += vehicles;
                if let Ok(tz) = tz.parse::<Tz>() {
                    tz_of.insert(*zone, tz);
                }
            }
        }
    }
    let bay_ids: Vec<sqlx::types::Uuid> = zone_of_bay.keys().copied().collect();
    let rows: Vec<(sqlx::types::Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "select bay_id, lower(period), created_at from bookings
          where bay_id = any($1) and created_at > $2",
    )
    .bind(&bay_ids)
    .bind(now - chrono::Duration::weeks(model::DEMAND_WEEKS))
    .fetch_all(db)
    .await?;
    let mut observations: BTreeMap<CellIndex, Vec<Observation>> = BTreeMap::new();
    for (bay, start, created) in rows {
        if let Some(zone) = zone_of_bay.get(&bay) {
            observations
                .entry(*zone)
                .or_default()
                .push((start, created));
        }
    }
    let default_tz = if region == "EUN" {
        chrono_tz::Europe::Stockholm
    } else {
        chrono_tz::Europe::Berlin
    };
    let mut predictions = Vec::with_capacity(zones.len() * buckets.len());
    for zone in zones {
        let tz = tz_of.get(zone).copied().unwrap_or(default_tz);
        let seen = observations.get(zone).map(Vec::as_slice).unwrap_or(&[]);
        let vehicles = supply.get(zone).copied().unwrap_or(0) as f64;
        for bucket in buckets {
            predictions.push(DemandPrediction {
                zone: zone.to_string(),
                bucket: *bucket,
                demand: model::predicted_demand(seen, vehicles, *bucket, tz, now),
                supply: vehicles,
            });
        }
    }
    Ok(predictions)
}

async fn demand(
    State(db): State<PgPool>,
    Json(req): Json<DemandRequest>,
) -> Result<Json<DemandResponse>, Failure> {
    let region = region_code(&req.region)?;
    if req.zones.is_empty() || req.buckets.is_empty() {
        return Err(invalid("zones and buckets must not be empty"));
    }
    if req.zones.len().saturating_mul(req.buckets.len()) > MAX_CELLS {
        return Err(invalid(format!("at most {MAX_CELLS} zone × bucket pairs")));
    }
    let zones = req
        .zones
        .iter()
        .map(|z| {
            z.parse::<CellIndex>()
                .map_err(|_| invalid(format!("zone {z:?} is not an H3 cell index")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let predictions = predict(&db, region, &zones, &req.buckets, Utc::now()).await?;
    Ok(Json(DemandResponse {
        predictions,
        model_version: model::MODEL_VERSION.to_owned(),
    }))
}

/// The service's routes.
pub fn router(db: PgPool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/risk-score", post(risk_score))
        .route("/v1/demand", post(demand))
        .with_state(db)
}

/// Binds `addr` and serves until `stop` resolves; returns the bound address at once.
pub async fn serve(
    db: PgPool,
    addr: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(db);
    let handle = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    });
    Ok((bound, handle))
}
