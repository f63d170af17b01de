//! `/v1/admin/webhooks`: the endpoints ops register to hear a region's events, signed in the
//! Standard Webhooks scheme (delivery: `crate::webhooks`; signatures: `domain::webhook`).
//!
//! An endpoint belongs to one region (`?region=` when it is registered; its id,
//! `whk_<region>_<hex>`, names it after that, so the edges route it as they route a vehicle's
//! writes). Its secret is shown once, in the answer that made it; a rotation answers the new
//! one and keeps the old valid for an overlap, during which deliveries carry both signatures.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::ids::WebhookId;
use domain::region::Region;
use domain::webhook::WebhookSecret;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::Topic;
use crate::http::admin::{misdirected_unless_served, queried_region, require_ops};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, WriteCall};
use crate::http::idempotent;
use crate::state::AppState;
use crate::store::idempotency::Begun;
use crate::store::webhooks::{self as store, Delivery, Endpoint, NewEndpoint};

/// The longest rotation overlap (7 days).
const MAX_OVERLAP_SECS: u32 = 7 * 86_400;

/// Body of `POST /v1/admin/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/bookings", "event_types": ["booking.created", "booking.cancelled"]}))]
pub(crate) struct WebhookRequest {
    /// Where deliveries are POSTed: `https` (or `http`), a public address (checked now and at
    /// every connection), no user info, at most 2048 characters.
    pub url: String,
    /// The event types delivered (topic names, e.g. `booking.created`): 1 to 13, each known.
    pub event_types: Vec<String>,
}

/// Query naming the region an endpoint is registered in.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RegionQuery {
    /// `EUW` or `EUN`: the region whose events the endpoint hears.
    pub region: Option<String>,
}

/// Query of a region's endpoint list.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// `EUW` or `EUN`.
    pub region: Option<String>,
    /// 1–200 (default 50), newest first.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// Query of a delivery log.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LimitQuery {
    /// 1–200 (default 50), newest first.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// Body of `POST …/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    /// How long the old secret stays valid beside the new one (0–604800 s, default 86400).
    #[schema(maximum = 604800)]
    pub overlap_secs: Option<u32>,
}

/// An endpoint as ops see it (never its secrets).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct WebhookDto {
    /// `whk_<region>_<32 hex>`.
    pub id: String,
    pub region: String,
    pub url: String,
    pub event_types: Vec<String>,
    /// Off after sustained failure (see `disabled_reason`) until ops enable it again.
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed (none: the last attempt succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    /// While a rotation overlaps: when the previous secret stops signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookDto {
    fn render(e: &Endpoint, now: DateTime<Utc>) -> Self {
        let region = e.region.parse::<Region>().unwrap_or(Region::Euw);
        WebhookDto {
            id: WebhookId::new(region, e.id).to_string(),
            region: e.region.clone(),
            url: e.url.clone(),
            event_types: e.event_types.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            failing_since: e.failing_since,
            previous_secret_until: e.previous_until.filter(|u| *u > now),
            created_by: e.created_by.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// An endpoint with its new secret: the only answer that shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct WebhookWithSecret {
    pub webhook: WebhookDto,
    /// `whsec_<base64>`: keep it; it is not shown again.
    pub secret: String,
}

fn limit_of(limit: Option<u32>) -> ApiResult<i64> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 200"));
    }
    Ok(i64::from(limit))
}

/// The endpoint of the path, for ops: 403 without the role, 404 for a malformed id, 421 for
/// another origin's endpoint.
fn ops_webhook(state: &AppState, user: &AuthUser, raw: &str) -> ApiResult<WebhookId> {
    require_ops(user)?;
    let id: WebhookId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("webhook {raw:?} not found")))?;
    misdirected_unless_served(state, id.region, || format!("webhook {id}"))?;
    Ok(id)
}

fn not_found(id: &WebhookId) -> ApiError {
    ApiError::NotFound(format!("webhook {id} not found"))
}

/// A new random secret (32 bytes).
fn new_secret() -> ApiResult<WebhookSecret> {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    WebhookSecret::from_key(&key)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("webhook secret")))
}

