//! `POST /v{1,2}/quotes`: a priced, signed quote for a vehicle and a window.
//!
//! A quote is the only way to a price: the booking that follows presents the quote's token and
//! gets exactly that price, so the token binds user, vehicle, window, total, region and expiry.
//!
//! The price comes from the pricing orchestrator (`pricing/fetch.rs`: base, risk and demand in
//! parallel under one budget), is validated (`pricing/validate.rs`) and only then signed. A
//! quote whose risk or demand input fell back to a cached or neutral value says so: v2 lists
//! them in `degraded`, v1 in the `pricing-degraded` header.
//!
//! **Degraded quotes are not stored in L1.** L1 would otherwise serve the fallback price for
//! 60 s as if it were fresh, long after the model is back (with an open breaker a recompute
//! costs no remote call: the fallback answers at once, so skipping L1 is cheap exactly when
//! it happens). The token of a degraded quote is still valid and honoured: the customer was
//! shown that price.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::quote_token::QuoteClaims;
use domain::window::TimeWindow;
use uuid::Uuid;

use super::dto::{
    decimal, MoneyDto, MultipliersDto, PriceLineDto, QuoteRequest, QuoteV1, QuoteV2, WindowDto,
};
use crate::app::pricing::fetch::{self, QuoteFacts};
use crate::app::pricing::validate::{self, Baseline, Refusal};
use crate::app::pricing::{self, Customer};
use crate::app::surge;
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::http::versioned::{versioned, Version};
use crate::redis::cache::{CachedQuote, QuoteKey};
use crate::state::AppState;
use crate::store;
use crate::store::pricing::Refused;
use crate::store::vehicles::PricingFacts;

/// Parses and checks a window against the booking policy, naming the field at fault.
pub(crate) fn parse_window(
    state: &AppState,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ApiResult<TimeWindow> {
    let window = window_of(start, end)?;
    state
        .policy
        .check(&window, now)
        .map_err(|e| ApiError::field("start", e.to_string()))?;
    Ok(window)
}

/// A window's own rules (non-empty, whole minutes), naming the field at fault; the booking
/// policy, which depends on the time, is not checked.
pub(crate) fn window_of(start: DateTime<Utc>, end: DateTime<Utc>) -> ApiResult<TimeWindow> {
    TimeWindow::new(start, end).map_err(|e| {
        let field = if matches!(e, domain::window::WindowError::NotWholeMinute)
            && start.timestamp() % 60 != 0
        {
            "start"
        } else {
            "end"
        };
        ApiError::field(field, e.to_string())
    })
}

/// The vehicle's pricing facts and whether `window` is taken (advisory: the replica may
/// answer), or 404.
async fn vehicle_facts(
    state: &AppState,
    id: &VehicleId,
    window: &TimeWindow,
    now: DateTime<Utc>,
    user: &str,
) -> ApiResult<PricingFacts> {
    crate::http::admin::misdirected_unless_served(state, id.region, || format!("vehicle {id}"))?;
    crate::read_on!(state.reads.stale_ok(), |pool| {
        store::vehicles::quote_facts(pool, id, window, now, user).await
    })?
    .ok_or_else(|| ApiError::NotFound(format!("vehicle {id} not found")))
}

/// L2 key of the previous quote's total for a vehicle and window (the jump baseline).
fn baseline_key(vehicle: &VehicleId, window: &TimeWindow) -> String {
    format!(
        "l2:lastq:{vehicle}:{}:{}",
        window.start().timestamp(),
        window.end().timestamp()
    )
}

/// How long a baseline is kept: three quote lifetimes.
const BASELINE_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The previous total of this vehicle and window under the current pricing epoch.
async fn previous_total(state: &AppState, key: &str) -> (Option<u64>, Option<i64>) {
    let Some(epoch) = state.caches.pricing_epoch().await else {
        return (None, None);
    };
    let previous = state
        .caches
        .l2_get_json::<Baseline>("baseline", key)
        .await
        .filter(|b| b.epoch == epoch)
        .map(|b| b.total_minor);
    (Some(epoch), previous)
}

/// Counts, logs and records a refused price (the record is best effort: the refusal stands
/// even if the database cannot take the row).
async fn record_refusal(
    state: &AppState,
    user: &AuthUser,
    vehicle: &VehicleId,
    window: &TimeWindow,
    total: i64,
    refusal: &Refusal,
) {
    metrics::counter!("price_refusals_total", "reason" => refusal.reason()).increment(1);
    tracing::error!(%vehicle, user = %user.id, total, reason = refusal.reason(), detail = %refusal, "price refused");
    let detail = refusal.to_string();
    let recorded = store::pricing::record_refusal(
        &state.db,
        &Refused {
            vehicle,
            user_id: &user.id,
            start: window.start(),
            end: window.end(),
            total_minor: total,
            reason: refusal.reason(),
            detail: &detail,
        },
    )
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "could not record the price refusal");
    }
}

