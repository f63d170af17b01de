//! `/v1/admin/pricing/…`: the ops role's pricing administration (rules in
//! `pricing/admin.rs`). Every route answers 403 to a token without the `ops` role, 422 naming
//! the field for an invalid change, and returns the audit record of a valid one.
//!
//! Every change takes one path, [`AdminCall::change`]: check the body, begin the idempotent
//! transaction, lock the region's pricing, apply and audit, commit, make it effective. A route
//! only names its [`Edit`]; the routes of each pricing table differ by nothing else, so
//! `table_routes!` writes them, with their documented responses, from one table.

use std::fmt::Display;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use domain::region::Region;
use domain::vehicle::VehicleClass;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
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
use crate::store::idempotency::Begun;

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

/// 403 unless the caller has the ops role; then the served region named by `code` (404/421
/// otherwise): the first step of every route that administers a region.
pub(crate) fn ops_region(state: &AppState, user: &AuthUser, code: &str) -> ApiResult<Region> {
    require_ops(user)?;
    served_region(state, code)
}

/// The region a region-scoped admin resource (webhooks, the deny list, API keys) names in
/// `?region=`: 403 unless ops, a 422 naming `region` when it is missing (`missing` says what
/// the region is for), then as [`ops_region`].
pub(crate) fn queried_region(
    state: &AppState,
    user: &AuthUser,
    region: Option<&str>,
    missing: &str,
) -> ApiResult<Region> {
    require_ops(user)?;
    let code = region.ok_or_else(|| ApiError::field("region", missing))?;
    ops_region(state, user, code)
}

/// Query of a region's log that is also its list (the deny list, API keys): what is in force,
/// or everything.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// `EUW` or `EUN`.
    pub region: Option<String>,
    /// `true`: the whole log (removed, revoked and expired too); default: what is in force.
    pub all: Option<bool>,
    /// 1–500 (default 100), newest first.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

impl LogQuery {
    /// The region (see [`queried_region`]), whether to list everything, and how many.
    pub(crate) fn read(&self, state: &AppState, user: &AuthUser) -> ApiResult<(Region, bool, i64)> {
        let region = queried_region(
            state,
            user,
            self.region.as_deref(),
            "name the region: EUW or EUN",
        )?;
        let limit = self.limit.unwrap_or(100);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::field("limit", "must be between 1 and 500"));
        }
        Ok((region, self.all.unwrap_or(false), i64::from(limit)))
    }
}

/// A vehicle class named in a path (422 naming `class` otherwise).
fn path_class(text: &str) -> ApiResult<VehicleClass> {
    text.parse()
        .map_err(|e: domain::vehicle::UnknownVehicleClass| ApiError::field("class", e.to_string()))
}

/// A region this origin serves, from a path segment or query: 404 for no region at all, 421
/// (misdirected) for a region another origin serves.
pub(crate) fn served_region(state: &AppState, code: &str) -> ApiResult<Region> {
    let region = code
        .to_ascii_uppercase()
        .parse::<Region>()
        .map_err(|_| ApiError::NotFound(format!("region {code}: no such region")))?;
    misdirected_unless_served(state, region, || format!("region {region}"))?;
    Ok(region)
}

/// 421 unless this origin is the home of `region`; `what` names the thing asked about.
pub(crate) fn misdirected_unless_served(
    state: &AppState,
    region: Region,
    what: impl FnOnce() -> String,
) -> ApiResult<()> {
    if state.config.regions.contains(&region) {
        Ok(())
    } else {
        Err(ApiError::Misdirected(format!(
            "{} belongs to region {region}, which this origin ({}) does not serve; send it to the {region} origin",
            what(),
            region_list(&state.config.regions),
        )))
    }
}

fn region_list(regions: &[Region]) -> String {
    regions
        .iter()
        .map(|r| r.code())
        .collect::<Vec<_>>()
        .join(",")
}

