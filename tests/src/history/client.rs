//! Recording clients: one HTTP attempt (or read) against an origin, recorded as an [`Op`] with
//! its own `x-request-id`, so the checker can tie every change in the database to the attempt
//! that made it. Used by the fault run's workload and by the checker's self-tests.

use std::time::Instant;

use serde_json::Value;

use super::{History, Kind, Op};
use crate::token;

/// One keyed write as the history records it: what, by whom, on which booking or vehicle.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub kind: Kind,
    pub user: &'a str,
    pub path: &'a str,
    pub body: &'a Value,
    /// The vehicle (holds) or booking (the rest) the call is about.
    pub target: &'a str,
    /// What the checker needs beyond the target (a hold's `{start, end, quote_id}`, an
    /// extension's new end).
    pub detail: Value,
}

/// Sends `req` and records what came back (status, body, replay header) as an [`Op`].
#[expect(
    clippy::too_many_arguments,
    reason = "the fields of the recorded Op, each from the caller"
)]
async fn send(
    history: &History,
    req: reqwest::RequestBuilder,
    kind: Kind,
    key: &str,
    user: &str,
    origin: usize,
    target: &str,
    detail: Value,
) -> Op {
    let request_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let sent = req.header("x-request-id", &request_id).send().await;
    let (status, replayed, body) = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            match resp.bytes().await {
                Ok(bytes) => (
                    Some(status),
                    replayed,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                ),
                // The body was cut: as good as no answer.
                Err(_) => (None, false, Value::Null),
            }
        }
        Err(_) => (None, false, Value::Null),
    };
    let op = Op {
        kind,
        key: key.to_owned(),
        user: user.to_owned(),
        origin,
        target: target.to_owned(),
        detail,
        started,
        ended: Instant::now(),
        status,
        body,
        replayed,
        request_id,
    };
    history.record(op.clone());
    op
}

/// One HTTP attempt of `call` with `key` on the origin at `base` (`http://host:port`, origin
/// number `origin` in the history), recorded.
pub async fn attempt(
    http: &reqwest::Client,
    history: &History,
    base: &str,
    origin: usize,
    call: &Call<'_>,
    key: &str,
) -> Op {
    let req = http
        .post(format!("{base}{}", call.path))
        .bearer_auth(token(call.user))
        .header("idempotency-key", key)
        .json(call.body);
    send(
        history,
        req,
        call.kind,
        key,
        call.user,
        origin,
        call.target,
        call.detail.clone(),
    )
    .await
}

/// `GET /v1/bookings/{booking}` as `user`, recorded as a [`Kind::Read`].
pub async fn read(
    http: &reqwest::Client,
    history: &History,
    base: &str,
    origin: usize,
    user: &str,
    booking: &str,
) -> Op {
    let req = http
        .get(format!("{base}/v1/bookings/{booking}"))
        .bearer_auth(token(user));
    send(
        history,
        req,
        Kind::Read,
        "",
        user,
        origin,
        booking,
        Value::Null,
    )
    .await
}
