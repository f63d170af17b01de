//! Price validation: a price that jumps past the configured limit against the previous quote
//! of the same vehicle and window is refused with problem+json, recorded and counted, and
//! nothing of it is cached.

use e2e::*;
use serde_json::json;
use sqlx::PgPool;

use crate::inference_fake::FakeInference;

async fn redis_exists(app: &TestApp, key: &str) -> TestResult<bool> {
    let mut redis = redis::Client::open(app.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{}{key}", app.redis_prefix))
        .query_async(&mut redis)
        .await?;
    Ok(n > 0)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_price_jumping_past_the_limit_is_refused_recorded_and_not_cached(
    pool: PgPool,
) -> TestResult {
    let fake = FakeInference::start().await?;
    let app = spawn_app_with(
        pool,
        &[
            ("INFERENCE_URL", &fake.url),
            ("PRICING_BUDGET_MS", "2000"),
            ("PRICE_MAX_JUMP_BP", "5000"),
        ],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[5].clone();
    let w = window(2, 3);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let first = app
        .post("/v2/quotes", Some(&token("first")), &body, None)
        .await?;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    let first_total = first.body["total"]["minor"].as_i64().unwrap_or(0);

    // The model goes haywire: surge ×3.0 and risk ×1.45 would more than quadruple the price.
    fake.set_score(1.0);
    fake.set_demand(100.0, 1.0);
    let refused = app
        .post("/v2/quotes", Some(&token("second")), &body, None)
        .await?;
    refused.assert_problem(503);
    assert_eq!(refused.problem_type(), "/problems/price-refused");
    assert!(
        refused.headers.contains_key("retry-after"),
        "a refused price is a 503 the client may retry later: {:?}",
        refused.headers
    );
    assert_eq!(
        app.count("price_refusals", "reason = 'jump' and user_id = 'second'")
            .await?,
        1
    );
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("price_refusals_total{") && l.contains(r#"reason="jump""#)),
        "alert metric missing"
    );
    // Nothing cached: not the quote (asking again is refused again, not a cached 201), not the
    // refused computation's risk score.
    let again = app
        .post("/v2/quotes", Some(&token("second")), &body, None)
        .await?;
    again.assert_problem(503);
    assert!(!redis_exists(&app, "l2:risk:second").await?);
    assert!(redis_exists(&app, "l2:risk:first").await?);

    // Back to sane answers: the baseline is still the first quote's, and quoting works.
    fake.set_score(0.1);
    fake.set_demand(0.0, 4.0);
    let third = app
        .post("/v2/quotes", Some(&token("third")), &body, None)
        .await?;
    assert_eq!(third.status.as_u16(), 201, "{}", third.body);
    assert_eq!(third.body["total"]["minor"].as_i64(), Some(first_total));
    assert_eq!(app.count("bookings", "true").await?, 0);
    app.stop().await
}
