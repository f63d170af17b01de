//! Signed webhooks end to end: an origin with the consumer and the dispatcher, the shared
//! broker, and a receiver in the test (a real HTTP server) that checks every delivery with the
//! domain crate's verifier, as an integrator's would.
//!
//! The broker's topics carry every other test's events, about the demo fleet's vehicle ids.
//! So each test books a vehicle of its own (a copy of a demo vehicle under a new id) and judges
//! only the deliveries about it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use domain::webhook::{verify, WebhookSecret};
use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn brokers() -> TestResult<String> {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .context("KAFKA_BROKERS is not set: run `bash scripts/broker.sh` (scripts/test.sh does)")
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    signatures: String,
    timestamp: String,
    body: Bytes,
    /// What it answered.
    status: u16,
}

#[derive(Default)]
struct Inbox {
    /// Answer 500 to this many requests about the vehicles in `fail_for` first.
    fail_first: usize,
    fail_for: BTreeSet<String>,
    failed_for: usize,
    /// Answer 500 to everything while set.
    failing: bool,
    got: Vec<Got>,
}

/// The receiver: a real HTTP server on 127.0.0.1 that records every request.
#[derive(Clone)]
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let Ok(mut inbox) = inbox.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let vehicle = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|p| p["booking"]["vehicle_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let planted = inbox.fail_for.contains(&vehicle) && inbox.failed_for < inbox.fail_first;
    if planted {
        inbox.failed_for += 1;
    }
    let fail = inbox.failing || planted;
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    inbox.got.push(Got {
        id: header("webhook-id"),
        signatures: header("webhook-signature"),
        timestamp: header("webhook-timestamp"),
        body,
        status: status.as_u16(),
    });
    status
}

impl Receiver {
    async fn start(fail_first: usize) -> TestResult<Receiver> {
        let inbox = Arc::new(Mutex::new(Inbox {
            fail_first,
            ..Inbox::default()
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(Arc::clone(&inbox));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, inbox })
    }

    fn got(&self) -> Vec<Got> {
        self.inbox.lock().map(|i| i.got.clone()).unwrap_or_default()
    }

    /// Which vehicles' deliveries the first failures hit (other tests' events reach this
    /// receiver too).
    fn fail_for(&self, vehicles: &[String]) {
        if let Ok(mut i) = self.inbox.lock() {
            i.fail_for = vehicles.iter().cloned().collect();
        }
    }

    fn set_failing(&self, failing: bool) {
        if let Ok(mut i) = self.inbox.lock() {
            i.failing = failing;
        }
    }

    /// The requests about `vehicle` (by the payload's `booking.vehicle_id`).
    fn about(&self, vehicle: &str) -> Vec<(Got, Value)> {
        self.got()
            .into_iter()
            .filter_map(|g| {
                let payload: Value = serde_json::from_slice(&g.body).ok()?;
                (payload["booking"]["vehicle_id"] == vehicle).then_some((g, payload))
            })
            .collect()
    }
}

/// An origin with the consumers on and retries fast.
async fn webhook_app(pool: PgPool, extra: Overrides<'_>) -> TestResult<TestApp> {
    let brokers = brokers()?;
    let mut env: Vec<(&str, &str)> = vec![
        ("KAFKA_BROKERS", &brokers),
        ("EVENT_CONSUMER", "1"),
        ("RELAY_POLL_MS", "20"),
        ("WEBHOOK_POLL_MS", "20"),
        ("WEBHOOK_RETRY_BASE_MS", "40"),
        ("WEBHOOK_RETRY_MAX_MS", "200"),
        ("WEBHOOK_TIMEOUT_MS", "2000"),
    ];
    env.extend_from_slice(extra);
    let app = spawn_app_with(pool, &env).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = app.get("/readyz", None).await?;
        if ready.body["webhooks"]["state"] == "assigned" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhook fan-out was never assigned: {}",
            ready.body["webhooks"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(app)
}

/// A vehicle only this test books: a copy of a demo vehicle of EUW under a new id.
async fn own_vehicle(app: &TestApp) -> TestResult<String> {
    let id = Uuid::new_v4();
    sqlx::query(
        "insert into vehicles (id, region, bay_id, class, make, model, seats, fuel, plate)
         select $1, region, bay_id, class, make, model, seats, fuel, 'WH-' || left($1::text, 8)
         from vehicles where region = 'EUW' and status = 'active' order by id limit 1",
    )
    .bind(id)
    .execute(&app.pool)
    .await?;
    Ok(format!("veh_euw_{}", id.simple()))
}

/// Registers an endpoint for every event type of EUW; its id and secret.
async fn register(app: &TestApp, url: &str) -> TestResult<(String, WebhookSecret)> {
    let types = [
        "booking.created",
        "booking.confirmed",
        "booking.cancelled",
        "booking.extended",
        "vehicle.reserved",
        "vehicle.released",
    ];
    let made = app
        .post(
            "/v1/admin/webhooks?region=EUW",
            Some(&ops_token("olga")),
            &json!({ "url": url, "event_types": types }),
            Some(&Uuid::new_v4().to_string()),
        )
        .await?;
    anyhow::ensure!(made.status.as_u16() == 201, "register: {made:?}");
    let id = made.body["webhook"]["id"]
        .as_str()
        .context("webhook id")?
        .to_owned();
    let secret = WebhookSecret::parse(made.body["secret"].as_str().context("secret")?)?;
    Ok((id, secret))
}

/// Hold, confirm and cancel one booking of `vehicle`: five events.
async fn book_and_cancel(app: &TestApp, vehicle: &str, days: i64) -> TestResult {
    let id = app.confirmed("ann", vehicle, window(days, 2)).await?;
    let cancelled = app
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&token("ann")),
            &Value::Null,
            None,
        )
        .await?;
    anyhow::ensure!(cancelled.status.as_u16() == 200, "cancel: {cancelled:?}");
    Ok(())
}

