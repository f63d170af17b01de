//! `/v1/admin/api-keys`: ops issue, list, read and revoke apps' API keys (rules:
//! `domain::api_key`; publishing to the edges: `crate::redis::key_sync`).
//!
//! A key is issued and kept by one region's origin (`?region=` when it is issued; its id,
//! `key_<region>_<hex>`, names it after that, so the edges route it as they route the deny
//! list) and accepted by every edge that reads that region's hash. Its secret is shown once,
//! in the answer that issued it, and stored nowhere: the table keeps its hash and its first
//! characters, and a replay of the issuing request (same `Idempotency-Key`) answers the key
//! without it (an app that lost it revokes the key and gets a new one). Keys are never
//! deleted: a revocation is recorded with who and when, and `?all=true` lists every key.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::api_key::{self, Plan, PlanError};
use domain::ids::ApiKeyId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::admin::{misdirected_unless_served, queried_region, require_ops, LogQuery};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, WriteCall};
use crate::http::idempotent;
use crate::state::AppState;
use crate::store::api_keys::{self as store, Key, NewKey};
use crate::store::idempotency::Begun;

/// The furthest a key's expiry may be (two years); no expiry: until revoked.
const MAX_LIFETIME_DAYS: i64 = 730;
/// The longest name, in characters.
const MAX_NAME_CHARS: usize = 100;

/// Body of `POST /v1/admin/api-keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "partner app (staging)", "per_minute": 120, "per_day": 50000, "burst_secs": 10, "allowed_origins": ["https://app.example.com"]}))]
pub(crate) struct ApiKeyRequest {
    /// What the key is for (1–100 characters, no control characters): shown to ops only.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Requests per minute (1–1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub per_minute: u32,
    /// Requests per day: at least `per_minute`, at most 1000000000.
    #[schema(minimum = 1, maximum = 1000000000)]
    pub per_day: u32,
    /// Seconds of burst at five times the per-minute rate (0–60, default 0: no burst).
    #[schema(minimum = 0, maximum = 60)]
    pub burst_secs: Option<u64>,
    /// The browser origins allowed to use the key (`https://host[:port]`, or `http://` for
    /// development; at most 16). Absent or empty: any origin, and requests without one.
    #[schema(max_items = 16)]
    pub allowed_origins: Option<Vec<String>>,
    /// When the key stops working (in the future, within two years). Absent: until revoked.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Query naming the region that keeps a key.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RegionQuery {
    /// `EUW` or `EUN`: the region whose origin issues and keeps the key (every edge accepts
    /// it).
    pub region: Option<String>,
}

/// A key as ops see it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApiKeyDto {
    /// `key_<region>_<32 hex>`.
    pub id: String,
    pub region: String,
    pub name: String,
    /// The secret's first 12 characters (`bpk_euw_AbCd`), to tell keys apart.
    pub secret_prefix: String,
    pub per_minute: u32,
    pub per_day: u32,
    pub burst_secs: u64,
    /// Canonical origins; empty: any.
    pub allowed_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// When the key stops working; null: until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// Usable now: neither revoked nor expired.
    pub active: bool,
}

impl ApiKeyDto {
    fn render(k: &Key, now: DateTime<Utc>) -> Self {
        ApiKeyDto {
            id: k.public_id().to_string(),
            region: k.region.code().to_owned(),
            name: k.name.clone(),
            secret_prefix: k.secret_prefix.clone(),
            per_minute: k.plan.per_minute,
            per_day: k.plan.per_day,
            burst_secs: k.plan.burst_secs,
            allowed_origins: k.allowed_origins.clone(),
            created_at: k.created_at,
            created_by: k.created_by.clone(),
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            revoked_by: k.revoked_by.clone(),
            active: k.revoked_at.is_none() && k.expires_at.is_none_or(|t| t > now),
        }
    }
}

/// A key just issued, with its secret: the only answer that shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKeyDto,
    /// `bpk_<region>_<43 base64url characters>`, for the app's `X-Api-Key` header. Only in
    /// the answer that issued the key: keep it, it is not shown again (a replay of the request
    /// answers without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The key of the path, for ops: 403 without the role, 404 for a malformed id, 421 for
/// another origin's key.
fn ops_key(state: &AppState, user: &AuthUser, raw: &str) -> ApiResult<ApiKeyId> {
    require_ops(user)?;
    let id: ApiKeyId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("API key {raw:?} not found")))?;
    misdirected_unless_served(state, id.region, || format!("API key {id}"))?;
    Ok(id)
}

