//! Turnaround buffers (issue 18 item 5): a class's `turnaround_minutes` keeps a vehicle
//! unbookable for that long after each booking, enforced by the exclusion constraint on the
//! bookings' occupied ranges (window + the buffer the booking was made with), seen by search
//! and quotes, set through the audited pricing admin, and never invalidating bookings made
//! before a change.

use chrono::{DateTime, Duration, Utc};
use e2e::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

type Window = (DateTime<Utc>, DateTime<Utc>);

/// The class of a vehicle id (`veh_euw_<uuid>`).
async fn class_of(app: &TestApp, vehicle: &str) -> TestResult<String> {
    let id = vehicle.rsplit('_').next().unwrap_or_default();
    Ok(
        sqlx::query_scalar("select class from vehicles where id = $1::uuid")
            .bind(id)
            .fetch_one(&app.pool)
            .await?,
    )
}

/// PUTs the class's vehicle config with its current floor and ceiling and `body`'s extra
/// fields, as ops.
async fn put_config(app: &TestApp, class: &str, extra: Value) -> TestResult<Reply> {
    let (floor, ceiling): (i64, i64) = sqlx::query_as(
        "select floor_minor, ceiling_minor from vehicle_config where region = 'EUW' and class = $1",
    )
    .bind(class)
    .fetch_one(&app.pool)
    .await?;
    let mut body = json!({ "floor_minor": floor, "ceiling_minor": ceiling });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let req = app
        .client
        .put(format!(
            "{}/v1/admin/pricing/EUW/vehicle-config/{class}",
            app.base
        ))
        .bearer_auth(ops_token("ops-tara"))
        .json(&body);
    Reply::read(app.execute(req).await?).await
}

async fn set_turnaround(app: &TestApp, class: &str, minutes: i64) -> TestResult {
    let reply = put_config(app, class, json!({ "turnaround_minutes": minutes })).await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "put config: {reply:?}");
    Ok(())
}

