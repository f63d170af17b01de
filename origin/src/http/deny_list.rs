//! `/v1/admin/deny-list`: networks and users ops refuse at every edge (rules: `domain::deny`;
//! publishing to the edges: `crate::redis::deny_sync`).
//!
//! An entry is kept by one region's origin (`?region=` when it is added; its id,
//! `dny_<region>_<hex>`, names it after that, so the edges route it as they route webhooks)
//! and enforced by every edge that reads that region's hash. Entries are never deleted: a
//! removal is recorded with who and when, and `?all=true` lists the whole log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::deny::{DenyError, DenyTarget};
use domain::ids::DenyId;
use domain::region::Region;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::admin::{misdirected_unless_served, queried_region, require_ops, LogQuery};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, WriteCall};
use crate::http::idempotent;
use crate::state::AppState;
use crate::store::deny_list::{self as store, Entry, NewEntry};
use crate::store::idempotency::Begun;

/// The longest an entry may last when it has an expiry (a year); no expiry: until removed.
const MAX_TTL_SECS: i64 = 365 * 86_400;

/// Body of `POST /v1/admin/deny-list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "network", "value": "203.0.113.0/24", "reason": "credential stuffing from this range", "ttl_secs": 3600}))]
pub(crate) struct DenyRequest {
    /// `network` (an address or a CIDR network: IPv4 /8–/32, IPv6 /16–/128 in steps of 4,
    /// host bits zero), `user` (a user id, the token's `sub`) or `key` (an app's API key, by
    /// its id `key_<region>_<32 hex>`).
    pub kind: String,
    pub value: String,
    /// Why (1–500 characters): kept in the log, never shown to the client.
    pub reason: String,
    /// When the entry stops denying (within a year). At most one of `expires_at` and
    /// `ttl_secs`; neither: until removed.
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds from now until the entry stops denying (1 to 31536000).
    #[schema(minimum = 1, maximum = 31536000)]
    pub ttl_secs: Option<i64>,
}

/// Query naming the region that keeps an entry.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RegionQuery {
    /// `EUW` or `EUN`: the region whose origin keeps the entry (every edge enforces it).
    pub region: Option<String>,
}

/// An entry as ops see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct DenyEntryDto {
    /// `dny_<region>_<32 hex>`.
    pub id: String,
    pub region: String,
    /// `network`, `user` or `key`.
    pub kind: String,
    /// The canonical network (CIDR), the user id or the key's id.
    pub value: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Denying now: neither removed nor expired.
    pub active: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<DateTime<Utc>>,
    /// Who removed it (`expired` when an expired entry made way for a new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
}

impl DenyEntryDto {
    fn render(e: &Entry, now: DateTime<Utc>) -> Self {
        let region = e.region.parse::<Region>().unwrap_or(Region::Euw);
        DenyEntryDto {
            id: DenyId::new(region, e.id).to_string(),
            region: e.region.clone(),
            kind: e.kind.clone(),
            value: e.value.clone(),
            reason: e.reason.clone(),
            expires_at: e.expires_at,
            active: e.removed_at.is_none() && e.expires_at.is_none_or(|t| t > now),
            created_by: e.created_by.clone(),
            created_at: e.created_at,
            removed_at: e.removed_at,
            removed_by: e.removed_by.clone(),
        }
    }
}

/// The entry of the path, for ops: 403 without the role, 404 for a malformed id, 421 for
/// another origin's entry.
fn ops_entry(state: &AppState, user: &AuthUser, raw: &str) -> ApiResult<DenyId> {
    require_ops(user)?;
    let id: DenyId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("deny-list entry {raw:?} not found")))?;
    misdirected_unless_served(state, id.region, || format!("deny-list entry {id}"))?;
    Ok(id)
}

/// The expiry the request asks for (none, a time within a year, or seconds from `now`).
fn expiry(body: &DenyRequest, now: DateTime<Utc>) -> ApiResult<Option<DateTime<Utc>>> {
    let at = match (body.expires_at, body.ttl_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "ttl_secs",
                "give expires_at or ttl_secs, not both",
            ))
        }
        (None, None) => return Ok(None),
        (None, Some(secs)) => {
            if !(1..=MAX_TTL_SECS).contains(&secs) {
                return Err(ApiError::field(
                    "ttl_secs",
                    format!("must be between 1 and {MAX_TTL_SECS} seconds"),
                ));
            }
            now + chrono::Duration::seconds(secs)
        }
        (Some(at), None) => {
            if at <= now {
                return Err(ApiError::field("expires_at", "must be in the future"));
            }
            if at > now + chrono::Duration::seconds(MAX_TTL_SECS) {
                return Err(ApiError::field(
                    "expires_at",
                    "must be within a year; without an expiry the entry lasts until removed",
                ));
            }
            at
        }
    };
    Ok(Some(at))
}