/// The request field a plan error is about.
fn plan_field(e: &PlanError) -> &'static str {
    match e {
        PlanError::PerMinute => "per_minute",
        PlanError::PerDay => "per_day",
        PlanError::BurstSecs => "burst_secs",
        PlanError::TooManyOrigins | PlanError::Origin(_) => "allowed_origins",
    }
}

fn plan_error(e: PlanError) -> ApiError {
    ApiError::field(plan_field(&e), e.to_string())
}

/// The name, trimmed: 1–100 characters, none a control character.
fn name_of(raw: &str) -> ApiResult<&str> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "name",
            format!("1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(name)
}

/// The allowed origins in canonical form, each once, in the order given.
fn origins_of(raw: Option<&[String]>) -> ApiResult<Vec<String>> {
    let raw = raw.unwrap_or_default();
    if raw.len() > api_key::MAX_ORIGINS {
        return Err(plan_error(PlanError::TooManyOrigins));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for text in raw {
        let origin = api_key::parse_origin(text).map_err(plan_error)?;
        if !out.contains(&origin) {
            out.push(origin);
        }
    }
    Ok(out)
}

/// The expiry, if any: in the future and within two years.
fn expiry_of(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(at) = at else {
        return Ok(None);
    };
    if at <= now {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    if at > now + chrono::Duration::days(MAX_LIFETIME_DAYS) {
        return Err(ApiError::field(
            "expires_at",
            "must be within two years; without an expiry the key lasts until revoked",
        ));
    }
    Ok(Some(at))
}

/// A new secret for `region` from 32 random bytes (the thread's CSPRNG, seeded by the OS).
fn new_secret(region: domain::region::Region) -> String {
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    api_key::new_secret(region, &random)
}

fn encode(value: &impl Serialize) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("encode API key")))
}

