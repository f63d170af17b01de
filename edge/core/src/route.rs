//! Request classification: which route a request is, which region's origin owns it, and the
//! canonical form of a JSON body (for cache keys). Pure functions, unit-tested in `tests.rs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use domain::{BookingId, Region, VehicleId};
use serde_json::Value;

/// What a request is, once its path is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Search,
    Quote,
    CreateBooking,
    BookingAction(BookingId),
    BookingRead(BookingId),
    /// Anything else under `/v1` or `/v2`: forwarded to the home region's origin.
    Other,
}

/// JSON with object keys sorted, whatever map type `serde_json` was built with.
pub(crate) fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical(map.get(k).unwrap_or(&Value::Null))
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// The region and vehicle a quote token names, read *without* verifying it: only to pick the
/// origin, which verifies it (the edge holds no quote-signing keys).
pub(crate) fn quote_token_target(token: &str) -> Option<(Region, Option<VehicleId>)> {
    let mut parts = token.split('.');
    let (_version, _kid, payload) = (parts.next()?, parts.next()?, parts.next()?);
    let json: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let region: Region = json.get("reg")?.as_str()?.parse().ok()?;
    let vehicle = json
        .get("veh")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok());
    Some((region, vehicle))
}

pub(crate) fn route(method: &str, rest: &str) -> Route {
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["vehicles", "search"]) => Route::Search,
        ("POST", ["quotes"]) => Route::Quote,
        ("POST", ["bookings"]) => Route::CreateBooking,
        ("POST", ["bookings", id, _verb]) => match id.parse() {
            Ok(id) => Route::BookingAction(id),
            Err(_) => Route::Other,
        },
        ("GET", ["bookings", id]) => match id.parse() {
            Ok(id) => Route::BookingRead(id),
            Err(_) => Route::Other,
        },
        _ => Route::Other,
    }
}

pub(crate) fn is_write(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// `s` with every byte that may not appear in a URI path (or, with `query`, a query) as-is
/// percent-encoded; `%` is kept, so what the client encoded stays encoded the same way.
/// Hosts build the outbound URL with a strict parser (wasi:http's `set-path-with-query`,
/// the `http` crate, WHATWG URL): a raw space, quote, backslash or non-ASCII byte the client
/// managed to send would otherwise make the request unsendable — a 503 instead of the
/// origin's 4xx. Hand-written: eight lines, and the exact set matters here.
pub(crate) fn uri_safe(s: &str, query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/%".contains(&b)
            || (query && b == b'?');
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