/// Deny a network or a user at every edge.
#[utoipa::path(
    post, path = "/v1/admin/deny-list", tag = "admin",
    params(RegionQuery),
    request_body = DenyRequest,
    responses(
        (status = 201, description = "Added; the edges refuse it within seconds", body = DenyEntryDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The target already has an active entry in this region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's region", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid kind, value, reason, expiry or region (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_entry(
    call: WriteCall,
    ApiQuery(query): ApiQuery<RegionQuery>,
    ApiJson(body): ApiJson<DenyRequest>,
) -> ApiResult<Response> {
    let region = queried_region(
        &call.state,
        &call.user,
        query.region.as_deref(),
        "name the region whose origin keeps the entry: EUW or EUN",
    )?;
    let target = DenyTarget::parse(&body.kind, &body.value).map_err(|e| match e {
        DenyError::Kind(_) => ApiError::field("kind", e.to_string()),
        _ => ApiError::field("value", e.to_string()),
    })?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::field(
            "reason",
            "1 to 500 characters without control characters",
        ));
    }
    let now = Utc::now();
    let expires_at = expiry(&body, now)?;
    // The region is in the query, not the route: it is fingerprinted with the body.
    let mut pending = match call.begin(&[], &(region.code(), &body)).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let (value, field) = (target.value(), target.field());
    let done = store::create(
        pending.conn(),
        &NewEntry {
            id: Uuid::now_v7(),
            region: region.code(),
            kind: target.kind(),
            value: &value,
            field: &field,
            reason,
            expires_at,
            created_by: &call.user.id,
        },
    )
    .await
    .map_err(ApiError::from)
    .and_then(|made| {
        made.ok_or_else(|| {
            ApiError::AlreadyExists(format!(
                "{} {value} already has an active deny-list entry in {region}; remove it first to change it",
                target.kind()
            ))
        })
    });
    let (response, made) = idempotent::settle(pending, done, StatusCode::CREATED, |e| {
        DenyEntryDto::render(e, now)
    })
    .await?;
    crate::redis::deny_sync::publish_soon(&call.state, region);
    tracing::info!(
        actor = %call.user.id,
        entry = %DenyId::new(region, made.id),
        kind = %made.kind,
        value = %made.value,
        reason = %made.reason,
        "deny-list entry added"
    );
    Ok(response)
}

/// A region's entries, newest first.
#[utoipa::path(
    get, path = "/v1/admin/deny-list", tag = "admin",
    params(LogQuery),
    responses(
        (status = 200, description = "`items`: the entries", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's region", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing region or invalid limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_entries(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> ApiResult<impl IntoResponse> {
    let (region, all, limit) = query.read(&state, &user)?;
    let now = Utc::now();
    let items: Vec<DenyEntryDto> = store::list(&state.db, region.code(), all, limit)
        .await?
        .iter()
        .map(|e| DenyEntryDto::render(e, now))
        .collect();
    Ok(axum::Json(serde_json::json!({ "items": items })))
}

/// One entry, active or not.
#[utoipa::path(
    get, path = "/v1/admin/deny-list/{entry_id}", tag = "admin",
    params(("entry_id" = String, Path, description = "dny_<region>_<32 hex>")),
    responses(
        (status = 200, description = "The entry", body = DenyEntryDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's entry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_entry(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let id = ops_entry(&state, &user, &raw)?;
    let entry = store::get(&state.db, id.uuid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("deny-list entry {id} not found")))?;
    Ok(axum::Json(DenyEntryDto::render(&entry, Utc::now())))
}

/// Lift an entry: the edges stop refusing it within seconds. The removal is recorded.
#[utoipa::path(
    delete, path = "/v1/admin/deny-list/{entry_id}", tag = "admin",
    params(("entry_id" = String, Path, description = "dny_<region>_<32 hex>")),
    responses(
        (status = 200, description = "Removed; the entry with who removed it", body = DenyEntryDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such active entry", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's entry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_entry(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Response> {
    let id = ops_entry(&call.state, &call.user, &raw)?;
    let mut pending = match call.begin(&[("entry_id", &id)], &()).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let done = store::remove(pending.conn(), id.uuid, &call.user.id)
        .await
        .map_err(ApiError::from)
        .and_then(|e| {
            e.ok_or_else(|| {
                ApiError::NotFound(format!("deny-list entry {id} not found or already removed"))
            })
        });
    let now = Utc::now();
    let (response, _) = idempotent::settle(pending, done, StatusCode::OK, |e| {
        DenyEntryDto::render(e, now)
    })
    .await?;
    crate::redis::deny_sync::publish_soon(&call.state, id.region);
    tracing::info!(actor = %call.user.id, entry = %id, "deny-list entry removed");
    Ok(response)
}
