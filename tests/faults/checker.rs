//! The checker must be able to fail: a history that violates each invariant is reported so.

use std::time::{Duration, Instant};

use e2e::history::{check, Kind, Op};
use e2e::TestResult;
use serde_json::{json, Value};

use crate::SWEEPER_MS;

/// The checker must be able to fail: a history with a lost acknowledged write, an idempotency
/// violation, events that never reached the broker and a hold nobody swept is reported as
/// exactly that (against a real origin, database and broker; no faults needed).
#[sqlx::test(migrations = "../migrations")]
async fn the_checker_reports_lost_writes_idempotency_violations_lost_events_and_stale_holds(
    pool: sqlx::PgPool,
) -> TestResult {
    // No relay (no KAFKA_BROKERS): the hold's events stay in the outbox, never published.
    // The sweeper runs once an hour: the 1 s hold stays RESERVING past its expiry.
    let app = e2e::spawn_app_with(
        pool.clone(),
        &[("HOLD_TTL_SECS", "1"), ("SWEEPER_INTERVAL_MS", "3600000")],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let hold = app.hold("ann", &vehicle, e2e::window(3, 2)).await?;
    anyhow::ensure!(hold.status.as_u16() == 201, "{hold:?}");
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    let now = Instant::now();
    let op = |kind, key: &str, target: &str, status, body: Value| Op {
        kind,
        key: key.to_owned(),
        user: "ann".into(),
        origin: 0,
        target: target.to_owned(),
        detail: Value::Null,
        started: now,
        ended: now,
        status: Some(status),
        body,
        replayed: false,
    };
    let ops = vec![
        // True: the hold exists.
        op(Kind::Hold, "k-hold", &vehicle, 201, hold.body.clone()),
        // False: "acknowledged" cancel, but the booking is still RESERVING.
        op(
            Kind::Cancel,
            "k-cancel",
            &id,
            200,
            json!({ "status": "CANCELLED" }),
        ),
        // False: one key, two different definitive answers.
        op(
            Kind::Confirm,
            "k-twice",
            &id,
            409,
            json!({ "type": "/problems/invalid-state" }),
        ),
        op(
            Kind::Confirm,
            "k-twice",
            &id,
            200,
            json!({ "status": "CONFIRMED" }),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let report = check(
        &ops,
        &app.pool,
        &brokers,
        Duration::from_millis(SWEEPER_MS),
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(report.overlaps, 0);
    // The cancel, and the "acknowledged" confirm of the idempotency pair: neither happened.
    assert_eq!(report.lost_acknowledged_writes, 2, "{:#?}", report.problems);
    assert_eq!(report.idempotency_violations, 1, "{:#?}", report.problems);
    assert_eq!(report.missing_outbox_events, 0, "{:#?}", report.problems);
    assert_eq!(report.events_committed, 2);
    assert_eq!(report.events_lost, 2, "{:#?}", report.problems);
    assert_eq!(report.stale_holds, 1);
    assert!(!report.clean());
    app.stop().await
}
