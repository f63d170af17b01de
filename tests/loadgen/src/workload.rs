//! The workloads: what each operation sends, drawn from seeded, skewed distributions.
//!
//! * `mixed` — the design's mix. 95 % reads: half searches near a bay (an "area") with a
//!   window, half quotes for a vehicle found there; 5 % writes: quote → hold → confirm, and a
//!   share of those then cancelled or extended. Users, areas and windows are Zipf-distributed
//!   (s = 1.1 for users and areas: a few are hot, most are rare), so repeats hit the caches as
//!   they would in a city. Every POST that changes state carries its own `Idempotency-Key`.
//! * `burst` — `mixed` under a schedule with a 5× step (the schedule is the [`crate::Load`]).
//! * `contention` — many users racing for 4 vehicles and one window: quote → hold → (if it
//!   won) cancel, so the vehicle frees again and the race goes on. Shows the cost of 409s.
//! * `cached-quote` — one endpoint: 64 (user, vehicle, window) quote requests, warmed before
//!   the run, then repeated: the L1 hit path.
//! * `holds` — one endpoint: holds over distinct (vehicle, day) pairs from quotes prepared
//!   before the clock starts, so every hold can succeed; the write path's ceiling.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Duration, DurationRound, Utc};
use futures_util::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::engine::{Answer, Load, Recorder, CLIENT_TIMEOUT, TRANSPORT_ERROR};
use crate::fleet::{rfc3339, Fleet};
use crate::RunOptions;

/// The named workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    Mixed,
    Burst,
    Contention,
    CachedQuote,
    Holds,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Mixed => "mixed",
            WorkloadKind::Burst => "burst",
            WorkloadKind::Contention => "contention",
            WorkloadKind::CachedQuote => "cached-quote",
            WorkloadKind::Holds => "holds",
        }
    }
}

/// One operation: one request, or a chain whose later steps need earlier answers.
#[derive(Debug, Clone)]
pub enum Op {
    Search {
        user: usize,
        url: String,
    },
    Quote {
        user: usize,
        body: Value,
    },
    /// quote → hold → confirm, then `Then`.
    Write {
        user: usize,
        body: Value,
        then: Then,
    },
    /// quote → hold → cancel if the hold won.
    Race {
        user: usize,
        body: Value,
    },
    /// A hold from a prepared quote.
    Hold {
        user: usize,
        quote_token: String,
    },
}

/// What a `mixed` write does after confirming.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    Nothing,
    Cancel,
    Extend,
}

/// Everything prepared before the clock starts, shared by every operation.
#[derive(Debug)]
pub struct Context {
    pub client: reqwest::Client,
    pub base: String,
    pub metrics_url: String,
    kind: WorkloadKind,
    tokens: Vec<String>,
    user_zipf: Zipf<f64>,
    fleet: Fleet,
    area_zipf: Option<Zipf<f64>>,
    read_windows: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    window_zipf: Zipf<f64>,
    day0: DateTime<Utc>,
    contended: Vec<String>,
    cached: Vec<(usize, Value)>,
    prepared: Vec<(usize, String)>,
}

/// A Zipf rank as a 0-based index below `n`.
fn rank(z: &Zipf<f64>, rng: &mut StdRng, n: usize) -> usize {
    (z.sample(rng) as usize)
        .saturating_sub(1)
        .min(n.saturating_sub(1))
}

fn zipf(n: usize, s: f64) -> anyhow::Result<Zipf<f64>> {
    Zipf::new(n.max(1) as u64, s).map_err(|e| anyhow::anyhow!("zipf({n}, {s}): {e}"))
}

