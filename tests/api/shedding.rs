//! Load shedding: past `MAX_IN_FLIGHT`, requests get a fast 503 with Retry-After while the
//! admitted ones finish normally, and the origin admits again by itself.

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;
use sqlx::PgPool;

/// Waits until `n` of this database's queries wait on a lock (the stalled holds).
async fn wait_for_blocked(pool: &PgPool, n: i64) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await?;
        if blocked >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {blocked} of {n} requests blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn requests_past_the_in_flight_limit_get_a_fast_503_while_admitted_ones_succeed(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("MAX_IN_FLIGHT", "2")]).await?;
    let vehicles = app.vehicles("EUW").await?;
    let quotes = [
        (
            "alice",
            app.quote("alice", &vehicles[0], window(1, 2)).await?,
        ),
        ("bob", app.quote("bob", &vehicles[1], window(1, 2)).await?),
    ];

    // Stall the two holds inside the database: they keep their admission permits.
    let mut blocker = app.pool.begin().await?;
    sqlx::query("lock table bookings in access exclusive mode")
        .execute(&mut *blocker)
        .await?;
    let holds: Vec<_> = quotes
        .iter()
        .map(|(user, quote)| {
            let (client, base) = (app.client.clone(), app.base.clone());
            let request = client
                .post(format!("{base}/v1/bookings"))
                .bearer_auth(token(user))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .json(&json!({ "quote_token": quote["quote_token"] }));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    wait_for_blocked(&app.pool, 2).await?;

    // Both permits are taken: anything else waits at most ADMISSION_WAIT_MS (25 ms), then is
    // refused.
    for _ in 0..5 {
        let started = Instant::now();
        let refused = app
            .post(
                "/v1/quotes",
                Some(&token("carol")),
                &json!({ "vehicle_id": vehicles[2], "start": window(2, 2).0, "end": window(2, 2).1 }),
                None,
            )
            .await?;
        let took = started.elapsed();
        refused.assert_problem(503);
        assert_eq!(refused.problem_type(), "/problems/overloaded");
        assert_eq!(
            refused
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert!(
            took < Duration::from_millis(500),
            "a shed request took {took:?}"
        );
    }
    // Liveness, readiness and metrics are never shed.
    assert_eq!(app.get("/healthz", None).await?.status.as_u16(), 200);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?;
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await?;
    let shed: f64 = text
        .lines()
        .find(|l| l.starts_with("http_requests_shed_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(shed >= 5.0, "shed counter {shed}");

    // Release the stall: the admitted holds complete normally.
    blocker.rollback().await?;
    for hold in holds {
        let response = hold.await??;
        assert_eq!(response.status().as_u16(), 201);
    }
    // And the origin admits again by itself.
    let again = app.quote("carol", &vehicles[2], window(2, 2)).await?;
    assert!(again["quote_token"].is_string());
    app.stop().await
}

/// Stalls two holds inside the database so they keep both permits of `MAX_IN_FLIGHT=2`;
/// returns the blocking transaction and the holds' tasks.
async fn stall_two_holds(
    app: &TestApp,
    vehicles: &[String],
) -> TestResult<(
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>>,
)> {
    let quotes = [
        (
            "alice",
            app.quote("alice", &vehicles[0], window(1, 2)).await?,
        ),
        ("bob", app.quote("bob", &vehicles[1], window(1, 2)).await?),
    ];
    let mut blocker = app.pool.begin().await?;
    sqlx::query("lock table bookings in access exclusive mode")
        .execute(&mut *blocker)
        .await?;
    let holds = quotes
        .iter()
        .map(|(user, quote)| {
            let request = app
                .client
                .post(format!("{}/v1/bookings", app.base))
                .bearer_auth(token(user))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .json(&json!({ "quote_token": quote["quote_token"] }));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    wait_for_blocked(&app.pool, 2).await?;
    Ok((blocker, holds))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_request_past_the_limit_waits_for_a_permit_and_is_served_when_one_frees_within_the_wait(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[("MAX_IN_FLIGHT", "2"), ("ADMISSION_WAIT_MS", "10000")],
    )
    .await?;
    let vehicles = app.vehicles("EUW").await?;
    let (blocker, holds) = stall_two_holds(&app, &vehicles).await?;

    // Two requests take the two places in the waiting line...
    let quote = |user: &'static str, vehicle: String| {
        let request = app
            .client
            .post(format!("{}/v1/quotes", app.base))
            .bearer_auth(token(user))
            .json(
                &json!({ "vehicle_id": vehicle, "start": window(2, 2).0, "end": window(2, 2).1 }),
            );
        tokio::spawn(async move { request.send().await })
    };
    let waiting = [
        quote("carol", vehicles[2].clone()),
        quote("dave", vehicles[3].clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a request past the limit was answered while both permits were taken"
    );
    // ...so a third one is refused at once, long before the 10 s wait.
    let started = Instant::now();
    let refused = app
        .post(
            "/v1/quotes",
            Some(&token("erin")),
            &json!({ "vehicle_id": vehicles[4], "start": window(2, 2).0, "end": window(2, 2).1 }),
            None,
        )
        .await?;
    refused.assert_problem(503);
    assert_eq!(refused.problem_type(), "/problems/overloaded");
    assert!(started.elapsed() < Duration::from_millis(1000));

    // The stall ends: the holds finish, and the waiting requests get permits and are served.
    blocker.rollback().await?;
    for hold in holds {
        assert_eq!(hold.await??.status().as_u16(), 201);
    }
    for w in waiting {
        let response = w.await??;
        assert_eq!(
            response.status().as_u16(),
            201,
            "{:?}",
            response.text().await
        );
    }
    app.stop().await
}
