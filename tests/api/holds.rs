//! Holds expire and free their vehicle.

use e2e::*;
use serde_json::{json, Value};
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

/// A hold's answer is rendered before its insert (`store::bookings::at_once`), with a
/// placeholder where the vehicle's bay goes: it must read exactly as the booking read back —
/// bay, times to the microsecond — in both versions, with a key and without, and so must the
/// answer stored under the key.
#[sqlx::test(migrations = "../migrations")]
async fn a_holds_answer_is_the_booking_read_back_in_both_versions(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUW").await?;
    let cases = [
        ("v1", Some("k-v1")),
        ("v2", Some("k-v2")),
        ("v1", None),
        ("v2", None),
    ];
    for (i, (version, key)) in cases.into_iter().enumerate() {
        let user = format!("rita-{i}");
        let quote = app.quote(&user, &vehicles[i], window(2, 2)).await?;
        let body = json!({ "quote_token": quote["quote_token"] });
        let path = format!("/{version}/bookings");
        let made = app.post(&path, Some(&token(&user)), &body, key).await?;
        assert_eq!(made.status.as_u16(), 201, "{}", made.body);
        let id = made.body["id"].as_str().unwrap_or_default();
        let read = app
            .get(&format!("/{version}/bookings/{id}"), Some(&token(&user)))
            .await?;
        assert_eq!(made.body, read.body, "{version}, key {key:?}");
        if version == "v2" {
            let bay: uuid::Uuid = sqlx::query_scalar("select bay_id from vehicles where id = $1")
                .bind(uuid_of(&vehicles[i])?)
                .fetch_one(&app.pool)
                .await?;
            assert_eq!(made.body["bay_id"], bay.to_string());
        }
        if let Some(key) = key {
            let stored: Vec<u8> = sqlx::query_scalar(
                "select response_body from idempotency_keys where user_id = $1 and key = $2",
            )
            .bind(&user)
            .bind(key)
            .fetch_one(&app.pool)
            .await?;
            assert_eq!(serde_json::from_slice::<Value>(&stored)?, made.body);
            let again = app
                .post(&path, Some(&token(&user)), &body, Some(key))
                .await?;
            assert_eq!(again.status.as_u16(), 201);
            assert_eq!(again.body, made.body);
        }
    }
    app.stop().await
}
