//! Quote tokens: only an untampered, unexpired token of the caller buys a booking.

use e2e::*;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn tampered_expired_and_foreign_quote_tokens_are_refused(pool: PgPool) -> TestResult {
    let app = spawn_app_with(pool, &[("QUOTE_TTL_SECS", "1")]).await?;
    let vehicles = app.vehicles("EUW").await?;
    let quote = app.quote("quinn", &vehicles[7], window(2, 2)).await?;
    let token_str = quote["quote_token"].as_str().unwrap_or_default().to_owned();

    // Tampered: change one character of the payload, of the signature, or the key id.
    let mut variants = Vec::new();
    let bytes: Vec<char> = token_str.chars().collect();
    for pos in [bytes.len() / 2, bytes.len() - 2, 4] {
        let mut t = bytes.clone();
        t[pos] = if t[pos] == 'A' { 'B' } else { 'A' };
        variants.push(t.into_iter().collect::<String>());
    }
    variants.push(token_str.replacen(".k1.", ".k0.", 1));
    variants.push("garbage".to_owned());
    for bad in variants {
        let reply = app
            .post(
                "/v1/bookings",
                Some(&token("quinn")),
                &json!({ "quote_token": bad }),
                None,
            )
            .await?;
        reply.assert_problem(422);
        assert_eq!(reply.problem_type(), "/problems/quote-invalid", "{bad}");
    }

    // Another user's quote.
    let foreign = app
        .post(
            "/v1/bookings",
            Some(&token("rita")),
            &json!({ "quote_token": token_str }),
            None,
        )
        .await?;
    foreign.assert_problem(403);

    // Expired.
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let expired = app
        .post(
            "/v1/bookings",
            Some(&token("quinn")),
            &json!({ "quote_token": token_str }),
            None,
        )
        .await?;
    expired.assert_problem(422);
    assert_eq!(expired.problem_type(), "/problems/quote-expired");
    assert_eq!(app.count("bookings", "true").await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_quote_buys_one_booking_only(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUN").await?;
    let quote = app.quote("sam", &vehicles[6], window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let first = app
        .post("/v1/bookings", Some(&token("sam")), &body, None)
        .await?;
    assert_eq!(first.status.as_u16(), 201);
    let id = first.body["id"].as_str().unwrap_or_default().to_owned();
    let cancel = app
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&token("sam")),
            &serde_json::Value::Null,
            None,
        )
        .await?;
    assert_eq!(cancel.status.as_u16(), 200);
    let reuse = app
        .post("/v1/bookings", Some(&token("sam")), &body, None)
        .await?;
    reuse.assert_problem(409);
    assert_eq!(reuse.problem_type(), "/problems/quote-used");
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn promo_codes_and_membership_lower_the_quote(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[8].clone();
    let w = window(2, 3);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let plain = app
        .post("/v2/quotes", Some(&token("tom")), &body, None)
        .await?;
    let mut promo_body = body.clone();
    promo_body["promo_code"] = json!("welcome10");
    let promo = app
        .post("/v2/quotes", Some(&token("tom")), &promo_body, None)
        .await?;
    let gold = app
        .post(
            "/v2/quotes",
            Some(&token_with("tom", |c| c.membership = Some("gold".into()))),
            &body,
            None,
        )
        .await?;
    let total = |r: &Reply| r.body["total"]["minor"].as_i64().unwrap_or_default();
    assert!(
        total(&promo) < total(&plain),
        "{} vs {}",
        promo.body,
        plain.body
    );
    assert!(total(&gold) < total(&promo), "15 % beats 10 %");
    assert_eq!(promo.body["multipliers"]["discount_bp"], 1000);
    let mut unknown = body.clone();
    unknown["promo_code"] = json!("NOPE");
    let reply = app
        .post("/v2/quotes", Some(&token("tom")), &unknown, None)
        .await?;
    reply.assert_problem(422);
    assert_eq!(reply.body["field"], "promo_code");
    app.stop().await
}

/// What a quote that misses its cache checks, in this order: the vehicle is active in its
/// region (404), the destination bay is one of that region's (422 naming the field), the window
/// is free (409). One statement reads the vehicle and its occupancy
/// (`store::vehicles::quote_facts`); the order of the answers is the API's, whatever the
/// statements.
#[sqlx::test(migrations = "../migrations")]
async fn a_quote_refuses_an_unknown_vehicle_then_a_foreign_bay_then_a_taken_window(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUW").await?;
    let (taken, free, in_maintenance) = (&vehicles[3], &vehicles[4], &vehicles[5]);
    let (start, end) = window(3, 2);
    app.confirmed("tara", taken, (start, end)).await?;
    sqlx::query("update vehicles set status = 'maintenance' where id = $1")
        .bind(uuid_of(in_maintenance)?)
        .execute(&app.pool)
        .await?;
    let bay_of = |region: &'static str| {
        sqlx::query_scalar::<_, uuid::Uuid>(
            "select id from parking_bays where region = $1 order by id limit 1",
        )
        .bind(region)
        .fetch_one(&app.pool)
    };
    let (euw_bay, eun_bay) = (bay_of("EUW").await?, bay_of("EUN").await?);
    let unknown = format!("veh_euw_{}", uuid::Uuid::new_v4().simple());
    let quote = |vehicle: String, bay: Option<uuid::Uuid>, start, end| {
        let mut body = json!({ "vehicle_id": vehicle, "start": start, "end": end });
        if let Some(bay) = bay {
            body["destination_bay_id"] = json!(bay);
        }
        let app = &app;
        async move {
            app.post("/v1/quotes", Some(&token("quin")), &body, None)
                .await
        }
    };

    // No such vehicle, or one out of service: 404, before anything else is looked at.
    for vehicle in [&unknown, in_maintenance] {
        quote(vehicle.clone(), Some(eun_bay), start, end)
            .await?
            .assert_problem(404);
    }
    // A bay of another region, or none at all: 422 naming the field, even over a taken window.
    for bay in [eun_bay, uuid::Uuid::new_v4()] {
        let reply = quote(taken.clone(), Some(bay), start, end).await?;
        reply.assert_problem(422);
        assert_eq!(reply.body["field"], "destination_bay_id", "{}", reply.body);
    }
    // The window is taken: 409, with or without a valid bay.
    for bay in [None, Some(euw_bay)] {
        quote(taken.clone(), bay, start, end)
            .await?
            .assert_problem(409);
    }
    // The same vehicle later that day, and another vehicle in the same window, are quoted.
    let later = (
        end + chrono::Duration::hours(6),
        end + chrono::Duration::hours(8),
    );
    for (vehicle, (s, e)) in [(taken, later), (free, (start, end))] {
        let reply = quote(vehicle.clone(), Some(euw_bay), s, e).await?;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    }
    assert_eq!(
        app.count("bookings", "true").await?,
        1,
        "quotes write no booking"
    );
    app.stop().await
}
