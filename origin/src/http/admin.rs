//! `/v1/admin/pricing/…`: the ops role's pricing administration (rules in
//! `pricing/admin.rs`). Every route answers 403 to a token without the `ops` role, 422 naming
//! the field for an invalid change, and returns the audit record of a valid one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use domain::region::Region;
use domain::vehicle::VehicleClass;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::pricing::admin::{
    self, BaseRateBody, Change, DiscountBody, TimeMultiplierBody, VehicleConfigBody,
};
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, WriteCall};
use crate::http::idempotent;
use crate::state::AppState;
use crate::store::idempotency::{Begun, Pending};

/// An applied, audited change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AdminChange {
    /// Id of the `pricing_audit` row.
    pub audit_id: i64,
    /// create, update or delete.
    pub action: String,
    /// base_rate, vehicle_config, time_multiplier or discount_rule.
    pub entity: String,
    /// Class or rule id.
    pub key: String,
    /// The row before the change (null when created).
    pub before: Value,
    /// The row after the change (null when deleted).
    pub after: Value,
}

/// Query of `GET /v1/admin/pricing/audit`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only this region's changes.
    pub region: Option<String>,
    /// 1–200 (default 50), newest first.
    pub limit: Option<u32>,
}

/// 403 unless the caller has the ops role.
pub(crate) fn require_ops(user: &AuthUser) -> ApiResult<()> {
    if user.is_ops {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "pricing administration needs the ops role".into(),
        ))
    }
}

/// A vehicle class named in a path (422 naming `class` otherwise).
fn path_class(text: &str) -> ApiResult<VehicleClass> {
    text.parse()
        .map_err(|e: domain::vehicle::UnknownVehicleClass| ApiError::field("class", e.to_string()))
}

/// A region this origin serves, from a path segment (404 otherwise).
pub(crate) fn served_region(state: &AppState, code: &str) -> ApiResult<Region> {
    code.to_ascii_uppercase()
        .parse::<Region>()
        .ok()
        .filter(|r| state.config.regions.contains(r))
        .ok_or_else(|| ApiError::NotFound(format!("region {code} is not served here")))
}

/// What every admin change takes from its request: the state, the caller, the request id, the
/// `Idempotency-Key` and the matched route ([`WriteCall`]). The ops check stays in the
/// handler's first step ([`AdminCall::region`]), after the path and body extractors, as on the
/// read routes.
pub(crate) type AdminCall = WriteCall;

impl AdminCall {
    /// 403 unless ops; then the served region named by the path (404 otherwise).
    fn region(&self, code: &str) -> ApiResult<Region> {
        require_ops(&self.user)?;
        served_region(&self.state, code)
    }

    /// Phase one of a change: once per `Idempotency-Key`, like every write of the API
    /// (`idempotency.rs`); a fresh change then holds the region's pricing lock in its
    /// transaction. `params` fill the route's path parameters in their canonical spelling.
    async fn start(
        &self,
        region: Region,
        params: &[(&str, &(dyn std::fmt::Display + Sync))],
        body: &impl Serialize,
    ) -> ApiResult<Begun> {
        let mut begun = self.begin(params, body).await?;
        if let Begun::Fresh(pending) = &mut begun {
            admin::lock_region(pending.conn(), region).await?;
        }
        Ok(begun)
    }

