//! Region ownership at the origin: an origin serves exactly the regions in `ORIGIN_REGIONS`.
//! A request about another region's vehicle, booking, quote, admin data or service area is a
//! 421 `/problems/misdirected` (a routing mistake, loud and counted in
//! `misdirected_requests_total`), never a 404 that reads like "not found"; the same requests
//! for its own region keep working.
//!
//! The foreign quotes and bookings are made by a second origin serving both regions on the same
//! database and quote keys (standing in for the other region's origin), so what the EUW-only
//! origin refuses is real, valid data that simply is not its own.

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

const EUW_ONLY: &[(&str, &str)] = &[("ORIGIN_REGIONS", "EUW")];

fn assert_misdirected(reply: &Reply, mentions: &str) {
    reply.assert_problem(421);
    assert_eq!(
        reply.problem_type(),
        "/problems/misdirected",
        "{}",
        reply.body
    );
    let detail = reply.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(mentions) && detail.contains("EUN"),
        "detail should name {mentions} and the owning region: {detail}"
    );
}

/// The value of `misdirected_requests_total{route="…"}` (0 when absent).
async fn misdirected_count(app: &TestApp, route: &str) -> TestResult<f64> {
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?
        .text()
        .await?;
    let prefix = format!("misdirected_requests_total{{route=\"{route}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

#[sqlx::test(migrations = "../migrations")]
async fn another_regions_vehicle_quote_and_booking_are_misdirected_and_own_ones_still_work(
    pool: PgPool,
) -> TestResult {
    // `both` plays the EUN origin: it issues the EUN quote and booking.
    let both = spawn_app(pool.clone()).await?;
    let euw = spawn_app_with(pool, EUW_ONLY).await?;
    let user = "region-rider";
    let t = token(user);
    let eun_vehicle = both.vehicles("EUN").await?[0].clone();
    let euw_vehicle = euw.vehicles("EUW").await?[0].clone();
    let eun_quote = both.quote(user, &eun_vehicle, window(3, 2)).await?;
    let eun_booking = both.confirmed(user, &eun_vehicle, window(4, 2)).await?;

    // A quote for an EUN vehicle.
    let quotes_before = misdirected_count(&euw, "/v1/quotes").await?;
    let (s, e) = window(5, 2);
    let quote = euw
        .post(
            "/v1/quotes",
            Some(&t),
            &json!({ "vehicle_id": eun_vehicle, "start": s, "end": e }),
            None,
        )
        .await?;
    assert_misdirected(&quote, &eun_vehicle);
    assert!(
        misdirected_count(&euw, "/v1/quotes").await? >= quotes_before + 1.0,
        "the 421 is counted under its route"
    );

    // A booking from an EUN quote token.
    let hold = euw
        .post(
            "/v2/bookings",
            Some(&t),
            &json!({ "quote_token": eun_quote["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_misdirected(&hold, "EUN");
    assert_eq!(
        euw.count("bookings", "status = 'RESERVING'").await?,
        0,
        "nothing was held"
    );

    // Reading and acting on an EUN booking.
    for v in ["v1", "v2"] {
        let read = euw
            .get(&format!("/{v}/bookings/{eun_booking}"), Some(&t))
            .await?;
        assert_misdirected(&read, &eun_booking);
    }
    for action in ["cancel", "start"] {
        let act = euw
            .post(
                &format!("/v1/bookings/{eun_booking}/{action}"),
                Some(&t),
                &Value::Null,
                Some(&uuid::Uuid::new_v4().to_string()),
            )
            .await?;
        assert_misdirected(&act, &eun_booking);
    }
    let (_, later) = window(4, 3);
    let extend = euw
        .post(
            &format!("/v1/bookings/{eun_booking}/extend"),
            Some(&t),
            &json!({ "end": later }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_misdirected(&extend, &eun_booking);
    let still: String = sqlx::query_scalar("select status::text from bookings where id = $1")
        .bind(uuid_of(&eun_booking)?)
        .fetch_one(&euw.pool)
        .await?;
    assert_eq!(still, "CONFIRMED", "the EUN booking was left alone");

    // A garbage id is still a 404, not a 421.
    euw.get("/v1/bookings/bkg_xyz_123", Some(&t))
        .await?
        .assert_problem(404);

    // The EUW origin's own region works end to end.
    let own = euw.confirmed(user, &euw_vehicle, window(6, 2)).await?;
    let read = euw.get(&format!("/v2/bookings/{own}"), Some(&t)).await?;
    assert_eq!(read.status.as_u16(), 200, "{}", read.body);

    // The user's list from each origin: the EUW origin lists only its own region's booking
    // (it shares the database here, as a dev setup might), the two-region one lists both.
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect()
    };
    let own_list = euw.get("/v2/bookings?limit=100", Some(&t)).await?;
    assert_eq!(own_list.status.as_u16(), 200, "{}", own_list.body);
    assert_eq!(ids(&own_list), vec![own.clone()]);
    let both_list = both.get("/v2/bookings?limit=100", Some(&t)).await?;
    let mut listed = ids(&both_list);
    listed.sort();
    let mut expected = vec![own.clone(), eun_booking.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    euw.stop().await?;
    both.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn another_regions_admin_audit_and_surge_are_misdirected_and_own_ones_still_work(
    pool: PgPool,
) -> TestResult {
    let euw = spawn_app_with(pool, EUW_ONLY).await?;
    let ops = ops_token("region-ops");
    let route = "/v1/admin/pricing/{region}";
    let before = misdirected_count(&euw, route).await?;
    let foreign = euw.get("/v1/admin/pricing/EUN", Some(&ops)).await?;
    assert_misdirected(&foreign, "region EUN");
    assert!(misdirected_count(&euw, route).await? >= before + 1.0);
    assert_misdirected(
        &euw.get("/v1/admin/pricing-audit?region=EUN", Some(&ops))
            .await?,
        "region EUN",
    );
    assert_misdirected(
        &euw.post(
            "/v1/admin/surge/recompute?region=EUN",
            Some(&ops),
            &Value::Null,
            None,
        )
        .await?,
        "region EUN",
    );
    assert_misdirected(
        &euw.get("/v1/surge?region=EUN", Some(&ops)).await?,
        "region EUN",
    );
    // A name that is no region stays a 404.
    euw.get("/v1/admin/pricing/XYZ", Some(&ops))
        .await?
        .assert_problem(404);

    for path in [
        "/v1/admin/pricing/EUW",
        "/v1/admin/pricing-audit?region=EUW",
        "/v1/surge?region=EUW",
    ] {
        let ok = euw.get(path, Some(&ops)).await?;
        assert_eq!(ok.status.as_u16(), 200, "{path}: {}", ok.body);
    }
    let recompute = euw
        .post(
            "/v1/admin/surge/recompute?region=EUW",
            Some(&ops),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(recompute.status.as_u16(), 200, "{}", recompute.body);
    euw.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_search_or_surge_point_in_another_regions_area_is_misdirected_and_outside_every_area_is_422(
    pool: PgPool,
) -> TestResult {
    let euw = spawn_app_with(pool, EUW_ONLY).await?;
    let t = token("region-searcher");
    let (s, e) = window(2, 2);
    let search = |lat: f64, lon: f64, radius_m: u32| {
        format!(
            "/v2/vehicles/search?lat={lat}&lon={lon}&radius_m={radius_m}&start={}&end={}&limit=50",
            s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    };

    // Stockholm: EUN's area.
    let before = misdirected_count(&euw, "/v2/vehicles/search").await?;
    assert_misdirected(
        &euw.get(&search(59.3303, 18.0586, 5_000), Some(&t)).await?,
        "search circle",
    );
    assert!(misdirected_count(&euw, "/v2/vehicles/search").await? >= before + 1.0);
    assert_misdirected(
        &euw.get("/v1/surge?lat=59.3303&lon=18.0586", Some(&t))
            .await?,
        "point",
    );

    // Paris: nobody's area, a 422 naming `lat`.
    for path in [
        search(48.86, 2.35, 5_000),
        "/v1/surge?lat=48.86&lon=2.35".to_owned(),
    ] {
        let outside = euw.get(&path, Some(&t)).await?;
        outside.assert_problem(422);
        assert_eq!(outside.body["field"], "lat", "{path}: {}", outside.body);
        assert!(
            outside.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("outside every service area")),
            "{}",
            outside.body
        );
    }

    // Frankfurt: its own area, with its vehicles.
    let own = euw.get(&search(50.1109, 8.6821, 30_000), Some(&t)).await?;
    assert_eq!(own.status.as_u16(), 200, "{}", own.body);
    let items = own.body["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "Frankfurt has vehicles: {}", own.body);
    assert!(items.iter().all(|i| i["vehicle_id"]
        .as_str()
        .is_some_and(|v| v.starts_with("veh_euw_"))));
    let surge = euw
        .get("/v1/surge?lat=50.1109&lon=8.6821", Some(&t))
        .await?;
    assert_eq!(surge.status.as_u16(), 200, "{}", surge.body);
    assert_eq!(surge.body["region"], "EUW");
    euw.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_search_circle_that_reaches_an_origins_area_from_next_door_is_served_there(
    pool: PgPool,
) -> TestResult {
    // Two test areas sharing the border at latitude 55: the centre is in EUW's, the circle
    // reaches 30 km into EUN's. The EUN origin answers (with its own vehicles, none here)
    // instead of refusing: the edge asks both origins for such a circle.
    let areas = "EUW=47 5, 55 5, 55 20, 47 20; EUN=55 5, 70 5, 70 25, 55 25";
    let eun = spawn_app_with(pool, &[("ORIGIN_REGIONS", "EUN"), ("SERVICE_AREAS", areas)]).await?;
    let t = token("border-searcher");
    let (s, e) = window(2, 2);
    let path = |radius_m: u32| {
        format!(
            "/v1/vehicles/search?lat=54.9&lon=12&radius_m={radius_m}&start={}&end={}",
            s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    };
    let across = eun.get(&path(50_000), Some(&t)).await?;
    assert_eq!(across.status.as_u16(), 200, "{}", across.body);
    assert_eq!(across.body["items"], json!([]));
    // 5 km stays in EUW's area: misdirected.
    assert_misdirected(&eun.get(&path(5_000), Some(&t)).await?, "search circle");
    eun.stop().await
}
