//! Load shedding: past `MAX_IN_FLIGHT` concurrent API requests, wait at most
//! `ADMISSION_WAIT_MS` for a permit in a queue no longer than `MAX_IN_FLIGHT`, else answer 503.
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
//! # Why a short queue
//!
//! Arrivals are not smooth: an open-loop client at half the origin's capacity still sends
//! clumps (its own scheduler catching up after a pause, many clients' timers lining up), and
//! the origin pauses too (a cache refresh, the 2-core box's other processes). With a
//! try-acquire-only door, any clump past `MAX_IN_FLIGHT` in the same millisecond was refused
//! although the origin would have served it within a few milliseconds: the bench measured 127
//! sheds at half the max rate. A brief FIFO wait absorbs clumps; real overload still gets its
//! 503 within `ADMISSION_WAIT_MS` (the waiting line is full, or the wait ran out), so a refused
//! request still costs milliseconds, not a timeout, and the queue never grows past
//! `MAX_IN_FLIGHT` waiters. `ADMISSION_WAIT_MS=0` is the old immediate refusal.
//!
//! How: a `tokio::sync::Semaphore` (FIFO: a released permit goes to the longest waiter, a new
//! `try_acquire` cannot overtake it) and a counter of waiters. Tower's
//! `ConcurrencyLimitLayer` + `LoadShedLayer` do the same but answer with an error type that
//! would need its own mapping layer to become our problem body; this is twelve lines. Health,
//! readiness and metrics are never shed: an orchestrator must see an overloaded origin as
//! alive, and the operator must see why it sheds. Shed requests are counted in
//! `http_requests_shed_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::error::{problem_response, Problem};

/// The admission limit shared by every request of one app.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    /// At most this many wait; the next one is refused at once.
    max_waiting: usize,
    /// How long one request may wait.
    wait: Duration,
}

impl Admission {
    /// At most `max_in_flight` API requests at a time; up to as many more wait at most `wait`.
    pub(crate) fn new(max_in_flight: usize, wait: Duration) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Admission {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: max_in_flight,
            wait,
        }
    }

    /// A permit now, or after a wait within the bounds; `None` means shed.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.wait.is_zero() {
            return None;
        }
        let waiter = Waiter::enter(self)?;
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await;
        drop(waiter);
        match permit {
            Ok(Ok(permit)) => {
                metrics::counter!("http_requests_queued_total").increment(1);
                Some(permit)
            }
            _ => None,
        }
    }
}

/// One place in the waiting line, given back when dropped (also when the client goes away
/// and the request's future is dropped mid-wait).
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn enter(admission: &'a Admission) -> Option<Self> {
        let before = admission.waiting.fetch_add(1, Ordering::AcqRel);
        let waiter = Waiter(&admission.waiting);
        (before < admission.max_waiting).then_some(waiter)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        bookings: None,
    });
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Middleware: admits the request when a permit is free or frees up within the wait, else
/// answers 503.
pub(crate) async fn admit(
    State(admission): State<Admission>,
    request: Request,
    next: Next,
) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    match admission.permit().await {
        Some(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        None => {
            metrics::counter!("http_requests_shed_total").increment(1);
            overloaded()
        }
    }
}
