//! Contention: many users racing for one vehicle.

use e2e::*;
use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn two_hundred_concurrent_holds_on_one_vehicle_give_exactly_one_booking(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("DB_MAX_CONNECTIONS", "20")]).await?;
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
    let replies = join_all(tokens.iter().map(|(user, quote)| {
        let app = &app;
        async move {
            app.post(
                "/v1/bookings",
                Some(&token(user)),
                &json!({ "quote_token": quote }),
                Some(&format!("key-{user}")),
            )
            .await
        }
    }))
    .await;
    let mut created = 0;
    let mut conflicts = 0;
    for reply in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            201 => created += 1,
            409 => {
                reply.assert_problem(409);
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(created, 1, "exactly one hold wins");
    assert_eq!(conflicts, 199);
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
    app.stop().await
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
