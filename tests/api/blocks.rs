//! Maintenance blocks (issue 18 item 6): ops take a vehicle out of service for a window
//! (`/v1/admin/vehicles/{id}/blocks`). A block and an occupying booking never overlap, in either
//! order of arrival and under concurrency (both sides take the vehicle's write lock; the
//! database refuses either overlap); a block over bookings is a 409 naming them, or with
//! `force` cancels them with a full refund and their events; search and quotes hide the
//! vehicle for the window; ending a block gives the vehicle back.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use e2e::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

type Window = (DateTime<Utc>, DateTime<Utc>);

fn blocks_path(vehicle: &str) -> String {
    format!("/v1/admin/vehicles/{vehicle}/blocks")
}

async fn block(
    app: &TestApp,
    vehicle: &str,
    (start, end): Window,
    reason: &str,
    force: bool,
    key: Option<&str>,
) -> TestResult<Reply> {
    app.post(
        &blocks_path(vehicle),
        Some(&ops_token("ops-olga")),
        &json!({ "start": start, "end": end, "reason": reason, "force": force }),
        key,
    )
    .await
}

async fn quote_status(app: &TestApp, vehicle: &str, w: Window) -> TestResult<u16> {
    let reply = app
        .post(
            "/v1/quotes",
            Some(&token("quin")),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    Ok(reply.status.as_u16())
}

/// Occupying bookings overlapping an active block (their occupied ranges, turnaround
/// included): 0, or a booking and a block share the vehicle. Computed from both tables, not
/// from either rule.
async fn bookings_over_blocks(app: &TestApp) -> TestResult<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from bookings k join vehicle_blocks b
            on b.vehicle_id = k.vehicle_id and b.ended_at is null
           and tstzrange(lower(k.period), upper(k.period) + make_interval(mins => k.turnaround_minutes), '[)') && b.period
         where k.status in ('RESERVING','CONFIRMED','IN_PROGRESS')",
    )
    .fetch_one(&app.pool)
    .await?)
}

