//! Hostile and malformed input: always a precise 4xx problem, never a 5xx, nothing written.

use e2e::*;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn malformed_bodies_are_4xx_problems(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let t = token("val");
    let (start, end) = window(2, 2);

    let raw_cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("/v1/quotes", "application/json", b"{not json".to_vec(), 400),
        ("/v1/quotes", "application/json", b"".to_vec(), 400),
        ("/v1/quotes", "text/plain", b"{}".to_vec(), 415),
        ("/v1/bookings", "application/json", b"[1,2,3]".to_vec(), 422),
        (
            "/v1/bookings",
            "application/json",
            vec![0xff, 0xfe, 0x00],
            400,
        ),
    ];
    for (path, ct, body, status) in raw_cases {
        let reply = app.post_raw(path, Some(&t), ct, body.clone()).await?;
        reply.assert_problem(status);
    }

    let json_cases = vec![
        (
            json!({ "vehicle_id": 42, "start": start, "end": end }),
            "vehicle_id",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": "yesterday", "end": end }),
            "start",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": start, "end": end, "admin": true }),
            "",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": end, "end": start }),
            "end",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": start, "end": start }),
            "end",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": start + chrono::Duration::seconds(30), "end": end }),
            "start",
        ),
        (
            json!({ "vehicle_id": "veh_xxx_123", "start": start, "end": end }),
            "vehicle_id",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": start, "end": start + chrono::Duration::days(90) }),
            "start",
        ),
        (
            json!({ "vehicle_id": vehicle, "start": "2020-01-01T00:00:00Z", "end": "2020-01-01T02:00:00Z" }),
            "start",
        ),
        (json!({ "vehicle_id": vehicle }), ""),
    ];
    for (body, field) in json_cases {
        let reply = app.post("/v1/quotes", Some(&t), &body, None).await?;
        reply.assert_problem(422);
        if !field.is_empty() {
            assert_eq!(reply.body["field"], field, "{body} → {}", reply.body);
        }
    }

    let ext = app
        .post(
            "/v1/bookings/bkg_euw_00000000000000000000000000000000/extend",
            Some(&t),
            &json!({ "end": 5 }),
            None,
        )
        .await?;
    ext.assert_problem(422);
    let unknown_booking = app.get("/v1/bookings/not-an-id", Some(&t)).await?;
    unknown_booking.assert_problem(404);
    let huge = vec![b'a'; 200 * 1024];
    let mut body = b"{\"quote_token\":\"".to_vec();
    body.extend_from_slice(&huge);
    body.extend_from_slice(b"\"}");
    app.post_raw("/v1/bookings", Some(&t), "application/json", body)
        .await?
        .assert_problem(413);
    assert_eq!(app.count("bookings", "true").await?, 0);
    assert_eq!(app.count("booking_history", "true").await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_queries_huge_pages_and_bad_cursors_are_400(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let t = token("q");
    let (start, end) = window(2, 2);
    let s = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let e = end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let base = format!("/v1/vehicles/search?lat=50.11&lon=8.68&start={s}&end={e}");
    let ok = app.get(&base, Some(&t)).await?;
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.body);
    for bad in [
        format!("{base}&limit=100000"),
        format!("{base}&limit=0"),
        format!("{base}&radius_m=10000000"),
        format!("{base}&cursor=garbage"),
        format!("{base}&cursor={}", "A".repeat(5000)),
        format!("{base}&class=spaceship"),
        format!("{base}&fuel=coal"),
        format!("{base}&unknown=1"),
        format!("/v1/vehicles/search?lat=91&lon=8.68&start={s}&end={e}"),
        format!("/v1/vehicles/search?lat=abc&lon=8.68&start={s}&end={e}"),
        "/v1/vehicles/search?lat=50&lon=8.68".to_owned(),
        "/v1/bookings?limit=1000".to_owned(),
        "/v1/bookings?status=PARTYING".to_owned(),
        "/v1/bookings?cursor=%%%".to_owned(),
        "/v1/bookings?cursor=bm90LWEtY3Vyc29y".to_owned(),
    ] {
        let reply = app.get(&bad, Some(&t)).await?;
        assert!(reply.status.is_client_error(), "{bad}: {}", reply.status);
        reply.assert_problem(reply.status.as_u16());
    }
    // An inverted window in a search.
    let inverted = app
        .get(
            &format!("/v1/vehicles/search?lat=50.11&lon=8.68&start={e}&end={s}"),
            Some(&t),
        )
        .await?;
    inverted.assert_problem(422);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn unknown_routes_and_methods_are_problems(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let reply = app.get("/v3/nothing", None).await?;
    reply.assert_problem(404);
    assert_eq!(reply.problem_type(), "/problems/no-route");
    let reply = app
        .client
        .delete(format!("{}/v1/quotes", app.base))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 405);
    // Every response carries a request id, and a given one is echoed.
    let reply = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "trace-me-123")
        .send()
        .await?;
    assert_eq!(
        reply
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-123")
    );
    app.stop().await
}

/// A NUL character (U+0000) in a text value is a 400 problem, not a 500 from PostgreSQL
/// (schemathesis found both: a query parameter and an admin body), and nothing is written.
#[sqlx::test(migrations = "../migrations")]
async fn a_nul_character_in_a_text_value_is_a_400_and_writes_nothing(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let list = app
        .get("/v1/bookings?user_id=a%00b", Some(&ops_token("ops-nul")))
        .await?;
    assert_eq!(list.status.as_u16(), 400, "{}", list.body);
    assert_eq!(list.body["type"], "/problems/bad-request", "{}", list.body);
    let rules = app.count("discount_rules", "true").await?;
    let created = app
        .post(
            "/v1/admin/pricing/EUN/discount-rules",
            Some(&ops_token("ops-nul")),
            &serde_json::json!({ "kind": "long_duration", "min_duration_minutes": 1691,
                "active": false, "code": "x", "membership_tier": "a\u{0}b", "percent_bp": 2504 }),
            None,
        )
        .await?;
    assert_eq!(created.status.as_u16(), 400, "{}", created.body);
    assert_eq!(app.count("discount_rules", "true").await?, rules);
    app.stop().await
}
