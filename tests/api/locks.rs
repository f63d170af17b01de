//! Vehicle locks: Redis when it answers, PostgreSQL when it does not, and back again.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::region::Region;
use e2e::test_redis::{self, TestRedis};
use e2e::*;
use futures_util::future::join_all;
use origin::config::{RedisConfig, RedisMode, Secret, VehicleLockMode};
use origin::redis::link::RedisLink;
use origin::redis::locks::{LockError, Locks, LOCK_NAMESPACE};
use serde_json::Value;
use sqlx::PgPool;

type Window = (DateTime<Utc>, DateTime<Utc>);

/// Quotes for 24 users over `vehicles`, windows overlapping on each vehicle.
async fn quotes(
    app: &TestApp,
    round: &str,
    vehicles: &[String],
    base: Window,
) -> TestResult<Vec<(String, Value)>> {
    let mut quotes = Vec::new();
    for i in 0..24usize {
        let user = format!("{round}-user-{i}");
        let vehicle = &vehicles[i % vehicles.len()];
        // Windows on one vehicle overlap pairwise: starts 0..3 h apart, 4 h long.
        let shift = chrono::Duration::minutes(60 * (i as i64 % 3));
        let window = (base.0 + shift, base.0 + shift + chrono::Duration::hours(4));
        let quote = app.quote(&user, vehicle, window).await?;
        quotes.push((user, quote["quote_token"].clone()));
    }
    Ok(quotes)
}

/// The holds of `quotes`, all at once; every status must be a 201 or a clean 409 problem.
/// Returns how many were created.
async fn fire(app: &TestApp, round: &str, quotes: &[(String, Value)]) -> TestResult<usize> {
    let replies = join_all(quotes.iter().map(|(user, quote)| async move {
        app.post(
            "/v1/bookings",
            Some(&token(user)),
            &serde_json::json!({ "quote_token": quote }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await
    }))
    .await;
    let mut created = 0;
    for reply in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            201 => created += 1,
            409 => {
                reply.assert_problem(409);
            }
            other => panic!("{round}: unexpected {other}: {}", reply.body),
        }
    }
    Ok(created)
}

async fn burst(app: &TestApp, round: &str, vehicles: &[String], base: Window) -> TestResult<usize> {
    let quotes = quotes(app, round, vehicles, base).await?;
    fire(app, round, &quotes).await
}

async fn readiness(app: &TestApp) -> TestResult<Value> {
    let ready = app.get("/readyz", None).await?;
    anyhow::ensure!(ready.status.as_u16() == 200, "readyz: {}", ready.body);
    Ok(ready.body)
}

/// Polls /readyz until `checks.locks` is `want`.
async fn wait_for_locks(app: &TestApp, want: &str) -> TestResult<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = readiness(app).await?;
        if body["checks"]["locks"] == want {
            return Ok(body);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "locks never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hold on `vehicle` is refused at once while someone else holds its lock (planted by the
/// test), and goes through once that lock is gone: proof of which lock the origin consults.
async fn hold_is_blocked_while(
    app: &TestApp,
    user: &str,
    vehicle: &str,
    window: Window,
    blocked: bool,
) -> TestResult {
    let started = Instant::now();
    let reply = app.hold(user, vehicle, window).await?;
    if blocked {
        reply.assert_problem(409);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("right now")),
            "{}",
            reply.body
        );
        assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    } else {
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    }
    Ok(())
}