/// The event ids and sequences of `vehicle` in the outbox, in sequence order.
async fn outbox_of(app: &TestApp, vehicle: &str) -> TestResult<Vec<(String, i64)>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "select event_id, sequence from outbox where partition_key = $1 order by sequence",
    )
    .bind(vehicle)
    .fetch_all(&app.pool)
    .await?;
    Ok(rows.into_iter().map(|(e, s)| (e.to_string(), s)).collect())
}

/// Waits until every event of the outbox about `vehicle` has been answered 2xx.
async fn until_all_delivered(
    receiver: &Receiver,
    app: &TestApp,
    vehicle: &str,
    within: Duration,
) -> TestResult<Vec<(String, i64)>> {
    let deadline = Instant::now() + within;
    loop {
        let expected = outbox_of(app, vehicle).await?;
        let delivered: BTreeSet<String> = receiver
            .about(vehicle)
            .into_iter()
            .filter(|(g, _)| g.status < 300)
            .map(|(g, _)| g.id)
            .collect();
        if !expected.is_empty() && expected.iter().all(|(id, _)| delivered.contains(id)) {
            return Ok(expected);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} events of {vehicle} delivered within {within:?}",
            delivered.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_receiver_that_fails_five_times_then_recovers_gets_every_event_once_in_vehicle_order_every_signature_valid(
    pool: PgPool,
) -> TestResult {
    let receiver = Receiver::start(5).await?;
    let app = webhook_app(pool, &[]).await?;
    let (webhook, secret) = register(&app, &receiver.url).await?;
    let vehicles = [own_vehicle(&app).await?, own_vehicle(&app).await?];
    receiver.fail_for(&vehicles);
    for (k, vehicle) in vehicles.iter().enumerate() {
        book_and_cancel(&app, vehicle, 3 + i64::try_from(k)?).await?;
        book_and_cancel(&app, vehicle, 6 + i64::try_from(k)?).await?;
    }
    let mut events = 0;
    for vehicle in &vehicles {
        let expected =
            until_all_delivered(&receiver, &app, vehicle, Duration::from_secs(30)).await?;
        events += expected.len();
        let sequence_of: BTreeMap<&str, i64> =
            expected.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        let got = receiver.about(vehicle);
        // Every request, failed or not, is signed, recent and names its event.
        for (g, payload) in &got {
            verify(
                std::slice::from_ref(&secret),
                &g.id,
                &g.timestamp,
                &g.signatures,
                &g.body,
                Utc::now(),
            )
            .with_context(|| format!("delivery {} does not verify", g.id))?;
            assert_eq!(payload["event_id"].as_str(), Some(g.id.as_str()));
        }
        // Each event answered 2xx exactly once, and in the vehicle's order.
        let delivered: Vec<i64> = got
            .iter()
            .filter(|(g, _)| g.status < 300)
            .map(|(g, _)| sequence_of.get(g.id.as_str()).copied().unwrap_or(-1))
            .collect();
        let wanted: Vec<i64> = expected.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            delivered, wanted,
            "{vehicle}: deliveries out of order, repeated or foreign"
        );
        assert!(
            wanted.len() >= 10,
            "{vehicle}: only {} events",
            wanted.len()
        );
    }
    // The failures happened (the scenario was not a no-op) and were retried.
    let failed = vehicles
        .iter()
        .flat_map(|v| receiver.about(v))
        .filter(|(g, _)| g.status >= 500)
        .count();
    assert_eq!(failed, 5, "the receiver failed {failed} requests, not 5");
    let log = app
        .get(
            &format!("/v1/admin/webhooks/{webhook}/deliveries?limit=200"),
            Some(&ops_token("olga")),
        )
        .await?;
    assert_eq!(log.status.as_u16(), 200, "{:?}", log.body);
    let items = log.body["items"].as_array().context("items")?;
    let ours: Vec<&Value> = items
        .iter()
        .filter(|d| vehicles.iter().any(|v| d["vehicle_id"] == v.as_str()))
        .collect();
    assert_eq!(ours.len(), events);
    assert!(ours.iter().all(|d| d["state"] == "delivered"));
    let attempts: i64 = ours.iter().filter_map(|d| d["attempts"].as_i64()).sum();
    let retried = ours
        .iter()
        .filter(|d| d["attempts"].as_i64() > Some(1))
        .count();
    assert!(retried >= 1, "no delivery was retried: {ours:?}");
    // One attempt per event, plus one per planted failure: nothing sent twice.
    assert_eq!(
        attempts,
        i64::try_from(events)? + 5,
        "{attempts} attempts for {events} events and 5 failures"
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn during_a_secret_rotation_deliveries_carry_both_signatures(pool: PgPool) -> TestResult {
    let receiver = Receiver::start(0).await?;
    let app = webhook_app(pool, &[]).await?;
    let (webhook, old) = register(&app, &receiver.url).await?;
    let rotated = app
        .post(
            &format!("/v1/admin/webhooks/{webhook}/rotate"),
            Some(&ops_token("olga")),
            &json!({ "overlap_secs": 3600 }),
            Some(&Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(rotated.status.as_u16(), 200, "{:?}", rotated.body);
    let new = WebhookSecret::parse(rotated.body["secret"].as_str().context("secret")?)?;
    assert_ne!(new, old);
    assert!(rotated.body["webhook"]["previous_secret_until"].is_string());
    // The listing never shows a secret.
    let listed = app
        .get("/v1/admin/webhooks?region=EUW", Some(&ops_token("olga")))
        .await?;
    assert!(
        !listed.body.to_string().contains("whsec_"),
        "{}",
        listed.body
    );

    let vehicle = own_vehicle(&app).await?;
    book_and_cancel(&app, &vehicle, 3).await?;
    until_all_delivered(&receiver, &app, &vehicle, Duration::from_secs(30)).await?;
    for (g, _) in receiver.about(&vehicle) {
        assert_eq!(
            g.signatures.split_whitespace().count(),
            2,
            "{}",
            g.signatures
        );
        for secret in [&old, &new] {
            verify(
                std::slice::from_ref(secret),
                &g.id,
                &g.timestamp,
                &g.signatures,
                &g.body,
                Utc::now(),
            )?;
        }
        // A tampered body fails with either secret.
        let mut tampered = g.body.to_vec();
        tampered.push(b' ');
        assert!(verify(
            &[old.clone(), new.clone()],
            &g.id,
            &g.timestamp,
            &g.signatures,
            &tampered,
            Utc::now()
        )
        .is_err());
    }
    // With no overlap, the next deliveries carry the new signature only.
    let rotated = app
        .post(
            &format!("/v1/admin/webhooks/{webhook}/rotate"),
            Some(&ops_token("olga")),
            &json!({ "overlap_secs": 0 }),
            Some(&Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(rotated.status.as_u16(), 200, "{:?}", rotated.body);
    let newest = WebhookSecret::parse(rotated.body["secret"].as_str().context("secret")?)?;
    let before = receiver.about(&vehicle).len();
    book_and_cancel(&app, &vehicle, 5).await?;
    until_all_delivered(&receiver, &app, &vehicle, Duration::from_secs(30)).await?;
    for (g, _) in receiver.about(&vehicle).into_iter().skip(before) {
        assert_eq!(
            g.signatures.split_whitespace().count(),
            1,
            "{}",
            g.signatures
        );
        verify(
            std::slice::from_ref(&newest),
            &g.id,
            &g.timestamp,
            &g.signatures,
            &g.body,
            Utc::now(),
        )?;
        assert!(verify(
            std::slice::from_ref(&new),
            &g.id,
            &g.timestamp,
            &g.signatures,
            &g.body,
            Utc::now()
        )
        .is_err());
    }
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn an_endpoint_failing_past_the_limit_is_disabled_then_enabled_and_a_redelivery_arrives(
    pool: PgPool,
) -> TestResult {
    let receiver = Receiver::start(0).await?;
    receiver.set_failing(true);
    let app = webhook_app(pool, &[("WEBHOOK_DISABLE_AFTER_SECS", "1")]).await?;
    let (webhook, secret) = register(&app, &receiver.url).await?;
    let ops = ops_token("olga");
    let vehicle = own_vehicle(&app).await?;
    let hold = app.hold("ann", &vehicle, window(3, 2)).await?;
    assert_eq!(hold.status.as_u16(), 201, "{:?}", hold.body);

    let deadline = Instant::now() + Duration::from_secs(30);
    let disabled = loop {
        let got = app
            .get(&format!("/v1/admin/webhooks/{webhook}"), Some(&ops))
            .await?;
        if got.body["enabled"] == false {
            break got.body;
        }
        anyhow::ensure!(Instant::now() < deadline, "never disabled: {}", got.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("HTTP 500")),
        "{disabled}"
    );
    // Disabled: nothing more is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = receiver.got().len();
    assert!(sent >= 2, "only {sent} attempts before the disable");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.got().len(),
        sent,
        "attempts went on after the disable"
    );

    // Ops fix the receiver, enable the endpoint and redeliver every delivery of the vehicle.
    receiver.set_failing(false);
    let enabled = app
        .post(
            &format!("/v1/admin/webhooks/{webhook}/enable"),
            Some(&ops),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(enabled.status.as_u16(), 200, "{:?}", enabled.body);
    assert_eq!(enabled.body["enabled"], true);
    let log = app
        .get(
            &format!("/v1/admin/webhooks/{webhook}/deliveries"),
            Some(&ops),
        )
        .await?;
    let ours: Vec<String> = log.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|d| d["vehicle_id"] == vehicle.as_str())
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    assert!(!ours.is_empty(), "{}", log.body);
    for delivery in &ours {
        let again = app
            .post(
                &format!("/v1/admin/webhooks/{webhook}/deliveries/{delivery}/redeliver"),
                Some(&ops),
                &Value::Null,
                Some(&Uuid::new_v4().to_string()),
            )
            .await?;
        assert_eq!(again.status.as_u16(), 202, "{:?}", again.body);
        assert_eq!(again.body["state"], "pending");
    }
    let expected = until_all_delivered(&receiver, &app, &vehicle, Duration::from_secs(30)).await?;
    assert_eq!(expected.len(), ours.len());
    for (g, _) in receiver.about(&vehicle) {
        verify(
            std::slice::from_ref(&secret),
            &g.id,
            &g.timestamp,
            &g.signatures,
            &g.body,
            Utc::now(),
        )?;
    }
    // An unknown delivery is a 404 problem.
    app.post(
        &format!(
            "/v1/admin/webhooks/{webhook}/deliveries/{}/redeliver",
            Uuid::new_v4()
        ),
        Some(&ops),
        &Value::Null,
        None,
    )
    .await?
    .assert_problem(404);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn registrations_pointing_inside_or_malformed_are_refused_naming_the_field(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("WEBHOOK_ALLOW_PRIVATE", "0")]).await?;
    let ops = ops_token("olga");
    let good_types = json!(["booking.created"]);
    for (query, body, field) in [
        (
            "?region=EUW",
            json!({ "url": "http://127.0.0.1:8080/hook", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "http://localhost/hook", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "http://169.254.169.254/latest/meta-data", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "http://[::1]/hook", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "http://10.0.0.1/hook", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "file:///etc/passwd", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "https://user:pw@1.1.1.1/", "event_types": good_types }),
            "url",
        ),
        (
            "?region=EUW",
            json!({ "url": "https://1.1.1.1/hook", "event_types": [] }),
            "event_types",
        ),
        (
            "?region=EUW",
            json!({ "url": "https://1.1.1.1/hook", "event_types": ["booking.exploded"] }),
            "event_types",
        ),
        (
            "",
            json!({ "url": "https://1.1.1.1/hook", "event_types": good_types }),
            "region",
        ),
    ] {
        let reply = app
            .post(
                &format!("/v1/admin/webhooks{query}"),
                Some(&ops),
                &body,
                None,
            )
            .await?;
        reply.assert_problem(422);
        let text = reply.body.to_string();
        assert!(text.contains(field), "{body} → {text}");
    }
    // Unknown fields, an unknown region, another origin's region.
    app.post(
        "/v1/admin/webhooks?region=EUW",
        Some(&ops),
        &json!({ "url": "https://1.1.1.1/hook", "event_types": good_types, "secret": "mine" }),
        None,
    )
    .await?
    .assert_problem(422);
    app.post(
        "/v1/admin/webhooks?region=XYZ",
        Some(&ops),
        &json!({ "url": "https://1.1.1.1/hook", "event_types": good_types }),
        None,
    )
    .await?
    .assert_problem(404);
    // A public address is accepted (nothing is sent: no consumer runs here).
    let made = app
        .post(
            "/v1/admin/webhooks?region=EUW",
            Some(&ops),
            &json!({ "url": "https://1.1.1.1/hook", "event_types": good_types }),
            None,
        )
        .await?;
    assert_eq!(made.status.as_u16(), 201, "{:?}", made.body);
    // Malformed and unknown ids are 404 problems.
    app.get("/v1/admin/webhooks/whk_euw_nothex", Some(&ops))
        .await?
        .assert_problem(404);
    app.get(
        &format!("/v1/admin/webhooks/whk_euw_{}", Uuid::new_v4().simple()),
        Some(&ops),
    )
    .await?
    .assert_problem(404);
    assert_eq!(app.count("webhook_endpoints", "true").await?, 1);
    app.stop().await
}