async fn status_of(app: &TestApp, booking: &str) -> TestResult<String> {
    Ok(
        sqlx::query_scalar("select status from bookings where id = $1")
            .bind(uuid_of(booking)?)
            .fetch_one(&app.pool)
            .await?,
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn a_block_over_a_confirmed_booking_is_409_naming_it_and_force_cancels_it_with_a_full_refund(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[4].clone();
    let (start, end) = window(3, 2);
    let booking = app.confirmed("uma", &vehicle, (start, end)).await?;
    let price: i64 = sqlx::query_scalar("select price_minor from bookings where id = $1")
        .bind(uuid_of(&booking)?)
        .fetch_one(&app.pool)
        .await?;
    let h = Duration::hours(1);
    let over = (start - h, end + h);

    // Without force: 409 naming the booking; nothing written.
    let refused = block(&app, &vehicle, over, "brake pads", false, None).await?;
    refused.assert_problem(409);
    assert_eq!(
        refused.body["type"], "/problems/bookings-in-the-way",
        "{}",
        refused.body
    );
    let named = refused.body["bookings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(named.len(), 1, "{}", refused.body);
    assert_eq!(named[0]["id"], booking.as_str());
    assert_eq!(named[0]["status"], "CONFIRMED");
    assert_eq!(app.count("vehicle_blocks", "true").await?, 0);
    assert_eq!(status_of(&app, &booking).await?, "CONFIRMED");

    // With force: the block is made, the booking cancelled with everything refunded.
    let key = uuid::Uuid::new_v4().to_string();
    let forced = block(&app, &vehicle, over, "brake pads", true, Some(&key)).await?;
    assert_eq!(forced.status.as_u16(), 201, "{}", forced.body);
    let block_id = forced.body["block"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(forced.body["block"]["state"], "scheduled");
    assert_eq!(forced.body["block"]["reason"], "brake pads");
    assert_eq!(forced.body["block"]["created_by"], "ops-olga");
    let cancelled = &forced.body["cancelled_bookings"];
    assert_eq!(cancelled[0]["id"], booking.as_str(), "{cancelled}");
    assert_eq!(cancelled[0]["refund_minor"].as_i64(), Some(price));
    // A retry with the key answers the same and cancels nothing twice.
    let again = block(&app, &vehicle, over, "brake pads", true, Some(&key)).await?;
    assert_eq!(again.status.as_u16(), 201, "{}", again.body);
    assert_eq!(again.body, forced.body);
    assert_eq!(app.count("vehicle_blocks", "true").await?, 1);

    // The owner sees the cancellation, with no fee, and why.
    let mine = app
        .get(&format!("/v2/bookings/{booking}"), Some(&token("uma")))
        .await?;
    assert_eq!(mine.body["status"], "CANCELLED", "{}", mine.body);
    let (fee, reason): (Option<i64>, Option<String>) = sqlx::query_as(
        "select k.cancellation_fee_minor, h.reason from bookings k
           join booking_history h on h.booking_id = k.id and h.to_status = 'CANCELLED'
          where k.id = $1",
    )
    .bind(uuid_of(&booking)?)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(
        (fee, reason.as_deref()),
        (Some(0), Some("vehicle_out_of_service"))
    );
    // Events: the booking's cancellation and release, the vehicle's block, in one vehicle order.
    let booking_uuid = uuid_of(&booking)?.to_string();
    for topic in ["booking.cancelled", "vehicle.released"] {
        assert_eq!(
            app.count(
                "outbox",
                &format!("topic = '{topic}' and aggregate_id = '{booking_uuid}' and payload->>'reason' = 'vehicle_out_of_service'")
            )
            .await?,
            1,
            "{topic}"
        );
    }
    let blocked: Value = sqlx::query_scalar(
        "select payload from outbox where topic = 'vehicle.blocked' and aggregate_id = $1::uuid",
    )
    .bind(&block_id)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(
        blocked["block"]["vehicle_id"],
        vehicle.as_str(),
        "{blocked}"
    );
    assert_eq!(blocked["block"]["reason"], "brake pads");
    let order: Vec<String> =
        sqlx::query_scalar("select topic from outbox where partition_key = $1 order by sequence")
            .bind(&vehicle)
            .fetch_all(&app.pool)
            .await?;
    assert_eq!(
        order[order.len() - 3..],
        ["booking.cancelled", "vehicle.released", "vehicle.blocked"],
        "{order:?}"
    );

    // Hidden from search and quotes for the window, and not bookable; free outside it.
    assert!(!app.search_lists(&vehicle, (start, end)).await?);
    assert_eq!(quote_status(&app, &vehicle, (start, end)).await?, 409);
    let later = window(6, 2);
    assert!(app.search_lists(&vehicle, later).await?);
    assert_eq!(quote_status(&app, &vehicle, later).await?, 201);

    // Ending it (before it began: cancelled) gives the vehicle back at once.
    let ended = app
        .delete(
            &format!("{}/{block_id}", blocks_path(&vehicle)),
            Some(&ops_token("ops-olga")),
            None,
        )
        .await?;
    assert_eq!(ended.status.as_u16(), 200, "{}", ended.body);
    assert_eq!(ended.body["state"], "cancelled");
    assert_eq!(ended.body["ended_by"], "ops-olga");
    assert_eq!(
        app.count(
            "outbox",
            &format!("topic = 'vehicle.unblocked' and aggregate_id = '{block_id}'")
        )
        .await?,
        1
    );
    assert!(app.search_lists(&vehicle, (start, end)).await?);
    let hold = app.hold("vera", &vehicle, (start, end)).await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);
    // Ending it again is a 409; the list keeps it for the record.
    app.delete(
        &format!("{}/{block_id}", blocks_path(&vehicle)),
        Some(&ops_token("ops-olga")),
        None,
    )
    .await?
    .assert_problem(409);
    let list = app
        .get(&blocks_path(&vehicle), Some(&ops_token("ops-olga")))
        .await?;
    assert_eq!(list.status.as_u16(), 200, "{}", list.body);
    assert_eq!(list.body["items"][0]["id"], block_id.as_str());
    assert_eq!(list.body["items"][0]["state"], "cancelled");
    assert_eq!(bookings_over_blocks(&app).await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_booking_arriving_after_a_block_is_refused_and_a_moved_block_frees_its_old_window(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[5].clone();
    let (start, end) = window(4, 4);
    // A quote taken while the window was free: the hold with it meets the database's rule,
    // not only the quote's advisory check.
    let early = app
        .quote("walt", &vehicle, (start, start + Duration::hours(1)))
        .await?;
    let made = block(&app, &vehicle, (start, end), "inspection", false, None).await?;
    assert_eq!(made.status.as_u16(), 201, "{}", made.body);
    let id = made.body["block"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let hold = app.hold_with("walt", &early).await?;
    hold.assert_problem(409);
    assert!(
        hold.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("out of service")),
        "{}",
        hold.body
    );
    // A booking before the block cannot be extended into it, nor another moved onto it.
    let before = app
        .confirmed(
            "walt",
            &vehicle,
            (start - Duration::hours(3), start - Duration::hours(1)),
        )
        .await?;
    for (action, body) in [
        ("extend", json!({ "end": start + Duration::hours(1) })),
        (
            "reschedule",
            json!({ "start": start + Duration::hours(1), "end": start + Duration::hours(2) }),
        ),
    ] {
        let reply = app
            .post(
                &format!("/v1/bookings/{before}/{action}"),
                Some(&token("walt")),
                &body,
                None,
            )
            .await?;
        reply.assert_problem(409);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("out of service")),
            "{action}: {}",
            reply.body
        );
    }
    // A second block over the first: 409; one right after it: fine.
    block(
        &app,
        &vehicle,
        (end - Duration::hours(1), end + Duration::hours(1)),
        "tyres",
        false,
        None,
    )
    .await?
    .assert_problem(409);
    let next = block(
        &app,
        &vehicle,
        (end, end + Duration::hours(1)),
        "tyres",
        false,
        None,
    )
    .await?;
    assert_eq!(next.status.as_u16(), 201, "{}", next.body);

    // Moving the block two days later frees its old window and takes the new one.
    let moved_to = (start + Duration::days(2), end + Duration::days(2));
    let moved = app
        .put(
            &format!("{}/{id}", blocks_path(&vehicle)),
            Some(&ops_token("ops-olga")),
            &json!({ "start": moved_to.0, "end": moved_to.1, "reason": "inspection, moved" }),
            None,
        )
        .await?;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.body);
    assert_eq!(moved.body["block"]["reason"], "inspection, moved");
    let previous: Value = sqlx::query_scalar(
        "select payload->'previous_window' from outbox
          where topic = 'vehicle.blocked' and aggregate_id = $1::uuid order by sequence desc limit 1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(
        serde_json::from_value::<DateTime<Utc>>(previous["start"].clone())?,
        start
    );
    assert_eq!(app.hold_with("walt", &early).await?.status.as_u16(), 201);
    assert!(!app.search_lists(&vehicle, moved_to).await?);
    assert_eq!(bookings_over_blocks(&app).await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_trip_under_way_is_never_cancelled_even_with_force(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[6].clone();
    let (start, end) = window(2, 3);
    let trip = app.confirmed("xavi", &vehicle, (start, end)).await?;
    // The trip is under way (set in SQL: starting needs the clock at its start).
    sqlx::query("update bookings set status = 'IN_PROGRESS' where id = $1")
        .bind(uuid_of(&trip)?)
        .execute(&app.pool)
        .await?;
    let refused = block(&app, &vehicle, (start, end), "recall", true, None).await?;
    refused.assert_problem(409);
    assert_eq!(refused.body["bookings"][0]["id"], trip.as_str());
    assert_eq!(refused.body["bookings"][0]["status"], "IN_PROGRESS");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("under way")),
        "{}",
        refused.body
    );
    assert_eq!(status_of(&app, &trip).await?, "IN_PROGRESS");
    assert_eq!(app.count("vehicle_blocks", "true").await?, 0);
    // After the trip's end (its turnaround included) the block is fine.
    let after = block(
        &app,
        &vehicle,
        (end, end + Duration::hours(2)),
        "recall",
        true,
        None,
    )
    .await?;
    assert_eq!(after.status.as_u16(), 201, "{}", after.body);
    assert_eq!(after.body["cancelled_bookings"], json!([]));
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_block_requests_are_precise_problems_and_change_nothing(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[8].clone();
    let path = blocks_path(&vehicle);
    let ops = ops_token("ops-olga");
    let (s, e) = window(3, 2);
    let m = Duration::minutes;
    let body = json!({ "start": s, "end": e, "reason": "glass" });
    // Not ops: 403 on every route.
    app.post(&path, Some(&token("mallory")), &body, None)
        .await?
        .assert_problem(403);
    app.get(&path, Some(&token("mallory")))
        .await?
        .assert_problem(403);
    let some_block = uuid::Uuid::now_v7();
    app.put(
        &format!("{path}/{some_block}"),
        Some(&token("mallory")),
        &body,
        None,
    )
    .await?
    .assert_problem(403);
    app.delete(
        &format!("{path}/{some_block}"),
        Some(&token("mallory")),
        None,
    )
    .await?
    .assert_problem(403);
    app.post(&path, None, &body, None)
        .await?
        .assert_problem(401);
    // No such vehicle: malformed or unknown.
    for bad in [
        "veh_euw_nothex",
        "car-1",
        "veh_euw_00000000000000000000000000000000",
    ] {
        app.post(&blocks_path(bad), Some(&ops), &body, None)
            .await?
            .assert_problem(404);
    }
    // Bodies refused naming the field.
    let long = "x".repeat(501);
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "ends in the past",
            json!({ "start": s - Duration::days(5), "end": e - Duration::days(5), "reason": "glass" }),
            Some("end"),
        ),
        (
            "inverted",
            json!({ "start": e, "end": s, "reason": "glass" }),
            Some("end"),
        ),
        (
            "not on a minute",
            json!({ "start": s + Duration::seconds(7), "end": e, "reason": "glass" }),
            Some("start"),
        ),
        (
            "an empty reason",
            json!({ "start": s, "end": e, "reason": "  " }),
            Some("reason"),
        ),
        (
            "a long reason",
            json!({ "start": s, "end": e, "reason": long }),
            Some("reason"),
        ),
        (
            "a control character",
            json!({ "start": s, "end": e, "reason": "glass\u{1b}[2J" }),
            Some("reason"),
        ),
        ("no reason", json!({ "start": s, "end": e }), None),
        (
            "an unknown field",
            json!({ "start": s, "end": e, "reason": "glass", "vehicle": 1 }),
            None,
        ),
        (
            "force not a bool",
            json!({ "start": s, "end": e, "reason": "glass", "force": "yes" }),
            None,
        ),
        (
            "not a time",
            json!({ "start": "monday", "end": e, "reason": "glass" }),
            None,
        ),
    ];
    for (what, body, field) in cases {
        let reply = app.post(&path, Some(&ops), &body, None).await?;
        reply.assert_problem(422);
        if let Some(field) = field {
            assert_eq!(reply.body["field"], field, "{what}: {}", reply.body);
        }
    }
    let raw = app
        .post_raw(
            &path,
            Some(&ops),
            "application/json",
            b"{\"start\":".to_vec(),
        )
        .await?;
    assert!(matches!(raw.status.as_u16(), 400 | 422), "{}", raw.body);
    raw.assert_problem(raw.status.as_u16());
    app.get(&format!("{path}?limit=0"), Some(&ops))
        .await?
        .assert_problem(422);
    // Changing or ending a block that does not exist: 404.
    app.put(&format!("{path}/{some_block}"), Some(&ops), &body, None)
        .await?
        .assert_problem(404);
    app.delete(&format!("{path}/{some_block}"), Some(&ops), None)
        .await?
        .assert_problem(404);
    app.delete(&format!("{path}/not-a-uuid"), Some(&ops), None)
        .await?
        .assert_problem(404);
    // A key reused with another body: 422, and the first answer stands.
    let key = uuid::Uuid::new_v4().to_string();
    let first = app.post(&path, Some(&ops), &body, Some(&key)).await?;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    let other = json!({ "start": s + m(60), "end": e + m(60), "reason": "glass" });
    app.post(&path, Some(&ops), &other, Some(&key))
        .await?
        .assert_problem(422);
    assert_eq!(app.count("vehicle_blocks", "true").await?, 1);
    // A block that is over cannot be changed.
    let id = first.body["block"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    sqlx::query(
        "update vehicle_blocks
            set period = tstzrange(date_trunc('minute', now()) - interval '2 hours',
                                   date_trunc('minute', now()) - interval '1 hour', '[)')
          where id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await?;
    app.put(&format!("{path}/{id}"), Some(&ops), &body, None)
        .await?
        .assert_problem(409);
    app.stop().await
}

/// Holds and a forced block race for one vehicle (a block that lost the race to a hold it had
/// not locked is sent again); then more holds, quoted before the block, arrive inside its
/// window. Returns (the block's status, holds that landed inside it and outlived it, bookings
/// over blocks). A hold of either wave counts as landed when it was made (201) inside the
/// block's window and is not cancelled at the end: a forced block cancels every hold it meets,
/// so one still standing was made after the block. Which wave lands depends on when the block
/// wins the race (first-wave holds made after it take the windows the late ones ask for), so
/// the count takes both.
async fn race_holds_against_a_block(app: &TestApp) -> TestResult<(u16, usize, i64)> {
    let vehicle = app.vehicles("EUW").await?[9].clone();
    let base = window(3, 1).0;
    let h = Duration::hours(1);
    let block_window = (base, base + h * 12);
    // 30 one-hour windows from 9 h before the block to 9 h after its start: 12 inside it.
    let mut first = Vec::new();
    let mut first_inside = Vec::new();
    for i in -9..21 {
        let w = (base + h * i, base + h * (i + 1));
        let user = format!("racer{}", i + 9);
        let quote = app.quote(&user, &vehicle, w).await?;
        first.push((user, quote));
        first_inside.push(w.0 >= block_window.0 && w.1 <= block_window.1);
    }
    // Half-hour windows inside the block, quoted now, held after it is made.
    let mut second = Vec::new();
    for i in 0..8 {
        let start = base + h * i + Duration::minutes(30);
        let w = (start, start + Duration::minutes(30));
        let user = format!("late{i}");
        let quote = app.quote(&user, &vehicle, w).await?;
        second.push((user, quote));
    }
    let t0 = Instant::now();
    let (block_reply, holds) = tokio::join!(
        async {
            let sent = t0.elapsed();
            let reply = block(app, &vehicle, block_window, "recall", true, None).await;
            (sent, t0.elapsed(), reply)
        },
        join_all(first.iter().map(|(user, q)| async move {
            let sent = t0.elapsed();
            let reply = app.hold_with(user, q).await;
            (sent, t0.elapsed(), reply)
        }))
    );
    let (block_sent, block_done, block_reply) = block_reply;
    let mut block_reply = block_reply?;
    // The race really happened: holds were in flight while the block was.
    let overlapping = holds
        .iter()
        .filter(|(sent, done, _)| *sent < block_done && *done > block_sent)
        .count();
    anyhow::ensure!(
        overlapping >= 10,
        "only {overlapping} holds were in flight with the block"
    );
    let mut made_inside = Vec::new();
    for ((_, _, reply), inside) in holds.iter().zip(&first_inside) {
        let reply = reply.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            matches!(reply.status.as_u16(), 201 | 409),
            "hold: {} {}",
            reply.status,
            reply.body
        );
        if *inside && reply.status.as_u16() == 201 {
            made_inside.push(reply.body["id"].as_str().context("booking id")?.to_owned());
        }
    }
    // A forced block loses the race only to a hold it had not locked yet (409, to retry).
    if block_reply.status.as_u16() == 409 {
        block_reply = block(app, &vehicle, block_window, "recall", true, None).await?;
    }
    for (user, q) in &second {
        let reply = app.hold_with(user, q).await?;
        match reply.status.as_u16() {
            201 => made_inside.push(reply.body["id"].as_str().context("booking id")?.to_owned()),
            409 => {}
            other => anyhow::bail!("late hold: {other} {}", reply.body),
        }
    }
    let mut landed = 0;
    for id in &made_inside {
        if status_of(app, id).await? != "CANCELLED" {
            landed += 1;
        }
    }
    Ok((
        block_reply.status.as_u16(),
        landed,
        bookings_over_blocks(app).await?,
    ))
}

#[sqlx::test(migrations = "../migrations")]
async fn holds_racing_a_forced_block_never_overlap_it(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let (status, landed, over) = race_holds_against_a_block(&app).await?;
    assert_eq!(status, 201, "the forced block is made");
    assert_eq!(landed, 0, "holds inside the block after it was made");
    assert_eq!(over, 0, "bookings overlapping a block");
    app.stop().await
}

/// The checker above, shown to catch what it looks for: without the booking side's rule
/// (`bookings_not_blocked` dropped), the holds arriving after the block land inside it.
#[sqlx::test(migrations = "../migrations")]
async fn planted_without_the_booking_side_rule_holds_land_inside_the_block_and_are_seen(
    pool: PgPool,
) -> TestResult {
    sqlx::query("drop trigger bookings_not_blocked on bookings")
        .execute(&pool)
        .await?;
    let app = spawn_app(pool).await?;
    let (status, landed, over) = race_holds_against_a_block(&app).await?;
    assert_eq!(status, 201, "the block must be made for the plant to show");
    assert!(landed > 0, "no hold landed inside the block");
    assert!(over > 0, "the overlap went unseen");
    app.stop().await
}

/// The database's rules alone, with the code bypassed: two transactions, one writing a block
/// and one moving a booking onto it, in both orders. The second waits for the first's vehicle
/// lock and, once it commits, is refused by the rule of its side (SQLSTATE 23P01).
#[sqlx::test(migrations = "../migrations")]
async fn the_database_serialises_blocks_and_bookings_of_a_vehicle_and_refuses_the_second(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[10].clone();
    let vehicle_uuid = uuid_of(&vehicle)?;
    let booking = uuid_of(&app.confirmed("yuri", &vehicle, window(3, 2)).await?)?;
    let insert_block = move |w: Window| {
        sqlx::query(
            "insert into vehicle_blocks (id, region, vehicle_id, period, reason, created_by, created_at, updated_at)
             values ($1, 'EUW', $2, tstzrange($3, $4, '[)'), 'sql', 'test', now(), now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(vehicle_uuid)
        .bind(w.0)
        .bind(w.1)
    };
    let move_booking = move |w: Window| {
        sqlx::query("update bookings set period = tstzrange($2, $3, '[)') where id = $1")
            .bind(booking)
            .bind(w.0)
            .bind(w.1)
    };
    // Block first: the booking's move waits for the block's commit, then is refused.
    let w = window(5, 2);
    let refused = second_waits_then_fails(&app.pool, insert_block(w), move_booking(w)).await?;
    assert_eq!(
        refused,
        ("23P01".to_owned(), "bookings_not_blocked".to_owned())
    );
    // Booking first: the block waits for the move's commit, then is refused.
    let w = window(8, 2);
    let refused = second_waits_then_fails(&app.pool, move_booking(w), insert_block(w)).await?;
    assert_eq!(
        refused,
        (
            "23P01".to_owned(),
            "vehicle_blocks_over_bookings".to_owned()
        )
    );
    assert_eq!(bookings_over_blocks(&app).await?, 0);
    app.stop().await
}

type Statement = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs `first` in a transaction left open, then `second` in another: `second` must still be
/// waiting 300 ms later (the vehicle's lock), and fail once `first` commits. Its SQLSTATE and
/// constraint.
async fn second_waits_then_fails(
    pool: &PgPool,
    first: Statement,
    second: Statement,
) -> TestResult<(String, String)> {
    let mut one = pool.begin().await?;
    first.execute(&mut *one).await?;
    let mut two = pool.begin().await?;
    let waiting = tokio::spawn(async move {
        let result = second.execute(&mut *two).await;
        let _ = two.rollback().await;
        result
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    anyhow::ensure!(
        !waiting.is_finished(),
        "the second statement did not wait for the first's lock"
    );
    one.commit().await?;
    match waiting.await? {
        Err(sqlx::Error::Database(db)) => Ok((
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().unwrap_or_default().to_owned(),
        )),
        Err(other) => Err(other.into()),
        Ok(done) => anyhow::bail!("the second statement succeeded: {done:?}"),
    }
}
