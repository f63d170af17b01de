//! Idempotency-Key: retries get the first answer and create nothing new.

use e2e::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn a_retried_post_with_the_same_key_returns_the_same_body_and_creates_nothing(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[2].clone();
    let quote = app.quote("dave", &vehicle, window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let first = app
        .post("/v1/bookings", Some(&token("dave")), &body, Some("k-1"))
        .await?;
    assert_eq!(first.status.as_u16(), 201);
    let counts = (
        app.count("bookings", "true").await?,
        app.count("booking_history", "true").await?,
        app.count("outbox", "true").await?,
    );
    let again = app
        .post("/v1/bookings", Some(&token("dave")), &body, Some("k-1"))
        .await?;
    assert_eq!(again.status.as_u16(), 201);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(
        (
            app.count("bookings", "true").await?,
            app.count("booking_history", "true").await?,
            app.count("outbox", "true").await?,
        ),
        counts
    );

    // The same key on an action is per request: confirm twice with one key → one transition.
    let id = first.body["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/bookings/{id}/confirm");
    let c1 = app
        .post(&path, Some(&token("dave")), &Value::Null, Some("c-1"))
        .await?;
    let c2 = app
        .post(&path, Some(&token("dave")), &Value::Null, Some("c-1"))
        .await?;
    assert_eq!(c1.status.as_u16(), 200);
    assert_eq!(c2.body, c1.body);
    assert_eq!(
        app.count("booking_history", "to_status = 'CONFIRMED'")
            .await?,
        1
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_key_with_another_body_is_422(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUW").await?;
    let q1 = app.quote("erin", &vehicles[0], window(2, 2)).await?;
    let q2 = app.quote("erin", &vehicles[1], window(2, 2)).await?;
    let first = app
        .post(
            "/v1/bookings",
            Some(&token("erin")),
            &json!({ "quote_token": q1["quote_token"] }),
            Some("same"),
        )
        .await?;
    assert_eq!(first.status.as_u16(), 201);
    let other = app
        .post(
            "/v1/bookings",
            Some(&token("erin")),
            &json!({ "quote_token": q2["quote_token"] }),
            Some("same"),
        )
        .await?;
    other.assert_problem(422);
    assert_eq!(other.problem_type(), "/problems/idempotency-mismatch");
    assert_eq!(app.count("bookings", "true").await?, 1);
    // Keys are per user: another user may use the same key string.
    let q3 = app.quote("frank", &vehicles[2], window(2, 2)).await?;
    let theirs = app
        .post(
            "/v1/bookings",
            Some(&token("frank")),
            &json!({ "quote_token": q3["quote_token"] }),
            Some("same"),
        )
        .await?;
    assert_eq!(theirs.status.as_u16(), 201);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_requests_with_one_key_run_the_effect_once(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUN").await?[3].clone();
    let quote = app.quote("gina", &vehicle, window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let gina = token("gina");
    let replies =
        join_all((0..12).map(|_| app.post("/v1/bookings", Some(&gina), &body, Some("burst"))))
            .await;
    let mut bodies = Vec::new();
    for reply in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            201 => bodies.push(reply.body),
            409 => assert_eq!(
                reply.assert_problem(409).problem_type(),
                "/problems/idempotency-in-progress"
            ),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(!bodies.is_empty());
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every success is the first answer"
    );
    assert_eq!(app.count("bookings", "true").await?, 1);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_malformed_idempotency_key_is_400(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let long = "x".repeat(300);
    let reply = app
        .post(
            "/v1/bookings",
            Some(&token("hank")),
            &json!({ "quote_token": "x" }),
            Some(&long),
        )
        .await?;
    reply.assert_problem(400);
    app.stop().await
}
