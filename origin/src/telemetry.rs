//! Logs and traces: the process's `tracing` subscriber, W3C trace context in and out.
//!
//! **Logs** go to stdout, JSON (`LOG_FORMAT=json`, production) or pretty, filtered by
//! `RUST_LOG`. The access log (one line per request) is in [`crate::http::access`].
//!
//! **Traces** are exported over OTLP (HTTP/protobuf, `{OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`)
//! only when that variable is set. Unset, the OpenTelemetry layer is not installed at all: the
//! spans below are at `DEBUG` and the log filter (per layer) is at `INFO`, so their call sites
//! are disabled and cost one relaxed load each — no span is built, no context is parsed
//! (the incoming `traceparent` is then only read for the access log's trace id and passed
//! through to the outbox). Set, a batch span processor (its own thread, a blocking HTTP
//! client) sends them, so a request never waits for the collector; spans that do not fit its
//! queue (2048) are dropped, not waited for.
//!
//! What becomes a span, and at which level:
//! - the request (`INFO`, made in `http::app` by the trace layer), kind *server*, parent the
//!   incoming `traceparent` (the edge's span), named `METHOD /route/{template}`;
//! - statement groups of the stores (`db.*`), Redis commands (`redis`), calls to the AI
//!   inference API (`inference`) — `DEBUG`, children of the request span;
//! - the outbox row stores the `traceparent` of the span that wrote it, and the relay sends it
//!   as the Kafka record's `traceparent` header, so a consumer continues the trace.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use domain::trace::TraceParent;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::layer::{Context as FilterContext, Filter};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether spans are exported (the OpenTelemetry layer is installed in this process).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued and stops the exporter (bounded by the exporter's
    /// timeout). Blocking: call it at exit, or from a blocking thread.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("origin: trace exporter shutdown: {e}");
            }
        }
    }

    /// Sends the spans ended so far (tests: before asserting on what a receiver got).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

/// The OTLP/HTTP traces URL of a collector's base URL (`http://host:4318`).
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// What the OpenTelemetry layer records: the origin's own spans from `DEBUG`, everything
/// else from `INFO` (sqlx's statement events from `WARN`: the `db.*` spans name the groups).
/// A per-layer filter that never lets a call site be cached as "always enabled" for its layer.
///
/// Hand-written because the fix is not in a released tracing-subscriber: a per-layer filter's
/// decision travels from `enabled` to `on_new_span`/`on_event` through a thread-local, and a
/// call site cached as `Interest::always` skips `enabled`, so its span reads whatever the
/// previous `enabled` call on that thread left there. After sqlx's query logger asks about a
/// disabled log line, the next request span is silently dropped from this layer, and its child
/// spans are exported as roots (tokio-rs/tracing#2519; fix proposed in tokio-rs/tracing#3572).
/// The edge trace test saw exactly that under load. Capping the interest at `sometimes` makes
/// every dispatch run `enabled` first, so the thread-local is always fresh; the price is one
/// filter evaluation per span and event, which the cached interest used to skip.
struct Fresh<F>(F);

impl<S, F: Filter<S>> Filter<S> for Fresh<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &FilterContext<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        let interest = self.0.callsite_enabled(meta);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &FilterContext<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: FilterContext<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: FilterContext<'_, S>,
    ) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: FilterContext<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: FilterContext<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: FilterContext<'_, S>) {
        self.0.on_close(id, cx);
    }
}

fn otel_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("origin", LevelFilter::DEBUG)
        .with_target("sqlx", LevelFilter::WARN)
}

/// Installs the process-wide subscriber: logs (JSON or pretty, `RUST_LOG`, default `info`),
/// and, with `otlp_endpoint`, the span exporter. An error if a subscriber is already
/// installed (tests install their own first) or the exporter cannot be built.
pub fn init(log_json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let logs = if log_json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(Fresh(filter))
            .boxed()
    } else {
        // Colour only for a terminal: a file or a pipe (a test's log, `kubectl logs` of a
        // non-JSON pod) gets plain text, not escape codes.
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(Fresh(filter))
            .boxed()
    };
    let (traces, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let (layer, provider) = otel_layer(endpoint)?;
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("install the tracing subscriber")?;
    if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

/// A layer that records `tracing` spans as OpenTelemetry spans and exports them to
/// `endpoint`, with its provider (to flush and shut down). Public for tests that install
/// their own subscriber (a log capture) and add this layer to it.
pub fn otel_layer<S>(
    endpoint: &str,
) -> anyhow::Result<(Box<dyn Layer<S> + Send + Sync>, SdkTracerProvider)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .context("build the OTLP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("origin")
                .build(),
        )
        .build();
    // No context activation: the request span then starts when its first child does, after
    // `http::metrics::track` has named it by its route; no thread or busy/idle attributes
    // (two clock reads per poll, per span).
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("origin"))
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Fresh(otel_filter()))
        .boxed();
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, provider))
}

/// Wraps a provider made by [`otel_layer`] so it can be flushed and shut down like one
/// [`init`] made.
pub fn telemetry_of(provider: SdkTracerProvider) -> Telemetry {
    Telemetry {
        provider: Some(provider),
    }
}

/// Makes `span` (the request's) a child of the caller's span named by `incoming`. Only when
/// exporting: otherwise the span has no OpenTelemetry context to set.
pub(crate) fn set_remote_parent(span: &tracing::Span, incoming: &TraceParent) {
    if !exporting() {
        return;
    }
    let context = SpanContext::new(
        TraceId::from_bytes(incoming.trace_id),
        SpanId::from_bytes(incoming.parent_id),
        TraceFlags::new(incoming.flags),
        true,
        TraceState::default(),
    );
    let parent = opentelemetry::Context::new().with_remote_span_context(context);
    let _ = span.set_parent(parent);
}

/// The `traceparent` that names `span` (exporting), for a record or request that continues
/// the trace; `None` when not exporting or the span is not recorded.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    if !sc.is_valid() {
        return None;
    }
    TraceParent::new(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    )
}

/// The `traceparent` to pass on from where the code runs now: the current span's when
/// exporting, else what the request brought (`incoming`, passed through unchanged: a tier that
/// records no span forwards its caller's context).
pub(crate) fn current_traceparent(incoming: Option<&str>) -> Option<String> {
    traceparent_of(&tracing::Span::current())
        .map(|tp| tp.to_string())
        .or_else(|| {
            incoming
                .and_then(TraceParent::parse)
                .map(|tp| tp.to_string())
        })
}

/// The trace id of `span` (exporting) or of the request's `traceparent`, for the access log.
pub(crate) fn trace_id(span: &tracing::Span, incoming: Option<&TraceParent>) -> Option<String> {
    traceparent_of(span)
        .or(incoming.copied())
        .map(|tp| tp.trace_id_hex())
}