fn window_body(vehicle: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> Value {
    json!({ "vehicle_id": vehicle, "start": rfc3339(start), "end": rfc3339(end) })
}

impl Context {
    /// Mints tokens, discovers the fleet and prepares what the workload needs (warm cached
    /// quotes, prepared hold quotes).
    pub async fn prepare(
        client: reqwest::Client,
        options: &RunOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let users = options.users.max(1);
        let tokens = (0..users)
            .map(|i| options.jwt.mint(&format!("lg-u{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let now = Utc::now();
        let day0 = (now + Duration::days(1)).duration_trunc(Duration::days(1))?;
        let fleet = Fleet::discover(
            &client,
            &options.base_url,
            &tokens[0],
            day0 + Duration::hours(9),
            day0 + Duration::hours(10),
        )
        .await?;
        anyhow::ensure!(
            !fleet.areas.is_empty(),
            "no vehicles found at {}: seed the demo fleet first (seed-demo)",
            options.base_url
        );
        let read_windows: Vec<_> = (0..3)
            .flat_map(|d| {
                [8, 11, 14, 17].map(|h| {
                    let s = day0 + Duration::days(d) + Duration::hours(h);
                    (s, s + Duration::hours(3))
                })
            })
            .collect();
        let contended: Vec<String> = fleet.vehicles().into_iter().take(4).collect();
        let mut ctx = Context {
            base: options.base_url.clone(),
            metrics_url: options
                .metrics_url
                .clone()
                .unwrap_or_else(|| format!("{}/metrics", options.base_url)),
            kind: options.workload,
            user_zipf: zipf(users, 1.1)?,
            area_zipf: Some(zipf(fleet.areas.len(), 1.1)?),
            window_zipf: zipf(read_windows.len(), 1.0)?,
            read_windows,
            day0,
            contended,
            cached: Vec::new(),
            prepared: Vec::new(),
            tokens,
            fleet,
            client,
        };
        match options.workload {
            WorkloadKind::CachedQuote => ctx.warm_cached_quotes().await?,
            WorkloadKind::Holds => {
                let count = match &options.load {
                    Load::Open { .. } => options.load.planned_ops().unwrap_or(0) as usize + 16,
                    Load::Closed { .. } => options.prepared_holds,
                };
                ctx.prepare_holds(count).await?;
            }
            _ => {}
        }
        Ok(Arc::new(ctx))
    }

    async fn warm_cached_quotes(&mut self) -> anyhow::Result<()> {
        let vehicles = self.fleet.vehicles();
        let (s, e) = self.read_windows[0];
        self.cached = (0..64)
            .map(|i| {
                let vehicle = &vehicles[i % vehicles.len()];
                (i % self.tokens.len(), window_body(vehicle, s, e))
            })
            .collect();
        for (user, body) in &self.cached {
            let response = self
                .client
                .post(format!("{}/v1/quotes", self.base))
                .bearer_auth(&self.tokens[*user])
                .json(body)
                .send()
                .await
                .context("warm a cached quote")?;
            let status = response.status();
            anyhow::ensure!(
                status.is_success(),
                "warming quote {body}: {status} {}",
                response.text().await.unwrap_or_default()
            );
            let _ = response.bytes().await;
        }
        Ok(())
    }

    /// Quotes for `count` holds over distinct (vehicle, day) pairs; the hour shifts with the
    /// clock so that reruns against the same database do not collide with earlier holds.
    async fn prepare_holds(&mut self, count: usize) -> anyhow::Result<()> {
        let vehicles = self.fleet.vehicles();
        let hour = 6 + (Utc::now().timestamp() / 60) % 14;
        let days = 170usize;
        anyhow::ensure!(
            count <= vehicles.len() * days,
            "{count} holds need more than {} vehicles × {days} days",
            vehicles.len()
        );
        let plans: Vec<(usize, Value)> = (0..count)
            .map(|i| {
                let vehicle = &vehicles[i % vehicles.len()];
                let day = 3 + (i / vehicles.len()) as i64;
                let s = self.day0 + Duration::days(day) + Duration::hours(hour);
                (
                    i % self.tokens.len(),
                    window_body(vehicle, s, s + Duration::hours(2)),
                )
            })
            .collect();
        eprintln!("loadgen: preparing {count} quotes for the holds workload");
        let this = &*self;
        let prepared: Vec<Option<(usize, String)>> = stream::iter(plans)
            .map(|(user, body)| async move {
                let reply: Value = this
                    .client
                    .post(format!("{}/v1/quotes", this.base))
                    .bearer_auth(&this.tokens[user])
                    .json(&body)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                Some((user, reply["quote_token"].as_str()?.to_owned()))
            })
            .buffer_unordered(32)
            .collect()
            .await;
        self.prepared = prepared.into_iter().flatten().collect();
        anyhow::ensure!(
            self.prepared.len() * 10 >= count * 9,
            "only {} of {count} hold quotes could be prepared",
            self.prepared.len()
        );
        Ok(())
    }

    fn user(&self, rng: &mut StdRng) -> usize {
        rank(&self.user_zipf, rng, self.tokens.len())
    }

    fn area(&self, rng: &mut StdRng) -> &crate::fleet::Area {
        let i = self
            .area_zipf
            .as_ref()
            .map(|z| rank(z, rng, self.fleet.areas.len()))
            .unwrap_or(0);
        &self.fleet.areas[i]
    }

    /// The next operation (`seq` counts from 0); `None` when the workload has run out.
    pub fn next_op(&self, rng: &mut StdRng, seq: u64) -> Option<Op> {
        match self.kind {
            WorkloadKind::Mixed | WorkloadKind::Burst => Some(self.mixed_op(rng)),
            WorkloadKind::Contention => {
                let vehicle = &self.contended[rng.gen_range(0..self.contended.len())];
                let s = self.day0 + Duration::days(1) + Duration::hours(10);
                Some(Op::Race {
                    user: rng.gen_range(0..self.tokens.len()),
                    body: window_body(vehicle, s, s + Duration::hours(2)),
                })
            }
            WorkloadKind::CachedQuote => {
                let (user, body) = &self.cached[seq as usize % self.cached.len()];
                Some(Op::Quote {
                    user: *user,
                    body: body.clone(),
                })
            }
            WorkloadKind::Holds => {
                let (user, token) = self.prepared.get(seq as usize)?;
                Some(Op::Hold {
                    user: *user,
                    quote_token: token.clone(),
                })
            }
        }
    }

    fn mixed_op(&self, rng: &mut StdRng) -> Op {
        let user = self.user(rng);
        let area = self.area(rng);
        let r: f64 = rng.gen();
        if r < 0.95 {
            let (s, e) = self.read_windows[rank(&self.window_zipf, rng, self.read_windows.len())];
            if r < 0.475 {
                return Op::Search {
                    user,
                    url: format!(
                        "{}/v1/vehicles/search?lat={:.5}&lon={:.5}&radius_m=3000&limit=20&start={}&end={}",
                        self.base,
                        area.lat,
                        area.lon,
                        rfc3339(s),
                        rfc3339(e)
                    ),
                };
            }
            let vehicle = &area.vehicles[rng.gen_range(0..area.vehicles.len())];
            return Op::Quote {
                user,
                body: window_body(vehicle, s, e),
            };
        }
        // Writes spread over five months of mornings to afternoons: conflicts are rare but
        // real (they are counted as 409s).
        let vehicle = &area.vehicles[rng.gen_range(0..area.vehicles.len())];
        let s = self.day0
            + Duration::days(rng.gen_range(4..150))
            + Duration::hours(rng.gen_range(6..20));
        let e = s + Duration::hours(rng.gen_range(1..4));
        let then = match rng.gen_range(0..20) {
            0..=13 => Then::Nothing,
            14..=16 => Then::Cancel,
            _ => Then::Extend,
        };
        Op::Write {
            user,
            body: window_body(vehicle, s, e),
            then,
        }
    }

    fn request(&self, method: Method, path: &str, user: usize) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[user])
    }

    fn post_idempotent(&self, path: &str, user: usize) -> RequestBuilder {
        self.request(Method::POST, path, user)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
    }

    /// Sends one request, reads its whole body and records it from `sent`. Returns the
    /// status and, when asked and the answer is JSON, the body.
    async fn send(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
        sent: Instant,
        recorder: &Recorder,
        want_body: bool,
    ) -> (u16, Option<Value>) {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers();
                let mut answer = Answer {
                    cache: headers
                        .get("x-cache")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v == "hit"),
                    problem: None,
                    retry_after: headers.contains_key("retry-after"),
                };
                // Read to the end even when unused, so the connection goes back to the pool.
                let body = response.bytes().await;
                let status = match &body {
                    Err(e) if e.is_timeout() => CLIENT_TIMEOUT,
                    Err(_) => TRANSPORT_ERROR,
                    Ok(_) => status,
                };
                if let (true, Ok(bytes)) = (status >= 400, &body) {
                    answer.problem = serde_json::from_slice::<Value>(bytes)
                        .ok()
                        .and_then(|v| v.get("type")?.as_str().map(str::to_owned));
                }
                recorder.record(endpoint, sent, status, answer);
                let value = match (want_body, body) {
                    (true, Ok(bytes)) => serde_json::from_slice(&bytes).ok(),
                    _ => None,
                };
                (status, value)
            }
            Err(e) => {
                let status = if e.is_timeout() {
                    CLIENT_TIMEOUT
                } else {
                    TRANSPORT_ERROR
                };
                recorder.record(endpoint, sent, status, Answer::default());
                (status, None)
            }
        }
    }

    /// Runs one operation; its first request's latency counts from `intended`.
    pub async fn execute(&self, op: Op, intended: Instant, recorder: &Recorder) {
        match op {
            Op::Search { user, url } => {
                let request = self.client.get(url).bearer_auth(&self.tokens[user]);
                self.send("search", request, intended, recorder, false)
                    .await;
            }
            Op::Quote { user, body } => {
                let request = self.request(Method::POST, "/v1/quotes", user).json(&body);
                self.send("quote", request, intended, recorder, false).await;
            }
            Op::Hold { user, quote_token } => {
                let request = self
                    .post_idempotent("/v1/bookings", user)
                    .json(&json!({ "quote_token": quote_token }));
                self.send("hold", request, intended, recorder, false).await;
            }
            Op::Write { user, body, then } => {
                let Some(booking) = self.quote_and_hold(user, &body, intended, recorder).await
                else {
                    return;
                };
                let id = booking["id"].as_str().unwrap_or_default().to_owned();
                let confirm = self.post_idempotent(&format!("/v1/bookings/{id}/confirm"), user);
                let (status, _) = self
                    .send("confirm", confirm, Instant::now(), recorder, false)
                    .await;
                if status != 200 {
                    return;
                }
                match then {
                    Then::Nothing => {}
                    Then::Cancel => {
                        let cancel =
                            self.post_idempotent(&format!("/v1/bookings/{id}/cancel"), user);
                        self.send("cancel", cancel, Instant::now(), recorder, false)
                            .await;
                    }
                    Then::Extend => {
                        let end = booking["end"]
                            .as_str()
                            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
                            .map(|e| e.with_timezone(&Utc) + Duration::hours(1));
                        if let Some(end) = end {
                            let extend = self
                                .post_idempotent(&format!("/v1/bookings/{id}/extend"), user)
                                .json(&json!({ "end": rfc3339(end) }));
                            self.send("extend", extend, Instant::now(), recorder, false)
                                .await;
                        }
                    }
                }
            }
            Op::Race { user, body } => {
                let Some(booking) = self.quote_and_hold(user, &body, intended, recorder).await
                else {
                    return;
                };
                let id = booking["id"].as_str().unwrap_or_default().to_owned();
                let cancel = self.post_idempotent(&format!("/v1/bookings/{id}/cancel"), user);
                self.send("cancel", cancel, Instant::now(), recorder, false)
                    .await;
            }
        }
    }

    /// quote (`write-quote`) then hold; the hold's body when it was created.
    async fn quote_and_hold(
        &self,
        user: usize,
        body: &Value,
        intended: Instant,
        recorder: &Recorder,
    ) -> Option<Value> {
        let quote = self.request(Method::POST, "/v1/quotes", user).json(body);
        let (status, reply) = self
            .send("write-quote", quote, intended, recorder, true)
            .await;
        if status != 201 {
            return None;
        }
        let token = reply?.get("quote_token")?.as_str()?.to_owned();
        let hold = self
            .post_idempotent("/v1/bookings", user)
            .json(&json!({ "quote_token": token }));
        let (status, booking) = self
            .send("hold", hold, Instant::now(), recorder, true)
            .await;
        (status == 201).then_some(booking).flatten()
    }
}
