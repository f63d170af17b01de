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
use std::rc::Rc;

use edge_core::platform::{FetchError, Outbound, Platform, Request, Response};
use edge_core::Edge;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{console_log, event, js_sys, web_sys, Context, Env, Headers};

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

/// One subrequest, made with web-sys directly rather than `worker::Fetch` + `Delay`: the worker
/// crate reads a fetched body through a stream reader (`getReader`, `read` per chunk,
/// `releaseLock`) and reads the response's `cf`, and `Delay` arms a JavaScript timer with its
/// closure per call. `arrayBuffer()` and `AbortSignal.timeout()` do the same work in one native
/// call each; in the edge benchmark's profile of the isolate those were about 14 % of its
/// samples (README, "Benchmarks"). The deadline covers the whole exchange, body included.
async fn send(req: Outbound) -> Result<Response, FetchError> {
    let headers = web_sys::Headers::new().map_err(js_failure)?;
    for (k, v) in &req.headers {
        headers.set(k, v).map_err(js_failure)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method(&req.method);
    init.set_headers(&headers);
    if !req.body.is_empty() {
        init.set_body(&js_sys::Uint8Array::from(req.body.as_slice()));
    }
    // At most u32::MAX ms (49 days): every deadline here is seconds.
    let timeout = u32::try_from(req.timeout_ms).unwrap_or(u32::MAX);
    init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(timeout)));
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let resp: web_sys::Response = JsFuture::from(global.fetch_with_str_and_init(&req.url, &init))
        .await
        .map_err(js_failure)?
        .dyn_into()
        .map_err(js_failure)?;
    let headers = Headers(resp.headers()).entries().collect();
    let body = JsFuture::from(resp.array_buffer().map_err(js_failure)?)
        .await
        .map_err(js_failure)?;
    Ok(Response {
        status: resp.status(),
        headers,
        body: js_sys::Uint8Array::new(&body).to_vec(),
    })
}

/// A rejected fetch or body read: the signal's `TimeoutError` is the deadline, anything else the
/// network.
fn js_failure(e: JsValue) -> FetchError {
    let name = js_sys::Reflect::get(&e, &JsValue::from_str("name"))
        .ok()
        .and_then(|n| n.as_string());
    if name.as_deref() == Some("TimeoutError") {
        return FetchError::Timeout;
    }
    let message = js_sys::Reflect::get(&e, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string());
    FetchError::Network(message.unwrap_or_else(|| format!("{e:?}")))
}

impl Platform for Workerd<'_> {
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError> {
        send(req).await
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
