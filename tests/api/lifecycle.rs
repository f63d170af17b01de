//! The booking lifecycle through the API: v1 and v2 bodies, cancel fees, extend pricing,
//! start and complete.

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn v1_and_v2_both_answer_with_their_own_body_shapes(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUN").await?[2].clone();
    let w = window(3, 5);
    let q2 = app
        .post(
            "/v2/quotes",
            Some(&token("mia")),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    assert_eq!(q2.status.as_u16(), 201, "{}", q2.body);
    assert_eq!(q2.body["total"]["currency"], "SEK");
    let lines = q2.body["breakdown"].as_array().cloned().unwrap_or_default();
    let sum: i64 = lines
        .iter()
        .filter_map(|l| l["amount_minor"].as_i64())
        .sum();
    assert_eq!(
        Some(sum),
        q2.body["total"]["minor"].as_i64(),
        "breakdown sums to total"
    );

    let hold = app
        .post(
            "/v2/bookings",
            Some(&token("mia")),
            &json!({ "quote_token": q2.body["quote_token"] }),
            None,
        )
        .await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);
    assert_eq!(hold.body["status"], "RESERVING");
    assert_eq!(
        hold.body["price"], q2.body["total"],
        "the booking has the quote's price"
    );
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("bkg_eun_"));

    let v1 = app
        .get(&format!("/v1/bookings/{id}"), Some(&token("mia")))
        .await?;
    assert_eq!(v1.status.as_u16(), 200);
    let minor = q2.body["total"]["minor"].as_i64().unwrap_or_default();
    assert_eq!(
        v1.body["price"],
        format!("{}.{:02}", minor / 100, minor % 100)
    );
    assert_eq!(v1.body["currency"], "SEK");
    assert!(v1.body.get("breakdown").is_none());

    let list1 = app
        .get("/v1/bookings?status=RESERVING", Some(&token("mia")))
        .await?;
    assert_eq!(list1.body["items"].as_array().map(Vec::len), Some(1));
    let list2 = app.get("/v2/bookings", Some(&token("mia"))).await?;
    assert_eq!(list2.body["items"][0]["id"], id.as_str());
    let none = app
        .get("/v1/bookings?status=CONFIRMED", Some(&token("mia")))
        .await?;
    assert_eq!(none.body["items"].as_array().map(Vec::len), Some(0));
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn cancelling_shows_a_fee_by_how_close_the_start_is(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUW").await?;
    // Far ahead: free.
    let far = app.confirmed("nora", &vehicles[4], window(5, 2)).await?;
    let c = app
        .post(
            &format!("/v2/bookings/{far}/cancel"),
            Some(&token("nora")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(c.status.as_u16(), 200, "{}", c.body);
    assert_eq!(c.body["status"], "CANCELLED");
    assert_eq!(c.body["cancellation"]["tier"], "free");
    assert_eq!(c.body["cancellation"]["fee"]["minor"], 0);
    // Starting in about an hour: the very-late fee, and fee + refund = price.
    let now = chrono::Utc::now();
    let start = now + chrono::Duration::minutes(61)
        - chrono::Duration::seconds(i64::from(
            now.format("%S").to_string().parse::<u32>().unwrap_or(0),
        ));
    let start = start - chrono::Duration::nanoseconds(i64::from(start.timestamp_subsec_nanos()));
    let soon = app
        .confirmed(
            "nora",
            &vehicles[5],
            (start, start + chrono::Duration::hours(2)),
        )
        .await?;
    let c = app
        .post(
            &format!("/v2/bookings/{soon}/cancel"),
            Some(&token("nora")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(c.status.as_u16(), 200, "{}", c.body);
    assert_eq!(c.body["cancellation"]["tier"], "very_late");
    let fee = c.body["cancellation"]["fee"]["minor"]
        .as_i64()
        .unwrap_or_default();
    let refund = c.body["cancellation"]["refund"]["minor"]
        .as_i64()
        .unwrap_or_default();
    assert!(fee > 0);
    assert_eq!(Some(fee + refund), c.body["price"]["minor"].as_i64());
    // A cancelled booking cannot be cancelled again.
    let again = app
        .post(
            &format!("/v2/bookings/{soon}/cancel"),
            Some(&token("nora")),
            &Value::Null,
            None,
        )
        .await?;
    again.assert_problem(409);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn extending_prices_the_extra_time_only_when_the_vehicle_is_free(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[6].clone();
    let (start, end) = window(6, 2);
    let id = app.confirmed("omar", &vehicle, (start, end)).await?;
    let before = app
        .get(&format!("/v2/bookings/{id}"), Some(&token("omar")))
        .await?;
    let ext = app
        .post(
            &format!("/v2/bookings/{id}/extend"),
            Some(&token("omar")),
            &json!({ "end": end + chrono::Duration::hours(2) }),
            None,
        )
        .await?;
    assert_eq!(ext.status.as_u16(), 200, "{}", ext.body);
    let added = ext.body["extensions"][0]["amount_minor"]
        .as_i64()
        .unwrap_or_default();
    assert!(added > 0, "two more hours cost something");
    assert_eq!(
        ext.body["price"]["minor"].as_i64(),
        before.body["price"]["minor"].as_i64().map(|p| p + added)
    );
    // An end that is not later is a 422 naming the field.
    let back = app
        .post(
            &format!("/v2/bookings/{id}/extend"),
            Some(&token("omar")),
            &json!({ "end": start + chrono::Duration::hours(1) }),
            None,
        )
        .await?;
    back.assert_problem(422);
    assert_eq!(back.body["field"], "end");
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_booking_starts_near_its_start_and_completes(pool: PgPool) -> TestResult {
    let app = spawn_app_with(pool, &[]).await?;
    let vehicles = app.vehicles("EUN").await?;
    // Too early to start: three days ahead.
    let later = app.confirmed("pia", &vehicles[4], window(3, 2)).await?;
    let early = app
        .post(
            &format!("/v1/bookings/{later}/start"),
            Some(&token("pia")),
            &Value::Null,
            None,
        )
        .await?;
    early.assert_problem(409);
    // Starting in ten minutes: may start now.
    let now = chrono::Utc::now();
    let start =
        chrono::DateTime::from_timestamp((now.timestamp() / 60 + 10) * 60, 0).unwrap_or(now);
    let soon = app
        .confirmed(
            "pia",
            &vehicles[5],
            (start, start + chrono::Duration::hours(1)),
        )
        .await?;
    let started = app
        .post(
            &format!("/v1/bookings/{soon}/start"),
            Some(&token("pia")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(started.body["status"], "IN_PROGRESS", "{}", started.body);
    let done = app
        .post(
            &format!("/v1/bookings/{soon}/complete"),
            Some(&token("pia")),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(done.body["status"], "COMPLETED", "{}", done.body);
    let uuid = uuid_of(&soon)?;
    assert_eq!(
        app.count(
            "outbox",
            &format!("aggregate_id = '{uuid}' and topic = 'vehicle.released'")
        )
        .await?,
        1
    );
    app.stop().await
}

/// Today's price of `window` for `vehicle` as the quote path computes it without surge, risk,
/// promo code or membership: what an extension is priced by, computed independently of the
/// booking code.
async fn neutral_price(
    pool: &PgPool,
    vehicle: &str,
    window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> TestResult<i64> {
    use origin::app::pricing;
    let id: domain::ids::VehicleId = vehicle.parse()?;
    let (class, tz): (String, String) = sqlx::query_as(
        "select v.class, b.timezone from vehicles v join parking_bays b on b.id = v.bay_id where v.id = $1",
    )
    .bind(id.uuid)
    .fetch_one(pool)
    .await?;
    let mut conn = pool.acquire().await?;
    let ctx = pricing::context(&mut conn, id.region, class.parse()?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let price = pricing::quote_price(
        &ctx,
        &domain::window::TimeWindow::new(window.0, window.1)?,
        pricing::parse_tz(&tz).map_err(|e| anyhow::anyhow!("{e}"))?,
        pricing::Signals::NEUTRAL,
        pricing::Customer::default(),
        chrono::Utc::now(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(price.total.minor)
}

#[sqlx::test(migrations = "../migrations")]
async fn an_extension_costs_the_difference_of_both_windows_at_todays_neutral_prices(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUN").await?[7].clone();
    // Two days, extended to four: the longer window earns the long-duration discount (3 days+).
    let (start, end) = window(8, 48);
    let new_end = end + chrono::Duration::days(2);
    let id = app.confirmed("pia", &vehicle, (start, end)).await?;
    let before = app
        .get(&format!("/v2/bookings/{id}"), Some(&token("pia")))
        .await?;
    let ext = app
        .post(
            &format!("/v2/bookings/{id}/extend"),
            Some(&token("pia")),
            &json!({ "end": new_end }),
            None,
        )
        .await?;
    assert_eq!(ext.status.as_u16(), 200, "{}", ext.body);
    let expected = (neutral_price(&app.pool, &vehicle, (start, new_end)).await?
        - neutral_price(&app.pool, &vehicle, (start, end)).await?)
        .max(0);
    assert_eq!(
        ext.body["extensions"][0]["amount_minor"].as_i64(),
        Some(expected)
    );
    assert_eq!(
        ext.body["price"]["minor"].as_i64(),
        before.body["price"]["minor"].as_i64().map(|p| p + expected)
    );
    assert_eq!(ext.body["price"]["currency"], "SEK");
    // The history and the event carry the same amount.
    let details: Value = sqlx::query_scalar(
        "select details from booking_history where event = 'extend' and booking_id = $1",
    )
    .bind(uuid_of(&id)?)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(details["amount_minor"].as_i64(), Some(expected));
    let reason: Option<String> = sqlx::query_scalar(
        "select payload->>'reason' from outbox where topic = 'booking.extended' and aggregate_id = $1",
    )
    .bind(uuid_of(&id)?)
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(reason.as_deref(), Some("extended"));
    app.stop().await
}
