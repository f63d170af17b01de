//! The port between the edge logic and its host runtime.
//!
//! The core never names a runtime: everything it needs from the outside world — an outbound
//! HTTP request with a deadline, the clock, a configuration variable and a log line — goes
//! through [`Platform`]. Redis is reached over Upstash's REST protocol, i.e. through
//! [`Platform::fetch`] as well (see [`crate::upstash`]), so an adapter is a few dozen lines:
//! `edge/cloudflare` implements it with `worker::Fetch` and `env.var`, `edge/spin` with
//! wasi:http and environment variables. Tests of the pure logic implement it in memory.
//!
//! Futures are not `Send`: JavaScript promises (workerd) and wasi pollables are single-threaded,
//! which is also why the trait uses plain `async fn` and callers are generic over it.

/// An HTTP request or response header list; names are compared case-insensitively.
pub type Headers = Vec<(String, String)>;

/// Looks a header up case-insensitively.
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// An incoming request as the adapter hands it to the core.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Upper-case method (`GET`, `POST`, …).
    pub method: String,
    /// Path without the query, e.g. `/v1/quotes`.
    pub path: String,
    /// Raw query string without `?` (empty when absent).
    pub query: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The client address from the platform's *trusted* source (`CF-Connecting-IP` on
    /// Cloudflare, the `spin-client-addr` the Spin host sets); never from `X-Forwarded-For`.
    pub client_ip: Option<String>,
}

impl Request {
    /// A header of this request.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A response, from the origin or built by the edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    /// A header of this response.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Sets a header, replacing any with the same name.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
    }
}

/// An outbound request (to an origin or to the Upstash REST API).
#[derive(Debug, Clone)]
pub struct Outbound {
    pub method: String,
    /// Absolute URL.
    pub url: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The whole exchange must finish within this many milliseconds.
    pub timeout_ms: u64,
}

/// Why an outbound request produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
    /// Connection refused, DNS, TLS, reset …
    #[error("{0}")]
    Network(String),
}

/// What the core needs from its host.
#[expect(
    async_fn_in_trait,
    reason = "single-threaded hosts: the futures are deliberately not Send"
)]
pub trait Platform {
    /// Sends an HTTP request, giving up after `req.timeout_ms`.
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A configuration variable (wrangler `[vars]`/secrets, Spin component environment).
    fn var(&self, name: &str) -> Option<String>;
    /// Writes a diagnostic line (never with secrets or tokens).
    fn log(&self, line: &str);
    /// Writes the request's access line (one JSON object, `trace.rs`) as it is, so a log
    /// pipeline can parse it; by default through [`Platform::log`].
    fn access_log(&self, line: &str) {
        self.log(line);
    }
}
