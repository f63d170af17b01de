//! Pricing admin: ops only, validated with the field named, audited with before/after, and
//! effective for the next quote at once (caches invalidated).

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn a_non_ops_token_gets_403_on_every_admin_route(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let user = token("not-ops");
    let rate = json!({ "currency": "EUR", "per_hour_minor": 1000, "per_day_minor": 5000 });
    let put = app
        .client
        .put(format!(
            "{}/v1/admin/pricing/EUW/base-rates/compact",
            app.base
        ))
        .bearer_auth(&user)
        .json(&rate)
        .send()
        .await?;
    assert_eq!(put.status().as_u16(), 403);
    for path in ["/v1/admin/pricing/EUW", "/v1/admin/pricing-audit"] {
        app.get(path, Some(&user)).await?.assert_problem(403);
    }
    app.post(
        "/v1/admin/pricing/EUW/time-multipliers",
        Some(&user),
        &json!({ "days_mask": 1, "start_hour": 3, "end_hour": 4, "multiplier_bp": 11000 }),
        None,
    )
    .await?
    .assert_problem(403);
    assert_eq!(app.count("pricing_audit", "true").await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn invalid_pricing_changes_get_422_naming_the_field(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let ops = ops_token("ops-anna");
    let put = |path: &str, body: Value| {
        let req = app
            .client
            .put(format!("{}{path}", app.base))
            .bearer_auth(&ops)
            .json(&body);
        async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, body))
        }
    };
    let (status, body) = put(
        "/v1/admin/pricing/EUW/base-rates/compact",
        json!({ "currency": "SEK", "per_hour_minor": 1000, "per_day_minor": 5000 }),
    )
    .await?;
    assert_eq!((status, body["field"].as_str()), (422, Some("currency")));
    let (status, body) = put(
        "/v1/admin/pricing/EUW/vehicle-config/compact",
        json!({ "floor_minor": 9000, "ceiling_minor": 100 }),
    )
    .await?;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("ceiling_minor"))
    );

    // An overlapping time-of-day window: copy an existing rule's days and hours.
    let overview = app.get("/v1/admin/pricing/EUW", Some(&ops)).await?;
    let existing = &overview.body["time_multipliers"][0];
    assert!(existing.is_object(), "{}", overview.body);
    let overlap = app
        .post(
            "/v1/admin/pricing/EUW/time-multipliers",
            Some(&ops),
            &json!({
                "days_mask": existing["days_mask"],
                "start_hour": existing["start_hour"],
                "end_hour": existing["end_hour"],
                "multiplier_bp": 11000
            }),
            None,
        )
        .await?;
    overlap.assert_problem(422);
    assert_eq!(overlap.body["field"], "start_hour", "{}", overlap.body);
    let absurd = app
        .post(
            "/v1/admin/pricing/EUW/time-multipliers",
            Some(&ops),
            &json!({ "days_mask": 1, "start_hour": 3, "end_hour": 4, "multiplier_bp": 300000 }),
            None,
        )
        .await?;
    absurd.assert_problem(422);
    assert_eq!(absurd.body["field"], "multiplier_bp");
    let promo = app
        .post(
            "/v1/admin/pricing/EUN/discount-rules",
            Some(&ops),
            &json!({ "kind": "promo", "percent_bp": 1000 }),
            None,
        )
        .await?;
    promo.assert_problem(422);
    assert_eq!(promo.body["field"], "code");
    assert_eq!(app.count("pricing_audit", "true").await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_valid_change_is_audited_and_the_next_quote_uses_it(pool: PgPool) -> TestResult {
    let app = spawn_app(pool.clone()).await?;
    let ops = ops_token("ops-bert");
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let id = uuid_of(&vehicle)?;
    let class: String = sqlx::query_scalar("select class from vehicles where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    let w = window(2, 3);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let t = token("rate-watcher");
    let before = app.post("/v2/quotes", Some(&t), &body, None).await?;
    assert_eq!(before.status.as_u16(), 201, "{}", before.body);
    let cached = app.post("/v2/quotes", Some(&t), &body, None).await?;
    assert_eq!(
        cached.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("hit")
    );

    let (per_hour, per_day): (i64, i64) = sqlx::query_as(
        "select per_hour_minor, per_day_minor from base_rates where region = 'EUW' and class = $1",
    )
    .bind(&class)
    .fetch_one(&pool)
    .await?;
    let change = app
        .client
        .put(format!(
            "{}/v1/admin/pricing/EUW/base-rates/{class}",
            app.base
        ))
        .bearer_auth(&ops)
        .json(&json!({ "currency": "EUR", "per_hour_minor": per_hour * 2, "per_day_minor": per_day * 2 }))
        .send()
        .await?;
    assert_eq!(change.status().as_u16(), 200);
    let change: Value = change.json().await?;
    assert_eq!(change["action"], "update");
    assert_eq!(change["before"]["per_hour_minor"].as_i64(), Some(per_hour));
    assert_eq!(
        change["after"]["per_hour_minor"].as_i64(),
        Some(per_hour * 2)
    );

    // Audited: who, when, before and after.
    let audit = app
        .get("/v1/admin/pricing-audit?region=EUW", Some(&ops))
        .await?;
    let row = &audit.body["items"][0];
    assert_eq!(row["actor"], "ops-bert", "{}", audit.body);
    assert_eq!(row["entity"], "base_rate");
    assert_eq!(row["entity_key"], class.as_str());
    assert!(row["at"].is_string());
    assert_eq!(row["before"]["per_day_minor"].as_i64(), Some(per_day));
    assert_eq!(row["after"]["per_day_minor"].as_i64(), Some(per_day * 2));

    // Effective at once: the same question is no longer answered from L1, and costs more.
    let after = app.post("/v2/quotes", Some(&t), &body, None).await?;
    assert_eq!(after.status.as_u16(), 201, "{}", after.body);
    assert_eq!(
        after.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("miss")
    );
    let old_base = before.body["breakdown"][0]["amount_minor"]
        .as_i64()
        .unwrap_or(0);
    let new_base = after.body["breakdown"][0]["amount_minor"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(new_base, old_base * 2, "{} / {}", before.body, after.body);

    // A time-of-day rule: created (201), then deleted, both audited.
    let created = app
        .post(
            "/v1/admin/pricing/EUN/discount-rules",
            Some(&ops),
            &json!({ "kind": "promo", "code": "ADMIN10", "percent_bp": 1000 }),
            None,
        )
        .await?;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body);
    let rule_id = created.body["key"].as_str().unwrap_or_default().to_owned();
    let deleted = app
        .client
        .delete(format!(
            "{}/v1/admin/pricing/EUN/discount-rules/{rule_id}",
            app.base
        ))
        .bearer_auth(&ops)
        .send()
        .await?;
    assert_eq!(deleted.status().as_u16(), 200);
    assert_eq!(app.count("pricing_audit", "actor = 'ops-bert'").await?, 3);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_retried_admin_post_with_the_same_idempotency_key_applies_once(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let ops = ops_token("ops-carl");
    let body = json!({ "kind": "membership", "membership_tier": "platinum", "percent_bp": 1200 });
    let first = app
        .post(
            "/v1/admin/pricing/EUW/discount-rules",
            Some(&ops),
            &body,
            Some("admin-key-1"),
        )
        .await?;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    let again = app
        .post(
            "/v1/admin/pricing/EUW/discount-rules",
            Some(&ops),
            &body,
            Some("admin-key-1"),
        )
        .await?;
    assert_eq!(again.status.as_u16(), 201);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(again.body, first.body);
    assert_eq!(
        app.count("discount_rules", "membership_tier = 'platinum'")
            .await?,
        1
    );
    assert_eq!(app.count("pricing_audit", "actor = 'ops-carl'").await?, 1);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unknown_vehicle_class_is_a_422_on_admin_paths_and_a_400_in_search(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let ops = ops_token("ops-anna");
    let rate = json!({ "currency": "EUR", "per_hour_minor": 1000, "per_day_minor": 5000 });
    let config = json!({ "floor_minor": 100, "ceiling_minor": 90000 });
    let put = |path: &str, token: &str, body: &Value| {
        let req = app
            .client
            .put(format!("{}{path}", app.base))
            .bearer_auth(token)
            .json(body);
        async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, content_type, body))
        }
    };
    for (class, path, body) in [
        ("truck", "/v1/admin/pricing/EUW/base-rates/truck", &rate),
        ("SUV", "/v1/admin/pricing/EUW/vehicle-config/SUV", &config),
    ] {
        let (status, content_type, problem) = put(path, &ops, body).await?;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["type"], "/problems/validation");
        assert_eq!(problem["field"], "class");
        assert_eq!(
            problem["detail"],
            format!(
                "unknown vehicle class \"{class}\" (expected one of compact, sedan, suv, van, premium)"
            )
        );
    }
    // The role is checked before the class, as before.
    let (status, _, problem) = put(
        "/v1/admin/pricing/EUW/base-rates/truck",
        &token("not-ops"),
        &rate,
    )
    .await?;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(app.count("pricing_audit", "true").await?, 0);

    let (start, end) = window(2, 2);
    let (s, e) = (
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let search = app
        .get(
            &format!("/v1/vehicles/search?lat=50.11&lon=8.68&start={s}&end={e}&class=Van"),
            Some(&token("searcher")),
        )
        .await?;
    search.assert_problem(400);
    assert_eq!(
        search.body["detail"],
        "class: must be one of compact, sedan, suv, van, premium"
    );
    app.stop().await
}