#[sqlx::test(migrations = "../migrations")]
async fn bookings_continue_without_redis_and_locks_return_when_it_does(pool: PgPool) -> TestResult {
    let mut redis = TestRedis::start().await?;
    let url = redis.url();
    let app = spawn_app_with(
        pool,
        &[
            ("REDIS_URL", &url),
            ("DB_MAX_CONNECTIONS", "20"),
            ("VEHICLE_LOCK", "on"),
        ],
    )
    .await?;
    let vehicles: Vec<String> = app.vehicles("EUW").await?.into_iter().take(4).collect();
    let probe_vehicle = app.vehicles("EUN").await?[0].clone();
    let body = readiness(&app).await?;
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    assert_eq!(body["checks"]["locks"], "redis", "{body}");

    // Redis up: a planted Redis lock blocks a hold on that vehicle.
    let mut conn = test_redis::connect(&url).await?;
    let lock_key = format!(
        "{}lock:vehicle:{{{}}}",
        app.redis_prefix,
        uuid_of(&probe_vehicle)?.simple()
    );
    redis::cmd("SET")
        .arg(&lock_key)
        .arg("someone-else")
        .arg("PX")
        .arg(30_000)
        .query_async::<()>(&mut conn)
        .await?;
    hold_is_blocked_while(&app, "probe-1", &probe_vehicle, window(2, 1), true).await?;
    redis::cmd("DEL")
        .arg(&lock_key)
        .query_async::<()>(&mut conn)
        .await?;
    hold_is_blocked_while(&app, "probe-1", &probe_vehicle, window(2, 1), false).await?;

    // Round 1 with Redis; round 2 with Redis killed in the middle; round 3 without Redis.
    let created_1 = burst(&app, "r1", &vehicles, window(3, 0)).await?;
    assert!(
        created_1 >= vehicles.len(),
        "one per vehicle at least: {created_1}"
    );
    let round_2 = quotes(&app, "r2", &vehicles, window(4, 0)).await?;
    let (created_2, killed) = tokio::join!(fire(&app, "r2", &round_2), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        redis.kill()
    });
    killed?;
    created_2?;
    let created_3 = burst(&app, "r3", &vehicles, window(5, 0)).await?;
    assert!(
        created_3 >= vehicles.len(),
        "booking works without Redis: {created_3}"
    );

    let body = wait_for_locks(&app, "postgres-fallback").await?;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["redis"], "down", "{body}");
    assert_eq!(body["checks"]["availability"], "postgres-bbox", "{body}");
    assert!(body["redis_degradations"].as_u64() >= Some(1), "{body}");

    // Without Redis the PostgreSQL advisory lock serialises: hold it, and a hold is refused.
    let mut tx = app.pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_NAMESPACE)
        .bind(uuid_of(&probe_vehicle)?.to_string())
        .execute(&mut *tx)
        .await?;
    hold_is_blocked_while(&app, "probe-2", &probe_vehicle, window(6, 1), true).await?;
    tx.rollback().await?;
    hold_is_blocked_while(&app, "probe-2", &probe_vehicle, window(6, 1), false).await?;

    // Redis comes back (empty, same port): the probe notices, locks return to it.
    redis.restart().await?;
    let body = wait_for_locks(&app, "redis").await?;
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    let mut conn = test_redis::connect(&url).await?;
    redis::cmd("SET")
        .arg(&lock_key)
        .arg("someone-else")
        .arg("PX")
        .arg(30_000)
        .query_async::<()>(&mut conn)
        .await?;
    hold_is_blocked_while(&app, "probe-3", &probe_vehicle, window(7, 1), true).await?;
    redis::cmd("DEL")
        .arg(&lock_key)
        .query_async::<()>(&mut conn)
        .await?;
    hold_is_blocked_while(&app, "probe-3", &probe_vehicle, window(7, 1), false).await?;
    let created_4 = burst(&app, "r4", &vehicles, window(8, 0)).await?;
    assert!(created_4 >= vehicles.len(), "{created_4}");

    // The availability index was rebuilt into the new, empty Redis.
    let geo_key = format!("{}{{avail}}:geo:EUW", app.redis_prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members: i64 = redis::cmd("ZCARD")
            .arg(&geo_key)
            .query_async(&mut conn)
            .await?;
        if members > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "index not rebuilt after recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Whatever the locks did, the database never double-booked.
    assert_eq!(app.overlapping_pairs().await?, 0);
    app.stop().await
}