/// Computes a quote; shared by v1 and v2. Returns the quote, the L1 outcome and the degraded
/// inputs.
async fn make_quote(
    state: &AppState,
    user: &AuthUser,
    req: QuoteRequest,
) -> ApiResult<(Arc<CachedQuote>, &'static str, Vec<&'static str>)> {
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
            return Ok((cached, "hit", Vec::new()));
        }
    }
    let facts = vehicle_facts(state, &vehicle_id, &window, now, &user.id).await?;
    if let Some(bay) = req.destination_bay_id {
        let known = crate::read_on!(state.reads.stale_ok(), |pool| {
            store::vehicles::bay_in_region(pool, bay, vehicle_id.region).await
        })?;
        if !known {
            return Err(ApiError::field(
                "destination_bay_id",
                "no such parking bay in the vehicle's region",
            ));
        }
    }
    if facts.occupied {
        return Err(ApiError::Conflict(format!(
            "vehicle {vehicle_id} is not available for that window"
        )));
    }
    let tz = pricing::parse_tz(&facts.timezone)?;
    let baseline = baseline_key(&vehicle_id, &window);
    let quote_facts = QuoteFacts {
        user: &user.id,
        vehicle: &vehicle_id,
        window: &window,
        class: facts.class,
        cell: surge::cell_of(facts.lat, facts.lon, state.surge.resolution()),
    };
    let (fetched, (epoch, previous)) = tokio::join!(
        fetch::fetch(state, quote_facts),
        previous_total(state, &baseline)
    );
    let fetched = fetched?;
    let breakdown = pricing::quote_price(
        &fetched.ctx,
        &window,
        tz,
        fetched.signals,
        Customer {
            promo_code: req.promo_code.as_deref(),
            membership_tier: user.membership.as_deref(),
        },
        now,
    )?;
    if let Err(refusal) = validate::validate(
        &breakdown,
        &fetched.ctx.rate,
        vehicle_id.region,
        previous,
        state.config.pricing.max_jump_bp,
    ) {
        record_refusal(
            state,
            user,
            &vehicle_id,
            &window,
            breakdown.total.minor,
            &refusal,
        )
        .await;
        return Err(ApiError::PriceRefused(format!(
            "the computed price failed validation ({}); it was not quoted and operators were alerted",
            refusal.reason()
        )));
    }
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
    let quote = Arc::new(CachedQuote {
        claims,
        breakdown,
        token,
        rendered: Default::default(),
    });
    let degraded = fetched.degraded.clone();
    let store_quote = async {
        if let (Some(generation), true) = (generation, degraded.is_empty()) {
            state.caches.put_quote(&cache_key, generation, &quote).await;
        }
    };
    let store_baseline = async {
        if let Some(epoch) = epoch {
            let value = Baseline {
                total_minor: quote.claims.total.minor,
                epoch,
            };
            state
                .caches
                .l2_put_json(&baseline, &value, BASELINE_TTL)
                .await;
        }
    };
    tokio::join!(store_quote, store_baseline, fetched.remember(state));
    Ok((quote, "miss", degraded))
}

