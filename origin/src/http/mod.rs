//! The HTTP surface: routes, middleware, health and the OpenAPI document.
//!
//! Routes are registered through `utoipa_axum::OpenApiRouter`, so the router and
//! `/openapi.json` come from the same list and cannot drift apart.

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod api_keys;
pub(crate) mod auth;
pub(crate) mod blocks;
pub(crate) mod bookings;
pub(crate) mod deny_list;
pub(crate) mod dto;
pub(crate) mod edge_guard;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod idempotent;
pub(crate) mod metrics;
pub(crate) mod openapi_errors;
pub(crate) mod openapi_links;
pub(crate) mod quotes;
pub(crate) mod search;
pub(crate) mod shed;
pub(crate) mod surge;
pub(crate) mod versioned;
pub(crate) mod waitlist;
pub(crate) mod webhooks;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{problem_response, ApiError, Problem};
use crate::role::{Role, RouteGroup};
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Booking & Pricing API (origin)",
        description = "Search vehicles, get signed quotes, hold, confirm, extend and cancel bookings. \
                       Errors are RFC 9457 problem+json. v1 is stable and compact; v2 adds breakdowns \
                       and minor units.",
        license(name = "Apache-2.0")
    ),
    components(schemas(
        Problem,
        crate::events::Event,
        crate::store::blocks::BlockEvent,
        // The AI inference API's contract (a third-party service the origin calls; see
        // inference.rs): documented here so the other team and the reference service share it.
        crate::inference::RiskRequest,
        crate::inference::RiskResponse,
        crate::inference::DemandRequest,
        crate::inference::DemandPrediction,
        crate::inference::DemandResponse
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "search", description = "Available vehicles near a point"),
        (name = "quotes", description = "Signed price quotes"),
        (name = "bookings", description = "Holds, bookings and the waitlist"),
        (name = "health", description = "Liveness and readiness"),
        (name = "pricing", description = "Surge grid"),
        (name = "admin", description = "Pricing administration, maintenance blocks, webhooks, the deny list and API keys (ops role)"),
    )
)]
struct ApiDoc;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = serde_json::Value)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: PostgreSQL answers. Details name each dependency, and how locks and search
/// run (Redis, or the PostgreSQL fallback while Redis is down).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = serde_json::Value),
        (status = 503, description = "Not ready", body = serde_json::Value)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), crate::store::ping(&state.db)).await;
    let db_ok = matches!(db, Ok(Ok(())));
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if db_ok { "ready" } else { "not_ready" },
        "checks": {
            "postgres": if db_ok { "ok" } else { "down" },
            // Redis is optional: without it locks and search run on PostgreSQL (still ready).
            "redis": if state.redis.is_up() { "ok" } else { "down" },
            "locks": state.locks.backend(),
            "availability": state.availability.mode(),
            // Optional too: with the breakers open, quotes use their fallbacks (degraded).
            "inference": inference_checks(&state),
            // Optional: without it (down, or lagging past REPLICA_MAX_LAG_MS) reads use the
            // primary, still ready.
            "replica": state.reads.status(),
        },
        // The availability consumer (`jobs/consumer.rs`): off, joining or assigned, and its
        // counters.
        "consumer": state.consumer.json(),
        "webhooks": state.webhooks.json(),
        "redis_degradations": state.redis.degradations(),
        "redis_replacements": state.redis.replacements(),
        "regions": state.config.regions.iter().map(|r| r.code()).collect::<Vec<_>>(),
        "role": state.config.role.name(),
        // Which replica runs the singleton jobs (the `jobs` role elects one: `jobs/leader.rs`).
        "jobs": {
            "elected": state.leadership.is_elected(),
            "leader": state.config.role.runs_singletons() && state.leadership.is_leader(),
            "sweeps": state.leadership.sweeps(),
        },
    });
    (status, axum::Json(body)).into_response()
}

/// The AI inference API's breakers for `/readyz` (`"not_configured"` without `INFERENCE_URL`).
fn inference_checks(state: &AppState) -> serde_json::Value {
    if !state.inference.is_configured() {
        return serde_json::json!("not_configured");
    }
    let mut checks = serde_json::Map::new();
    for breaker in state.inference.breakers() {
        checks.insert(
            breaker.name().to_owned(),
            serde_json::json!(breaker.state().as_str()),
        );
    }
    serde_json::Value::Object(checks)
}

/// Routes every role serves: liveness, readiness, metrics.
fn health_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::http::metrics::render))
}

/// The pricing role's routes: search, quotes, surge, pricing administration.
fn pricing_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search::search_v1))
        .routes(routes!(search::search_v2))
        .routes(routes!(quotes::create_quote_v1))
        .routes(routes!(quotes::create_quote_v2))
        .routes(routes!(surge::surge_v1))
        .routes(routes!(surge::recompute))
        .routes(routes!(admin::overview))
        .routes(routes!(admin::put_base_rate))
        .routes(routes!(admin::put_vehicle_config))
        .routes(routes!(admin::create_time_multiplier))
        .routes(routes!(
            admin::update_time_multiplier,
            admin::delete_time_multiplier
        ))
        .routes(routes!(admin::create_discount))
        .routes(routes!(admin::update_discount, admin::delete_discount))
        .routes(routes!(admin::audit_log))
}

