//! RFC 9457 problem responses built at the edge, in the origin's shape (`type`, `title`,
//! `status`, `detail`), so a client cannot tell — and need not care — which tier refused it.

use serde_json::json;

use crate::platform::Response;

/// A problem+json response; `slug` becomes the stable `type` `/problems/<slug>`.
pub fn problem(status: u16, slug: &str, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("/problems/{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    });
    Response {
        status,
        headers: vec![("content-type".into(), "application/problem+json".into())],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// 401 with the `WWW-Authenticate` challenge.
pub fn unauthorized(detail: &str) -> Response {
    let mut r = problem(401, "unauthorized", "Unauthorized", detail);
    r.set_header("www-authenticate", "Bearer");
    r
}

/// 503 with `Retry-After`: the origin could not be reached and nothing cached can stand in.
pub fn origin_unavailable(retry_after_secs: u64, detail: &str) -> Response {
    let mut r = problem(503, "origin-unavailable", "Service unavailable", detail);
    r.set_header("retry-after", retry_after_secs.to_string());
    r
}

/// 503 with `Retry-After`: this isolate already serves as many requests as it is allowed to
/// (`EDGE_MAX_IN_FLIGHT`); refusing fast beats the host's own failure past its limit.
pub fn overloaded(retry_after_secs: u64, limit: usize) -> Response {
    let mut r = problem(
        503,
        "edge-overloaded",
        "Service unavailable",
        &format!("the edge is serving its maximum of {limit} concurrent requests; retry later"),
    );
    r.set_header("retry-after", retry_after_secs.to_string());
    r
}

/// 401 for an app's API key (`X-Api-Key`) that cannot be used: missing where required,
/// unknown, revoked or expired.
pub fn bad_api_key(detail: &str) -> Response {
    let mut r = problem(401, "invalid-api-key", "Invalid API key", detail);
    r.set_header("www-authenticate", "ApiKey header=\"X-Api-Key\"");
    r
}
