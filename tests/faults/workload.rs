//! The workload: clients that quote, hold (keyed, retried with the same key, replayed once
//! after a success), then confirm, cancel or extend, reading the booking back after each step,
//! recording every attempt for the checker. When told to stop (the faults are healed by then),
//! each client retries every key it never got an answer for until it gets one, so the
//! checker's "indeterminate operations resolve" has something to check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use e2e::history::{attempt, read, Call, History, Kind, Op};
use e2e::{token, TestResult};
use rand::Rng;
use serde_json::{json, Value};

use crate::ORIGIN_PORTS;

/// How long, after the stop, a client keeps retrying its unanswered keys.
const RESOLVE_WITHIN: Duration = Duration::from_secs(60);

fn base(origin: usize) -> String {
    format!("http://127.0.0.1:{}", ORIGIN_PORTS[origin])
}

/// A keyed write to retry later: the call's parts, owned, and its key.
#[derive(Debug, Clone)]
struct Unanswered {
    kind: Kind,
    user: String,
    path: String,
    body: Value,
    target: String,
    detail: Value,
    key: String,
}

impl Unanswered {
    fn of(call: &Call<'_>, key: &str) -> Self {
        Unanswered {
            kind: call.kind,
            user: call.user.to_owned(),
            path: call.path.to_owned(),
            body: call.body.clone(),
            target: call.target.to_owned(),
            detail: call.detail.clone(),
            key: key.to_owned(),
        }
    }

    fn call(&self) -> Call<'_> {
        Call {
            kind: self.kind,
            user: &self.user,
            path: &self.path,
            body: &self.body,
            target: &self.target,
            detail: self.detail.clone(),
        }
    }
}

/// The client's state: its HTTP client, the shared history and the keys still unanswered.
struct Client {
    http: reqwest::Client,
    history: Arc<History>,
    unanswered: Vec<Unanswered>,
}

impl Client {
    /// One attempt of `call` with `key` on a random origin, recorded.
    async fn attempt_anywhere(&self, call: &Call<'_>, key: &str) -> Op {
        let origin = rand::thread_rng().gen_range(0..2);
        attempt(&self.http, &self.history, &base(origin), origin, call, key).await
    }

    /// Runs one keyed request until it gets a definitive answer (same key each time, any
    /// origin), at most 8 attempts; after a 2xx, replays it once more as a client that lost
    /// the answer. A key whose last attempt got no answer is kept for [`Client::resolve`].
    async fn keyed(&mut self, call: Call<'_>) -> Option<Op> {
        let key = uuid::Uuid::new_v4().to_string();
        for i in 0..8 {
            let op = self.attempt_anywhere(&call, &key).await;
            if op.definitive() {
                if op.acknowledged() {
                    let other = 1 - op.origin;
                    let replay =
                        attempt(&self.http, &self.history, &base(other), other, &call, &key).await;
                    if !replay.definitive() {
                        self.unanswered.push(Unanswered::of(&call, &key));
                    }
                }
                return Some(op);
            }
            tokio::time::sleep(Duration::from_millis(150 * (i + 1))).await;
        }
        self.unanswered.push(Unanswered::of(&call, &key));
        None
    }

    /// Reads a booking back on either origin (recorded; the checker judges what it saw).
    async fn read_back(&self, user: &str, booking: &str) {
        let origin = rand::thread_rng().gen_range(0..2);
        read(
            &self.http,
            &self.history,
            &base(origin),
            origin,
            user,
            booking,
        )
        .await;
    }

    /// After the faults: every unanswered key is retried until it gets an answer.
    async fn resolve(&mut self) {
        let deadline = Instant::now() + RESOLVE_WITHIN;
        let mut left = std::mem::take(&mut self.unanswered);
        let mut round = 0u64;
        while !left.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for u in left {
                let op = self.attempt_anywhere(&u.call(), &u.key).await;
                if !op.definitive() {
                    still.push(u);
                }
            }
            left = still;
            round += 1;
            tokio::time::sleep(Duration::from_millis(200 * round.min(10))).await;
        }
    }
}

/// One client: quote, hold, then confirm, cancel or extend, until `stop`; then it resolves
/// its unanswered keys.
pub(crate) async fn client(
    id: usize,
    vehicles: Vec<String>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> TestResult {
    let mut c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(6))
            .build()?,
        history,
        unanswered: Vec::new(),
    };
    let user = format!("client-{id}");
    let base_time =
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
        let start = base_time + chrono::Duration::hours(slot);
        let end = start + chrono::Duration::hours(hours);
        // Quote (not recorded: it changes nothing), on either origin.
        let origin = rand::thread_rng().gen_range(0..2);
        let quote = c
            .http
            .post(format!("{}/v1/quotes", base(origin)))
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
        let hold_body = json!({ "quote_token": quote["quote_token"] });
        let hold = Call {
            kind: Kind::Hold,
            user: &user,
            path: "/v1/bookings",
            body: &hold_body,
            target: &vehicle,
            detail: json!({ "start": start, "end": end, "quote_id": quote["quote_id"] }),
        };
        let Some(hold) = c.keyed(hold).await else {
            continue;
        };
        if !hold.acknowledged() {
            continue;
        }
        let booking = hold.body["id"].as_str().unwrap_or_default().to_owned();
        c.read_back(&user, &booking).await;
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
        let confirmed = c.keyed(confirm).await;
        c.read_back(&user, &booking).await;
        if !confirmed.is_some_and(|op| op.acknowledged()) {
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
                c.keyed(cancel).await;
                c.read_back(&user, &booking).await;
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
                c.keyed(extend).await;
                c.read_back(&user, &booking).await;
            }
            _ => {}
        }
    }
    c.resolve().await;
    Ok(())
}