/// The booking role's routes: holds and bookings.
fn booking_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(bookings::create_v1, bookings::list_v1))
        .routes(routes!(bookings::create_v2, bookings::list_v2))
        .routes(routes!(bookings::get_v1))
        .routes(routes!(bookings::get_v2))
        .routes(routes!(bookings::confirm_v1))
        .routes(routes!(bookings::confirm_v2))
        .routes(routes!(bookings::cancel_v1))
        .routes(routes!(bookings::cancel_v2))
        .routes(routes!(bookings::extend_v1))
        .routes(routes!(bookings::extend_v2))
        .routes(routes!(bookings::reschedule_v1))
        .routes(routes!(bookings::reschedule_v2))
        .routes(routes!(bookings::start_v1))
        .routes(routes!(bookings::start_v2))
        .routes(routes!(bookings::complete_v1))
        .routes(routes!(bookings::complete_v2))
        .routes(routes!(blocks::create_block, blocks::list_blocks))
        .routes(routes!(blocks::change_block, blocks::end_block))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::get_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::enable_webhook))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(deny_list::create_entry, deny_list::list_entries))
        .routes(routes!(deny_list::get_entry, deny_list::delete_entry))
        .routes(routes!(api_keys::create_key, api_keys::list_keys))
        .routes(routes!(api_keys::get_key, api_keys::revoke_key))
        .routes(routes!(waitlist::join))
        .routes(routes!(waitlist::get_entry, waitlist::withdraw))
}

/// The routes `role` serves and the OpenAPI document of those routes, built from one list.
fn routes_for(role: Role) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(health_routes());
    if role.serves(RouteGroup::Pricing) {
        router = router.merge(pricing_routes());
    }
    if role.serves(RouteGroup::Booking) {
        router = router.merge(booking_routes());
    }
    let (router, mut doc) = router.split_for_parts();
    openapi_errors::document_common_errors(&mut doc);
    for unplaced in openapi_links::document_links(&mut doc) {
        tracing::warn!(%unplaced, "OpenAPI link without its operation");
    }
    (router, doc)
}

/// The router and the OpenAPI document of every route (the `all` role).
pub(crate) fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    routes_for(Role::All)
}

async fn no_route(request: Request) -> Response {
    ApiError::NoRoute(format!("{} {}", request.method(), request.uri().path())).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    problem_response(&ApiError::Internal(anyhow::anyhow!("panic")).problem())
}

/// Ends a request that runs past the configured time with a 503 problem, so a client never
/// waits on a stuck dependency for longer than the budget.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable("the request took too long".into()).into_response(),
    }
}

/// Turns axum's plain-text 413 (body limit) into a problem.
async fn problem_for_plain_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_problem {
        return ApiError::PayloadTooLarge("the request body is too large".into()).into_response();
    }
    response
}

/// A query string with a NUL character (`%00`) is a 400 problem: PostgreSQL's text cannot hold
/// U+0000, and a parameter that reached a statement with one was a 500 (schemathesis found it
/// on `GET /v1/bookings?user_id=…`). Checked once here rather than in every parameter's parser.
async fn refuse_nul_in_query(request: Request, next: Next) -> Response {
    let nul = request.uri().query().is_some_and(|q| {
        q.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    });
    if nul {
        return ApiError::BadRequest(
            "query parameters must not contain the NUL character (%00)".into(),
        )
        .into_response();
    }
    next.run(request).await
}

/// The complete application: routes, `/openapi.json`, fallbacks and middleware.
pub(crate) fn app(state: AppState) -> Router {
    crate::http::metrics::handle();
    // The document always describes the whole API (one contract for every role); the router
    // holds only this role's routes, so another role's path is a 404 problem.
    let (router, _) = routes_for(state.config.role);
    let (_, doc) = api();
    let mut doc_json = serde_json::to_value(&doc).unwrap_or_default();
    openapi_links::spec_field_names(&mut doc_json);
    let timeout = state.config.request_timeout;
    let body_limit = state.config.max_body_bytes;
    let admission = shed::Admission::new(state.config.max_in_flight, state.config.admission_wait);
    // Every request's log lines name the region(s) this origin serves ("EUW", "EUW,EUN"), so
    // logs of two regions shipped to one place stay apart.
    let origin_region: std::sync::Arc<str> = state
        .config
        .regions
        .iter()
        .map(|r| r.code())
        .collect::<Vec<_>>()
        .join(",")
        .into();
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc_json.clone();
                async move { axum::Json(doc) }
            }),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(refuse_nul_in_query))
        .layer(middleware::from_fn(problem_for_plain_errors))
        // Only edges (and, for this user, not too often): before any handler's work, inside
        // the deadline (reading the body to check its hash is bounded by it).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge_guard::guard,
        ))
        .layer(middleware::from_fn_with_state(timeout, deadline))
        .route_layer(middleware::from_fn(crate::http::metrics::track))
        .with_state(state)
        .layer(middleware::from_fn_with_state(admission, shed::admit))
        .layer(middleware::from_fn_with_state(
            origin_region.clone(),
            access::log,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(move |req: &Request| {
                let request_id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // The `otel.*` fields name the span for the trace exporter (`telemetry.rs`); they
                // are filled in when traces are exported.
                let span = tracing::info_span!(
                    "request",
                    region = %origin_region,
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id,
                    otel.name = tracing::field::Empty,
                    otel.kind = "server",
                    otel.status_code = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                );
                if crate::telemetry::exporting() {
                    // The edge's span (or the client's) is the parent of this one; an invalid
                    // `traceparent` starts a new trace.
                    if let Some(incoming) = req
                        .headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .and_then(domain::trace::TraceParent::parse)
                    {
                        crate::telemetry::set_remote_parent(&span, &incoming);
                    }
                }
                span
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            // Replayable for its minute: as careful as a token.
            HeaderName::from_static(domain::edge_auth::SIGNATURE_HEADER),
        ]))
        .layer(CatchPanicLayer::custom(panic_response))
}
