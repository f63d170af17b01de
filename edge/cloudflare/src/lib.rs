//! The edge as a Cloudflare Worker (workerd): the `worker` crate's fetch event adapted to
//! `edge-core`, settings from wrangler `[vars]` and secrets.
//!
//! One [`edge_core::Edge`] is built per isolate, on its first request, and reused: its parsed
//! configuration and its memory of blocked clients live as long as the isolate does.
//!
//! **Client address.** Only `CF-Connecting-IP`, which Cloudflare's edge sets from the TCP
//! connection (overwriting whatever the client sent); `X-Forwarded-For` is never read. An
//! IPv6 client is limited by its /64 (`domain::ratelimit::address_bucket`). Locally,
//! miniflare sets it from the socket too (though it keeps one a client sends, which the edge
//! suite uses to play Cloudflare's edge).

use std::cell::RefCell;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use edge_core::platform::{FetchError, Outbound, Platform, Request, Response};
use edge_core::Edge;
use futures_util::future::{select, Either};
use worker::{
    console_log, event, js_sys, Context, Delay, Env, Fetch, Headers, Method, RequestInit,
};

thread_local! {
    static EDGE: RefCell<Option<Rc<Edge>>> = const { RefCell::new(None) };
}

/// workerd as an edge platform.
struct Workerd<'e> {
    env: &'e Env,
}

impl std::fmt::Debug for Workerd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Workerd")
    }
}

async fn send(req: Outbound) -> worker::Result<Response> {
    let headers = Headers::new();
    for (k, v) in &req.headers {
        headers.set(k, v)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::from(req.method.clone()))
        .with_headers(headers);
    if !req.body.is_empty() {
        init.with_body(Some(js_sys::Uint8Array::from(req.body.as_slice()).into()));
    }
    let request = worker::Request::new_with_init(&req.url, &init)?;
    let mut resp = Fetch::Request(request).send().await?;
    let headers = resp.headers().entries().collect();
    Ok(Response {
        status: resp.status_code(),
        headers,
        body: resp.bytes().await?,
    })
}

impl Platform for Workerd<'_> {
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError> {
        let timeout = Duration::from_millis(req.timeout_ms);
        let sent = pin!(send(req));
        let timer = pin!(Delay::from(timeout));
        match select(sent, timer).await {
            Either::Left((Ok(resp), _)) => Ok(resp),
            Either::Left((Err(e), _)) => Err(FetchError::Network(e.to_string())),
            Either::Right(((), _)) => Err(FetchError::Timeout),
        }
    }

    fn now_ms(&self) -> u64 {
        // Date.now() is a float of whole milliseconds.
        let now = js_sys::Date::now();
        if now.is_finite() && now > 0.0 {
            now as u64
        } else {
            0
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        self.env
            .var(name)
            .map(|v| v.to_string())
            .or_else(|_| self.env.secret(name).map(|s| s.to_string()))
            .ok()
    }

    fn log(&self, line: &str) {
        console_log!("edge: {line}");
    }

    fn access_log(&self, line: &str) {
        console_log!("{line}");
    }
}

fn edge(p: &Workerd<'_>) -> Result<Rc<Edge>, edge_core::config::ConfigError> {
    if let Some(edge) = EDGE.with(|e| e.borrow().clone()) {
        return Ok(edge);
    }
    let edge = Rc::new(Edge::new(p, "cloudflare")?);
    EDGE.with(|e| *e.borrow_mut() = Some(edge.clone()));
    Ok(edge)
}

async fn to_core(mut req: worker::Request) -> worker::Result<Request> {
    let url = req.url()?;
    let headers: Vec<(String, String)> = req.headers().entries().collect();
    let client_ip = req.headers().get("cf-connecting-ip")?;
    Ok(Request {
        // The method as sent: `worker::Method` turns one it does not know (`QUERY`) into GET.
        method: req.inner().method(),
        path: url.path().to_owned(),
        query: url.query().unwrap_or_default().to_owned(),
        headers,
        body: req.bytes().await.unwrap_or_default(),
        client_ip,
    })
}

fn from_core(resp: Response) -> worker::Result<worker::Response> {
    let headers = Headers::new();
    for (k, v) in &resp.headers {
        headers.set(k, v)?;
    }
    Ok(worker::Response::builder()
        .with_status(resp.status)
        .with_headers(headers)
        .fixed(resp.body))
}

/// The exported fetch handler.
mod component {
    use super::*;

    #[event(fetch)]
    async fn fetch(
        req: worker::Request,
        env: Env,
        _ctx: Context,
    ) -> worker::Result<worker::Response> {
        let p = Workerd { env: &env };
        let core_req = to_core(req).await?;
        let resp = match edge(&p) {
            Ok(edge) => edge.handle(&p, core_req).await,
            Err(_) => edge_core::handle_once(&p, "cloudflare", core_req).await,
        };
        from_core(resp)
    }
}
