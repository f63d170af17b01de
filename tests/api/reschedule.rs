//! Rescheduling (issue 18 item 7): `POST /v{1,2}/bookings/{id}/reschedule` moves a hold or a
//! confirmed booking to another window of its vehicle in one update of its own row — never two
//! windows held, never none — refused with 409 when the vehicle is taken, repriced with today's
//! difference between the windows plus the cancellation fee for a late move.

use std::time::Instant;

use chrono::{DateTime, Duration, DurationRound, Utc};
use e2e::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

type Window = (DateTime<Utc>, DateTime<Utc>);

fn uuid_of(id: &str) -> TestResult<uuid::Uuid> {
    Ok(uuid::Uuid::parse_str(
        id.rsplit('_').next().unwrap_or_default(),
    )?)
}

async fn reschedule(
    app: &TestApp,
    version: &str,
    user: &str,
    id: &str,
    (start, end): Window,
    key: Option<&str>,
) -> TestResult<Reply> {
    app.post(
        &format!("/{version}/bookings/{id}/reschedule"),
        Some(&token(user)),
        &json!({ "start": start, "end": end }),
        key,
    )
    .await
}

/// The booking's window as stored.
async fn stored_window(app: &TestApp, id: &str) -> TestResult<Window> {
    Ok(
        sqlx::query_as("select lower(period), upper(period) from bookings where id = $1")
            .bind(uuid_of(id)?)
            .fetch_one(&app.pool)
            .await?,
    )
}

fn at(v: &Value) -> Option<DateTime<Utc>> {
    serde_json::from_value(v.clone()).ok()
}