/// What every admin change takes from its request: the state, the caller, the request id, the
/// `Idempotency-Key` and the matched route ([`WriteCall`]). The ops check stays in the
/// handler's first step ([`AdminCall::region`]), after the path and body extractors, as on the
/// read routes.
pub(crate) type AdminCall = WriteCall;

/// One change an admin route asks for: which row of which table, and the body, if any.
#[derive(Debug, Clone, Copy)]
enum Edit<'a> {
    BaseRate(VehicleClass, &'a BaseRateBody),
    VehicleConfig(VehicleClass, &'a VehicleConfigBody),
    /// Adds a rule (`None`) or replaces rule `id`.
    TimeMultiplier(Option<Uuid>, &'a TimeMultiplierBody),
    DeleteTimeMultiplier(Uuid),
    /// Adds a rule (`None`) or replaces rule `id`.
    Discount(Option<Uuid>, &'a DiscountBody),
    DeleteDiscount(Uuid),
}

impl Edit<'_> {
    /// The body's own checks, made before anything is looked up or locked.
    fn validate(&self, region: Region) -> admin::AdminResult<()> {
        match self {
            Edit::BaseRate(_, body) => body.validate(region),
            Edit::VehicleConfig(_, body) => body.validate(),
            Edit::TimeMultiplier(_, body) => body.validate(),
            Edit::Discount(_, body) => body.validate(),
            Edit::DeleteTimeMultiplier(_) | Edit::DeleteDiscount(_) => Ok(()),
        }
    }

    /// The route's path parameter besides the region, if any: the row's key.
    fn key(&self) -> Option<(&'static str, &(dyn Display + Sync))> {
        match self {
            Edit::BaseRate(class, _) | Edit::VehicleConfig(class, _) => Some(("class", class)),
            Edit::TimeMultiplier(Some(id), _)
            | Edit::Discount(Some(id), _)
            | Edit::DeleteTimeMultiplier(id)
            | Edit::DeleteDiscount(id) => Some(("id", id)),
            Edit::TimeMultiplier(None, _) | Edit::Discount(None, _) => None,
        }
    }

    /// Makes the change in the pending transaction (the rules are in `app/pricing/admin.rs`).
    async fn apply(self, conn: &mut PgConnection, region: Region) -> admin::AdminResult<Change> {
        match self {
            Edit::BaseRate(class, body) => admin::base_rate_put(conn, region, class, body).await,
            Edit::VehicleConfig(class, body) => {
                admin::vehicle_config_put(conn, region, class, body).await
            }
            Edit::TimeMultiplier(id, body) => {
                admin::time_multiplier_upsert(conn, region, id, body).await
            }
            Edit::DeleteTimeMultiplier(id) => admin::time_multiplier_delete(conn, region, id).await,
            Edit::Discount(id, body) => admin::discount_upsert(conn, region, id, body).await,
            Edit::DeleteDiscount(id) => admin::discount_delete(conn, region, id).await,
        }
    }
}

/// The request body as the idempotency fingerprint hashes it: `null` for a delete.
impl Serialize for Edit<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Edit::BaseRate(_, body) => body.serialize(serializer),
            Edit::VehicleConfig(_, body) => body.serialize(serializer),
            Edit::TimeMultiplier(_, body) => body.serialize(serializer),
            Edit::Discount(_, body) => body.serialize(serializer),
            Edit::DeleteTimeMultiplier(_) | Edit::DeleteDiscount(_) => ().serialize(serializer),
        }
    }
}

impl AdminCall {
    /// 403 unless ops; then the served region named by the path (404 for no region, 421 for another origin's).
    fn region(&self, code: &str) -> ApiResult<Region> {
        ops_region(&self.state, &self.user, code)
    }

