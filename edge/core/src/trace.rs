//! Trace context at the edge, and the edge's access log line.
//!
//! **Trace context.** A valid incoming `traceparent` (`domain::trace`) is continued: the edge
//! makes its own span id and forwards `traceparent` with that span as the parent, keeping the
//! trace id and flags (and `tracestate`). Without one, or with an invalid one — which is
//! replaced, never forwarded — the edge starts a trace (fresh trace id, sampled). The response
//! carries `traceresponse` (W3C Trace Context level 2, draft) naming the edge's span, so a
//! client can find its request's trace.
//!
//! **The edge does not export spans.** Exporting would cost an outbound `fetch` (or a
//! `waitUntil` task) per request to a collector, on the platform whose per-request budget is
//! the tightest; the edge's part of a request is visible anyway as the gap between the
//! client's span and the origin's server span, whose parent is the edge's span id, and in the
//! access line below (same trace id and span id). A platform-native exporter (Cloudflare's
//! Workers tracing) can add it without code here.
//!
//! **Access log.** One JSON line per request through [`Platform::access_log`] (console /
//! stdout): method, route template, status, duration, request id, trace and span id, region,
//! runtime, cache state and the user pseudonym (`domain::trace::user_hash`) — built from those
//! fields only, so a token, key or quote token cannot reach it.

use domain::trace::{TraceParent, SAMPLED};
use serde_json::json;

use crate::platform::{Platform, Request};

/// The trace of one edge request: the context forwarded to origins (the edge's span as the
/// parent).
#[derive(Debug, Clone)]
pub struct EdgeTrace {
    /// What the edge forwards (trace id, the edge's span id, flags).
    pub forwarded: TraceParent,
    /// The incoming `tracestate`, kept only with a valid incoming `traceparent`.
    pub tracestate: Option<String>,
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(bytes)
}

impl EdgeTrace {
    /// Continues the request's trace, or starts one. `None` only without an entropy source
    /// (then nothing is forwarded: better no trace than a constant one).
    pub fn of(req: &Request) -> Option<Self> {
        let incoming = req.header("traceparent").and_then(TraceParent::parse);
        let span_id = random::<8>()?;
        match incoming {
            Some(incoming) => Some(EdgeTrace {
                forwarded: incoming.child(span_id)?,
                tracestate: req
                    .header("tracestate")
                    .filter(|s| s.len() <= 512 && s.is_ascii())
                    .map(str::to_owned),
            }),
            None => Some(EdgeTrace {
                forwarded: TraceParent::new(random::<16>()?, span_id, SAMPLED)?,
                tracestate: None,
            }),
        }
    }

    /// Sets `traceparent` (and `tracestate`) on the request as it will be forwarded, replacing
    /// whatever the client sent.
    pub fn apply(&self, req: &mut Request) {
        req.headers.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate")
        });
        req.headers
            .push(("traceparent".into(), self.forwarded.to_string()));
        if let Some(state) = &self.tracestate {
            req.headers.push(("tracestate".into(), state.clone()));
        }
    }
}

/// The route template of a path for logs: segments that are not plain words (ids, region
/// codes, anything a client made up) become `{id}`, at most eight segments — bounded and free
/// of client data.
pub fn route_template(path: &str) -> String {
    let mut out = String::new();
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i == 8 {
            out.push_str("/…");
            break;
        }
        out.push('/');
        let word = matches!(segment, "" | "v1" | "v2")
            || (segment.len() <= 32
                && segment.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        out.push_str(if word { segment } else { "{id}" });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// What the access line says about one request.
#[derive(Debug)]
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: u64,
    pub request_id: &'a str,
    pub trace: Option<&'a EdgeTrace>,
    pub region: &'a str,
    pub runtime: &'a str,
    /// `x-edge-cache` of the answer (`hit`, `miss`, `stale`, `bypass`), if any.
    pub cache: Option<&'a str>,
    /// The verified caller's id (hashed here).
    pub user: Option<&'a str>,
}

impl Access<'_> {
    /// The JSON line.
    pub fn line(&self) -> String {
        json!({
            "level": "INFO",
            "target": "access",
            "tier": "edge",
            "method": self.method,
            "route": route_template(self.path),
            "status": self.status,
            "duration_ms": self.duration_ms,
            "request_id": self.request_id,
            "trace_id": self.trace.map(|t| t.forwarded.trace_id_hex()),
            "span_id": self.trace.map(|t| t.forwarded.parent_id_hex()),
            "region": self.region,
            "runtime": self.runtime,
            "cache": self.cache,
            "user": self.user.map(domain::trace::user_hash),
        })
        .to_string()
    }

    /// Writes the line through the platform.
    pub fn log(&self, p: &impl Platform) {
        p.access_log(&self.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/v1/quotes".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Request::default()
        }
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_the_edges_span() {
        let mut req = request(&[("traceparent", GOOD), ("tracestate", "vendor=1")]);
        let trace = EdgeTrace::of(&req).expect("entropy");
        assert_eq!(
            trace.forwarded.trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(trace.forwarded.parent_id_hex(), "00f067aa0ba902b7");
        trace.apply(&mut req);
        let sent: Vec<_> = req
            .headers
            .iter()
            .filter(|(k, _)| k == "traceparent")
            .collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, trace.forwarded.to_string());
        assert_eq!(req.header("tracestate"), Some("vendor=1"));
    }

    #[test]
    fn an_invalid_traceparent_is_replaced_by_a_new_trace_and_its_state_dropped() {
        let bad = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let mut req = request(&[("traceparent", bad), ("tracestate", "vendor=1")]);
        let trace = EdgeTrace::of(&req).expect("entropy");
        assert_ne!(
            trace.forwarded.trace_id_hex(),
            "00000000000000000000000000000000"
        );
        assert!(trace.forwarded.sampled());
        trace.apply(&mut req);
        assert_eq!(
            req.header("traceparent"),
            Some(trace.forwarded.to_string().as_str())
        );
        assert_eq!(req.header("tracestate"), None);
    }

    #[test]
    fn route_templates_hide_ids_and_client_bytes() {
        assert_eq!(
            route_template("/v1/bookings/bkg_euw_0190a1b2c3/confirm"),
            "/v1/bookings/{id}/confirm"
        );
        assert_eq!(route_template("/v2/quotes"), "/v2/quotes");
        assert_eq!(route_template("/v1/x/\"}{evil"), "/v1/x/{id}");
        assert_eq!(route_template("/"), "/");
        assert_eq!(route_template("/a/b/c/d/e/f/g/h/i/j"), "/a/b/c/d/e/f/g/h/…");
    }

    #[test]
    fn the_access_line_is_json_with_the_user_hashed() {
        let trace = EdgeTrace::of(&request(&[("traceparent", GOOD)]));
        let line = Access {
            method: "POST",
            path: "/v1/quotes",
            status: 201,
            duration_ms: 12,
            request_id: "r1",
            trace: trace.as_ref(),
            region: "EUW",
            runtime: "spin",
            cache: Some("miss"),
            user: Some("ann"),
        }
        .line();
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["route"], "/v1/quotes");
        assert_eq!(v["status"], 201);
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["user"], domain::trace::user_hash("ann"));
        assert!(!line.contains("\"ann\""));
    }
}
