//! The waitlist: a line per vehicle for a taken window, an exclusive offer to the first waiter
//! when the window is freed, the next waiter's turn when an offer passes unused or the waiter
//! leaves, and the database refusing everyone else's booking over a live offer, under
//! concurrency.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Seconds an offer lasts where a test waits for one to pass: long enough for the checks made
/// during it (each test fails if its offer ended before a check), short enough to wait out.
const OFFER_SECS: &str = "4";

async fn waitlist_app(pool: PgPool, offer_secs: &str) -> TestResult<TestApp> {
    spawn_app_with(pool, &[("WAITLIST_OFFER_SECS", offer_secs)]).await
}

async fn join(
    app: &TestApp,
    user: &str,
    vehicle: &str,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<Reply> {
    app.post(
        "/v1/waitlist",
        Some(&token(user)),
        &json!({ "vehicle_id": vehicle, "start": start, "end": end }),
        Some(&Uuid::new_v4().to_string()),
    )
    .await
}

/// Joins and returns the entry's id; fails the test unless it is 201.
async fn joined(
    app: &TestApp,
    user: &str,
    vehicle: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<String> {
    let reply = join(app, user, vehicle, window).await?;
    anyhow::ensure!(reply.status.as_u16() == 201, "join as {user}: {reply:?}");
    assert_eq!(reply.body["state"], "waiting");
    Ok(reply.body["id"].as_str().context("entry id")?.to_owned())
}

async fn entry(app: &TestApp, user: &str, id: &str) -> TestResult<Value> {
    let reply = app
        .get(&format!("/v1/waitlist/{id}"), Some(&token(user)))
        .await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "entry {id}: {reply:?}");
    Ok(reply.body)
}

async fn cancel(app: &TestApp, user: &str, booking: &str) -> TestResult {
    let reply = app
        .post(
            &format!("/v1/bookings/{booking}/cancel"),
            Some(&token(user)),
            &Value::Null,
            None,
        )
        .await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "cancel: {reply:?}");
    Ok(())
}

fn offer_until(entry: &Value) -> TestResult<DateTime<Utc>> {
    let raw = entry["offer_until"]
        .as_str()
        .with_context(|| format!("no offer_until in {entry}"))?;
    Ok(DateTime::parse_from_rfc3339(raw)?.with_timezone(&Utc))
}

/// Someone other than the offered waiter, inside the offer: their quote is a 409, and a hold
/// with a quote they got before the window was taken is a 409 naming the waitlist (the
/// database's rule). Fails if the offer had already ended when the answers came (the checks
/// proved nothing).
async fn refused_during_offer(
    app: &TestApp,
    user: &str,
    vehicle: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
    early_quote: &Value,
    offer: &Value,
) -> TestResult {
    let quote = app
        .post(
            "/v1/quotes",
            Some(&token(user)),
            &json!({ "vehicle_id": vehicle, "start": window.0, "end": window.1 }),
            None,
        )
        .await?;
    quote.assert_problem(409);
    let hold = app.hold_with(user, early_quote).await?;
    let answered = Utc::now();
    hold.assert_problem(409);
    let detail = hold.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("waitlist"),
        "{user}'s hold was refused for another reason: {detail}"
    );
    anyhow::ensure!(
        answered < offer_until(offer)?,
        "the offer ended before {user}'s hold was answered: the exclusivity was not tested"
    );
    Ok(())
}

