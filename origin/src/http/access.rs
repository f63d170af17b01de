//! The access log: one `INFO` event per request, target `access`, which the JSON formatter
//! (`LOG_FORMAT=json`) writes as one line.
//!
//! Fields: `method`, `route` (the route template, `/v1/bookings/{id}`, never the raw path:
//! bounded, and no ids), `status`, `duration_ms`, `request_id`, `trace_id` (of the request's
//! span when traces are exported, else of the incoming `traceparent`), `region` (the regions
//! this origin serves) and `user`: a pseudonym (`domain::trace::user_hash`: 16 hex of SHA-256
//! of the user id), set by the authentication extractor once the token verified. Never the
//! token, the `Authorization` header, a key or a quote token: the line is built from these
//! fields only, and `tests/api/log_secrets.rs` greps every line for them.
//!
//! The middleware runs inside the request span (so the line carries the span's context too)
//! and outside load shedding, so a shed request is logged with its 503.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use domain::trace::TraceParent;

/// Where the authentication extractor leaves the caller's id for the access line.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessUser(Arc<OnceLock<String>>);

impl AccessUser {
    /// Records the verified caller (first call wins).
    pub(crate) fn set(&self, user_id: &str) {
        let _ = self.0.set(user_id.to_owned());
    }
}

/// The route template of a response, left by `metrics::track` (which sees the matched route).
#[derive(Debug, Clone)]
pub(crate) struct RouteTemplate(pub MatchedPath);

/// Logs one line per request, after the response is made.
pub(crate) async fn log(
    State(region): State<Arc<str>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let user = AccessUser::default();
    request.extensions_mut().insert(user.clone());
    let response = next.run(request).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map_or("unmatched", |r| r.0.as_str());
    let span = tracing::Span::current();
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    span.record("http.response.status_code", status);
    let trace_id = crate::telemetry::trace_id(&span, incoming.as_ref());
    let user = user.0.get().map(|id| domain::trace::user_hash(id));
    tracing::info!(
        target: "access",
        method = %method,
        route,
        status,
        duration_ms,
        request_id = request_id.as_deref(),
        trace_id = trace_id.as_deref(),
        region = &*region,
        user = user.as_deref(),
        "request"
    );
    response
}
