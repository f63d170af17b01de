//! An OTLP/HTTP trace receiver inside the test process: a real HTTP server (axum) that takes
//! `POST /v1/traces` with a protobuf `ExportTraceServiceRequest` — what a collector takes —
//! and keeps every span it was sent, so a test can assert on trace ids and parent chains.
//!
//! It runs on a thread and runtime of its own: the exporter under test sends from its own
//! thread with a blocking client, and a test that flushes it (blocking) must not be the only
//! thread able to answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use crate::TestResult;

/// One received span, ids in lower-case hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// The resource's `service.name`.
    pub service: String,
    /// String renderings of the span's attributes.
    pub attributes: BTreeMap<String, String>,
}

/// OTLP `SPAN_KIND_SERVER`.
pub const KIND_SERVER: i32 = 2;
/// OTLP `SPAN_KIND_CLIENT`.
pub const KIND_CLIENT: i32 = 3;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(kv: &KeyValue) -> (String, String) {
    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    (kv.key.clone(), value)
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The running receiver.
#[derive(Debug)]
pub struct OtlpReceiver {
    pub addr: std::net::SocketAddr,
    spans: Spans,
    requests: Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn export(
    spans: Spans,
    requests: Arc<std::sync::atomic::AtomicU64>,
    body: Bytes,
) -> axum::response::Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut got = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .map(render)
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    service: service.clone(),
                    attributes: span.attributes.iter().map(render).collect(),
                });
            }
        }
    }
    if let Ok(mut all) = spans.lock() {
        all.extend(got);
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

impl OtlpReceiver {
    /// Starts the receiver on a free loopback port.
    pub fn start() -> TestResult<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the receiver")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let spans: Spans = Arc::default();
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (s, r) = (spans.clone(), requests.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the receiver's runtime")?;
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let app = axum::Router::new().route(
                        "/v1/traces",
                        axum::routing::post(move |body: Bytes| export(s.clone(), r.clone(), body)),
                    );
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .context("start the receiver's thread")?;
        Ok(OtlpReceiver {
            addr,
            spans,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The base URL to give an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The spans of `trace_id`, once `done` says they are all there (polled up to `within`);
    /// an error naming what arrived if they never are.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> TestResult<Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() > deadline {
                let all: Vec<String> = self
                    .spans()
                    .iter()
                    .take(300)
                    .map(|s| {
                        format!(
                            "{} {} <- {} {} {:?}",
                            s.trace_id,
                            s.span_id,
                            s.parent_span_id,
                            s.name,
                            s.attributes.get("command")
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "the spans of trace {trace_id} did not all arrive within {within:?}; got {:#?}\n(all: {} spans in {} requests:\n{})",
                    spans,
                    self.spans().len(),
                    self.requests(),
                    all.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A receiver and the origin's span exporter pointed at it, installed once per test process
/// as the global subscriber (nextest runs each test in a process of its own; under
/// `cargo test` the tests of a binary share them).
#[derive(Debug)]
pub struct Tracing {
    pub receiver: OtlpReceiver,
    telemetry: origin::telemetry::Telemetry,
}

impl Tracing {
    /// Sends every span ended so far to the receiver (blocking, off the async threads).
    pub async fn flush(&'static self) -> TestResult {
        tokio::task::spawn_blocking(move || self.telemetry.flush())
            .await
            .context("flush the span exporter")
    }
}

static TRACING: std::sync::OnceLock<Result<Tracing, String>> = std::sync::OnceLock::new();

/// The process's receiver and exporter (made and installed on the first call). Fails if
/// another subscriber was installed first. `OTLP_DEBUG_SPANS=1` also prints every origin span
/// as it closes (to see a span that never reaches the receiver).
pub fn tracing() -> TestResult<&'static Tracing> {
    TRACING
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            use tracing_subscriber::Layer as _;
            let make = || -> TestResult<Tracing> {
                let receiver = OtlpReceiver::start()?;
                let (layer, provider) = origin::telemetry::otel_layer(&receiver.endpoint())?;
                let debug = std::env::var("OTLP_DEBUG_SPANS").is_ok().then(|| {
                    tracing_subscriber::fmt::layer()
                        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
                        .with_filter(
                            tracing_subscriber::filter::Targets::new()
                                .with_target("origin", tracing::Level::DEBUG),
                        )
                });
                tracing_subscriber::registry()
                    .with(layer)
                    .with(debug)
                    .try_init()
                    .context("another subscriber is installed")?;
                Ok(Tracing {
                    receiver,
                    telemetry: origin::telemetry::telemetry_of(provider),
                })
            };
            make().map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