/// `response` with `Location: /v1/admin/api-keys/<id>`.
fn with_location(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/admin/api-keys/{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Issue a key: its secret is in this answer only.
#[utoipa::path(
    post, path = "/v1/admin/api-keys", tag = "admin",
    params(RegionQuery),
    request_body = ApiKeyRequest,
    responses(
        (status = 201, description = "Issued; the secret is in this answer only (a replay answers without it); the edges accept it within seconds", body = ApiKeyCreated,
            headers(("Location" = String, description = "The key: /v1/admin/api-keys/{key_id}"))),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's region", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name, limits, origins, expiry or region (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_key(
    call: WriteCall,
    ApiQuery(query): ApiQuery<RegionQuery>,
    ApiJson(body): ApiJson<ApiKeyRequest>,
) -> ApiResult<Response> {
    let region = queried_region(
        &call.state,
        &call.user,
        query.region.as_deref(),
        "name the region whose origin issues the key: EUW or EUN",
    )?;
    let name = name_of(&body.name)?;
    let plan = Plan::new(body.per_minute, body.per_day, body.burst_secs.unwrap_or(0))
        .map_err(plan_error)?;
    let origins = origins_of(body.allowed_origins.as_deref())?;
    let now = Utc::now();
    let expires_at = expiry_of(body.expires_at, now)?;
    // The region is in the query, not the route: it is fingerprinted with the body.
    let mut pending = match call.begin(&[], &(region.code(), &body)).await? {
        Begun::Replay(saved) => {
            let id = serde_json::from_slice::<serde_json::Value>(&saved.body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned));
            let response = idempotent::replay(saved);
            return Ok(match id {
                Some(id) => with_location(response, &id),
                None => response,
            });
        }
        Begun::Fresh(pending) => pending,
    };
    let secret = new_secret(region);
    let done = store::insert(
        pending.conn(),
        &NewKey {
            id: Uuid::now_v7(),
            region,
            name,
            secret_hash: &api_key::secret_hash(&secret),
            secret_prefix: &api_key::display_prefix(&secret),
            plan,
            allowed_origins: &origins,
            expires_at,
            created_by: &call.user.id,
        },
    )
    .await
    .map_err(ApiError::from);
    // The answer stored for a replay leaves the secret out: it is kept nowhere.
    let (_, made) = idempotent::settle(pending, done, StatusCode::CREATED, |k| ApiKeyCreated {
        key: ApiKeyDto::render(k, now),
        secret: None,
    })
    .await?;
    crate::redis::key_sync::publish_soon(&call.state, region);
    let id = made.public_id().to_string();
    tracing::info!(
        actor = %call.user.id,
        key = %id,
        name = %made.name,
        per_minute = made.plan.per_minute,
        per_day = made.plan.per_day,
        "API key issued"
    );
    let body = encode(&ApiKeyCreated {
        key: ApiKeyDto::render(&made, now),
        secret: Some(secret),
    })?;
    Ok(with_location(
        idempotent::fresh(StatusCode::CREATED, body),
        &id,
    ))
}

/// A region's keys, newest first.
#[utoipa::path(
    get, path = "/v1/admin/api-keys", tag = "admin",
    params(LogQuery),
    responses(
        (status = 200, description = "`items`: the keys (never their secrets)", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's region", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing region or invalid limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> ApiResult<impl IntoResponse> {
    let (region, all, limit) = query.read(&state, &user)?;
    let now = Utc::now();
    let items: Vec<ApiKeyDto> = store::list(&state.db, region, all, limit)
        .await?
        .iter()
        .map(|k| ApiKeyDto::render(k, now))
        .collect();
    Ok(axum::Json(serde_json::json!({ "items": items })))
}

/// One key, revoked or not (never its secret).
#[utoipa::path(
    get, path = "/v1/admin/api-keys/{key_id}", tag = "admin",
    params(("key_id" = String, Path, description = "key_<region>_<32 hex>")),
    responses(
        (status = 200, description = "The key", body = ApiKeyDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_key(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let id = ops_key(&state, &user, &raw)?;
    let key = store::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("API key {id} not found")))?;
    Ok(axum::Json(ApiKeyDto::render(&key, Utc::now())))
}

/// Revoke a key: the edges refuse it within seconds. The revocation is recorded.
#[utoipa::path(
    delete, path = "/v1/admin/api-keys/{key_id}", tag = "admin",
    params(("key_id" = String, Path, description = "key_<region>_<32 hex>")),
    responses(
        (status = 200, description = "Revoked; the key with who revoked it", body = ApiKeyDto),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key, or already revoked", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "Another origin's key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_key(
    call: WriteCall,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Response> {
    let id = ops_key(&call.state, &call.user, &raw)?;
    let mut pending = match call.begin(&[("key_id", &id)], &()).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let done = store::revoke(pending.conn(), &id, &call.user.id)
        .await
        .map_err(ApiError::from)
        .and_then(|k| {
            k.ok_or_else(|| {
                ApiError::NotFound(format!("API key {id} not found or already revoked"))
            })
        });
    let now = Utc::now();
    let (response, revoked) =
        idempotent::settle(pending, done, StatusCode::OK, |k| ApiKeyDto::render(k, now)).await?;
    crate::redis::key_sync::publish_soon(&call.state, id.region);
    tracing::info!(actor = %call.user.id, key = %id, name = %revoked.name, "API key revoked");
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_error_names_its_request_field() {
        for (e, field) in [
            (PlanError::PerMinute, "per_minute"),
            (PlanError::PerDay, "per_day"),
            (PlanError::BurstSecs, "burst_secs"),
            (PlanError::TooManyOrigins, "allowed_origins"),
            (PlanError::Origin("x".into()), "allowed_origins"),
        ] {
            assert_eq!(plan_field(&e), field);
        }
    }

    #[test]
    fn origins_are_canonical_and_given_once() -> ApiResult<()> {
        let raw = [
            "HTTPS://App.Example.com/".to_owned(),
            "https://app.example.com".to_owned(),
            "http://localhost:3000".to_owned(),
        ];
        assert_eq!(
            origins_of(Some(&raw))?,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert!(origins_of(None)?.is_empty());
        let many: Vec<String> = (0..17).map(|i| format!("https://a{i}.example")).collect();
        assert!(origins_of(Some(&many)).is_err());
        Ok(())
    }

    #[test]
    fn a_name_is_trimmed_and_bounded() {
        assert!(matches!(name_of("  partner app "), Ok("partner app")));
        assert!(name_of("  ").is_err());
        assert!(name_of(&"x".repeat(101)).is_err());
        assert!(name_of(&"é".repeat(100)).is_ok());
        assert!(name_of("a\u{1b}b").is_err());
    }
}
