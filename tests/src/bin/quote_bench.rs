//! `quote-bench`: quote latency through the pricing orchestrator with the AI inference service
//! healthy, then with it down (circuit breakers open).
//!
//! Everything runs in this process on the machine's PostgreSQL and Redis: a scratch database
//! `quote_bench` (dropped and recreated) with the demo fleet, the reference inference service
//! (`origin/inference`) on the read-only role, and an origin pointed at it. Then `quotes`
//! v2 quotes with `concurrency` workers over random users, vehicles and windows (so L1 rarely
//! answers: this measures the orchestrator, not the cache), twice:
//!
//! 1. **healthy** — base, risk and demand fetched in parallel;
//! 2. **down** — the inference service stopped; after a few calls the breakers are open and
//!    every quote takes the fallbacks (L2 risk, grid or neutral demand) without a remote call.
//!
//! Usage: `cargo run -p e2e --release --bin quote-bench -- [quotes] [concurrency]`
//! (default 2000 and 8). `DATABASE_URL` names the server (its database is only used to create
//! the scratch one), `REDIS_URL` the Redis.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{Duration as ChronoDuration, DurationRound, Utc};
use rand::Rng;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;

const BENCH_DB: &str = "quote_bench";

#[derive(Debug, Default)]
struct Outcome {
    latencies: Vec<Duration>,
    degraded: usize,
    errors: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(
    base: &str,
    vehicles: Arc<Vec<String>>,
    quotes: usize,
    concurrency: usize,
) -> anyhow::Result<(Outcome, Duration)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, vehicles, base) = (client.clone(), Arc::clone(&vehicles), base.to_owned());
        let n = quotes / concurrency + usize::from(w < quotes % concurrency);
        workers.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            for _ in 0..n {
                let (user, vehicle, start, hours) = {
                    let mut rng = rand::thread_rng();
                    let start = (Utc::now() + ChronoDuration::hours(rng.gen_range(24..24 * 14)))
                        .duration_trunc(ChronoDuration::hours(1))
                        .unwrap_or_else(|_| Utc::now());
                    (
                        format!("bench-user-{}", rng.gen_range(0..5_000)),
                        vehicles[rng.gen_range(0..vehicles.len())].clone(),
                        start,
                        rng.gen_range(1..8),
                    )
                };
                let t = Instant::now();
                let reply = client
                    .post(format!("{base}/v2/quotes"))
                    .bearer_auth(e2e::token(&user))
                    .json(&json!({ "vehicle_id": vehicle, "start": start, "end": start + ChronoDuration::hours(hours) }))
                    .send()
                    .await;
                let ok = match reply {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        if body["degraded"].as_array().is_some_and(|d| !d.is_empty()) {
                            out.degraded += 1;
                        }
                        true
                    }
                    _ => false,
                };
                out.latencies.push(t.elapsed());
                if !ok {
                    out.errors += 1;
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for w in workers {
        let out = w.await?;
        all.latencies.extend(out.latencies);
        all.degraded += out.degraded;
        all.errors += out.errors;
    }
    Ok((all, started.elapsed()))
}

fn report(name: &str, out: &mut Outcome, took: Duration) {
    out.latencies.sort();
    let n = out.latencies.len();
    println!(
        "| {name} | {n} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} % | {} |",
        n as f64 / took.as_secs_f64(),
        percentile(&out.latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&out.latencies, 90.0).as_secs_f64() * 1e3,
        percentile(&out.latencies, 99.0).as_secs_f64() * 1e3,
        out.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        100.0 * out.degraded as f64 / n.max(1) as f64,
        out.errors,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quotes: usize = args.first().map_or(Ok(2_000), |a| a.parse())?;
    let concurrency: usize = args.get(1).map_or(Ok(8), |a| a.parse())?.max(1);
    let server_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    // A scratch database with the demo fleet.
    let admin: PgConnectOptions = server_url.parse().context("DATABASE_URL")?;
    let mut conn = admin.connect().await.context("connect to PostgreSQL")?;
    sqlx::query(&format!("drop database if exists {BENCH_DB} with (force)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("create database {BENCH_DB}"))
        .execute(&mut conn)
        .await?;
    let bench = admin.clone().database(BENCH_DB);
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(bench.clone())
        .await?;
    origin::startup::MIGRATOR.run(&pool).await?;
    demo_fleet::seed_demo(&pool, 120).await?;

    // The reference inference service on the read-only role.
    let ro = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(bench.clone().username("inference_ro"))
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (inference_addr, inference_task) =
        inference::serve(ro, SocketAddr::from(([127, 0, 0, 1], 0)), async move {
            let _ = stop_rx.await;
        })
        .await?;

    // The origin, pointed at it.
    let mut env: BTreeMap<String, String> = [
        ("DATABASE_URL", "postgres://unused"),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("JWT_ISSUER", e2e::ISSUER),
        ("JWT_AUDIENCE", e2e::AUDIENCE),
        ("JWT_HS256_SECRET", e2e::JWT_SECRET),
        (
            "QUOTE_SIGNING_KEYS",
            "k1=quote-key-one-quote-key-one-quote-key-one",
        ),
        ("REDIS_KEY_PREFIX", "quote-bench:"),
        // The bench calls the origin directly, as one user, as fast as it can.
        ("ORIGIN_ALLOW_DIRECT", "1"),
        ("ORIGIN_USER_LIMIT_PER_MIN", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("INFERENCE_URL".into(), format!("http://{inference_addr}"));
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    env.insert("REDIS_URL".into(), redis_url.clone());
    let config = origin::config::Config::from(&env)?;
    let budget = config.pricing.budget;
    let running = origin::startup::start(config, pool.clone(), false).await?;
    let base = format!("http://{}", running.addr);

    let rows: Vec<(sqlx::types::Uuid, String)> =
        sqlx::query_as("select id, lower(region) from vehicles where status = 'active'")
            .fetch_all(&pool)
            .await?;
    let vehicles = Arc::new(
        rows.into_iter()
            .map(|(id, r)| format!("veh_{r}_{}", id.simple()))
            .collect::<Vec<_>>(),
    );
    println!(
        "quote-bench: {quotes} v2 quotes per phase, {concurrency} workers, {} vehicles, budget {} ms, {} cores",
        vehicles.len(),
        budget.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| phase | quotes | quotes/s | p50 ms | p90 ms | p99 ms | max ms | degraded | errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");

    // Warm-up (connections, L2), then healthy.
    run(&base, Arc::clone(&vehicles), 200, concurrency).await?;
    let (mut healthy, took) = run(&base, Arc::clone(&vehicles), quotes, concurrency).await?;
    report("inference healthy", &mut healthy, took);

    // Down: stop the service; the first calls fail and open the breakers.
    let _ = stop_tx.send(());
    let _ = inference_task.await;
    run(&base, Arc::clone(&vehicles), 50, concurrency).await?;
    let (mut down, took) = run(&base, Arc::clone(&vehicles), quotes, concurrency).await?;
    report("inference down (breakers open)", &mut down, took);

    running.stop().await?;
    pool.close().await;
    let _ = e2e::test_redis::delete_prefix(&redis_url, "quote-bench:").await;
    let mut conn = admin.connect().await?;
    sqlx::query(&format!("drop database if exists {BENCH_DB} with (force)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}
