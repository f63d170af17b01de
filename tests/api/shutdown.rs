//! SIGTERM under load: the real `origin` binary, busy with concurrent quotes, holds and
//! confirms, gets SIGTERM in the middle of it and must stop the way `origin/src/startup.rs`
//! promises:
//!
//! - **no request is cut**: every request the server started (its `started processing
//!   request` log line, keyed by the `x-request-id` the client sent) got a complete answer;
//!   a request that got none was never seen by the server (refused, or reset before it was
//!   read);
//! - **no half-written booking**: the database holds exactly the bookings whose hold was
//!   acknowledged, each with its history and outbox rows, and each acknowledged confirm;
//! - **every job stopped**: each `job started` has its `job stopped` (sweeper, surge, the
//!   availability rebuild, the Redis probes, the outbox relay), then `shutdown complete`;
//! - **exit 0 before the deadline** (`SHUTDOWN_GRACE_SECS`): a forced exit, or a job left
//!   running past the deadline, exits non-zero.
//!
//! The scenario checks that it really happened *under load*: requests were in flight at the
//! signal (the server started them before it and answered them after), and clients were still
//! sending after it (and were refused). A SIGTERM that landed after the load ended fails.
//!
//! Quotes go through a fake inference API that answers after 400 ms, so at any moment several
//! requests are inside a handler, and stay there longer than the jobs take to stop: a stop
//! that skipped the drain would cut them. Needs the origin binary to be current (CI builds it first;
//! alone: `cargo build --workspace --bins`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DurationRound, Utc};
use e2e::cluster::{ensure_origin_bin_is_current, OriginProcess};
use e2e::*;
use rand::Rng;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::inference_fake::FakeInference;

/// The origin's stop deadline in this test.
const GRACE: Duration = Duration::from_secs(10);
/// Concurrent clients.
const CLIENTS: usize = 12;
/// Acknowledged holds before the signal: the load is really going.
const HOLDS_BEFORE_SIGNAL: usize = 20;
/// The jobs an origin with a relay runs (`origin/src/jobs`).
const JOBS: [&str; 9] = [
    "availability",
    "consumer",
    "redis-probe",
    "redis-probe-l1",
    "redis-probe-l2",
    "relay",
    "surge",
    "sweeper",
    "webhooks",
];

/// How one request ended, as the client saw it.
#[derive(Debug, Clone)]
enum Outcome {
    /// A complete response.
    Answer { status: u16, body: Value },
    /// The connection was refused: nothing listened any more.
    Refused,
    /// Anything else: reset, closed before the answer, timed out.
    Broken(String),
}

/// One request the load sent.
#[derive(Debug, Clone)]
struct Sent {
    request_id: String,
    what: &'static str,
    started: Instant,
    ended: Instant,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct Load {
    sent: Mutex<Vec<Sent>>,
    holds: AtomicUsize,
    stop: AtomicBool,
}

impl Load {
    fn record(&self, sent: Sent) {
        if let Ok(mut all) = self.sent.lock() {
            all.push(sent);
        }
    }
}

/// Sends one POST with a fresh `x-request-id` (and an Idempotency-Key when `keyed`), records it.
async fn post(
    load: &Load,
    http: &reqwest::Client,
    url: String,
    user: &str,
    body: &Value,
    what: &'static str,
    keyed: bool,
) -> Outcome {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut req = http
        .post(url)
        .bearer_auth(token(user))
        .header("x-request-id", &request_id)
        .json(body);
    if keyed {
        req = req.header("idempotency-key", uuid::Uuid::new_v4().to_string());
    }
    let started = Instant::now();
    let outcome = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(bytes) => Outcome::Answer {
                    status,
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                },
                Err(e) => Outcome::Broken(format!("body: {e}")),
            }
        }
        Err(e) if e.is_connect() => Outcome::Refused,
        Err(e) => Outcome::Broken(format!("{e:?}")),
    };
    load.record(Sent {
        request_id,
        what,
        started,
        ended: Instant::now(),
        outcome: outcome.clone(),
    });
    outcome
}

