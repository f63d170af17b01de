//! The L1/L2 cache: repeated quotes come from L1 without PostgreSQL; committed bookings make
//! the affected quotes stale at once.

use e2e::*;
use serde_json::json;
use sqlx::{Connection, PgPool};

/// Sum of a counter's samples whose labels contain every `label="value"` given.
async fn counter(app: &TestApp, name: &str, labels: &[&str]) -> TestResult<f64> {
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_repeated_quote_within_60s_is_served_from_l1_without_postgres(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool.clone()).await?;
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let w = window(2, 3);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let t = token("cache-user");
    let first = app.post("/v2/quotes", Some(&t), &body, None).await?;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    assert_eq!(
        first.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("miss")
    );
    let hits_before = counter(
        &app,
        "cache_requests_total",
        &[r#"layer="l1""#, r#"result="hit""#],
    )
    .await?;

    // Lock every table a quote could read: any PostgreSQL query would now block.
    let options = pool.connect_options();
    let mut blocker = sqlx::PgConnection::connect_with(&options).await?;
    let mut tx = blocker.begin().await?;
    sqlx::query(
        "lock table vehicles, parking_bays, bookings, base_rates, vehicle_config, \
         time_multipliers, discount_rules in access exclusive mode",
    )
    .execute(&mut *tx)
    .await?;
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        app.post("/v2/quotes", Some(&t), &body, None),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the repeated quote waited on PostgreSQL"))??;
    tx.rollback().await?;

    assert_eq!(again.status.as_u16(), 201);
    assert_eq!(
        again.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("hit")
    );
    assert_eq!(again.body, first.body, "the same quote, token included");
    let hits_after = counter(
        &app,
        "cache_requests_total",
        &[r#"layer="l1""#, r#"result="hit""#],
    )
    .await?;
    assert!(
        hits_after >= hits_before + 1.0,
        "{hits_before} -> {hits_after}"
    );

    // Another user, or another window, is another entry.
    let other = app
        .post("/v2/quotes", Some(&token("someone-else")), &body, None)
        .await?;
    assert_eq!(
        other.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("miss")
    );
    assert_ne!(other.body["quote_id"], first.body["quote_id"]);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_booking_makes_that_vehicles_cached_quotes_and_availability_stale_at_once(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUW").await?;
    let (taken, untouched) = (vehicles[1].clone(), vehicles[2].clone());
    let w = window(2, 3);
    let alice = token("alice");
    let quote_body = |v: &str| json!({ "vehicle_id": v, "start": w.0, "end": w.1 });
    assert_eq!(
        app.post("/v1/quotes", Some(&alice), &quote_body(&taken), None)
            .await?
            .status
            .as_u16(),
        201
    );
    assert_eq!(
        app.post("/v1/quotes", Some(&alice), &quote_body(&untouched), None)
            .await?
            .status
            .as_u16(),
        201
    );

    // Bob books the first vehicle for an overlapping window.
    let hold = app
        .hold(
            "bob",
            &taken,
            (
                w.0 + chrono::Duration::hours(1),
                w.1 + chrono::Duration::hours(1),
            ),
        )
        .await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);

    // Alice's cached quote for it is gone: asking again is a fresh, refused quote.
    let again = app
        .post("/v1/quotes", Some(&alice), &quote_body(&taken), None)
        .await?;
    again.assert_problem(409);
    // Her quote for another vehicle is still cached.
    let other = app
        .post("/v1/quotes", Some(&alice), &quote_body(&untouched), None)
        .await?;
    assert_eq!(
        other.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("hit")
    );
    // And search no longer offers the taken vehicle for that window.
    let s = w.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let e = w.1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let found = app
        .get(&format!("/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=30000&limit=100&start={s}&end={e}"), Some(&alice))
        .await?;
    let ids: Vec<&str> = found.body["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["vehicle_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(!ids.contains(&taken.as_str()));
    assert!(ids.contains(&untouched.as_str()));
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn pricing_contexts_are_warmed_into_l2_and_served_from_it(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let before = counter(
        &app,
        "cache_requests_total",
        &[r#"layer="l2""#, r#"result="hit""#],
    )
    .await?;
    let vehicle = app.vehicles("EUN").await?[0].clone();
    app.quote("l2-user", &vehicle, window(2, 2)).await?;
    let after = counter(
        &app,
        "cache_requests_total",
        &[r#"layer="l2""#, r#"result="hit""#],
    )
    .await?;
    assert!(
        after >= before + 1.0,
        "the first quote already hits L2 ({before} -> {after})"
    );
    app.stop().await
}

/// A search prices each (region, class) it shows from this process's memory after the first
/// time (no L2 round trip per class), and a pricing change made here is in the very next search.
#[sqlx::test(migrations = "../migrations")]
async fn searches_price_from_memory_and_see_a_pricing_change_made_here_at_once(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool.clone()).await?;
    let t = token("price-watcher");
    let (start, end) = window(2, 3);
    let fmt =
        |d: chrono::DateTime<chrono::Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!(
        "/v2/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&limit=100&start={}&end={}",
        fmt(start),
        fmt(end)
    );
    // Indicative price per vehicle class.
    let prices = |r: &Reply| -> std::collections::BTreeMap<String, i64> {
        r.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some((
                    i["class"].as_str()?.to_owned(),
                    i["indicative_price"]["minor"].as_i64()?,
                ))
            })
            .collect()
    };
    let first = app.get(&path, Some(&t)).await?;
    assert_eq!(first.status.as_u16(), 200, "{}", first.body);
    let before = prices(&first);
    assert!(!before.is_empty(), "{}", first.body);
    const L2: [&str; 2] = [r#"layer="l2""#, r#"kind="pricing""#];
    const LOCAL_HITS: [&str; 3] = [
        r#"layer="l2-local""#,
        r#"kind="pricing""#,
        r#"result="hit""#,
    ];
    let l2_before = counter(&app, "cache_requests_total", &L2).await?;
    let local_before = counter(&app, "cache_requests_total", &LOCAL_HITS).await?;
    let second = app.get(&path, Some(&t)).await?;
    assert_eq!(prices(&second), before);
    assert_eq!(
        counter(&app, "cache_requests_total", &L2).await?,
        l2_before,
        "the second search asked L2"
    );
    assert!(
        counter(&app, "cache_requests_total", &LOCAL_HITS).await?
            >= local_before + before.len() as f64,
        "one in-process hit per class shown"
    );

    // Double one class's base rate through the admin API: the next search shows it.
    let class = before.keys().next().cloned().unwrap_or_default();
    let (per_hour, per_day): (i64, i64) = sqlx::query_as(
        "select per_hour_minor, per_day_minor from base_rates where region = 'EUW' and class = $1",
    )
    .bind(&class)
    .fetch_one(&pool)
    .await?;
    let change = app
        .client
        .put(format!("{}/v1/admin/pricing/EUW/base-rates/{class}", app.base))
        .bearer_auth(ops_token("ops-price"))
        .json(&json!({ "currency": "EUR", "per_hour_minor": per_hour * 2, "per_day_minor": per_day * 2 }))
        .send()
        .await?;
    assert_eq!(change.status().as_u16(), 200);
    let after = prices(&app.get(&path, Some(&t)).await?);
    assert!(
        after[&class] > before[&class],
        "{class}: {} before the change, {} after",
        before[&class],
        after[&class]
    );
    app.stop().await
}