/// The booking's `reschedule` history rows, oldest first: (from, to) as the rows record them.
async fn moves(app: &TestApp, id: &str) -> TestResult<Vec<(Window, Window)>> {
    let rows: Vec<(Value,)> = sqlx::query_as(
        "select details from booking_history where booking_id = $1 and event = 'reschedule' order by id",
    )
    .bind(uuid_of(id)?)
    .fetch_all(&app.pool)
    .await?;
    rows.into_iter()
        .map(|(d,)| {
            let w = |v: &Value| -> TestResult<Window> {
                Ok((
                    at(&v["start"]).ok_or_else(|| anyhow::anyhow!("start in {d}"))?,
                    at(&v["end"]).ok_or_else(|| anyhow::anyhow!("end in {d}"))?,
                ))
            };
            Ok((w(&d["from"])?, w(&d["to"])?))
        })
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_confirmed_booking_moves_to_a_free_window_at_once_and_pays_the_difference(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[2].clone();
    let old = window(5, 2);
    let new = window(9, 3);
    let id = app.confirmed("rosa", &vehicle, old).await?;
    let before = app
        .get(&format!("/v2/bookings/{id}"), Some(&token("rosa")))
        .await?;
    let key = uuid::Uuid::new_v4().to_string();
    let moved = reschedule(&app, "v2", "rosa", &id, new, Some(&key)).await?;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.body);
    assert_eq!(at(&moved.body["window"]["start"]), Some(new.0));
    assert_eq!(at(&moved.body["window"]["end"]), Some(new.1));
    assert_eq!(moved.body["status"], "CONFIRMED");
    let r = &moved.body["reschedules"][0];
    assert_eq!(at(&r["from"]["start"]), Some(old.0), "{r}");
    assert_eq!(at(&r["to"]["end"]), Some(new.1), "{r}");
    // Three hours cost more than two at today's rates; three days ahead, no fee.
    let difference = r["difference"]["minor"].as_i64().unwrap_or_default();
    assert!(difference > 0, "{r}");
    assert_eq!(r["fee"]["minor"], 0, "{r}");
    assert_eq!(
        moved.body["price"]["minor"].as_i64(),
        before.body["price"]["minor"]
            .as_i64()
            .map(|p| p + difference)
    );
    assert_eq!(stored_window(&app, &id).await?, new);
    assert_eq!(moves(&app, &id).await?, vec![(old, new)]);
    assert_eq!(
        app.count(
            "outbox",
            &format!(
                "topic = 'booking.rescheduled' and aggregate_id = '{}' and payload->>'reason' = 'rescheduled'",
                uuid_of(&id)?
            )
        )
        .await?,
        1
    );

    // The event names the window the booking left, for consumers of availability.
    let (event_booking, previous): (Value, Value) = sqlx::query_as(
        "select payload->'booking', payload->'previous_window' from outbox
          where topic = 'booking.rescheduled' and aggregate_id = $1",
    )
    .bind(uuid_of(&id)?)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(
        (at(&previous["start"]), at(&previous["end"])),
        (Some(old.0), Some(old.1))
    );
    assert_eq!(
        (at(&event_booking["start"]), at(&event_booking["end"])),
        (Some(new.0), Some(new.1))
    );

    // A retry with the key answers the same and moves nothing twice.
    let again = reschedule(&app, "v2", "rosa", &id, new, Some(&key)).await?;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    assert_eq!(again.body, moved.body);
    assert_eq!(moves(&app, &id).await?.len(), 1);

    // The old window is free for anyone at once, the new one is taken.
    let other = app.hold("sam", &vehicle, old).await?;
    assert_eq!(other.status.as_u16(), 201, "{}", other.body);
    let taken = app
        .post(
            "/v1/quotes",
            Some(&token("sam")),
            &json!({ "vehicle_id": vehicle, "start": new.0, "end": new.1 }),
            None,
        )
        .await?;
    taken.assert_problem(409);
    // v1 shows the new window too.
    let v1 = app
        .get(&format!("/v1/bookings/{id}"), Some(&token("rosa")))
        .await?;
    assert_eq!(at(&v1.body["start"]), Some(new.0));
    assert_eq!(app.overlapping_pairs().await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_move_onto_a_taken_window_or_its_turnaround_is_409_and_the_booking_keeps_its_window(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[4].clone();
    let class: String = sqlx::query_scalar("select class from vehicles where id = $1")
        .bind(uuid_of(&vehicle)?)
        .fetch_one(&app.pool)
        .await?;
    // Bookings of this class keep the car free for an hour after them.
    sqlx::query(
        "update vehicle_config set turnaround_minutes = 60 where region = 'EUW' and class = $1",
    )
    .bind(&class)
    .execute(&app.pool)
    .await?;
    let mine = window(5, 2);
    let theirs = window(8, 2);
    let id = app.confirmed("tia", &vehicle, mine).await?;
    app.confirmed("ugo", &vehicle, theirs).await?;
    let h = Duration::hours(1);
    for (what, w) in [
        ("over their booking", (theirs.0 + h, theirs.1 + h)),
        (
            "inside their turnaround",
            (theirs.1 + Duration::minutes(30), theirs.1 + h * 3),
        ),
        (
            "ending inside it, before it",
            (theirs.0 - h * 2, theirs.0 + Duration::minutes(1)),
        ),
    ] {
        let reply = reschedule(&app, "v1", "tia", &id, w, None).await?;
        reply.assert_problem(409);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("keeps its window")),
            "{what}: {}",
            reply.body
        );
        assert_eq!(stored_window(&app, &id).await?, mine, "{what}");
    }
    assert!(moves(&app, &id).await?.is_empty());
    assert_eq!(
        app.count(
            "outbox",
            &format!(
                "topic = 'booking.rescheduled' and aggregate_id = '{}'",
                uuid_of(&id)?
            )
        )
        .await?,
        0
    );
    // Right after their turnaround is free; so is a window overlapping its own old one (the
    // row replaces its own window, it does not compete with it).
    let after = (theirs.1 + h, theirs.1 + h * 3);
    let moved = reschedule(&app, "v1", "tia", &id, after, None).await?;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.body);
    let overlapping_self = (after.0 + h, after.1 + h);
    let moved = reschedule(&app, "v1", "tia", &id, overlapping_self, None).await?;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.body);
    assert_eq!(
        moves(&app, &id).await?,
        vec![(mine, after), (after, overlapping_self)]
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_late_move_pays_the_cancellation_fee_and_a_hold_moves_free_keeping_its_expiry(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUN").await?;
    // Ten hours ahead: inside the policy's 24 h, the late tier (25 %).
    let start = (Utc::now() + Duration::hours(10))
        .duration_trunc(Duration::minutes(1))
        .map_err(anyhow::Error::new)?;
    let soon = (start, start + Duration::hours(2));
    let id = app.confirmed("vera", &vehicles[1], soon).await?;
    let price: i64 = sqlx::query_scalar("select price_minor from bookings where id = $1")
        .bind(uuid_of(&id)?)
        .fetch_one(&app.pool)
        .await?;
    let later = (soon.0 + Duration::days(3), soon.1 + Duration::days(3));
    let moved = reschedule(&app, "v2", "vera", &id, later, None).await?;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.body);
    let r = &moved.body["reschedules"][0];
    // 25 %, rounded half-even as the policy documents (a half-up expectation failed whenever
    // the price made the fee end in exactly .5, e.g. 33,962 → 8,490.5 → 8,490).
    let fee = i64::try_from(domain::money::round_div_half_even(
        i128::from(price) * 2_500,
        10_000,
    ))?;
    assert_eq!(r["fee"]["minor"].as_i64(), Some(fee), "{r}");
    let difference = r["difference"]["minor"].as_i64().unwrap_or(i64::MIN);
    assert_eq!(
        moved.body["price"]["minor"].as_i64(),
        Some((price + difference).max(0) + fee)
    );

    // A hold moves free and keeps its expiry; it can be confirmed after.
    let hold = app.hold("walt", &vehicles[2], soon).await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);
    let hid = hold.body["id"].as_str().unwrap_or_default().to_owned();
    let moved = reschedule(&app, "v2", "walt", &hid, later, None).await?;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.body);
    assert_eq!(moved.body["status"], "RESERVING");
    assert_eq!(moved.body["reschedules"][0]["fee"]["minor"], 0);
    assert_eq!(
        at(&moved.body["hold_expires_at"]),
        at(&hold.body["hold_expires_at"])
    );
    let confirm = app
        .post(
            &format!("/v1/bookings/{hid}/confirm"),
            Some(&token("walt")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(confirm.status.as_u16(), 200, "{}", confirm.body);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_moves_are_precise_problems_and_change_nothing(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[5].clone();
    let mine = window(4, 2);
    let id = app.confirmed("xena", &vehicle, mine).await?;
    let path = format!("/v1/bookings/{id}/reschedule");
    let (s, e) = window(6, 2);
    let m = Duration::minutes;
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "end before start",
            json!({ "start": e, "end": s }),
            422,
            Some("end"),
        ),
        (
            "not on a minute",
            json!({ "start": s + Duration::seconds(7), "end": e }),
            422,
            Some("start"),
        ),
        (
            "the same window",
            json!({ "start": mine.0, "end": mine.1 }),
            422,
            Some("start"),
        ),
        (
            "in the past",
            json!({ "start": s - Duration::days(8), "end": e - Duration::days(8) }),
            422,
            Some("start"),
        ),
        (
            "too long",
            json!({ "start": s, "end": s + Duration::days(40) }),
            422,
            Some("start"),
        ),
        ("no end", json!({ "start": s }), 422, None),
        (
            "an unknown field",
            json!({ "start": s, "end": e, "vehicle_id": vehicle }),
            422,
            None,
        ),
        (
            "not a time",
            json!({ "start": "tomorrow", "end": e }),
            422,
            None,
        ),
        (
            "a starting minute of 61",
            json!({ "start": "2031-01-01T10:61:00Z", "end": e + m(1) }),
            422,
            None,
        ),
    ];
    for (what, body, status, field) in cases {
        let reply = app.post(&path, Some(&token("xena")), &body, None).await?;
        assert_eq!(reply.status.as_u16(), status, "{what}: {}", reply.body);
        reply.assert_problem(status);
        if let Some(field) = field {
            assert_eq!(reply.body["field"], field, "{what}: {}", reply.body);
        }
    }
    // Not JSON at all.
    let raw = app
        .post_raw(
            &path,
            Some(&token("xena")),
            "application/json",
            b"{\"start\":".to_vec(),
        )
        .await?;
    assert!(matches!(raw.status.as_u16(), 400 | 422), "{}", raw.body);
    raw.assert_problem(raw.status.as_u16());
    // Someone else's booking, and a booking that does not exist: 404 alike.
    reschedule(&app, "v1", "yann", &id, (s, e), None)
        .await?
        .assert_problem(404);
    reschedule(
        &app,
        "v1",
        "xena",
        "bkg_euw_00000000000000000000000000000000",
        (s, e),
        None,
    )
    .await?
    .assert_problem(404);
    reschedule(&app, "v1", "xena", "not-a-booking", (s, e), None)
        .await?
        .assert_problem(404);
    assert_eq!(stored_window(&app, &id).await?, mine);
    // A cancelled booking cannot move.
    let cancel = app
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&token("xena")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(cancel.status.as_u16(), 200, "{}", cancel.body);
    let reply = reschedule(&app, "v1", "xena", &id, (s, e), None).await?;
    reply.assert_problem(409);
    assert_eq!(stored_window(&app, &id).await?, mine);
    assert!(moves(&app, &id).await?.is_empty());
    app.stop().await
}