/// The event types, each a known topic, without repeats, in the order given.
fn event_types(raw: &[String]) -> ApiResult<Vec<String>> {
    if raw.is_empty() || raw.len() > Topic::ALL.len() {
        return Err(ApiError::field(
            "event_types",
            format!("between 1 and {} event types", Topic::ALL.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for name in raw {
        if !Topic::ALL.iter().any(|t| t.as_str() == name) {
            let known: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
            return Err(ApiError::field(
                "event_types",
                format!("{name:?} is not an event type; known: {}", known.join(", ")),
            ));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// Register an endpoint for a region's events.
#[utoipa::path(
    post, path = "/v1/admin/webhooks", tag = "admin",
    params(RegionQuery),
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "Registered; the secret is in this answer only", body = WebhookWithSecret),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's region", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid URL (form or address), event types or region (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_webhook(
    call: WriteCall,
    ApiQuery(query): ApiQuery<RegionQuery>,
    ApiJson(body): ApiJson<WebhookRequest>,
) -> ApiResult<Response> {
    let region = queried_region(
        &call.state,
        &call.user,
        query.region.as_deref(),
        "name the region whose events it hears: EUW or EUN",
    )?;
    let types = event_types(&body.event_types)?;
    let url = crate::webhooks::guard::check_url(
        body.url.trim(),
        call.state.config.webhooks.allow_private,
    )
    .await
    .map_err(|e| ApiError::field("url", e))?;
    // The region is in the query, not the route: it is fingerprinted with the body.
    let mut pending = match call.begin(&[], &(region.code(), &body)).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let secret = new_secret()?;
    let secret_text = secret.to_text();
    let id = Uuid::now_v7();
    let done = store::create(
        pending.conn(),
        &NewEndpoint {
            id,
            region: region.code(),
            url: url.as_str(),
            event_types: &types,
            secret: &secret_text,
            created_by: &call.user.id,
        },
    )
    .await
    .map_err(ApiError::from);
    let now = Utc::now();
    let (response, made) =
        idempotent::settle(pending, done, StatusCode::CREATED, |e| WebhookWithSecret {
            webhook: WebhookDto::render(e, now),
            secret: secret_text.clone(),
        })
        .await?;
    tracing::info!(actor = %call.user.id, webhook = %WebhookId::new(region, made.id), url = %made.url, "webhook registered");
    Ok(response)
}

/// A region's endpoints, newest first.
#[utoipa::path(
    get, path = "/v1/admin/webhooks", tag = "admin",
    params(ListQuery),
    responses(
        (status = 200, description = "`items`: the endpoints", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's region", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing region or invalid limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    let region = queried_region(
        &state,
        &user,
        query.region.as_deref(),
        "name the region: EUW or EUN",
    )?;
    let limit = limit_of(query.limit)?;
    let now = Utc::now();
    let items: Vec<WebhookDto> = store::list(&state.db, region.code(), limit)
        .await?
        .iter()
        .map(|e| WebhookDto::render(e, now))
        .collect();
    Ok(axum::Json(serde_json::json!({ "items": items })))
}

/// One endpoint.
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{webhook_id}", tag = "admin",
    params(("webhook_id" = String, Path, description = "whk_<region>_<32 hex>")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's endpoint", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_webhook(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let id = ops_webhook(&state, &user, &raw)?;
    let endpoint = store::get(&state.db, id.uuid)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(WebhookDto::render(&endpoint, Utc::now())))
}

/// Remove an endpoint (and its delivery log): nothing more is sent to it.
#[utoipa::path(
    delete, path = "/v1/admin/webhooks/{webhook_id}", tag = "admin",
    params(("webhook_id" = String, Path, description = "whk_<region>_<32 hex>")),
    responses(
        (status = 200, description = "Removed; the endpoint as it was", body = WebhookDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's endpoint", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_webhook(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Response> {
    change_endpoint(call, &raw, Change::Delete).await
}

/// The two body-less changes of an endpoint; both answer with the endpoint (as it was, or now).
#[derive(Clone, Copy)]
enum Change {
    Delete,
    Enable,
}

async fn change_endpoint(call: WriteCall, raw: &str, change: Change) -> ApiResult<Response> {
    let id = ops_webhook(&call.state, &call.user, raw)?;
    let mut pending = match call.begin(&[("webhook_id", &id)], &()).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let changed = match change {
        Change::Delete => store::delete(pending.conn(), id.uuid).await,
        Change::Enable => store::enable(pending.conn(), id.uuid).await,
    };
    let done = changed
        .map_err(ApiError::from)
        .and_then(|e| e.ok_or_else(|| not_found(&id)));
    let now = Utc::now();
    let (response, _) = idempotent::settle(pending, done, StatusCode::OK, |e| {
        WebhookDto::render(e, now)
    })
    .await?;
    let what = match change {
        Change::Delete => "webhook removed",
        Change::Enable => "webhook enabled",
    };
    tracing::info!(actor = %call.user.id, webhook = %id, "{what}");
    Ok(response)
}

/// A new secret; the old one keeps signing (beside it) for the overlap.
#[utoipa::path(
    post, path = "/v1/admin/webhooks/{webhook_id}/rotate", tag = "admin",
    params(("webhook_id" = String, Path, description = "whk_<region>_<32 hex>")),
    request_body = RotateRequest,
    responses(
        (status = 200, description = "Rotated; the new secret is in this answer only", body = WebhookWithSecret),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid overlap", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rotate_secret(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<RotateRequest>,
) -> ApiResult<Response> {
    let id = ops_webhook(&call.state, &call.user, &raw)?;
    let overlap = body.overlap_secs.unwrap_or(86_400);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ApiError::field(
            "overlap_secs",
            format!("at most {MAX_OVERLAP_SECS} (7 days)"),
        ));
    }
    let mut pending = match call.begin(&[("webhook_id", &id)], &body).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let secret = new_secret()?.to_text();
    let now = Utc::now();
    let until = now + chrono::Duration::seconds(i64::from(overlap));
    let done = store::rotate(pending.conn(), id.uuid, &secret, until)
        .await
        .map_err(ApiError::from)
        .and_then(|e| e.ok_or_else(|| not_found(&id)));
    let (response, _) = idempotent::settle(pending, done, StatusCode::OK, |e| WebhookWithSecret {
        webhook: WebhookDto::render(e, now),
        secret: secret.clone(),
    })
    .await?;
    tracing::info!(actor = %call.user.id, webhook = %id, overlap, "webhook secret rotated");
    Ok(response)
}

/// Turn an endpoint on again after the dispatcher disabled it.
#[utoipa::path(
    post, path = "/v1/admin/webhooks/{webhook_id}/enable", tag = "admin",
    params(("webhook_id" = String, Path, description = "whk_<region>_<32 hex>")),
    responses(
        (status = 200, description = "Enabled", body = WebhookDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's endpoint", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn enable_webhook(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Response> {
    change_endpoint(call, &raw, Change::Enable).await
}

/// An endpoint's deliveries, newest first: state, attempts, the last answer.
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{webhook_id}/deliveries", tag = "admin",
    params(("webhook_id" = String, Path, description = "whk_<region>_<32 hex>"), LimitQuery),
    responses(
        (status = 200, description = "`items`: the deliveries", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> ApiResult<impl IntoResponse> {
    let id = ops_webhook(&state, &user, &raw)?;
    let limit = limit_of(query.limit)?;
    store::get(&state.db, id.uuid)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let items: Vec<Delivery> = store::deliveries(&state.db, id.uuid, limit).await?;
    Ok(axum::Json(serde_json::json!({ "items": items })))
}

/// Send a delivery again now (delivered, failed or pending), with a fresh retry period.
#[utoipa::path(
    post, path = "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", tag = "admin",
    params(("webhook_id" = String, Path, description = "whk_<region>_<32 hex>"), ("delivery_id" = Uuid, Path)),
    responses(
        (status = 202, description = "Queued", body = Delivery),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint or delivery", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's endpoint", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn redeliver(
    call: WriteCall,
    ApiPath((raw, delivery)): ApiPath<(String, Uuid)>,
) -> ApiResult<Response> {
    let id = ops_webhook(&call.state, &call.user, &raw)?;
    let mut pending = match call
        .begin(&[("webhook_id", &id), ("delivery_id", &delivery)], &())
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let retry_for = chrono::Duration::from_std(call.state.config.webhooks.retry_for)
        .unwrap_or(chrono::Duration::days(1));
    let done = store::redeliver(pending.conn(), id.uuid, delivery, Utc::now() + retry_for)
        .await
        .map_err(ApiError::from)
        .and_then(|d| {
            d.ok_or_else(|| {
                ApiError::NotFound(format!("delivery {delivery} of webhook {id} not found"))
            })
        });
    let (response, _) =
        idempotent::settle(pending, done, StatusCode::ACCEPTED, Clone::clone).await?;
    tracing::info!(actor = %call.user.id, webhook = %id, %delivery, "webhook delivery queued again");
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_known_topics_without_repeats() {
        let ok = event_types(&[
            "booking.created".into(),
            "vehicle.blocked".into(),
            "booking.created".into(),
        ]);
        assert_eq!(
            ok.ok(),
            Some(vec![
                "booking.created".to_owned(),
                "vehicle.blocked".to_owned()
            ])
        );
        assert!(event_types(&[]).is_err());
        assert!(event_types(&["booking.exploded".into()]).is_err());
        assert!(event_types(&vec!["booking.created".to_owned(); Topic::ALL.len() + 1]).is_err());
    }
}
