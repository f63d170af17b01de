//! The edge as a Spin HTTP component (`wasm32-wasip2`, spin-sdk 5.2): wasi:http in and out,
//! settings from environment variables, everything else in `edge-core`.
//!
//! The component runs unchanged under Fermyon Spin (settings from `spin.toml`'s component
//! `environment`) and under `wasmtime serve -S cli=y -S http=y --env …` (how the scripts
//! and tests run it locally: the Spin CLI cannot be installed here). `wasmtime serve`
//! ignores `spin.toml` and offers neither Spin variables nor key-value stores, so the component
//! uses neither: environment variables and outbound wasi:http are all it needs. Both hosts
//! instantiate the component per request, so the edge is built per request (`handle_once`).
//!
//! **Client address.** wasi:http does not expose the peer address; Spin sets the
//! `spin-client-addr` header from the socket (overwriting any sent by the client), and that is
//! the only source used. `wasmtime serve` does not set it: locally every client is `unknown`
//! for the per-IP limit — one shared bucket, never a spoofable header.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use edge_core::platform::{FetchError, Outbound, Platform, Request, Response};
use futures_util::future::{select, Either};
use spin_sdk::http::{IntoResponse, Method, Request as SpinRequest, Response as SpinResponse};
use spin_sdk::http_component;

/// The wasi:http host as an edge platform.
#[derive(Debug)]
struct Wasi;

/// Resolves after `ms` milliseconds (a wasi monotonic-clock pollable on Spin's executor).
fn sleep(ms: u64) -> impl Future<Output = ()> {
    let deadline = wasi::clocks::monotonic_clock::now() + ms * 1_000_000;
    std::future::poll_fn(move |cx| {
        if wasi::clocks::monotonic_clock::now() >= deadline {
            return Poll::Ready(());
        }
        let pollable = wasi::clocks::monotonic_clock::subscribe_instant(deadline);
        spin_executor::push_waker(pollable, cx.waker().clone());
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

impl Platform for Wasi {
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError> {
        let mut builder = SpinRequest::builder();
        builder.method(method(&req.method)).uri(req.url);
        for (k, v) in req.headers {
            builder.header(k, v);
        }
        let outgoing = builder.body(req.body).build();
        let send = pin!(spin_sdk::http::send::<_, SpinResponse>(outgoing));
        let timer = pin!(sleep(req.timeout_ms));
        match select(send, timer).await {
            Either::Left((Ok(resp), _)) => Ok(Response {
                status: *resp.status(),
                headers: resp
                    .headers()
                    .map(|(k, v)| (k.to_owned(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                body: resp.into_body(),
            }),
            Either::Left((Err(e), _)) => Err(FetchError::Network(e.to_string())),
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
}

/// The exported wasi:http handler (the macro's generated glue needs `unsafe`).
#[allow(unsafe_code)]
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
        let resp = edge_core::handle_once(&Wasi, "spin", core_req).await;
        let mut builder = SpinResponse::builder();
        builder.status(resp.status);
        for (k, v) in resp.headers {
            builder.header(k, v);
        }
        Ok(builder.body(resp.body).build())
    }
}