/// The `waitlist.available` events of `vehicle`, in the vehicle's order: (entry id, user).
async fn offers_of(app: &TestApp, vehicle: &str) -> TestResult<Vec<(String, String)>> {
    let rows: Vec<(Value,)> = sqlx::query_as(
        "select payload from outbox where partition_key = $1 and topic = 'waitlist.available'
          order by sequence",
    )
    .bind(vehicle)
    .fetch_all(&app.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p,)| {
            (
                p["waitlist"]["id"].as_str().unwrap_or_default().to_owned(),
                p["waitlist"]["user_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect())
}

/// Polls `id` until its state is `state`.
async fn until_state(
    app: &TestApp,
    user: &str,
    id: &str,
    state: &str,
    within: Duration,
) -> TestResult<Value> {
    let deadline = Instant::now() + within;
    loop {
        let e = entry(app, user, id).await?;
        if e["state"] == state {
            return Ok(e);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{id} is {} after {within:?}, not {state}",
            e["state"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn three_waiters_the_first_gets_the_exclusive_offer_and_books_the_second_waits_its_turn_the_third_gets_a_lapsed_offer(
    pool: PgPool,
) -> TestResult {
    let app = waitlist_app(pool, OFFER_SECS).await?;
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let w = window(3, 2);
    // Quotes got while the window was free (a quote is checked again only by the hold).
    let early = [
        app.quote("wes", &vehicle, w).await?,
        app.quote("wim", &vehicle, w).await?,
    ];
    let taken = app.confirmed("olav", &vehicle, w).await?;

    // Three waiters in line, in order.
    let first = joined(&app, "wan", &vehicle, w).await?;
    let second = joined(&app, "wes", &vehicle, w).await?;
    let third = joined(&app, "wim", &vehicle, w).await?;
    let mut positions = Vec::new();
    for (user, id) in [("wan", &first), ("wes", &second), ("wim", &third)] {
        positions.push(entry(&app, user, id).await?["position"].as_i64());
    }
    assert_eq!(positions, vec![Some(1), Some(2), Some(3)]);
    assert!(offers_of(&app, &vehicle).await?.is_empty());

    // The booking is cancelled: the first waiter, and only they, get the offer at once.
    cancel(&app, "olav", &taken).await?;
    let offered = entry(&app, "wan", &first).await?;
    assert_eq!(offered["state"], "offered", "{offered}");
    assert_eq!(entry(&app, "wes", &second).await?["state"], "waiting");
    assert_eq!(entry(&app, "wim", &third).await?["state"], "waiting");
    assert_eq!(
        offers_of(&app, &vehicle).await?,
        vec![(first.clone(), "wan".to_owned())]
    );

    // The second cannot take it during the offer; the first can.
    refused_during_offer(&app, "wes", &vehicle, w, &early[0], &offered).await?;
    let hold = app.hold("wan", &vehicle, w).await?;
    assert_eq!(hold.status.as_u16(), 201, "{hold:?}");
    let wans = hold.body["id"].as_str().context("booking id")?.to_owned();
    assert_eq!(entry(&app, "wan", &first).await?["state"], "booked");

    // The first lets it go again: now the second's turn (the first is served), with the same
    // exclusivity against the third.
    cancel(&app, "wan", &wans).await?;
    let offered = entry(&app, "wes", &second).await?;
    assert_eq!(offered["state"], "offered", "{offered}");
    refused_during_offer(&app, "wim", &vehicle, w, &early[1], &offered).await?;

    // The second lets the offer pass: it lapses and the third gets the window.
    until_state(&app, "wes", &second, "lapsed", Duration::from_secs(15)).await?;
    let offered = until_state(&app, "wim", &third, "offered", Duration::from_secs(5)).await?;
    assert!(offer_until(&offered)? > Utc::now());
    let hold = app.hold("wim", &vehicle, w).await?;
    assert_eq!(hold.status.as_u16(), 201, "{hold:?}");
    assert_eq!(entry(&app, "wim", &third).await?["state"], "booked");

    // One event per offer, in the line's order.
    let users: Vec<String> = offers_of(&app, &vehicle)
        .await?
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    assert_eq!(users, vec!["wan", "wes", "wim"]);
    assert_eq!(app.overlapping_pairs().await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_withdrawn_offer_moves_the_line_at_once_and_only_the_owner_withdraws(
    pool: PgPool,
) -> TestResult {
    let app = waitlist_app(pool, OFFER_SECS).await?;
    let vehicle = app.vehicles("EUW").await?[1].clone();
    let w = window(4, 3);
    let taken = app.confirmed("olav", &vehicle, w).await?;
    // A waiter for a window inside the taken one, and one for all of it.
    let inner = (w.0 + chrono::Duration::hours(1), w.1);
    let first = joined(&app, "wan", &vehicle, inner).await?;
    let second = joined(&app, "wes", &vehicle, w).await?;

    // Bad requests: a free window, the same wait twice, a malformed vehicle or window.
    let free = join(&app, "wes", &vehicle, window(9, 2)).await?;
    free.assert_problem(409);
    assert!(
        free.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("free"),
        "{free:?}"
    );
    join(&app, "wan", &vehicle, w).await?.assert_problem(409);
    let malformed = join(&app, "wes", "veh_nope", w).await?;
    malformed.assert_problem(422);
    assert_eq!(malformed.body["field"], "vehicle_id", "{malformed:?}");
    let backwards = join(&app, "wes", &vehicle, (w.1, w.0)).await?;
    backwards.assert_problem(422);
    assert_eq!(app.count("waitlist_entries", "true").await?, 2);

    cancel(&app, "olav", &taken).await?;
    assert_eq!(entry(&app, "wan", &first).await?["state"], "offered");
    // The second's window overlaps the first's offer: they wait.
    assert_eq!(entry(&app, "wes", &second).await?["state"], "waiting");

    // Nobody else sees or withdraws the entry; ops may read it, not withdraw it.
    app.get(&format!("/v1/waitlist/{first}"), Some(&token("eve")))
        .await?
        .assert_problem(404);
    assert_eq!(
        app.get(&format!("/v1/waitlist/{first}"), Some(&ops_token("olga")))
            .await?
            .status
            .as_u16(),
        200
    );
    for who in [token("eve"), ops_token("olga")] {
        app.delete(&format!("/v1/waitlist/{first}"), Some(&who), None)
            .await?
            .assert_problem(404);
    }
    assert_eq!(entry(&app, "wan", &first).await?["state"], "offered");

    // The owner leaves: the offer goes to the second in the same transaction, no sweep.
    let key = Uuid::new_v4().to_string();
    let left = app
        .delete(
            &format!("/v1/waitlist/{first}"),
            Some(&token("wan")),
            Some(&key),
        )
        .await?;
    assert_eq!(left.status.as_u16(), 200, "{left:?}");
    assert_eq!(left.body["state"], "withdrawn");
    assert_eq!(entry(&app, "wes", &second).await?["state"], "offered");
    // A retry with the key replays; without it the entry is settled (409).
    let again = app
        .delete(
            &format!("/v1/waitlist/{first}"),
            Some(&token("wan")),
            Some(&key),
        )
        .await?;
    assert_eq!((again.status.as_u16(), &again.body), (200, &left.body));
    app.delete(&format!("/v1/waitlist/{first}"), Some(&token("wan")), None)
        .await?
        .assert_problem(409);
    app.stop().await
}

/// Eight users other than the waiter, each with a quote got while `w` was free, keep trying to
/// hold it while `release` frees it; (holds won, holds refused by the offer).
async fn race(
    app: &std::sync::Arc<TestApp>,
    quotes: Vec<(String, Value)>,
    release: impl std::future::Future<Output = TestResult>,
) -> TestResult<(usize, usize)> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut racers = Vec::new();
    for (user, quote) in quotes {
        let (app, stop) = (app.clone(), stop.clone());
        racers.push(tokio::spawn(async move {
            let (mut won, mut by_offer) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let hold = app.hold_with(&user, &quote).await?;
                let detail = hold.body["detail"].as_str().unwrap_or_default();
                match hold.status.as_u16() {
                    201 => won += 1,
                    409 if detail.contains("waitlist") => by_offer += 1,
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            TestResult::Ok((won, by_offer))
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut won, mut by_offer) = (0, 0);
    for racer in racers {
        let (w, o) = racer.await??;
        won += w;
        by_offer += o;
    }
    Ok((won, by_offer))
}

/// Quotes of eight racers for `w` of `vehicle`, got while it is free.
async fn racer_quotes(
    app: &TestApp,
    vehicle: &str,
    w: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<Vec<(String, Value)>> {
    let mut quotes = Vec::new();
    for k in 0..8 {
        let user = format!("racer{k}");
        let quote = app.quote(&user, vehicle, w).await?;
        quotes.push((user, quote));
    }
    Ok(quotes)
}

#[sqlx::test(migrations = "../migrations")]
async fn holds_racing_the_release_never_take_the_window_from_the_offered_waiter(
    pool: PgPool,
) -> TestResult {
    // An offer far longer than the race, so it is live throughout.
    let app = std::sync::Arc::new(waitlist_app(pool, "60").await?);
    let vehicle = app.vehicles("EUW").await?[2].clone();
    let w = window(5, 2);
    let quotes = racer_quotes(&app, &vehicle, w).await?;
    let taken = app.confirmed("olav", &vehicle, w).await?;
    let first = joined(&app, "wan", &vehicle, w).await?;
    let (won, by_offer) = race(&app, quotes, cancel(&app, "olav", &taken)).await?;
    assert_eq!(won, 0, "another user took the offered window");
    // Not a no-op: holds did arrive after the release, and the offer refused them.
    assert!(by_offer > 0, "no hold reached the window during the offer");
    let offered = entry(&app, "wan", &first).await?;
    assert_eq!(offered["state"], "offered", "{offered}");
    let hold = app.hold("wan", &vehicle, w).await?;
    assert_eq!(hold.status.as_u16(), 201, "{hold:?}");
    assert_eq!(app.overlapping_pairs().await?, 0);
    std::sync::Arc::try_unwrap(app)
        .map_err(|_| anyhow::anyhow!("a racer still holds the app"))?
        .stop()
        .await
}

/// The race above catches a missing rule: without the database's refusal of bookings over a
/// live offer (the trigger dropped), a racer takes the offered window.
#[sqlx::test(migrations = "../migrations")]
async fn without_the_offer_rule_the_race_gives_the_window_away(pool: PgPool) -> TestResult {
    sqlx::query("drop trigger bookings_waitlist_offer on bookings")
        .execute(&pool)
        .await?;
    let app = std::sync::Arc::new(waitlist_app(pool, "60").await?);
    let vehicle = app.vehicles("EUW").await?[3].clone();
    let w = window(5, 2);
    let quotes = racer_quotes(&app, &vehicle, w).await?;
    let taken = app.confirmed("olav", &vehicle, w).await?;
    let first = joined(&app, "wan", &vehicle, w).await?;
    let (won, _) = race(&app, quotes, cancel(&app, "olav", &taken)).await?;
    assert_eq!(won, 1, "the planted hole was not caught");
    // The offer was made all the same: the waiter lost a window that was theirs.
    assert_eq!(entry(&app, "wan", &first).await?["state"], "offered");
    std::sync::Arc::try_unwrap(app)
        .map_err(|_| anyhow::anyhow!("a racer still holds the app"))?
        .stop()
        .await
}

/// A bay of its own with two vehicles of one class (copies of a demo vehicle): (bay, class,
/// vehicles).
async fn bay_with_two(app: &TestApp) -> TestResult<(Uuid, String, Vec<String>)> {
    let bay = Uuid::new_v4();
    sqlx::query(
        "insert into parking_bays (id, region, name, city, lat, lon, timezone, capacity)
         select $1, region, 'Waitlist test bay', city, lat, lon, timezone, 10
           from parking_bays where region = 'EUW' order by id limit 1",
    )
    .bind(bay)
    .execute(&app.pool)
    .await?;
    let mut vehicles = Vec::new();
    let mut class = String::new();
    for _ in 0..2 {
        let id = Uuid::new_v4();
        class = sqlx::query_scalar(
            "insert into vehicles (id, region, bay_id, class, make, model, seats, fuel, plate)
             select $1, region, $2, class, make, model, seats, fuel, 'WL-' || left($1::text, 8)
               from vehicles where region = 'EUW' and status = 'active' order by id limit 1
             returning class",
        )
        .bind(id)
        .bind(bay)
        .fetch_one(&app.pool)
        .await?;
        vehicles.push(format!("veh_euw_{}", id.simple()));
    }
    Ok((bay, class, vehicles))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_wait_for_a_class_at_a_bay_is_offered_whichever_of_its_cars_is_freed(
    pool: PgPool,
) -> TestResult {
    let app = waitlist_app(pool, OFFER_SECS).await?;
    let (bay, class, cars) = bay_with_two(&app).await?;
    let w = window(6, 2);
    let body = |extra: Value| {
        let mut b =
            json!({ "class": class, "bay_id": bay, "region": "EUW", "start": w.0, "end": w.1 });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    let api = &app;
    let post = |b: Value| async move {
        api.post("/v1/waitlist", Some(&token("cleo")), &b, None)
            .await
    };
    // One car still free: book it instead (409 naming it).
    let first = app.confirmed("olav", &cars[0], w).await?;
    let free = post(body(json!({}))).await?;
    free.assert_problem(409);
    assert!(
        free.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&cars[1]),
        "{free:?}"
    );
    // Bad bodies, each naming its field; none writes.
    for (bad, field) in [
        (body(json!({ "vehicle_id": cars[0] })), "vehicle_id"),
        (body(json!({ "class": "rocket" })), "class"),
        (
            json!({ "class": class, "start": w.0, "end": w.1 }),
            "bay_id",
        ),
        (
            json!({ "class": class, "bay_id": bay, "start": w.0, "end": w.1 }),
            "region",
        ),
        (json!({ "start": w.0, "end": w.1 }), "vehicle_id"),
    ] {
        let reply = post(bad.clone()).await?;
        reply.assert_problem(422);
        assert_eq!(reply.body["field"], field, "{bad}: {reply:?}");
    }
    post(body(json!({ "bay_id": Uuid::new_v4() })))
        .await?
        .assert_problem(404);
    assert_eq!(app.count("waitlist_entries", "true").await?, 0);

    // Both cars taken: in line.
    let second = app.confirmed("olga", &cars[1], w).await?;
    let joined = post(body(json!({}))).await?;
    assert_eq!(joined.status.as_u16(), 201, "{joined:?}");
    assert_eq!(joined.body["position"], 1);
    assert!(joined.body.get("vehicle_id").is_none(), "{joined:?}");
    let id = joined.body["id"].as_str().context("entry id")?.to_owned();

    // The second car is freed: it is offered, to the waiter only.
    cancel(&app, "olga", &second).await?;
    let offered = entry(&app, "cleo", &id).await?;
    assert_eq!(offered["state"], "offered", "{offered}");
    assert_eq!(offered["offered_vehicle_id"], cars[1].as_str());
    let (payload,): (Value,) = sqlx::query_as(
        "select payload from outbox where topic = 'waitlist.available' and partition_key = $1",
    )
    .bind(&cars[1])
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(payload["waitlist"]["class"], class.as_str(), "{payload}");
    assert_eq!(payload["waitlist"]["bay_id"], bay.to_string(), "{payload}");
    let others = app
        .post(
            "/v1/quotes",
            Some(&token("oscar")),
            &json!({ "vehicle_id": cars[1], "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    others.assert_problem(409);
    let hold = app.hold("cleo", &cars[1], w).await?;
    assert_eq!(hold.status.as_u16(), 201, "{hold:?}");
    assert_eq!(entry(&app, "cleo", &id).await?["state"], "booked");
    // The first car's booking was never touched.
    let kept = app
        .get(&format!("/v1/bookings/{first}"), Some(&token("olav")))
        .await?;
    assert_eq!(kept.body["status"], "CONFIRMED", "{kept:?}");
    app.stop().await
}
