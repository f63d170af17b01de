//! Load shedding: past `MAX_IN_FLIGHT` concurrent API requests, answer 503 at once.
//!
//! Why: an origin past its capacity that keeps accepting work only builds a queue — in
//! Tokio's scheduler, in the database pool's wait list — and every request in it waits longer,
//! until clients time out and retry into the same queue. Refusing the excess at the door keeps
//! the admitted requests' latency near its steady value, tells the client to come back
//! (`Retry-After: 1`, an RFC 9457 problem of type `/problems/overloaded`), and costs the
//! refused request microseconds, not a timeout. There is nothing to recover: a permit is
//! returned when its request's response is ready, so the origin admits again as soon as load
//! drops.
//!
//! How: a `tokio::sync::Semaphore` with `try_acquire` (never waits). Tower's
//! `ConcurrencyLimitLayer` + `LoadShedLayer` do the same but answer with an error type that
//! would need its own mapping layer to become our problem body; this is twelve lines. Health,
//! readiness and metrics are never shed: an orchestrator must see an overloaded origin as
//! alive, and the operator must see why it sheds. Shed requests are counted in
//! `http_requests_shed_total`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use crate::http::error::{problem_response, Problem};

/// The admission limit shared by every request of one app.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
}

impl Admission {
    /// At most `max_in_flight` API requests at a time.
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }
}

fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

fn overloaded() -> Response {
    let mut response = problem_response(&Problem {
        kind: "/problems/overloaded".into(),
        title: "Overloaded".into(),
        status: 503,
        detail: "the server is at capacity; retry after the number of seconds in Retry-After"
            .into(),
        field: None,
    });
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Middleware: admits the request if a permit is free, else answers 503 without waiting.
pub(crate) async fn admit(
    State(admission): State<Admission>,
    request: Request,
    next: Next,
) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    match admission.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => {
            metrics::counter!("http_requests_shed_total").increment(1);
            overloaded()
        }
    }
}
