//! `POST /v{1,2}/quotes`: a priced, signed quote for a vehicle and a window.
//!
//! A quote is the only way to a price: the booking that follows presents the quote's token and
//! gets exactly that price, so the token binds user, vehicle, window, total, region and expiry.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::quote_token::QuoteClaims;
use domain::window::TimeWindow;
use uuid::Uuid;

use super::dto::{
    decimal, MoneyDto, MultipliersDto, PriceLineDto, QuoteRequest, QuoteV1, QuoteV2, WindowDto,
};
use crate::auth::AuthUser;
use crate::cache::{CachedQuote, QuoteKey};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::pricing::{self, Customer, Signals};
use crate::state::AppState;

/// Parses and checks a window against the booking policy, naming the field at fault.
pub fn parse_window(
    state: &AppState,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ApiResult<TimeWindow> {
    let window = TimeWindow::new(start, end).map_err(|e| {
        let field = if matches!(e, domain::window::WindowError::NotWholeMinute)
            && start.timestamp() % 60 != 0
        {
            "start"
        } else {
            "end"
        };
        ApiError::field(field, e.to_string())
    })?;
    state
        .policy
        .check(&window, now)
        .map_err(|e| ApiError::field("start", e.to_string()))?;
    Ok(window)
}

/// A vehicle's pricing facts.
struct VehicleFacts {
    class: String,
    timezone: String,
}

async fn vehicle_facts(state: &AppState, id: &VehicleId) -> ApiResult<VehicleFacts> {
    if !state.config.regions.contains(&id.region) {
        return Err(ApiError::NotFound(format!(
            "vehicle {id} belongs to region {} which this origin does not serve",
            id.region
        )));
    }
    let row: Option<(String, String)> = sqlx::query_as(
        "select v.class, b.timezone from vehicles v join parking_bays b on b.id = v.bay_id
          where v.id = $1 and v.region = $2 and v.status = 'active'",
    )
    .bind(id.uuid)
    .bind(id.region.code())
    .fetch_optional(&state.db)
    .await?;
    let (class, timezone) =
        row.ok_or_else(|| ApiError::NotFound(format!("vehicle {id} not found")))?;
    Ok(VehicleFacts { class, timezone })
}

/// Computes a quote; shared by v1 and v2.
async fn make_quote(
    state: &AppState,
    user: &AuthUser,
    req: QuoteRequest,
) -> ApiResult<(CachedQuote, &'static str)> {
    let now = Utc::now();
    let vehicle_id: VehicleId = req
        .vehicle_id
        .parse()
        .map_err(|e: domain::ids::IdError| ApiError::field("vehicle_id", e.to_string()))?;
    let window = parse_window(state, req.start, req.end, now)?;
    if let Some(code) = &req.promo_code {
        if code.is_empty() || code.len() > 64 {
            return Err(ApiError::field("promo_code", "must be 1 to 64 characters"));
        }
    }
    // L1: the same caller asking the same question within 60 s gets the same quote, without
    // a single PostgreSQL query.
    let cache_key = QuoteKey {
        user: &user.id,
        vehicle: &vehicle_id,
        destination_bay: req.destination_bay_id,
        window: &window,
        promo_code: req.promo_code.as_deref(),
        membership: user.membership.as_deref(),
    };
    let (cached, generation) = state.caches.get_quote(&cache_key).await;
    if let Some(cached) = cached {
        if cached.claims.expires_at > now + chrono::Duration::seconds(30) {
            return Ok((cached, "hit"));
        }
    }
    let facts = vehicle_facts(state, &vehicle_id).await?;
    if let Some(bay) = req.destination_bay_id {
        let exists: bool = sqlx::query_scalar(
            "select exists(select 1 from parking_bays where id = $1 and region = $2)",
        )
        .bind(bay)
        .bind(vehicle_id.region.code())
        .fetch_one(&state.db)
        .await?;
        if !exists {
            return Err(ApiError::field(
                "destination_bay_id",
                "no such parking bay in the vehicle's region",
            ));
        }
    }
    let taken: bool = sqlx::query_scalar(
        "select exists(select 1 from bookings
                        where vehicle_id = $1 and status in ('RESERVING', 'CONFIRMED', 'IN_PROGRESS')
                          and period && tstzrange($2, $3, '[)')
                          and not (status = 'RESERVING' and hold_expires_at <= $4))",
    )
    .bind(vehicle_id.uuid)
    .bind(window.start())
    .bind(window.end())
    .bind(now)
    .fetch_one(&state.db)
    .await?;
    if taken {
        return Err(ApiError::Conflict(format!(
            "vehicle {vehicle_id} is not available for that window"
        )));
    }
    let ctx = state
        .caches
        .pricing(&state.db, vehicle_id.region, &facts.class)
        .await?;
    let tz = pricing::parse_tz(&facts.timezone)?;
    let breakdown = pricing::quote_price(
        &ctx,
        &window,
        tz,
        Signals::NEUTRAL,
        Customer {
            promo_code: req.promo_code.as_deref(),
            membership_tier: user.membership.as_deref(),
        },
        now,
    )?;
    let ttl = chrono::Duration::from_std(state.config.quote_ttl)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("quote ttl: {e}")))?;
    let claims = QuoteClaims {
        quote_id: Uuid::now_v7(),
        user_id: user.id.clone(),
        vehicle_id,
        region: vehicle_id.region,
        window,
        total: breakdown.total,
        breakdown: breakdown.lines.clone(),
        destination_bay_id: req.destination_bay_id,
        issued_at: now,
        expires_at: now + ttl,
    };
    let token = state.quotes.sign(&claims);
    let quote = CachedQuote {
        claims,
        breakdown,
        token,
    };
    if let Some(generation) = generation {
        state.caches.put_quote(&cache_key, generation, &quote).await;
    }
    Ok((quote, "miss"))
}

