//! Contention: many users racing for one vehicle.
//!
//! The origin runs on a multi-thread runtime of its own (see `e2e::origin_runtime`), so the
//! contenders' handlers and transactions really overlap. The race runs three times: with the
//! per-vehicle lock in Redis in front, with it as PostgreSQL's advisory lock inside the hold's
//! statement (`VEHICLE_LOCK=postgres`), and with `VEHICLE_LOCK=off`, where nothing but the
//! exclusion constraint `bookings_no_overlap` stands between the contenders. Each prints how
//! long the 200 answers took and the slowest one: how fast contenders fail in each mode.

use e2e::*;
use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;

/// What the lock's refusal says (`LockError::Busy`): with the lock off, no 409 may say it.
const LOCK_BUSY: &str = "is being booked by someone else";

#[sqlx::test(migrations = "../migrations")]
async fn two_hundred_concurrent_holds_on_one_vehicle_give_exactly_one_booking(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[("DB_MAX_CONNECTIONS", "20"), ("VEHICLE_LOCK", "on")],
    )
    .await?;
    let ready = app.get("/readyz", None).await?;
    assert_eq!(ready.body["checks"]["locks"], "redis", "{}", ready.body);
    two_hundred_racers_one_winner(&app, false).await?;
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn two_hundred_concurrent_holds_under_the_postgres_lock_give_exactly_one_booking(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[("DB_MAX_CONNECTIONS", "20"), ("VEHICLE_LOCK", "postgres")],
    )
    .await?;
    let ready = app.get("/readyz", None).await?;
    assert_eq!(ready.body["checks"]["locks"], "postgres", "{}", ready.body);
    two_hundred_racers_one_winner(&app, false).await?;
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn two_hundred_concurrent_holds_with_the_lock_off_meet_only_the_exclusion_constraint(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[("DB_MAX_CONNECTIONS", "20"), ("VEHICLE_LOCK", "off")],
    )
    .await?;
    let ready = app.get("/readyz", None).await?;
    assert_eq!(ready.body["checks"]["locks"], "off", "{}", ready.body);
    two_hundred_racers_one_winner(&app, true).await?;
    app.stop().await
}

/// 200 users hold overlapping windows of one vehicle at once: exactly one 201, 199 problem
/// 409s, and the losers left no row, history or event behind. With `lock_off`, no 409 may
/// come from the lock: each was the constraint's (or a deadlock between two waiters on it).
async fn two_hundred_racers_one_winner(app: &TestApp, lock_off: bool) -> TestResult {
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let (start, _) = window(3, 0);
    // 200 users, each with a quote for a different window that overlaps [start+3h, start+4h).
    let mut tokens = Vec::new();
    for i in 0..200i64 {
        let s = start + chrono::Duration::minutes(i % 180);
        let e = start + chrono::Duration::hours(4) + chrono::Duration::minutes(i % 60);
        let q = app.quote(&format!("racer-{i}"), &vehicle, (s, e)).await?;
        tokens.push((format!("racer-{i}"), q["quote_token"].clone()));
    }
    let started = std::time::Instant::now();
    let replies = join_all(tokens.iter().map(|(user, quote)| async move {
        let reply = app
            .post(
                "/v1/bookings",
                Some(&token(user)),
                &json!({ "quote_token": quote }),
                Some(&format!("key-{user}")),
            )
            .await;
        (reply, started.elapsed())
    }))
    .await;
    let all = started.elapsed();
    let slowest = replies.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let mut created = 0;
    let mut conflicts = 0;
    // Which guard refused each loser: the lock, the constraint (23P01) or a deadlock between
    // two transactions waiting on the constraint (40P01).
    let mut by_constraint = 0;
    for (reply, _) in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            201 => created += 1,
            409 => {
                reply.assert_problem(409);
                let detail = reply.body["detail"].as_str().unwrap_or_default();
                assert!(!(lock_off && detail.contains(LOCK_BUSY)), "{}", reply.body);
                if detail.contains("already booked") || detail.contains("concurrent booking") {
                    by_constraint += 1;
                }
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(created, 1, "exactly one hold wins");
    assert_eq!(conflicts, 199);
    eprintln!(
        "lock off: {lock_off}; 409s from the database (not the lock): {by_constraint}; \
         200 answers in {all:?}, the slowest after {slowest:?}"
    );
    if lock_off {
        // Nothing else stood between them: every loser met the database's guard.
        assert_eq!(by_constraint, 199);
    }
    let vid = uuid_of(&vehicle)?;
    let occupying = app
        .count(
            "bookings",
            &format!("vehicle_id = '{vid}' and status in ('RESERVING','CONFIRMED','IN_PROGRESS')"),
        )
        .await?;
    assert_eq!(occupying, 1);
    assert_eq!(app.overlapping_pairs().await?, 0);
    // The losers left nothing behind: one booking, one history row, two events.
    assert_eq!(app.count("bookings", "true").await?, 1);
    assert_eq!(app.count("booking_history", "true").await?, 1);
    assert_eq!(app.count("outbox", "true").await?, 2);
    Ok(())
}

#[sqlx::test(migrations = "../migrations")]
async fn holds_on_distinct_vehicles_all_succeed_concurrently(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUN").await?;
    let w = window(2, 3);
    let replies = join_all(vehicles.iter().enumerate().map(|(i, v)| {
        let app = &app;
        async move { app.hold(&format!("u{i}"), v, w).await }
    }))
    .await;
    for reply in replies {
        assert_eq!(reply?.status.as_u16(), 201);
    }
    assert_eq!(
        app.count("bookings", "status = 'RESERVING'").await?,
        vehicles.len() as i64
    );
    app.stop().await
}
