//! The edge as a Spin HTTP component (`wasm32-wasip2`, spin-sdk 5.2): wasi:http in and out,
//! settings from environment variables, everything else in `edge-core`.
//!
//! The component runs unchanged under Fermyon Spin (settings from `spin.toml`'s component
//! `environment`) and under `wasmtime serve -S cli=y -S http=y --env …` (how the scripts
//! and tests run it locally: the Spin CLI cannot be installed here). `wasmtime serve`
//! ignores `spin.toml` and offers neither Spin variables nor key-value stores, so the component
//! uses neither: environment variables and outbound wasi:http are all it needs.
//!
//! **Instances.** Spin instantiates the component per request; `wasmtime serve` reuses an
//! instance for up to `--max-instance-reuse-count` requests (one at a time: a wasi:http 0.2
//! component is never called concurrently). The edge — parsed configuration and the memory of
//! blocked clients — is built on an instance's first request and kept for its life, exactly
//! as on Cloudflare; a per-request host simply builds it every time.
//!
//! **Client address.** wasi:http 0.2 does not expose the peer address (its incoming-request
//! has no such field). Spin's HTTP trigger adds `spin-client-addr` (`ip:port`, `[v6]:port`)
//! from the socket *after* the client's headers (`crates/trigger-http`: the client's list,
//! then the host's, appended), and the SDK collects headers into a map where the last value
//! of a name wins: the host's. That is the only source used; `X-Forwarded-For` is never
//! read. An IPv6 client is limited by its /64 (`domain::ratelimit::address_bucket`).
//! `wasmtime serve` offers nothing: it adds no header, so without one every client is
//! `unknown` (one shared bucket), and a `spin-client-addr` the client sends itself arrives
//! as is — which the edge suite uses to play the Spin host, and which is why a component
//! served by plain `wasmtime serve` must sit behind a proxy that sets (overwrites) it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use edge_core::platform::{FetchError, Outbound, Platform, Request, Response};
use edge_core::Edge;
use futures_util::future::{join, select, Either};
use futures_util::SinkExt as _;
use spin_sdk::http::conversions::TryIntoOutgoingRequest as _;
use spin_sdk::http::{IntoResponse, Method, Request as SpinRequest, Response as SpinResponse};
use spin_sdk::http_component;

thread_local! {
    static EDGE: RefCell<Option<Rc<Edge>>> = const { RefCell::new(None) };
}

/// The instance's edge, built on its first request.
fn edge() -> Result<Rc<Edge>, edge_core::config::ConfigError> {
    if let Some(edge) = EDGE.with(|e| e.borrow().clone()) {
        return Ok(edge);
    }
    let edge = Rc::new(Edge::new(&Wasi, "spin")?);
    EDGE.with(|e| *e.borrow_mut() = Some(edge.clone()));
    Ok(edge)
}

/// The wasi:http host as an edge platform.
#[derive(Debug)]
struct Wasi;

/// Resolves after `ms` milliseconds (a wasi monotonic-clock pollable on Spin's executor).
///
/// At most one pollable is registered per sleep: a poll replaces the last one (its token cancels
/// it) and dropping the sleep, when the exchange wins the race, cancels it too. Registering a new
/// one on every poll without cancelling left each in the executor's list until its deadline —
/// across requests, since an instance serves many — and the host checked them all on every turn
/// of the loop (`ResourceTable::poll`, `Deadline::ready` and tokio's timer wheel: about 6 % of
/// wasmtime's CPU in the edge benchmark's profile).
fn sleep(ms: u64) -> impl Future<Output = ()> {
    let deadline = wasi::clocks::monotonic_clock::now() + ms * 1_000_000;
    // Held for its `Drop`, which cancels the registration.
    let mut _registered: Option<spin_executor::CancelOnDropToken> = None;
    std::future::poll_fn(move |cx| {
        if wasi::clocks::monotonic_clock::now() >= deadline {
            _registered = None;
            return Poll::Ready(());
        }
        let pollable = wasi::clocks::monotonic_clock::subscribe_instant(deadline);
        _registered =
            Some(spin_executor::push_waker_and_get_token(pollable, cx.waker().clone()).into());
        Poll::Pending
    })
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    }
}

