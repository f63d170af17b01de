//! Search: nearby available vehicles, ranked, filtered, with stable cursors.

use std::collections::HashSet;

use e2e::*;
use serde_json::Value;
use sqlx::PgPool;

fn url(start: &str, end: &str, extra: &str) -> String {
    format!(
        "/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&start={start}&end={end}{extra}"
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn search_ranks_by_distance_then_price_and_pages_stably_while_bookings_change(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let t = token("sue");
    let (start, end) = window(2, 3);
    let s = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let e = end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let all = app.get(&url(&s, &e, "&limit=100"), Some(&t)).await?;
    assert_eq!(all.status.as_u16(), 200, "{}", all.body);
    let items = all.body["items"].as_array().cloned().unwrap_or_default();
    let active_euw = app.vehicles("EUW").await?.len();
    assert_eq!(
        items.len(),
        active_euw,
        "every active Frankfurt vehicle is within 20 km"
    );
    let keys: Vec<(u64, f64)> = items
        .iter()
        .map(|i| {
            (
                i["distance_m"].as_u64().unwrap_or_default(),
                i["price"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "sorted by (distance, price): {keys:?}"
    );

    // Page through 5 at a time while someone books a vehicle of a later page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut booked: Option<String> = None;
    loop {
        let extra = match &cursor {
            Some(c) => format!("&limit=5&cursor={c}"),
            None => "&limit=5".to_owned(),
        };
        let page = app.get(&url(&s, &e, &extra), Some(&t)).await?;
        assert_eq!(page.status.as_u16(), 200, "{}", page.body);
        for item in page.body["items"].as_array().cloned().unwrap_or_default() {
            seen.push(item["vehicle_id"].as_str().unwrap_or_default().to_owned());
        }
        if booked.is_none() {
            let victim = items[8]["vehicle_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let hold = app.hold("other", &victim, (start, end)).await?;
            assert_eq!(hold.status.as_u16(), 201);
            booked = Some(victim);
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no vehicle repeats across pages");
    let expected: Vec<String> = items
        .iter()
        .map(|i| i["vehicle_id"].as_str().unwrap_or_default().to_owned())
        .filter(|v| Some(v) != booked.as_ref())
        .collect();
    assert_eq!(
        seen, expected,
        "pages are the ranking minus the vehicle booked meanwhile"
    );

    // A cursor from one search does not continue another.
    let page = app.get(&url(&s, &e, "&limit=2"), Some(&t)).await?;
    let c = page.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.get(
        &url(&s, &e, &format!("&limit=2&class=van&cursor={c}")),
        Some(&t),
    )
    .await?
    .assert_problem(400);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn search_filters_by_class_seats_fuel_and_price(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let t = token("sue");
    let (start, end) = window(2, 3);
    let s = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let e = end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let items = |r: &Reply| r.body["items"].as_array().cloned().unwrap_or_default();
    let ev = app
        .get(&url(&s, &e, "&limit=100&electric=true"), Some(&t))
        .await?;
    assert!(items(&ev).iter().all(|i| i["fuel"] == "electric"));
    let seats = app
        .get(&url(&s, &e, "&limit=100&min_seats=7"), Some(&t))
        .await?;
    assert!(items(&seats)
        .iter()
        .all(|i| i["seats"].as_i64().unwrap_or(0) >= 7));
    let all = app.get(&url(&s, &e, "&limit=100"), Some(&t)).await?;
    let prices: Vec<i64> = app
        .get(&url(&s, &e, "&limit=100").replace("/v1/", "/v2/"), Some(&t))
        .await?
        .body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i: &Value| i["indicative_price"]["minor"].as_i64())
        .collect();
    let mut sorted = prices.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let cheap = app
        .get(
            &url(&s, &e, &format!("&limit=100&max_price_minor={median}")).replace("/v1/", "/v2/"),
            Some(&t),
        )
        .await?;
    assert!(items(&cheap)
        .iter()
        .all(|i| i["indicative_price"]["minor"].as_i64().unwrap_or(i64::MAX) <= median));
    assert!(items(&cheap).len() < items(&all).len());
    let vans = app
        .get(&url(&s, &e, "&limit=100&class=van"), Some(&t))
        .await?;
    assert!(items(&vans).iter().all(|i| i["class"] == "van"));
    // Nothing in Frankfurt is within 1 km of Stockholm.
    let far = app
        .get(&format!("/v1/vehicles/search?lat=59.33&lon=18.06&radius_m=50000&start={s}&end={e}&limit=100"), Some(&t))
        .await?;
    assert!(items(&far).iter().all(|i| i["currency"] == "SEK"));
    app.stop().await
}