/// Get a priced quote (v1).
#[utoipa::path(
    post, path = "/v1/quotes", tag = "quotes",
    request_body = QuoteRequest,
    responses(
        (status = 201, description = "A signed quote", body = QuoteV1),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Vehicle not available", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_quote_v1(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<QuoteRequest>,
) -> ApiResult<impl IntoResponse> {
    let (quote, cache) = make_quote(&state, &user, req).await?;
    let CachedQuote { claims, token, .. } = quote;
    Ok((
        StatusCode::CREATED,
        [("x-cache", cache)],
        axum::Json(QuoteV1 {
            quote_id: claims.quote_id,
            quote_token: token,
            vehicle_id: claims.vehicle_id.to_string(),
            start: claims.window.start(),
            end: claims.window.end(),
            price: decimal(claims.total),
            currency: claims.total.currency.code().to_owned(),
            expires_at: claims.expires_at,
        }),
    ))
}

/// Get a priced quote with its itemised breakdown (v2).
#[utoipa::path(
    post, path = "/v2/quotes", tag = "quotes",
    request_body = QuoteRequest,
    responses(
        (status = 201, description = "A signed quote with breakdown", body = QuoteV2),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Vehicle not available", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_quote_v2(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<QuoteRequest>,
) -> ApiResult<impl IntoResponse> {
    let (quote, cache) = make_quote(&state, &user, req).await?;
    let CachedQuote {
        claims,
        breakdown,
        token,
    } = quote;
    Ok((
        StatusCode::CREATED,
        [("x-cache", cache)],
        axum::Json(QuoteV2 {
            quote_id: claims.quote_id,
            quote_token: token,
            vehicle_id: claims.vehicle_id.to_string(),
            region: claims.region.code().to_owned(),
            window: WindowDto {
                start: claims.window.start(),
                end: claims.window.end(),
            },
            total: MoneyDto::from(claims.total),
            breakdown: breakdown.lines.iter().map(PriceLineDto::from).collect(),
            multipliers: MultipliersDto {
                time_of_day: breakdown.time_multiplier.as_f64(),
                surge: breakdown.surge.as_f64(),
                risk: breakdown.risk.as_f64(),
                discount_bp: breakdown.discount_bp,
            },
            expires_at: claims.expires_at,
        }),
    ))
}
