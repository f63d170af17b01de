//! Every committed state change has its history and outbox rows; a failed one leaves none.

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn each_state_change_writes_history_and_events_in_order(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[3].clone();
    let (start, end) = window(4, 2);
    let id = app.confirmed("ivy", &vehicle, (start, end)).await?;
    let extend = app
        .post(
            &format!("/v1/bookings/{id}/extend"),
            Some(&token("ivy")),
            &json!({ "end": end + chrono::Duration::hours(1) }),
            None,
        )
        .await?;
    assert_eq!(extend.status.as_u16(), 200, "{}", extend.body);
    let cancel = app
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&token("ivy")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(cancel.status.as_u16(), 200, "{}", cancel.body);

    let uuid = uuid_of(&id)?;
    let history: Vec<(Option<String>, String, String)> = sqlx::query_as(
        "select from_status, to_status, event from booking_history where booking_id = $1 order by id",
    )
    .bind(uuid)
    .fetch_all(&app.pool)
    .await?;
    let history: Vec<(Option<&str>, &str, &str)> = history
        .iter()
        .map(|(f, t, e)| (f.as_deref(), t.as_str(), e.as_str()))
        .collect();
    assert_eq!(
        history,
        vec![
            (Some("PRICE_QUOTED"), "RESERVING", "hold"),
            (Some("RESERVING"), "CONFIRMED", "confirm"),
            (Some("CONFIRMED"), "CONFIRMED", "extend"),
            (Some("CONFIRMED"), "CANCELLED", "cancel"),
        ]
    );
    let topics: Vec<(String, String, Value)> = sqlx::query_as(
        "select topic, partition_key, payload from outbox where aggregate_id = $1 order by id",
    )
    .bind(uuid)
    .fetch_all(&app.pool)
    .await?;
    let names: Vec<&str> = topics.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "booking.created",
            "vehicle.reserved",
            "booking.confirmed",
            "booking.extended",
            "booking.cancelled",
            "vehicle.released"
        ]
    );
    for (topic, key, payload) in &topics {
        assert_eq!(key, &vehicle, "keyed by vehicle");
        assert_eq!(payload["type"], topic.as_str());
        assert_eq!(payload["region"], "EUW");
        assert_eq!(payload["booking"]["id"], id.as_str());
        let event_id = payload["event_id"].as_str().unwrap_or_default();
        assert_eq!(uuid::Uuid::try_parse(event_id)?.get_version_num(), 7);
    }
    // The extended event carries the new end.
    assert_eq!(
        topics[3].2["booking"]["end"].as_str().map(|s| s.to_owned()),
        Some(
            (end + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failed_change_leaves_no_history_and_no_events(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUN").await?[1].clone();
    let (start, end) = window(5, 2);
    let mine = app.confirmed("jo", &vehicle, (start, end)).await?;
    // Someone else takes the two hours after it.
    let _theirs = app
        .confirmed("kim", &vehicle, (end, end + chrono::Duration::hours(2)))
        .await?;
    let before = (
        app.count("booking_history", "true").await?,
        app.count("outbox", "true").await?,
    );
    // A conflicting extend is a 409 and writes nothing.
    let extend = app
        .post(
            &format!("/v1/bookings/{mine}/extend"),
            Some(&token("jo")),
            &json!({ "end": end + chrono::Duration::hours(1) }),
            None,
        )
        .await?;
    extend.assert_problem(409);
    // A conflicting hold is a 409 and writes nothing.
    let quote_blocked = app
        .post(
            "/v1/quotes",
            Some(&token("lee")),
            &json!({ "vehicle_id": vehicle, "start": start, "end": end }),
            None,
        )
        .await?;
    quote_blocked.assert_problem(409);
    // An illegal transition is a 409 and writes nothing.
    let complete = app
        .post(
            &format!("/v1/bookings/{mine}/complete"),
            Some(&token("jo")),
            &Value::Null,
            None,
        )
        .await?;
    complete.assert_problem(409);
    assert_eq!(complete.problem_type(), "/problems/invalid-state");
    assert_eq!(
        (
            app.count("booking_history", "true").await?,
            app.count("outbox", "true").await?,
        ),
        before
    );
    let row_end: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select upper(period) from bookings where id = $1")
            .bind(uuid_of(&mine)?)
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(row_end, end, "the failed extend changed nothing");
    app.stop().await
}