/// Sends `req` and waits for the answer, writing its body while the request is in flight.
///
/// Not `spin_sdk::http::send` with a buffered body: that sends every request chunked (even a
/// GET with no body), writes the body before looking at the answer, and turns a failed body
/// write into an error. An origin that refuses a request early (405, 404, 400 …) answers
/// before reading the body and closes the connection; the write then fails with
/// `StreamError::Closed` or the exchange with `HttpProtocolError`, and the client got a 503
/// instead of the origin's 4xx. Here the length is declared (`content-length`, so hyper
/// sends no chunked body and none at all when it is empty), the body is written alongside
/// the request, and the answer wins over a failed body write.
async fn exchange(req: Outbound) -> Result<SpinResponse, String> {
    let mut builder = SpinRequest::builder();
    builder.method(method(&req.method)).uri(req.url);
    for (k, v) in req.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            builder.header(k, v);
        }
    }
    builder.header("content-length", req.body.len().to_string());
    let (outgoing, buffered) = builder
        .body(req.body)
        .build()
        .try_into_outgoing_request()
        .map_err(|e| e.to_string())?;
    let body = buffered.unwrap_or_default();
    let mut sink = outgoing.take_body();
    let write = async move {
        let written = if body.is_empty() {
            Ok(())
        } else {
            sink.send(body).await
        };
        drop(sink); // finishes the body
        written
    };
    let send = spin_sdk::http::send::<_, SpinResponse>(outgoing);
    let (answer, written) = join(send, write).await;
    match (answer, written) {
        (Ok(resp), _) => Ok(resp),
        (Err(e), Err(w)) => Err(format!("{e} (body write: {w:?})")),
        (Err(e), Ok(())) => Err(e.to_string()),
    }
}

impl Platform for Wasi {
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError> {
        let timeout_ms = req.timeout_ms;
        let send = pin!(exchange(req));
        let timer = pin!(sleep(timeout_ms));
        match select(send, timer).await {
            Either::Left((Ok(resp), _)) => Ok(Response {
                status: *resp.status(),
                headers: resp
                    .headers()
                    .map(|(k, v)| (k.to_owned(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                body: resp.into_body(),
            }),
            Either::Left((Err(e), _)) => Err(FetchError::Network(e)),
            Either::Right(((), _)) => Err(FetchError::Timeout),
        }
    }

    fn now_ms(&self) -> u64 {
        let now = wasi::clocks::wall_clock::now();
        now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000)
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn log(&self, line: &str) {
        eprintln!("edge: {line}");
    }

    /// Standard output, one line: Spin (and `wasmtime serve`) pass it to the host's log.
    fn access_log(&self, line: &str) {
        println!("{line}");
    }
}

/// The exported wasi:http handler.
#[expect(
    unsafe_code,
    reason = "the #[http_component] macro generates the (unsafe) wit-bindgen export glue"
)]
mod component {
    use super::*;

    #[http_component]
    async fn handle(req: SpinRequest) -> anyhow::Result<impl IntoResponse> {
        let client_ip = req
            .header("spin-client-addr")
            .and_then(|v| v.as_str())
            .map(|addr| {
                // "ip:port" or "[v6]:port"
                addr.rsplit_once(':')
                    .map_or(addr, |(ip, _)| ip)
                    .trim_matches(['[', ']'])
                    .to_owned()
            });
        let core_req = Request {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            query: req.query().to_owned(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_owned(), v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            body: req.body().to_vec(),
            client_ip,
        };
        let resp = match edge() {
            Ok(edge) => edge.handle(&Wasi, core_req).await,
            Err(_) => edge_core::handle_once(&Wasi, "spin", core_req).await,
        };
        let mut builder = SpinResponse::builder();
        builder.status(resp.status);
        for (k, v) in resp.headers {
            builder.header(k, v);
        }
        Ok(builder.body(resp.body).build())
    }
}
