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
