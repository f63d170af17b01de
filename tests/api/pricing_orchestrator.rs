//! The pricing orchestrator against a fake AI inference API whose delay and status the tests
//! control: fresh inputs priced by the calculator's rules, degraded quotes within the budget,
//! the circuit breaker's open → half-open probe → closed cycle, and parallel sources.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::ids::VehicleId;
use domain::multiplier::Multiplier;
use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::inference_fake::FakeInference;

/// A v2 quote and how long it took.
async fn quote_v2(
    app: &TestApp,
    user: &str,
    vehicle: &str,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<(Reply, Duration)> {
    let started = Instant::now();
    let reply = app
        .post(
            "/v2/quotes",
            Some(&token(user)),
            &json!({ "vehicle_id": vehicle, "start": start, "end": end }),
            None,
        )
        .await?;
    Ok((reply, started.elapsed()))
}

fn degraded(reply: &Reply) -> Vec<String> {
    reply.body["degraded"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The price the calculator gives for these signals, from the database's rules.
async fn expected_total(
    pool: &PgPool,
    vehicle: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
    surge_bp: u32,
    risk_bp: u32,
) -> TestResult<i64> {
    let id: VehicleId = vehicle.parse()?;
    let (class, tz): (String, String) = sqlx::query_as(
        "select v.class, b.timezone from vehicles v join parking_bays b on b.id = v.bay_id where v.id = $1",
    )
    .bind(id.uuid)
    .fetch_one(pool)
    .await?;
    let mut conn = pool.acquire().await?;
    let ctx = origin::app::pricing::context(&mut conn, id.region, class.parse()?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let w = domain::window::TimeWindow::new(window.0, window.1)?;
    let breakdown = origin::app::pricing::quote_price(
        &ctx,
        &w,
        origin::app::pricing::parse_tz(&tz).map_err(|e| anyhow::anyhow!("{e}"))?,
        origin::app::pricing::Signals {
            surge: Multiplier::from_bp(surge_bp),
            risk: Multiplier::from_bp(risk_bp),
        },
        origin::app::pricing::Customer::default(),
        Utc::now(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(breakdown.total.minor)
}

#[sqlx::test(migrations = "../migrations")]
async fn with_a_healthy_inference_service_quotes_include_risk_and_demand_by_the_calculators_rules(
    pool: PgPool,
) -> TestResult {
    let fake = FakeInference::start().await?;
    // Score 0.5 → risk ×1.20; demand 3 of supply 4 → pressure 0.75 → surge ×1.50.
    fake.set_score(0.5);
    fake.set_demand(3.0, 4.0);
    let app = spawn_app_with(
        pool.clone(),
        &[("INFERENCE_URL", &fake.url), ("PRICING_BUDGET_MS", "2000")],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[3].clone();
    let w = window(2, 3);
    let (reply, _) = quote_v2(&app, "healthy", &vehicle, w).await?;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert!(degraded(&reply).is_empty(), "{}", reply.body);
    assert_eq!(reply.body["multipliers"]["risk"], json!(1.2));
    assert_eq!(reply.body["multipliers"]["surge"], json!(1.5));
    let kinds: Vec<&str> = reply.body["breakdown"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        kinds.contains(&"surge") && kinds.contains(&"risk"),
        "{kinds:?}"
    );
    let expected = expected_total(&pool, &vehicle, w, 15_000, 12_000).await?;
    assert_eq!(reply.body["total"]["minor"].as_i64(), Some(expected));
    let neutral = expected_total(&pool, &vehicle, w, 10_000, 10_000).await?;
    assert!(expected > neutral, "{expected} vs neutral {neutral}");
    assert!(fake.risk_calls() >= 1 && fake.demand_calls() >= 1);

    // Another model answer is another price: the quote is not a function of the rate table.
    fake.set_score(0.0);
    fake.set_demand(0.0, 4.0);
    let (cheaper, _) = quote_v2(&app, "healthy", &vehicle, window(3, 3)).await?;
    assert_eq!(cheaper.body["multipliers"]["risk"], json!(0.95));
    assert_eq!(cheaper.body["multipliers"]["surge"], json!(1.0));
    app.stop().await
}

/// Value of a gauge or counter sample with all the given labels.
async fn metric(app: &TestApp, name: &str, labels: &[&str]) -> TestResult<f64> {
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
async fn a_slow_inference_service_degrades_quotes_within_budget_opens_the_breaker_then_one_probe_closes_it(
    pool: PgPool,
) -> TestResult {
    let fake = FakeInference::start().await?;
    fake.set_score(0.9); // ×1.40
    let cooldown = Duration::from_millis(1500);
    let app = spawn_app_with(
        pool,
        &[
            ("INFERENCE_URL", &fake.url),
            ("PRICING_BUDGET_MS", "300"),
            ("INFERENCE_TIMEOUT_MS", "2000"),
            ("INFERENCE_RETRIES", "0"),
            ("BREAKER_FAILURES", "3"),
            ("BREAKER_COOLDOWN_MS", "1500"),
        ],
    )
    .await?;
    let vehicles = app.vehicles("EUW").await?;
    let user = "slowpoke";

    // Healthy first: the user's risk multiplier lands in L2.
    let (fresh, _) = quote_v2(&app, user, &vehicles[0], window(2, 2)).await?;
    assert_eq!(fresh.status.as_u16(), 201, "{}", fresh.body);
    assert!(degraded(&fresh).is_empty(), "{}", fresh.body);
    assert_eq!(fresh.body["multipliers"]["risk"], json!(1.4));

    // Slowed far past the budget: quotes still answer within budget + margin, degraded, with
    // the cached risk and the neutral (or grid) demand.
    fake.set_delay(Duration::from_secs(2));
    let calls_before = fake.risk_calls();
    for day in 3..6 {
        let (reply, took) = quote_v2(&app, user, &vehicles[1], window(day, 2)).await?;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
        assert!(
            took < Duration::from_millis(300 + 700),
            "a degraded quote took {took:?}"
        );
        let d = degraded(&reply);
        assert!(
            d.contains(&"risk".to_owned()) && d.contains(&"demand".to_owned()),
            "{d:?}"
        );
        assert_eq!(reply.body["multipliers"]["risk"], json!(1.4), "cached risk");
        assert_eq!(
            reply.body["multipliers"]["surge"],
            json!(1.0),
            "neutral demand"
        );
        // v1 says it in a header.
    }
    assert_eq!(
        fake.risk_calls(),
        calls_before + 3,
        "three calls, three failures"
    );
    // Open now: further quotes make no call at all.
    let open_calls = fake.risk_calls();
    for day in 6..9 {
        let reply = app
            .post(
                "/v1/quotes",
                Some(&token(user)),
                &json!({ "vehicle_id": vehicles[2], "start": window(day, 2).0, "end": window(day, 2).1 }),
                None,
            )
            .await?;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
        let header = reply
            .headers
            .get("pricing-degraded")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(header.contains("risk"), "v1 header: {header:?}");
    }
    assert_eq!(
        fake.risk_calls(),
        open_calls,
        "an open breaker sends nothing"
    );
    assert_eq!(
        metric(
            &app,
            "circuit_breaker_state",
            &[r#"dependency="inference_risk""#]
        )
        .await?,
        2.0
    );
    let ready = app.get("/readyz", None).await?;
    assert_eq!(
        ready.status.as_u16(),
        200,
        "an open breaker is degraded, not down"
    );
    assert_eq!(ready.body["checks"]["inference"]["inference_risk"], "open");
    assert!(
        metric(
            &app,
            "circuit_breaker_transitions_total",
            &[r#"dependency="inference_risk""#, r#"to="open""#]
        )
        .await?
            >= 1.0
    );

    // After the cool-down exactly one probe goes through, even with three quotes at once; it
    // is still slow, so the breaker opens again.
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    let before_probe = fake.risk_calls();
    let (a, b, c) = tokio::join!(
        quote_v2(&app, user, &vehicles[3], window(9, 2)),
        quote_v2(&app, user, &vehicles[4], window(9, 2)),
        quote_v2(&app, user, &vehicles[5], window(9, 2)),
    );
    for r in [a?, b?, c?] {
        assert_eq!(r.0.status.as_u16(), 201, "{}", r.0.body);
    }
    assert_eq!(fake.risk_calls(), before_probe + 1, "one probe only");

    // Healthy again: after the next cool-down the probe succeeds, the breaker closes and quotes
    // are fresh.
    fake.set_delay(Duration::ZERO);
    fake.set_score(0.5);
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    let (probe, _) = quote_v2(&app, user, &vehicles[6], window(10, 2)).await?;
    assert_eq!(probe.status.as_u16(), 201, "{}", probe.body);
    assert!(
        !degraded(&probe).contains(&"risk".to_owned()),
        "{}",
        probe.body
    );
    let (after, _) = quote_v2(&app, user, &vehicles[7], window(11, 2)).await?;
    assert!(degraded(&after).is_empty(), "{}", after.body);
    assert_eq!(after.body["multipliers"]["risk"], json!(1.2));
    assert_eq!(
        metric(
            &app,
            "circuit_breaker_state",
            &[r#"dependency="inference_risk""#]
        )
        .await?,
        0.0
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn an_inference_service_answering_500_degrades_to_neutral_without_a_cached_value(
    pool: PgPool,
) -> TestResult {
    let fake = FakeInference::start().await?;
    fake.set_status(503);
    let app = spawn_app_with(
        pool,
        &[("INFERENCE_URL", &fake.url), ("PRICING_BUDGET_MS", "1000")],
    )
    .await?;
    let vehicle = app.vehicles("EUN").await?[1].clone();
    let (reply, _) = quote_v2(&app, "never-scored", &vehicle, window(2, 2)).await?;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert_eq!(reply.body["multipliers"]["risk"], json!(1.0));
    assert!(degraded(&reply).contains(&"risk".to_owned()));
    // Degraded quotes are not kept in L1: the same question is computed again.
    let (again, _) = quote_v2(&app, "never-scored", &vehicle, window(2, 2)).await?;
    assert_eq!(
        again.headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("miss")
    );
    assert_ne!(again.body["quote_id"], reply.body["quote_id"]);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn three_sources_each_delayed_by_d_take_about_d_not_3d(pool: PgPool) -> TestResult {
    let d = Duration::from_millis(1000);
    let fake = FakeInference::start().await?;
    let app = spawn_app_with(
        pool.clone(),
        &[
            ("INFERENCE_URL", &fake.url),
            ("PRICING_BUDGET_MS", "5000"),
            ("INFERENCE_TIMEOUT_MS", "5000"),
        ],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[4].clone();
    let id: VehicleId = vehicle.parse()?;
    let class: String = sqlx::query_scalar("select class from vehicles where id = $1")
        .bind(id.uuid)
        .fetch_one(&pool)
        .await?;
    // Risk and demand: the fake waits d. Base: its L2 entry is dropped and its table locked
    // for d, so the base price waits d on PostgreSQL.
    fake.set_delay(d);
    let mut redis = redis::Client::open(app.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}l2:pricing:EUW:{class}", app.redis_prefix))
        .query_async(&mut redis)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("lock table base_rates in access exclusive mode")
        .execute(&mut *tx)
        .await?;
    let locked_at = Instant::now();
    let release = tokio::spawn(async move {
        tokio::time::sleep(d).await;
        tx.rollback().await
    });
    let (reply, _) = quote_v2(&app, "parallel", &vehicle, window(2, 3)).await?;
    let took = locked_at.elapsed();
    release.await??;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert!(degraded(&reply).is_empty(), "{}", reply.body);
    assert!(took >= d, "the sources were not delayed: {took:?}");
    assert!(
        took < d * 2,
        "sequential, not parallel: {took:?} for d = {d:?}"
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn without_inference_url_quotes_are_neutral_and_not_degraded(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[2].clone();
    let (reply, _) = quote_v2(&app, "plain", &vehicle, window(2, 2)).await?;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert_eq!(reply.body["degraded"], Value::Array(vec![]));
    assert_eq!(reply.body["multipliers"]["risk"], json!(1.0));
    assert!(reply.headers.get("pricing-degraded").is_none());
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn failed_inference_calls_are_retried_a_bounded_number_of_times_and_timeouts_are_not(
    pool: PgPool,
) -> TestResult {
    let fake = FakeInference::start().await?;
    let app = spawn_app_with(
        pool,
        &[
            ("INFERENCE_URL", &fake.url),
            ("PRICING_BUDGET_MS", "3000"),
            ("INFERENCE_TIMEOUT_MS", "300"),
            ("INFERENCE_RETRIES", "2"),
            ("BREAKER_FAILURES", "100"),
        ],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[6].clone();

    // A 500 is retried: one call and two retries, then the fallback.
    fake.set_status(500);
    let before = fake.risk_calls();
    let (reply, _) = quote_v2(&app, "retried", &vehicle, window(2, 2)).await?;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert!(degraded(&reply).contains(&"risk".to_owned()));
    assert_eq!(fake.risk_calls() - before, 3);

    // A timeout is not retried: it would spend the budget of the whole quote.
    fake.set_status(200);
    fake.set_delay(Duration::from_millis(1500));
    let before = fake.risk_calls();
    let (reply, took) = quote_v2(&app, "timed-out", &vehicle, window(3, 2)).await?;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert!(degraded(&reply).contains(&"risk".to_owned()));
    assert_eq!(fake.risk_calls() - before, 1);
    assert!(took < Duration::from_millis(1500), "{took:?}");
    app.stop().await
}
