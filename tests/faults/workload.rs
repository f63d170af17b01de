//! The workload: clients that quote, hold (keyed, retried with the same key, replayed once
//! after a success), then confirm, cancel or extend, recording every attempt for the checker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use e2e::history::{History, Kind, Op};
use e2e::{token, TestResult};
use rand::Rng;
use serde_json::{json, Value};

use crate::ORIGIN_PORTS;

/// One keyed write as the history records it: what, by whom, on which booking or vehicle.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub kind: Kind,
    pub user: &'a str,
    pub path: &'a str,
    pub body: &'a Value,
    /// The vehicle (holds) or booking (the rest) the call is about.
    pub target: &'a str,
    /// What the checker needs beyond the target (a hold's window, an extension's new end).
    pub detail: Value,
}

/// One HTTP attempt of `call` with `key` on `origin`, recorded.
async fn attempt(
    http: &reqwest::Client,
    history: &History,
    origin: usize,
    call: &Call<'_>,
    key: &str,
) -> Op {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{}{}", ORIGIN_PORTS[origin], call.path);
    let sent = http
        .post(url)
        .bearer_auth(token(call.user))
        .header("idempotency-key", key)
        .json(call.body)
        .send()
        .await;
    let (status, replayed, body) = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            (Some(status), replayed, body)
        }
        Err(_) => (None, false, Value::Null),
    };
    let op = Op {
        kind: call.kind,
        key: key.to_owned(),
        user: call.user.to_owned(),
        origin,
        target: call.target.to_owned(),
        detail: call.detail.clone(),
        started,
        ended: Instant::now(),
        status,
        body,
        replayed,
    };
    history.record(op.clone());
    op
}

/// Runs one keyed request until it gets a definitive answer (same key each time, any origin),
/// at most 8 attempts; after a 2xx, replays it once more as a client that lost the answer.
async fn keyed(http: &reqwest::Client, history: &History, call: Call<'_>) -> Option<Op> {
    let key = uuid::Uuid::new_v4().to_string();
    for i in 0..8 {
        let origin = rand::thread_rng().gen_range(0..2);
        let op = attempt(http, history, origin, &call, &key).await;
        if op.definitive() {
            if op.acknowledged() {
                attempt(http, history, 1 - origin, &call, &key).await;
            }
            return Some(op);
        }
        tokio::time::sleep(Duration::from_millis(150 * (i + 1))).await;
    }
    None
}

/// One client: quote, hold, then confirm, cancel or extend, until `stop`.
pub(crate) async fn client(
    id: usize,
    vehicles: Vec<String>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> TestResult {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(6))
        .build()?;
    let user = format!("client-{id}");
    let base =
        (Utc::now() + chrono::Duration::days(2)).duration_trunc(chrono::Duration::hours(1))?;
    while !stop.load(Ordering::Relaxed) {
        let (vehicle, slot, hours, action) = {
            let mut rng = rand::thread_rng();
            (
                vehicles[rng.gen_range(0..vehicles.len())].clone(),
                // Start hours to pick from (`FAULTS_SLOTS`, default 120): enough free windows
                // that the run does not fill every vehicle and run out of work.
                rng.gen_range(0..crate::knob("FAULTS_SLOTS", 120) as i64),
                rng.gen_range(1..4i64),
                rng.gen_range(0..4u8),
            )
        };
        let start = base + chrono::Duration::hours(slot);
        let end = start + chrono::Duration::hours(hours);
        // Quote (not recorded: it changes nothing), on either origin.
        let origin = rand::thread_rng().gen_range(0..2);
        let quote = http
            .post(format!(
                "http://127.0.0.1:{}/v1/quotes",
                ORIGIN_PORTS[origin]
            ))
            .bearer_auth(token(&user))
            .json(&json!({ "vehicle_id": vehicle, "start": start, "end": end }))
            .send()
            .await;
        let Ok(quote) = quote else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if quote.status().as_u16() != 201 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let quote: Value = quote.json().await.unwrap_or(Value::Null);
        let window = json!({ "start": start, "end": end });
        let hold_body = json!({ "quote_token": quote["quote_token"] });
        let hold = Call {
            kind: Kind::Hold,
            user: &user,
            path: "/v1/bookings",
            body: &hold_body,
            target: &vehicle,
            detail: window,
        };
        let Some(hold) = keyed(&http, &history, hold).await else {
            continue;
        };
        if !hold.acknowledged() {
            continue;
        }
        let booking = hold.body["id"].as_str().unwrap_or_default().to_owned();
        // 1 in 4 holds is left to expire (the sweeper's job).
        if action == 0 {
            continue;
        }
        let confirm_path = format!("/v1/bookings/{booking}/confirm");
        let confirm = Call {
            kind: Kind::Confirm,
            user: &user,
            path: &confirm_path,
            body: &Value::Null,
            target: &booking,
            detail: Value::Null,
        };
        let confirmed = keyed(&http, &history, confirm).await;
        if !confirmed.is_some_and(|c| c.acknowledged()) {
            continue;
        }
        match action {
            1 => {
                let path = format!("/v1/bookings/{booking}/cancel");
                let cancel = Call {
                    kind: Kind::Cancel,
                    user: &user,
                    path: &path,
                    body: &Value::Null,
                    target: &booking,
                    detail: Value::Null,
                };
                keyed(&http, &history, cancel).await;
            }
            2 => {
                let new_end = end + chrono::Duration::hours(1);
                let path = format!("/v1/bookings/{booking}/extend");
                let body = json!({ "end": new_end });
                let extend = Call {
                    kind: Kind::Extend,
                    user: &user,
                    path: &path,
                    body: &body,
                    target: &booking,
                    detail: json!(new_end),
                };
                keyed(&http, &history, extend).await;
            }
            _ => {}
        }
    }
    Ok(())
}