/// Quote → hold → (half the time) confirm, on random vehicles and windows, until refused three
/// times in a row or told to stop.
async fn client(id: usize, base: String, vehicles: Vec<String>, load: Arc<Load>) -> TestResult {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let user = format!("sigterm-{id}");
    let day0 = Utc::now().duration_trunc(chrono::Duration::hours(1))? + chrono::Duration::days(2);
    let mut refused = 0;
    while !load.stop.load(Ordering::SeqCst) && refused < 3 {
        let (vehicle, start, confirm) = {
            let mut rng = rand::thread_rng();
            let start = day0
                + chrono::Duration::days(rng.gen_range(0..60))
                + chrono::Duration::hours(rng.gen_range(0..20));
            (
                vehicles[rng.gen_range(0..vehicles.len())].clone(),
                start,
                rng.gen_bool(0.5),
            )
        };
        let end = start + chrono::Duration::hours(2);
        let body = json!({ "vehicle_id": vehicle, "start": start, "end": end });
        let quote = post(
            &load,
            &http,
            format!("{base}/v1/quotes"),
            &user,
            &body,
            "quote",
            false,
        )
        .await;
        let token = match quote {
            Outcome::Answer { status: 201, body } => body["quote_token"].clone(),
            Outcome::Refused => {
                refused += 1;
                continue;
            }
            _ => continue,
        };
        refused = 0;
        let hold = json!({ "quote_token": token });
        let held = post(
            &load,
            &http,
            format!("{base}/v1/bookings"),
            &user,
            &hold,
            "hold",
            true,
        )
        .await;
        let Outcome::Answer { status: 201, body } = held else {
            continue;
        };
        load.holds.fetch_add(1, Ordering::SeqCst);
        if confirm {
            let id = body["id"].as_str().unwrap_or_default();
            let url = format!("{base}/v1/bookings/{id}/confirm");
            post(&load, &http, url, &user, &Value::Null, "confirm", true).await;
        }
    }
    Ok(())
}

/// What the origin logged (JSON lines), in order.
#[derive(Debug, Default)]
struct ServerLog {
    /// Line of the signal, if it was logged.
    signal: Option<usize>,
    /// Request id → line where the server started / finished it.
    started: HashMap<String, usize>,
    finished: HashMap<String, usize>,
    jobs_started: BTreeMap<String, usize>,
    jobs_stopped: BTreeMap<String, usize>,
    complete: bool,
    incomplete: Vec<String>,
}

fn read_log(text: &str) -> ServerLog {
    let mut log = ServerLog::default();
    for (n, line) in text.lines().enumerate() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let message = event["fields"]["message"].as_str().unwrap_or_default();
        let request_id = event["span"]["request_id"].as_str().map(str::to_owned);
        let job = event["fields"]["job"].as_str().map(str::to_owned);
        match (message, request_id, job) {
            ("started processing request", Some(id), _) => {
                log.started.insert(id, n);
            }
            ("finished processing request", Some(id), _) => {
                log.finished.insert(id, n);
            }
            ("job started", _, Some(job)) => *log.jobs_started.entry(job).or_default() += 1,
            ("job stopped", _, Some(job)) => *log.jobs_stopped.entry(job).or_default() += 1,
            (m, _, _) if m.starts_with("shutdown signal received") => log.signal = Some(n),
            (m, _, _) if m.starts_with("shutdown complete") => log.complete = true,
            (m, _, _) if m.starts_with("shutdown incomplete") => {
                log.incomplete.push(line.to_owned())
            }
            _ => {}
        }
    }
    log
}