    /// Makes one change, answering `status` with its audit record. Once per `Idempotency-Key`,
    /// like every write of the API (`idempotency.rs`): a replay answers at once. A fresh change
    /// holds the region's pricing lock in its transaction, records its audit row, commits with
    /// its stored answer, and is then made effective at once.
    async fn change(
        &self,
        region: Region,
        edit: Edit<'_>,
        status: StatusCode,
    ) -> ApiResult<Response> {
        edit.validate(region)?;
        // The route's parameters in their canonical spelling (the fingerprint's path).
        let mut params: Vec<(&str, &(dyn Display + Sync))> = vec![("region", &region)];
        params.extend(edit.key());
        let mut pending = match self.begin(&params, &edit).await? {
            Begun::Replay(saved) => return Ok(idempotent::replay(saved)),
            Begun::Fresh(pending) => pending,
        };
        admin::lock_region(pending.conn(), region).await?;
        let audited: ApiResult<_> = match edit.apply(pending.conn(), region).await {
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
        (status = 404, description = "No such region", body = Problem, content_type = "application/problem+json"),
        (status = 421, description = "A region another origin serves", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn overview(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(region): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let region = ops_region(&state, &user, &region)?;
    let mut conn = state.db.acquire().await?;
    Ok(axum::Json(admin::overview(&mut conn, region).await?))
}

/// Writes the routes of one pricing table. They differ only by entity — the paths, the body,
/// what a refused body is called, the docs and the [`Edit`] they make — so the table of
/// responses is written once here.
///
/// * `by class`: `PUT` sets the row of a vehicle class (created if absent).
/// * `by id`: `POST` adds a rule, `PUT` replaces rule `{id}` and `DELETE` deletes it.
macro_rules! table_routes {
    (
        by class $path:literal, $body:ident,
        $(#[$doc:meta])* $put:ident => $edit:path
    ) => {
        $(#[$doc])*
        #[utoipa::path(
            put, path = $path, tag = "admin",
            params(("region" = String, Path, pattern = "^[Ee][Uu][WwNn]$"), ("class" = String, Path, pattern = "^(compact|sedan|suv|van|premium)$")),
            request_body = $body,
            responses(
                (status = 200, description = "Applied and audited", body = AdminChange),
                (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "Invalid (field named)", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub(crate) async fn $put(
            call: AdminCall,
            ApiPath((region, class)): ApiPath<(String, String)>,
            ApiJson(body): ApiJson<$body>,
        ) -> ApiResult<Response> {
            let region = call.region(&region)?;
            let class = path_class(&class)?;
            call.change(region, $edit(class, &body), StatusCode::OK).await
        }
    };
    (
        by id $collection:literal, $item:literal, $body:ident, invalid = $invalid:literal,
        $(#[$create_doc:meta])* $create:ident => $upsert:path,
        $(#[$update_doc:meta])* $update:ident,
        $(#[$delete_doc:meta])* $delete:ident => $remove:path $(,)?
    ) => {
        $(#[$create_doc])*
        #[utoipa::path(
            post, path = $collection, tag = "admin",
            params(("region" = String, Path, pattern = "^[Ee][Uu][WwNn]$")),
            request_body = $body,
            responses(
                (status = 201, description = "Created and audited", body = AdminChange),
                (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = $invalid, body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub(crate) async fn $create(
            call: AdminCall,
            ApiPath(region): ApiPath<String>,
            ApiJson(body): ApiJson<$body>,
        ) -> ApiResult<Response> {
            let region = call.region(&region)?;
            call.change(region, $upsert(None, &body), StatusCode::CREATED).await
        }

        $(#[$update_doc])*
        #[utoipa::path(
            put, path = $item, tag = "admin",
            params(("region" = String, Path, pattern = "^[Ee][Uu][WwNn]$"), ("id" = Uuid, Path)),
            request_body = $body,
            responses(
                (status = 200, description = "Applied and audited", body = AdminChange),
                (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
                (status = 422, description = $invalid, body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub(crate) async fn $update(
            call: AdminCall,
            ApiPath((region, id)): ApiPath<(String, Uuid)>,
            ApiJson(body): ApiJson<$body>,
        ) -> ApiResult<Response> {
            let region = call.region(&region)?;
            call.change(region, $upsert(Some(id), &body), StatusCode::OK).await
        }

        $(#[$delete_doc])*
        #[utoipa::path(
            delete, path = $item, tag = "admin",
            params(("region" = String, Path, pattern = "^[Ee][Uu][WwNn]$"), ("id" = Uuid, Path)),
            responses(
                (status = 200, description = "Deleted and audited", body = AdminChange),
                (status = 403, description = "Not ops", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub(crate) async fn $delete(
            call: AdminCall,
            ApiPath((region, id)): ApiPath<(String, Uuid)>,
        ) -> ApiResult<Response> {
            let region = call.region(&region)?;
            call.change(region, $remove(id), StatusCode::OK).await
        }
    };
}

table_routes!(
    by class "/v1/admin/pricing/{region}/base-rates/{class}", BaseRateBody,
    /// Set a class's base rate (created if absent).
    put_base_rate => Edit::BaseRate
);

table_routes!(
    by class "/v1/admin/pricing/{region}/vehicle-config/{class}", VehicleConfigBody,
    /// Set a class's floor and ceiling (created if absent).
    put_vehicle_config => Edit::VehicleConfig
);

table_routes!(
    by id "/v1/admin/pricing/{region}/time-multipliers",
    "/v1/admin/pricing/{region}/time-multipliers/{id}",
    TimeMultiplierBody, invalid = "Invalid or overlapping (field named)",
    /// Add a time-of-day multiplier (no overlap with the region's other rules).
    create_time_multiplier => Edit::TimeMultiplier,
    /// Replace a time-of-day multiplier.
    update_time_multiplier,
    /// Delete a time-of-day multiplier.
    delete_time_multiplier => Edit::DeleteTimeMultiplier,
);

table_routes!(
    by id "/v1/admin/pricing/{region}/discount-rules",
    "/v1/admin/pricing/{region}/discount-rules/{id}",
    DiscountBody, invalid = "Invalid (field named)",
    /// Add a discount rule.
    create_discount => Edit::Discount,
    /// Replace a discount rule.
    update_discount,
    /// Delete a discount rule.
    delete_discount => Edit::DeleteDiscount,
);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(edit: &Edit<'_>) -> Option<(&'static str, String)> {
        edit.key().map(|(name, value)| (name, value.to_string()))
    }

    #[test]
    fn a_change_is_fingerprinted_by_its_row_key_and_its_body_or_null_for_a_delete(
    ) -> Result<(), serde_json::Error> {
        let id = Uuid::from_u128(7);
        let rate = BaseRateBody {
            currency: "EUR".into(),
            per_hour_minor: 900,
            per_day_minor: 6_000,
        };
        let window = TimeMultiplierBody {
            days_mask: 31,
            start_hour: 7,
            end_hour: 9,
            multiplier_bp: 12_000,
            label: None,
        };
        // The key: the class by its name, a rule by its id, nothing for a new rule.
        let base = Edit::BaseRate(VehicleClass::Van, &rate);
        assert_eq!(key(&base), Some(("class", "van".to_owned())));
        let update = Edit::TimeMultiplier(Some(id), &window);
        assert_eq!(key(&update), Some(("id", id.to_string())));
        assert_eq!(key(&Edit::TimeMultiplier(None, &window)), None);
        assert_eq!(key(&Edit::DeleteDiscount(id)), Some(("id", id.to_string())));
        // The body: exactly the request's, field for field; a delete has none (`null`).
        assert_eq!(serde_json::to_vec(&base)?, serde_json::to_vec(&rate)?);
        assert_eq!(serde_json::to_vec(&update)?, serde_json::to_vec(&window)?);
        assert_eq!(
            serde_json::to_vec(&Edit::DeleteTimeMultiplier(id))?,
            b"null"
        );
        Ok(())
    }
}