    /// Phase two: records the change's audit row, commits it with its stored answer, then makes
    /// it effective at once.
    async fn finish(
        &self,
        mut pending: Pending,
        region: Region,
        change: admin::AdminResult<Change>,
        status: StatusCode,
    ) -> ApiResult<Response> {
        let audited: ApiResult<_> = match change {
            Ok(change) => admin::audit(
                pending.conn(),
                region,
                &self.user.id,
                self.request_id.0.as_deref(),
                &change,
            )
            .await
            .map(|audit_id| (audit_id, change))
            .map_err(ApiError::from),
            Err(e) => Err(e.into()),
        };
        let (response, (audit_id, change)) =
            idempotent::settle(pending, audited, status, |(audit_id, change)| AdminChange {
                audit_id: *audit_id,
                action: change.action.to_owned(),
                entity: change.entity.to_owned(),
                key: change.key.clone(),
                before: change.before.clone().unwrap_or(Value::Null),
                after: change.after.clone().unwrap_or(Value::Null),
            })
            .await?;
        tracing::info!(actor = %self.user.id, %region, entity = change.entity, action = change.action, key = %change.key, audit_id, "pricing change");
        // Committed. Effective at once: drop the region's pricing contexts from L2 and make
        // every cached quote unreachable (a bump, see cache.rs).
        self.state
            .caches
            .invalidate_pricing(region, &VehicleClass::ALL)
            .await;
        self.state.caches.invalidate_all_quotes().await;
        metrics::counter!("pricing_admin_changes_total", "entity" => change.entity, "action" => change.action)
            .increment(1);
        Ok(response)
    }
}