/// `postgres://user@host:port/db` of the test's own database.
fn database_url(pool: &PgPool) -> TestResult<String> {
    let options = pool.connect_options();
    let db = options.get_database().context("the test database's name")?;
    Ok(format!(
        "postgres://{}@{}:{}/{db}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    ))
}

#[sqlx::test(migrations = "../migrations")]
async fn sigterm_under_load_drains_every_request_stops_every_job_and_exits_0_before_the_deadline(
    pool: PgPool,
) -> TestResult {
    ensure_origin_bin_is_current()?;
    demo_fleet::seed_demo(&pool, FLEET_PER_CITY).await?;
    let inference = FakeInference::start().await?;
    inference.set_delay(Duration::from_millis(400));
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url(&pool)?),
        ("REDIS_URL", test_redis::shared_url()),
        ("REDIS_KEY_PREFIX", prefix.clone()),
        ("KAFKA_BROKERS", brokers),
        // The consumers run too (they must stop with the rest), in groups of their own.
        (
            "WEBHOOK_GROUP",
            format!("sigterm-webhooks-{}", uuid::Uuid::new_v4().simple()),
        ),
        (
            "CONSUMER_GROUP",
            format!("sigterm-{}", uuid::Uuid::new_v4().simple()),
        ),
        ("INFERENCE_URL", inference.url.clone()),
        ("INFERENCE_TIMEOUT_MS", "1000".into()),
        ("PRICING_BUDGET_MS", "1000".into()),
        ("JWT_ISSUER", ISSUER.into()),
        ("JWT_AUDIENCE", AUDIENCE.into()),
        ("JWT_HS256_SECRET", JWT_SECRET.into()),
        (
            "QUOTE_SIGNING_KEYS",
            "k1=quote-key-one-quote-key-one-quote-key-one".into(),
        ),
        ("ORIGIN_ALLOW_DIRECT", "1".into()),
        // Every job busy: the sweeper, the surge grid and the index rebuild run all the time.
        ("SWEEPER_INTERVAL_MS", "100".into()),
        ("SURGE_RECOMPUTE_SECS", "1".into()),
        ("AVAILABILITY_REBUILD_SECS", "1".into()),
        ("SHUTDOWN_GRACE_SECS", GRACE.as_secs().to_string()),
        ("LOG_FORMAT", "json".into()),
        // The request log (tower_http, debug) names each request the server started.
        ("RUST_LOG", "info,sqlx=warn,tower_http=debug".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let dir = std::env::temp_dir().join(format!("sigterm-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let port = test_redis::free_port()?;
    let mut origin = OriginProcess::start(port, env, dir.join("origin.log")).await?;
    let base = origin.base();
    let vehicles: Vec<String> = {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("select id, lower(region) from vehicles where status = 'active'")
                .fetch_all(&pool)
                .await?;
        rows.into_iter()
            .map(|(id, region)| format!("veh_{region}_{}", id.simple()))
            .collect()
    };

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, base.clone(), vehicles.clone(), Arc::clone(&load))))
        .collect();
    let warm_until = Instant::now() + Duration::from_secs(90);
    while load.holds.load(Ordering::SeqCst) < HOLDS_BEFORE_SIGNAL {
        anyhow::ensure!(
            Instant::now() < warm_until,
            "the load never got going: {} holds in 90 s",
            load.holds.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled = Instant::now();
    origin.terminate()?;
    let status = origin.wait_exit(GRACE + Duration::from_secs(10)).await;
    let exit_after = signalled.elapsed();
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await??;
    }
    let text = std::fs::read_to_string(origin.log_path())?;
    let log = read_log(&text);
    let status = status?;
    let sent = load.sent.lock().map(|s| s.clone()).unwrap_or_default();
    let tail: String = text.lines().rev().take(30).collect::<Vec<_>>().join("\n");

    // Exit 0, before the deadline, after a complete stop.
    anyhow::ensure!(
        status.success(),
        "the origin exited with {status} after {exit_after:?}; last lines (newest first):\n{tail}"
    );
    anyhow::ensure!(
        exit_after < GRACE,
        "exit took {exit_after:?}, past SHUTDOWN_GRACE_SECS"
    );
    let signal_line = log.signal.context("the signal was never logged")?;
    anyhow::ensure!(log.complete, "no `shutdown complete`; last lines:\n{tail}");
    anyhow::ensure!(log.incomplete.is_empty(), "{:?}", log.incomplete);

    // Every job that started stopped, and the jobs are the ones an origin runs.
    let started_jobs: BTreeSet<&str> = log.jobs_started.keys().map(String::as_str).collect();
    assert_eq!(started_jobs, BTreeSet::from(JOBS), "the jobs that started");
    assert_eq!(
        log.jobs_started, log.jobs_stopped,
        "every job that started stopped"
    );

    // It happened under load: requests in flight at the signal were answered after it, and
    // clients kept sending after it (and were refused).
    let in_flight = sent
        .iter()
        .filter(|s| s.started < signalled && s.ended > signalled)
        .filter(|s| matches!(s.outcome, Outcome::Answer { .. }))
        .count();
    let drained_by_server = log
        .started
        .iter()
        .filter(|(id, at)| {
            **at < signal_line && log.finished.get(*id).is_some_and(|f| *f > signal_line)
        })
        .count();
    let refused_after = sent
        .iter()
        .filter(|s| s.started > signalled && matches!(s.outcome, Outcome::Refused))
        .count();
    anyhow::ensure!(
        in_flight > 0 && drained_by_server > 0 && refused_after > 0,
        "the SIGTERM did not land in the middle of the load: {in_flight} requests in flight \
         answered after it, {drained_by_server} started before it and finished after it by the \
         server's log, {refused_after} refused after it"
    );

    // No request cut: whatever the server started, the client got a complete answer for.
    let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.request_id.as_str(), s)).collect();
    for id in log.started.keys() {
        if id.starts_with(e2e::cluster::HARNESS_REQUEST_ID_PREFIX) {
            continue; // the harness's own health probe
        }
        let s = by_id
            .get(id.as_str())
            .with_context(|| format!("the server started {id}, which no client sent"))?;
        anyhow::ensure!(
            matches!(s.outcome, Outcome::Answer { .. }),
            "{} {id} was started by the server but cut: {:?}",
            s.what,
            s.outcome
        );
    }
    for s in &sent {
        if let Outcome::Broken(e) = &s.outcome {
            anyhow::ensure!(
                !log.started.contains_key(&s.request_id),
                "{} {} broke after the server started it: {e}",
                s.what,
                s.request_id
            );
        }
    }

    // No half-written booking: the database holds exactly the acknowledged holds, each with its
    // history and outbox rows, and each acknowledged confirm.
    let acknowledged = |what: &str, status: u16| -> Vec<&Value> {
        sent.iter()
            .filter(|s| s.what == what)
            .filter_map(|s| match &s.outcome {
                Outcome::Answer { status: st, body } if *st == status => Some(body),
                _ => None,
            })
            .collect()
    };
    let held: BTreeSet<uuid::Uuid> = acknowledged("hold", 201)
        .into_iter()
        .map(|b| uuid_of(b["id"].as_str().unwrap_or_default()))
        .collect::<TestResult<_>>()?;
    let confirmed: BTreeSet<uuid::Uuid> = acknowledged("confirm", 200)
        .into_iter()
        .map(|b| uuid_of(b["id"].as_str().unwrap_or_default()))
        .collect::<TestResult<_>>()?;
    let rows: Vec<(uuid::Uuid, String, i64, i64)> = sqlx::query_as(
        "select b.id, b.status,
                (select count(*) from booking_history h where h.booking_id = b.id),
                (select count(*) from outbox o where o.aggregate_id = b.id)
           from bookings b",
    )
    .fetch_all(&pool)
    .await?;
    let in_db: BTreeSet<uuid::Uuid> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        in_db, held,
        "bookings in the database vs. acknowledged holds"
    );
    for (id, status, history, outbox) in &rows {
        let (want_status, want_history, want_outbox) = if confirmed.contains(id) {
            ("CONFIRMED", 2, 3)
        } else {
            ("RESERVING", 1, 2)
        };
        assert_eq!(
            (status.as_str(), *history, *outbox),
            (want_status, want_history, want_outbox),
            "booking {id}: status, history rows, outbox rows"
        );
    }
    eprintln!(
        "sigterm: {} requests, {} holds ({} confirmed); {in_flight} in flight at the signal, \
         {drained_by_server} drained by the server, {refused_after} refused after it; exit 0 \
         after {exit_after:?}",
        sent.len(),
        held.len(),
        confirmed.len()
    );
    let _ = test_redis::delete_prefix(&test_redis::shared_url(), &prefix).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
