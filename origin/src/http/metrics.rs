//! Metrics: a Prometheus recorder for the `metrics` facade, rendered at `GET /metrics`.
//!
//! `http_request_duration_seconds` is a histogram with [`LATENCY_BUCKETS`] (the others are
//! summaries, the exporter's default).
//!
//! Code anywhere in the origin records with `metrics::counter!`/`histogram!`/`gauge!`; this
//! module installs the process-wide recorder once (several apps in one test process share it)
//! and times every HTTP request by its route template, so label cardinality stays bounded.
//!
//! The per-request pair (a counter by method, route and status; a histogram by method and
//! route) is looked up in a map of handles made once per label set: building the labels
//! (three `String`s) and hashing them through the recorder's registry on every request was a
//! visible part of a cached quote's CPU.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Request latency buckets (seconds): a histogram, not a summary, so the p95 of a route can be
/// computed over every pod (`histogram_quantile` in deploy/prometheus/rules.yml), with
/// bounds around the 200 ms target.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Unlabelled counters registered at 0 when the recorder is installed.
const ZERO_AT_START: &[&str] = &[
    crate::store::bookings::OVERLAP_REJECTIONS,
    "http_requests_shed_total",
    "sweeper_runs_total",
    "holds_expired_total",
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (first call) and returns its handle.
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            match PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| b.install_recorder())
            {
                Ok(handle) => {
                    // Counters the alert rules watch exist from the start (at 0), so a rule over
                    // them has a series before the first event and `absent()` means a dead target.
                    for name in ZERO_AT_START {
                        metrics::counter!(*name).increment(0);
                    }
                    for reason in crate::app::pricing::validate::Refusal::REASONS {
                        metrics::counter!("price_refusals_total", "reason" => reason).increment(0);
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Handles by route template, then (method, status).
type Handles = HashMap<String, HashMap<(Method, u16), (Counter, Histogram)>>;

static HANDLES: OnceLock<RwLock<Handles>> = OnceLock::new();

/// The counter and histogram of one label set, made on first use.
fn handles(method: &Method, route: &str, status: u16) -> (Counter, Histogram) {
    let map = HANDLES.get_or_init(Default::default);
    let key = (method.clone(), status);
    if let Ok(read) = map.read() {
        if let Some(found) = read.get(route).and_then(|r| r.get(&key)) {
            return found.clone();
        }
    }
    let labels = |with_status: bool| {
        let mut labels = vec![
            ("method", method.as_str().to_owned()),
            ("route", route.to_owned()),
        ];
        if with_status {
            labels.push(("status", status.to_string()));
        }
        labels
    };
    let made = (
        metrics::counter!("http_requests_total", &labels(true)),
        metrics::histogram!("http_request_duration_seconds", &labels(false)),
    );
    if let Ok(mut write) = map.write() {
        write
            .entry(route.to_owned())
            .or_default()
            .insert(key, made.clone());
    }
    made
}

/// Counts and times requests by method, route template and status.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    if crate::telemetry::exporting() {
        // The server span is named by its route template (OpenTelemetry's HTTP convention),
        // before the handler runs: once a child span has started it, its name is fixed.
        let name = route.as_ref().map_or("unmatched", MatchedPath::as_str);
        tracing::Span::current().record("otel.name", format!("{method} {name}"));
    }
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let matched = route;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    if status == axum::http::StatusCode::MISDIRECTED_REQUEST {
        // A request for another region's data reached this origin: an edge routed it wrong.
        metrics::counter!("misdirected_requests_total", "route" => route.to_owned()).increment(1);
    }
    let (counter, histogram) = handles(&method, route, status.as_u16());
    counter.increment(1);
    histogram.record(started.elapsed().as_secs_f64());
    let mut response = response;
    if let Some(matched) = matched {
        // For the access log (`access.rs`), which runs outside the router.
        response
            .extensions_mut()
            .insert(crate::http::access::RouteTemplate(matched));
    }
    response
}

/// Prometheus text exposition of every metric.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn render() -> Response {
    let body = handle().map(|h| h.render()).unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
