//! The reference AI inference service (`origin/inference`) on a real database: it reads
//! through the read-only role, scores risk from each user's own history, predicts demand from
//! recent bookings per zone and local hour of week, and the origin prices quotes with it.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use e2e::*;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Starts the reference service on `pool`'s database as the `inference_ro` role.
async fn start_reference(pool: &PgPool) -> TestResult<(String, PgPool)> {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .username("inference_ro");
    let ro = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let (addr, _server) = inference::serve(
        ro.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        std::future::pending(),
    )
    .await?;
    Ok((format!("http://{addr}"), ro))
}

async fn call(url: &str, body: Value) -> TestResult<Value> {
    let reply = reqwest::Client::new().post(url).json(&body).send().await?;
    anyhow::ensure!(reply.status().is_success(), "{url}: {}", reply.status());
    Ok(reply.json().await?)
}

async fn score(base: &str, user: &str, vehicle: &str) -> TestResult<f64> {
    let (start, end) = window(2, 2);
    let answer = call(
        &format!("{base}/v1/risk-score"),
        json!({ "user_id": user, "vehicle_id": vehicle, "region": "EUW", "start": start, "end": end }),
    )
    .await?;
    answer["score"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no score: {answer}"))
}

#[sqlx::test(migrations = "../migrations")]
async fn the_reference_service_scores_risk_from_history_and_predicts_demand_per_zone(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool.clone()).await?;
    let (base, ro) = start_reference(&pool).await?;

    // The role cannot write, whatever the service does.
    let write = sqlx::query("update vehicles set status = 'retired'")
        .execute(&ro)
        .await;
    assert!(write.is_err(), "inference_ro wrote to vehicles");

    let vehicles = app.vehicles("EUW").await?;
    let vehicle = vehicles[0].clone();
    let starts: Vec<DateTime<Utc>> = (5..9).map(|day| window(day, 2).0).collect();
    let (lat, lon): (f64, f64) = sqlx::query_as(
        "select b.lat, b.lon from vehicles v join parking_bays b on b.id = v.bay_id where v.id = $1",
    )
    .bind(uuid_of(&vehicle)?)
    .fetch_one(&pool)
    .await?;
    let zone = origin::app::surge::cell_of(lat, lon, 8)
        .ok_or_else(|| anyhow::anyhow!("cell"))?
        .to_string();
    let elsewhere = origin::app::surge::cell_of(50.0, 8.0, 8)
        .ok_or_else(|| anyhow::anyhow!("cell"))?
        .to_string();
    let quiet_hour = starts[0] + chrono::Duration::hours(5);
    let demand_body =
        json!({ "region": "EUW", "zones": [zone, elsewhere], "buckets": [starts[0], quiet_hour] });
    let before = call(&format!("{base}/v1/demand"), demand_body.clone()).await?;

    // A careful user confirms two bookings; a canceller cancels four.
    app.confirmed("careful", &vehicles[1], window(3, 2)).await?;
    app.confirmed("careful", &vehicles[1], window(4, 2)).await?;
    for day in 5..9 {
        let w = window(day, 2);
        let id = app.confirmed("canceller", &vehicle, w).await?;
        let cancel = app
            .post(
                &format!("/v1/bookings/{id}/cancel"),
                Some(&token("canceller")),
                &Value::Null,
                None,
            )
            .await?;
        assert_eq!(cancel.status.as_u16(), 200, "{}", cancel.body);
    }

    let newbie = score(&base, "newbie", &vehicle).await?;
    let careful = score(&base, "careful", &vehicle).await?;
    let canceller = score(&base, "canceller", &vehicle).await?;
    assert!((0.0..=1.0).contains(&newbie));
    assert!(
        careful < newbie,
        "history lowers risk: {careful} vs {newbie}"
    );
    assert!(
        canceller > newbie + 0.1,
        "cancellations raise risk: {canceller} vs {newbie}"
    );

    // Demand: before any booking, the zone's prior (supply × the local day profile) — not
    // zero, not the same for every hour. Then one of the canceller's windows starts at that
    // local hour of week this week: +0.7 (observed weight) × 0.5 (this week's smoothing
    // weight). Another hour is unchanged; a zone without vehicles has neither supply nor demand.
    let answer = call(&format!("{base}/v1/demand"), demand_body).await?;
    let find_in = |answer: &Value, z: &str, b: DateTime<Utc>| {
        answer["predictions"]
            .as_array()
            .and_then(|ps| {
                ps.iter().find(|p| {
                    p["zone"] == z
                        && p["bucket"]
                            .as_str()
                            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                            == Some(b)
                })
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    let demand = |answer: &Value, z: &str, b| find_in(answer, z, b)["demand"].as_f64();
    assert_eq!(
        answer["predictions"].as_array().map(Vec::len),
        Some(4),
        "{answer}"
    );
    let prior = demand(&before, &zone, starts[0]).unwrap_or(0.0);
    assert!(prior > 0.0, "{before}");
    let busy = demand(&answer, &zone, starts[0]).unwrap_or(0.0);
    assert!((busy - prior - 0.35).abs() < 1e-9, "{prior} -> {busy}");
    assert!(
        find_in(&answer, &zone, starts[0])["supply"]
            .as_f64()
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        demand(&answer, &zone, quiet_hour),
        demand(&before, &zone, quiet_hour)
    );
    assert_eq!(demand(&answer, &elsewhere, starts[0]), Some(0.0));
    assert_eq!(
        find_in(&answer, &elsewhere, starts[0])["supply"].as_f64(),
        Some(0.0)
    );

    // A bad zone is a 422, not a 500.
    let bad = reqwest::Client::new()
        .post(format!("{base}/v1/demand"))
        .json(&json!({ "region": "EUW", "zones": ["nope"], "buckets": [starts[0]] }))
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 422);
    app.stop().await?;

    // The origin prices with it: the canceller pays a higher risk multiplier than the careful
    // user for the same vehicle and window, and neither quote is degraded.
    let priced = spawn_app_with(
        pool,
        &[("INFERENCE_URL", &base), ("PRICING_BUDGET_MS", "2000")],
    )
    .await?;
    let w = window(12, 2);
    let body = json!({ "vehicle_id": vehicles[2], "start": w.0, "end": w.1 });
    let a = priced
        .post("/v2/quotes", Some(&token("careful")), &body, None)
        .await?;
    let b = priced
        .post("/v2/quotes", Some(&token("canceller")), &body, None)
        .await?;
    assert_eq!(a.status.as_u16(), 201, "{}", a.body);
    assert_eq!(b.status.as_u16(), 201, "{}", b.body);
    assert_eq!(a.body["degraded"], json!([]));
    assert_eq!(b.body["degraded"], json!([]));
    let (ra, rb) = (
        a.body["multipliers"]["risk"].as_f64().unwrap_or(0.0),
        b.body["multipliers"]["risk"].as_f64().unwrap_or(0.0),
    );
    assert!(rb > ra, "canceller ×{rb} vs careful ×{ra}");
    assert!(
        b.body["total"]["minor"].as_i64() > a.body["total"]["minor"].as_i64(),
        "{} vs {}",
        b.body,
        a.body
    );
    priced.stop().await
}