/// A quote's status for `vehicle` over `w` (201, or the problem's status).
async fn quote_status(app: &TestApp, user: &str, vehicle: &str, w: Window) -> TestResult<u16> {
    let reply = app
        .post(
            "/v1/quotes",
            Some(&token(user)),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    Ok(reply.status.as_u16())
}

/// Pairs of occupying bookings of one vehicle where the later starts before the earlier's end
/// plus its buffer: 0, or the buffers were not kept. Computed from the windows, not from the
/// constraint's `occupied` column.
async fn pairs_closer_than_their_buffer(app: &TestApp) -> TestResult<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from bookings a join bookings b
            on a.vehicle_id = b.vehicle_id and a.id <> b.id
           and lower(b.period) >= lower(a.period)
           and lower(b.period) < upper(a.period) + make_interval(mins => a.turnaround_minutes)
         where a.status in ('RESERVING','CONFIRMED','IN_PROGRESS')
           and b.status in ('RESERVING','CONFIRMED','IN_PROGRESS')",
    )
    .fetch_one(&app.pool)
    .await?)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_class_buffer_keeps_the_vehicle_free_that_long_after_each_booking_in_search_quotes_and_holds(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[3].clone();
    let class = class_of(&app, &vehicle).await?;
    set_turnaround(&app, &class, 30).await?;
    // The change is audited, before and after.
    let (before, after): (Value, Value) = sqlx::query_as(
        "select before, after from pricing_audit where entity = 'vehicle_config' and entity_key = $1",
    )
    .bind(&class)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(before["turnaround_minutes"], 0, "{before}");
    assert_eq!(after["turnaround_minutes"], 30, "{after}");

    let (start, end) = window(3, 2);
    let h = Duration::hours(1);
    let m = Duration::minutes;
    // A quote for the slot right after the booking-to-be, taken while it is still free: the
    // hold with it must meet the constraint, not only the quote's advisory check.
    let right_after = (end, end + h);
    let early_quote = app.quote("vic", &vehicle, right_after).await?;
    app.confirmed("uma", &vehicle, (start, end)).await?;
    let stored: (i32, String) = sqlx::query_as(
        "select turnaround_minutes, occupied::text from bookings where vehicle_id = $1::uuid",
    )
    .bind(vehicle.rsplit('_').next().unwrap_or_default())
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(stored.0, 30, "the booking keeps its class's buffer");

    // Inside the buffer: search hides the vehicle, a quote is refused, a hold with a quote
    // taken before is refused by the exclusion constraint.
    assert!(!app.search_lists(&vehicle, right_after).await?);
    assert_eq!(quote_status(&app, "vic", &vehicle, right_after).await?, 409);
    let held = app.hold_with("vic", &early_quote).await?;
    held.assert_problem(409);
    assert!(
        held.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("turnaround")),
        "{}",
        held.body
    );
    let late = (end + m(29), end + m(29) + h);
    assert!(!app.search_lists(&vehicle, late).await?);
    assert_eq!(quote_status(&app, "vic", &vehicle, late).await?, 409);
    // Before the booking, a new booking's own buffer must end by its start.
    let before_it = (start - h - m(20), start - m(20));
    assert_eq!(quote_status(&app, "wes", &vehicle, before_it).await?, 409);

    // Exactly the buffer after, or before: free, listed, bookable.
    let after_buffer = (end + m(30), end + m(30) + h);
    assert!(app.search_lists(&vehicle, after_buffer).await?);
    let ok = app.hold("vic", &vehicle, after_buffer).await?;
    assert_eq!(ok.status.as_u16(), 201, "{}", ok.body);
    let before_buffer = (start - h - m(30), start - m(30));
    let ok = app.hold("wes", &vehicle, before_buffer).await?;
    assert_eq!(ok.status.as_u16(), 201, "{}", ok.body);
    assert_eq!(app.overlapping_pairs().await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_holds_on_back_to_back_windows_keep_the_buffer_between_every_two(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[4].clone();
    set_turnaround(&app, &class_of(&app, &vehicle).await?, 45).await?;
    // Ten back-to-back hours: without a buffer all ten fit; with 45 minutes no two
    // neighbours can both be held.
    let (start, _) = window(4, 1);
    let mut quotes = Vec::new();
    for i in 0..10 {
        let s = start + Duration::hours(i);
        let user = format!("racer-{i}");
        let q = app
            .quote(&user, &vehicle, (s, s + Duration::hours(1)))
            .await?;
        quotes.push((user, q));
    }
    let replies = join_all(quotes.iter().map(|(user, q)| app.hold_with(user, q))).await;
    let mut created = 0;
    for reply in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            201 => created += 1,
            409 => {
                reply.assert_problem(409);
            }
            other => anyhow::bail!("a hold answered {other}: {}", reply.body),
        }
    }
    assert!((1..=5).contains(&created), "{created} holds of 10");
    // Every two occupying bookings of the vehicle are at least 45 minutes apart.
    let buffers: Vec<i32> =
        sqlx::query_scalar("select turnaround_minutes from bookings where status <> 'FAILED'")
            .fetch_all(&app.pool)
            .await?;
    assert!(buffers.iter().all(|m| *m == 45), "{buffers:?}");
    assert_eq!(pairs_closer_than_their_buffer(&app).await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_buffer_change_keeps_existing_bookings_and_applies_to_new_ones_and_extensions(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[5].clone();
    let class = class_of(&app, &vehicle).await?;
    let (start, end) = window(5, 2);
    let h = Duration::hours(1);
    // Back to back under no buffer.
    let first = app.confirmed("yan", &vehicle, (start, end)).await?;
    let second = app.confirmed("zoe", &vehicle, (end, end + h)).await?;
    // A 60-minute buffer now: both stay as they were, with the buffer they were made with.
    set_turnaround(&app, &class, 60).await?;
    for (id, user) in [(&first, "yan"), (&second, "zoe")] {
        let got = app
            .get(&format!("/v1/bookings/{id}"), Some(&token(user)))
            .await?;
        assert_eq!(got.body["status"], "CONFIRMED", "{}", got.body);
    }
    let buffers: Vec<i32> = sqlx::query_scalar(
        "select turnaround_minutes from bookings where status = 'CONFIRMED' order by lower(period)",
    )
    .fetch_all(&app.pool)
    .await?;
    assert_eq!(buffers, vec![0, 0]);
    // A new booking after `second` is followed by the new buffer: the next one must wait 60
    // minutes after it, but may start right at `second`'s end (made under 0).
    let third_window = (end + h, end + h * 2);
    let third = app.confirmed("ada", &vehicle, third_window).await?;
    assert_eq!(
        quote_status(&app, "bo", &vehicle, (end + h * 2, end + h * 3)).await?,
        409
    );
    assert_eq!(
        quote_status(&app, "bo", &vehicle, (end + h * 3, end + h * 4)).await?,
        201
    );
    // `second` (made under 0) may not grow into `third`.
    let ext = app
        .post(
            &format!("/v2/bookings/{second}/extend"),
            Some(&token("zoe")),
            &json!({ "end": end + h + Duration::minutes(10) }),
            None,
        )
        .await?;
    ext.assert_problem(409);
    // An extension is followed by its booking's buffer: `third` (60) may not grow to within
    // 60 minutes of a booking after it.
    app.confirmed("cy", &vehicle, (end + h * 4, end + h * 5))
        .await?;
    let ext = app
        .post(
            &format!("/v2/bookings/{third}/extend"),
            Some(&token("ada")),
            &json!({ "end": end + h * 3 + Duration::minutes(30) }),
            None,
        )
        .await?;
    ext.assert_problem(409);
    let ext = app
        .post(
            &format!("/v2/bookings/{third}/extend"),
            Some(&token("ada")),
            &json!({ "end": end + h * 3 }),
            None,
        )
        .await?;
    assert_eq!(ext.status.as_u16(), 200, "{}", ext.body);
    assert_eq!(app.overlapping_pairs().await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_buffer_outside_0_to_1440_minutes_is_422_naming_it_and_absent_keeps_it(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    for bad in [json!(-1), json!(1441), json!("30"), json!(1.5)] {
        let reply = put_config(&app, "van", json!({ "turnaround_minutes": bad })).await?;
        reply.assert_problem(422);
        assert!(
            reply.body["field"] == "turnaround_minutes"
                || reply.body["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("turnaround_minutes")),
            "{bad}: {}",
            reply.body
        );
    }
    assert_eq!(app.count("pricing_audit", "true").await?, 0);
    set_turnaround(&app, "van", 20).await?;
    // A PUT without the field keeps the buffer.
    let reply = put_config(&app, "van", json!({})).await?;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    let kept: i32 = sqlx::query_scalar(
        "select turnaround_minutes from vehicle_config where region = 'EUW' and class = 'van'",
    )
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(kept, 20);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_hundred_concurrent_holds_inside_an_existing_bookings_buffers_are_all_refused(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[2].clone();
    set_turnaround(&app, &class_of(&app, &vehicle).await?, 60).await?;
    let (start, end) = window(4, 3);
    // 100 quotes taken while the vehicle is free: 50 windows ending inside the hour before
    // `start`, 50 starting inside the hour after `end` (an hour each).
    let mut quotes = Vec::new();
    for i in 0..100i64 {
        let minute = Duration::minutes(i % 50 + 1);
        let w = if i < 50 {
            (
                start - Duration::hours(2) + minute,
                start - Duration::hours(1) + minute,
            )
        } else {
            (
                end + minute - Duration::minutes(1),
                end + minute + Duration::minutes(59),
            )
        };
        let user = format!("crowd-{i}");
        let q = app.quote(&user, &vehicle, w).await?;
        quotes.push((user, q));
    }
    // Then the booking whose buffers they all fall into.
    app.confirmed("owner", &vehicle, (start, end)).await?;
    let replies = join_all(quotes.iter().map(|(user, q)| app.hold_with(user, q))).await;
    for reply in replies {
        reply?.assert_problem(409);
    }
    let occupying: i64 = app
        .count(
            "bookings",
            "status in ('RESERVING','CONFIRMED','IN_PROGRESS')",
        )
        .await?;
    assert_eq!(
        occupying, 1,
        "only the existing booking occupies the vehicle"
    );
    assert_eq!(pairs_closer_than_their_buffer(&app).await?, 0);
    app.stop().await
}