/// `VEHICLE_LOCK=postgres`: the hold's one statement takes the vehicle's advisory lock itself
/// (no Redis round trip): a planted advisory lock refuses a hold within `LOCK_WAIT_MS`, and a
/// planted Redis lock is not even looked at.
#[sqlx::test(migrations = "../migrations")]
async fn with_the_postgres_lock_a_hold_meets_the_advisory_lock_inside_its_statement(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("VEHICLE_LOCK", "postgres")]).await?;
    let body = readiness(&app).await?;
    assert_eq!(body["checks"]["locks"], "postgres", "{body}");
    let vehicle = app.vehicles("EUN").await?[0].clone();

    let mut conn = test_redis::connect_any(&app.redis_url).await?;
    let lock_key = format!(
        "{}lock:vehicle:{{{}}}",
        app.redis_prefix,
        uuid_of(&vehicle)?.simple()
    );
    redis::cmd("SET")
        .arg(&lock_key)
        .arg("someone-else")
        .arg("PX")
        .arg(30_000)
        .query_async::<()>(&mut conn)
        .await?;
    hold_is_blocked_while(&app, "pg-1", &vehicle, window(2, 1), false).await?;

    let mut tx = app.pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_NAMESPACE)
        .bind(uuid_of(&vehicle)?.to_string())
        .execute(&mut *tx)
        .await?;
    hold_is_blocked_while(&app, "pg-2", &vehicle, window(3, 1), true).await?;
    tx.rollback().await?;
    hold_is_blocked_while(&app, "pg-2", &vehicle, window(3, 1), false).await?;
    app.stop().await
}

fn lock_config(url: String, prefix: &str, ttl_ms: u64) -> RedisConfig {
    RedisConfig {
        url: Secret(url.into_bytes()),
        mode: RedisMode::Single,
        key_prefix: prefix.to_owned(),
        command_timeout: Duration::from_millis(200),
        lock_ttl: Duration::from_millis(ttl_ms),
        lock_wait: Duration::from_millis(20),
        vehicle_lock: VehicleLockMode::On,
        availability_rebuild: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_vehicle_lock_is_exclusive_released_only_by_its_owner_and_expires() -> TestResult {
    let url = test_redis::shared_url();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let config = lock_config(url.clone(), &prefix, 400);
    let link = RedisLink::connect(&config).await?;
    anyhow::ensure!(link.is_up(), "this test needs the shared Redis at {url}");
    let locks = Locks::new(link, config.lock_ttl, config.lock_wait);
    let vehicle = VehicleId::new(Region::Euw, uuid::Uuid::new_v4());
    let mut conn = test_redis::connect(&url).await?;

    let first = locks.acquire(&vehicle).await?;
    assert_eq!(first.backend(), "redis");
    let token = first.token().map(str::to_owned);

    // A second acquirer fails fast (within LOCK_WAIT_MS and a little) with a conflict.
    let started = Instant::now();
    let second = locks.acquire(&vehicle).await;
    assert!(
        matches!(second, Err(LockError::Busy(v)) if v == vehicle),
        "{second:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // Only the owner's token releases it.
    assert!(!locks.release_token(&vehicle, "not-the-owner").await?);
    let held: Option<String> = redis::cmd("GET")
        .arg(locks.key(&vehicle))
        .query_async(&mut conn)
        .await?;
    assert_eq!(held, token);
    assert!(first.release().await, "the owner releases");
    let held: Option<String> = redis::cmd("GET")
        .arg(locks.key(&vehicle))
        .query_async(&mut conn)
        .await?;
    assert_eq!(held, None);

    // An owner that overstays its TTL loses the lock, and cannot delete its successor's.
    let slow = locks.acquire(&vehicle).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let next = locks.acquire(&vehicle).await?;
    assert!(!slow.release().await, "an expired owner releases nothing");
    let held: Option<String> = redis::cmd("GET")
        .arg(locks.key(&vehicle))
        .query_async(&mut conn)
        .await?;
    assert_eq!(held.as_deref(), next.token());
    assert!(next.release().await);
    test_redis::delete_prefix(&url, &prefix).await?;
    Ok(())
}
