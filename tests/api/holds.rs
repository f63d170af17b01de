//! Holds expire and free their vehicle.

use e2e::*;
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn an_expired_hold_frees_the_vehicle_for_a_new_hold(pool: PgPool) -> TestResult {
    // A long sweeper period: the second hold must succeed through lazy expiry alone.
    let app = spawn_app_with(
        pool,
        &[("HOLD_TTL_SECS", "1"), ("SWEEPER_INTERVAL_MS", "600000")],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[1].clone();
    let w = window(1, 2);
    let first = app.hold("alice", &vehicle, w).await?;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    // While the hold lives, nobody else can even get a quote for that window.
    let blocked = app
        .post(
            "/v1/quotes",
            Some(&token("bob")),
            &serde_json::json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    blocked.assert_problem(409);

    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let second = app.hold("bob", &vehicle, w).await?;
    assert_eq!(second.status.as_u16(), 201, "{}", second.body);

    let first_id = uuid_of(first.body["id"].as_str().unwrap_or_default())?;
    let status: String = sqlx::query_scalar("select status from bookings where id = $1")
        .bind(first_id)
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(status, "FAILED");
    assert_eq!(
        app.count(
            "booking_history",
            &format!(
                "booking_id = '{first_id}' and to_status = 'FAILED' and reason = 'hold_expired'"
            )
        )
        .await?,
        1
    );
    assert_eq!(
        app.count(
            "outbox",
            &format!(
                "aggregate_id = '{first_id}' and topic in ('booking.failed', 'vehicle.released')"
            )
        )
        .await?,
        2
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_sweeper_expires_holds_and_confirming_late_is_refused(pool: PgPool) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[("HOLD_TTL_SECS", "1"), ("SWEEPER_INTERVAL_MS", "100")],
    )
    .await?;
    let vehicle = app.vehicles("EUN").await?[0].clone();
    let hold = app.hold("carol", &vehicle, window(1, 2)).await?;
    assert_eq!(hold.status.as_u16(), 201);
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1_800)).await;
    let got = app
        .get(&format!("/v1/bookings/{id}"), Some(&token("carol")))
        .await?;
    assert_eq!(
        got.body["status"], "FAILED",
        "the sweeper ended it: {}",
        got.body
    );
    let confirm = app
        .post(
            &format!("/v1/bookings/{id}/confirm"),
            Some(&token("carol")),
            &Value::Null,
            None,
        )
        .await?;
    confirm.assert_problem(409);
    app.stop().await
}
