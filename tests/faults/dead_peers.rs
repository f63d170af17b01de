//! Regression test for what the dead-peer fault found: an origin whose PostgreSQL and Redis
//! connections go silent (no RST, no FIN: the proxy keeps them open and answers nothing, for
//! good) must notice by itself and recover once new connections work — its pool must not leak
//! the slots of connections cut mid-query (sqlx pings a released connection without a
//! timeout), the sweeper and the relay must not wait forever on a dead connection, and the
//! Redis link must replace a connection that only times out.

use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use e2e::fault_proxy::Mode;
use e2e::{token, TestResult};
use serde_json::{json, Value};

use crate::cluster::start_cluster;
use crate::ORIGIN_PORTS;

/// Quote then hold `vehicle` for `slot` hours from the day after tomorrow, on `origin`;
/// the hold's status (None without an answer) and body.
async fn quote_and_hold(
    http: &reqwest::Client,
    origin: usize,
    vehicle: &str,
    slot: i64,
) -> (Option<u16>, Value) {
    let base = (Utc::now() + chrono::Duration::days(2))
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap_or_else(|_| Utc::now());
    let (start, end) = (
        base + chrono::Duration::hours(slot),
        base + chrono::Duration::hours(slot + 1),
    );
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", ORIGIN_PORTS[origin]);
    let Ok(q) = http
        .post(url("/v1/quotes"))
        .bearer_auth(token("dead-peer"))
        .json(&json!({ "vehicle_id": vehicle, "start": start, "end": end }))
        .send()
        .await
    else {
        return (None, Value::Null);
    };
    if q.status().as_u16() != 201 {
        return (Some(q.status().as_u16()), Value::Null);
    }
    let q: Value = q.json().await.unwrap_or(Value::Null);
    match http
        .post(url("/v1/bookings"))
        .bearer_auth(token("dead-peer"))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({ "quote_token": q["quote_token"] }))
        .send()
        .await
    {
        Ok(r) => (
            Some(r.status().as_u16()),
            r.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (None, Value::Null),
    }
}

/// The origin's `/readyz` body (Null without an answer).
async fn readyz(http: &reqwest::Client, origin: usize) -> Value {
    let Ok(r) = http
        .get(format!("http://127.0.0.1:{}/readyz", ORIGIN_PORTS[origin]))
        .send()
        .await
    else {
        return Value::Null;
    };
    r.json().await.unwrap_or(Value::Null)
}

async fn ready(http: &reqwest::Client, origin: usize) -> bool {
    let v = readyz(http, origin).await;
    v["checks"]["postgres"] == "ok" && v["checks"]["redis"] == "ok"
}

/// The database's sessions as the server sees them (what each waits on, since when), for a
/// failure's message.
async fn sessions(pool: &sqlx::PgPool) -> Vec<String> {
    let rows: Vec<(i32, String, String, String, String, String)> = sqlx::query_as(
        "select pid, coalesce(application_name, ''), coalesce(state, ''),
                coalesce(wait_event_type || ':' || wait_event, ''),
                coalesce(extract(epoch from now() - xact_start)::int::text || ' s', ''),
                left(coalesce(query, ''), 90)
           from pg_stat_activity where datname = current_database() order by pid",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter().map(|r| format!("{r:?}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the origin binary and a private cluster: run by scripts/faults.sh"]
async fn an_origin_recovers_by_itself_when_its_postgres_and_redis_peers_go_silent() -> TestResult {
    let dir = std::env::temp_dir().join(format!("dead-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = start_cluster(&dir).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(6))
        .build()?;
    let (status, first) = quote_and_hold(&http, 0, &c.vehicles[0], 0).await;
    anyhow::ensure!(status == Some(201), "the first hold: {status:?} {first}");
    let booking = first["id"].as_str().unwrap_or_default().to_owned();

    // Every connection goes silent while requests are in flight on both origins.
    c.pg_proxy.lock().await.set(Mode::Dead);
    c.redis_proxy.lock().await.set(Mode::Dead);
    let mut cut = Vec::new();
    for i in 0..12usize {
        let (http, vehicle) = (http.clone(), c.vehicles[i % c.vehicles.len()].clone());
        cut.push(tokio::spawn(async move {
            quote_and_hold(&http, i % 2, &vehicle, 2 + i as i64).await.0
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.pg_proxy.lock().await.set(Mode::Pass);
    c.redis_proxy.lock().await.set(Mode::Pass);
    for t in cut {
        let _ = t.await;
    }
    let (pg, redis) = (
        c.pg_proxy.lock().await.counts(),
        c.redis_proxy.lock().await.counts(),
    );
    anyhow::ensure!(
        pg.dead > 0 && redis.dead > 0,
        "no connection went dead: {pg:?} {redis:?}"
    );

    // Recovered by itself: the dead connections are still open and silent.
    let healed = Instant::now();
    while !(ready(&http, 0).await && ready(&http, 1).await) {
        if healed.elapsed() > Duration::from_secs(40) {
            anyhow::bail!(
                "the origins did not recover from silent PostgreSQL/Redis connections within \
                 40 s; /readyz: {} | {}; the database's sessions:\n{}",
                readyz(&http, 0).await,
                readyz(&http, 1).await,
                sessions(&c.pool).await.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // No pool slot is lost: more concurrent holds than DB_MAX_CONNECTIONS all get an answer.
    let mut load = Vec::new();
    for i in 0..16usize {
        let (http, vehicle) = (http.clone(), c.vehicles[i % c.vehicles.len()].clone());
        load.push(tokio::spawn(async move {
            quote_and_hold(&http, i % 2, &vehicle, 20 + i as i64)
                .await
                .0
        }));
    }
    let mut answers = Vec::new();
    for t in load {
        answers.push(t.await?);
    }
    // Quotes work (a 201 quote then a hold answered 201 or 409 for a taken window).
    anyhow::ensure!(
        answers.iter().all(|s| matches!(s, Some(201 | 409))),
        "after the heal some quotes or holds failed: {answers:?}"
    );
    // The sweeper ended the first hold and the relay published its events.
    let id = e2e::uuid_of(&booking)?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let status: String = sqlx::query_scalar("select status::text from bookings where id = $1")
            .bind(id)
            .fetch_one(&c.pool)
            .await?;
        let unpublished: i64 = sqlx::query_scalar(
            "select count(*) from outbox where published_at is null and created_at < now() - interval '15 seconds'",
        )
        .fetch_one(&c.pool)
        .await?;
        if status != "RESERVING" && unpublished == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "40 s after the heal: the first hold is {status} (sweeper), {unpublished} old outbox rows unpublished (relay)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