/// The region's whole pricing configuration.
#[utoipa::path(
    get, path = "/v1/admin/pricing/{region}", tag = "admin",
    params(("region" = String, Path, description = "EUW or EUN")),
    responses(
        (status = 200, description = "Base rates, vehicle config, time multipliers, discount rules", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Region not served here", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn overview(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(region): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    require_ops(&user)?;
    let region = served_region(&state, &region)?;
    let mut conn = state.db.acquire().await?;
    Ok(axum::Json(admin::overview(&mut conn, region).await?))
}

/// Set a class's base rate (created if absent).
#[utoipa::path(
    put, path = "/v1/admin/pricing/{region}/base-rates/{class}", tag = "admin",
    params(("region" = String, Path), ("class" = String, Path)),
    request_body = BaseRateBody,
    responses(
        (status = 200, description = "Applied and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put_base_rate(
    call: AdminCall,
    ApiPath((region, class)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<BaseRateBody>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    let class = path_class(&class)?;
    body.validate(region)?;
    let mut pending = match call
        .start(region, &[("region", &region), ("class", &class)], &body)
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::base_rate_put(pending.conn(), region, class, &body).await;
    call.finish(pending, region, change, StatusCode::OK).await
}

/// Set a class's floor and ceiling (created if absent).
#[utoipa::path(
    put, path = "/v1/admin/pricing/{region}/vehicle-config/{class}", tag = "admin",
    params(("region" = String, Path), ("class" = String, Path)),
    request_body = VehicleConfigBody,
    responses(
        (status = 200, description = "Applied and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put_vehicle_config(
    call: AdminCall,
    ApiPath((region, class)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<VehicleConfigBody>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    let class = path_class(&class)?;
    body.validate()?;
    let mut pending = match call
        .start(region, &[("region", &region), ("class", &class)], &body)
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::vehicle_config_put(pending.conn(), region, class, &body).await;
    call.finish(pending, region, change, StatusCode::OK).await
}

/// Add a time-of-day multiplier (no overlap with the region's other rules).
#[utoipa::path(
    post, path = "/v1/admin/pricing/{region}/time-multipliers", tag = "admin",
    params(("region" = String, Path)),
    request_body = TimeMultiplierBody,
    responses(
        (status = 201, description = "Created and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or overlapping (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_time_multiplier(
    call: AdminCall,
    ApiPath(region): ApiPath<String>,
    ApiJson(body): ApiJson<TimeMultiplierBody>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    body.validate()?;
    let mut pending = match call.start(region, &[("region", &region)], &body).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::time_multiplier_upsert(pending.conn(), region, None, &body).await;
    call.finish(pending, region, change, StatusCode::CREATED)
        .await
}

/// Replace a time-of-day multiplier.
#[utoipa::path(
    put, path = "/v1/admin/pricing/{region}/time-multipliers/{id}", tag = "admin",
    params(("region" = String, Path), ("id" = Uuid, Path)),
    request_body = TimeMultiplierBody,
    responses(
        (status = 200, description = "Applied and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or overlapping (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_time_multiplier(
    call: AdminCall,
    ApiPath((region, id)): ApiPath<(String, Uuid)>,
    ApiJson(body): ApiJson<TimeMultiplierBody>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    body.validate()?;
    let mut pending = match call
        .start(region, &[("region", &region), ("id", &id)], &body)
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::time_multiplier_upsert(pending.conn(), region, Some(id), &body).await;
    call.finish(pending, region, change, StatusCode::OK).await
}

/// Delete a time-of-day multiplier.
#[utoipa::path(
    delete, path = "/v1/admin/pricing/{region}/time-multipliers/{id}", tag = "admin",
    params(("region" = String, Path), ("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Deleted and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_time_multiplier(
    call: AdminCall,
    ApiPath((region, id)): ApiPath<(String, Uuid)>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    let mut pending = match call
        .start(region, &[("region", &region), ("id", &id)], &())
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::time_multiplier_delete(pending.conn(), region, id).await;
    call.finish(pending, region, change, StatusCode::OK).await
}

/// Add a discount rule.
#[utoipa::path(
    post, path = "/v1/admin/pricing/{region}/discount-rules", tag = "admin",
    params(("region" = String, Path)),
    request_body = DiscountBody,
    responses(
        (status = 201, description = "Created and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_discount(
    call: AdminCall,
    ApiPath(region): ApiPath<String>,
    ApiJson(body): ApiJson<DiscountBody>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    body.validate()?;
    let mut pending = match call.start(region, &[("region", &region)], &body).await? {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::discount_upsert(pending.conn(), region, None, &body).await;
    call.finish(pending, region, change, StatusCode::CREATED)
        .await
}

/// Replace a discount rule.
#[utoipa::path(
    put, path = "/v1/admin/pricing/{region}/discount-rules/{id}", tag = "admin",
    params(("region" = String, Path), ("id" = Uuid, Path)),
    request_body = DiscountBody,
    responses(
        (status = 200, description = "Applied and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid (field named)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_discount(
    call: AdminCall,
    ApiPath((region, id)): ApiPath<(String, Uuid)>,
    ApiJson(body): ApiJson<DiscountBody>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    body.validate()?;
    let mut pending = match call
        .start(region, &[("region", &region), ("id", &id)], &body)
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::discount_upsert(pending.conn(), region, Some(id), &body).await;
    call.finish(pending, region, change, StatusCode::OK).await
}

/// Delete a discount rule.
#[utoipa::path(
    delete, path = "/v1/admin/pricing/{region}/discount-rules/{id}", tag = "admin",
    params(("region" = String, Path), ("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Deleted and audited", body = AdminChange),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_discount(
    call: AdminCall,
    ApiPath((region, id)): ApiPath<(String, Uuid)>,
) -> ApiResult<Response> {
    let region = call.region(&region)?;
    let mut pending = match call
        .start(region, &[("region", &region), ("id", &id)], &())
        .await?
    {
        Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
        Begun::Fresh(pending) => pending,
    };
    let change = admin::discount_delete(pending.conn(), region, id).await;
    call.finish(pending, region, change, StatusCode::OK).await
}

/// The audit trail of pricing changes, newest first.
#[utoipa::path(
    get, path = "/v1/admin/pricing-audit", tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit rows: id, at, region, actor, action, entity, entity_key, before, after, request_id", body = serde_json::Value),
        (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn audit_log(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    require_ops(&user)?;
    let region = match &query.region {
        Some(code) => Some(served_region(&state, code)?),
        None => None,
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 200"));
    }
    let rows = admin::audit_log(&state.db, region, limit).await?;
    Ok(axum::Json(serde_json::json!({ "items": rows })))
}