/// Response header listing the pricing inputs that used a fallback (`risk`, `demand`; empty
/// when every input was fresh).
pub(crate) const DEGRADED_HEADER: &str = "pricing-degraded";

/// `x-cache` and, when an input fell back, `pricing-degraded`.
fn quote_headers(cache: &'static str, degraded: &[&'static str]) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-cache", axum::http::HeaderValue::from_static(cache));
    if !degraded.is_empty() {
        if let Ok(value) = axum::http::HeaderValue::from_str(&degraded.join(",")) {
            headers.insert(DEGRADED_HEADER, value);
        }
    }
    headers
}

/// The quote in the body shape of `version`: encoded once per quote and version and kept
/// with the quote when nothing fell back (the body of a cached quote never changes; a
/// degraded quote is not cached and lists what fell back).
fn render(version: Version, quote: &CachedQuote, degraded: &[&'static str]) -> Response {
    let encode = || -> axum::body::Bytes {
        let body = match version {
            Version::V1 => serde_json::to_vec(&v1_body(quote)),
            Version::V2 => serde_json::to_vec(&v2_body(quote, degraded)),
        };
        // Plain data with string keys: encoding cannot fail; an empty body would be a bug.
        body.unwrap_or_default().into()
    };
    let body = if degraded.is_empty() {
        let slot = match version {
            Version::V1 => 0,
            Version::V2 => 1,
        };
        quote.rendered.get_or_init(slot, encode)
    } else {
        encode()
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn v1_body(quote: &CachedQuote) -> QuoteV1 {
    let claims = &quote.claims;
    QuoteV1 {
        quote_id: claims.quote_id,
        quote_token: quote.token.clone(),
        vehicle_id: claims.vehicle_id.to_string(),
        start: claims.window.start(),
        end: claims.window.end(),
        price: decimal(claims.total),
        currency: claims.total.currency.code().to_owned(),
        expires_at: claims.expires_at,
    }
}

fn v2_body(quote: &CachedQuote, degraded: &[&'static str]) -> QuoteV2 {
    let (claims, breakdown) = (&quote.claims, &quote.breakdown);
    QuoteV2 {
        quote_id: claims.quote_id,
        quote_token: quote.token.clone(),
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
        degraded: degraded.iter().map(|d| (*d).to_owned()).collect(),
        expires_at: claims.expires_at,
    }
}

versioned!(
    post, tag = "quotes", [request_body = QuoteRequest,],
    errors(
        400 "Malformed request",
        401 "Missing or invalid token",
        404 "No such vehicle",
        409 "Vehicle not available",
        421 "The vehicle belongs to another region's origin",
        422 "Invalid request",
        503 "Price refused by validation, or a dependency down",
    ),
    /// Get a priced quote (v1).
    create_quote_v1 "/v1/quotes" => (status = 201, description = "A signed quote", body = QuoteV1, headers(
        ("pricing-degraded" = String, description = "Pricing inputs that used a fallback because their source was slow or down (`risk`, `demand`, comma-separated); absent when every input was fresh"),
        ("x-cache" = String, description = "`hit` when answered from the L1 cache, else `miss`"),
    )),
    /// Get a priced quote with its itemised breakdown (v2).
    create_quote_v2 "/v2/quotes" => (status = 201, description = "A signed quote with breakdown", body = QuoteV2),
    |version| (State(state): State<AppState>, user: AuthUser, ApiJson(req): ApiJson<QuoteRequest>) -> ApiResult<Response> {
        let (quote, cache, degraded) = make_quote(&state, &user, req).await?;
        let headers = quote_headers(cache, &degraded);
        Ok((StatusCode::CREATED, headers, render(version, &quote, &degraded)).into_response())
    }
);