/// 50 bookings of one vehicle all try to move into the same free window at once: exactly one
/// moves; every booking has exactly one window throughout, read back from its history (each
/// move's `from` is the window it had, its `to` the one it has) and the table.
#[sqlx::test(migrations = "../migrations")]
async fn fifty_concurrent_moves_into_one_free_window_one_succeeds_and_no_booking_loses_its_window(
    pool: PgPool,
) -> TestResult {
    const N: i64 = 50;
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[7].clone();
    let base = window(2, 2).0;
    let mut bookings = Vec::new();
    for i in 0..N {
        let w = (
            base + Duration::hours(3 * i),
            base + Duration::hours(3 * i + 2),
        );
        let user = format!("mover-{i}");
        let id = app.confirmed(&user, &vehicle, w).await?;
        bookings.push((user, id, w));
    }
    let target = window(20, 2);
    let t0 = Instant::now();
    let replies = join_all(bookings.iter().map(|(user, id, _)| {
        let app = &app;
        async move {
            let sent = t0.elapsed();
            let reply = reschedule(app, "v1", user, id, target, None).await;
            (sent, t0.elapsed(), reply)
        }
    }))
    .await;
    // The moves really raced: most were sent before the first answer came back.
    let first_done = replies.iter().map(|(_, d, _)| *d).min().unwrap_or_default();
    let in_flight = replies.iter().filter(|(s, _, _)| *s < first_done).count();
    assert!(
        in_flight >= 10,
        "only {in_flight} moves were in flight at once"
    );
    let mut winners = Vec::new();
    for ((_, id, w), (_, _, reply)) in bookings.iter().zip(replies) {
        let reply = reply?;
        match reply.status.as_u16() {
            200 => winners.push(id.clone()),
            409 => {
                reply.assert_problem(409);
            }
            other => anyhow::bail!("{id}: {other} {}", reply.body),
        }
        // From history and the table: the winner's one move is from its window to the target,
        // and it holds the target; everyone else never moved and holds its own window.
        let history = moves(&app, id).await?;
        let now = stored_window(&app, id).await?;
        if reply.status.as_u16() == 200 {
            assert_eq!(history, vec![(*w, target)], "{id}");
            assert_eq!(now, target, "{id}");
        } else {
            assert!(history.is_empty(), "{id}: {history:?}");
            assert_eq!(now, *w, "{id}");
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(app.overlapping_pairs().await?, 0);
    assert_eq!(
        app.count("booking_history", "event = 'reschedule'").await?,
        1
    );
    assert_eq!(
        app.count("outbox", "topic = 'booking.rescheduled'").await?,
        1
    );
    app.stop().await
}
