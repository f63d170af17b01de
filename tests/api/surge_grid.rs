//! The surge grid through the API: live holds in a cell raise its multiplier up to the cap,
//! an empty cell is ×1.0, and the same inputs give the same grid.

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

async fn recompute(app: &TestApp, region: &str) -> TestResult<Value> {
    let reply = app
        .post(
            &format!("/v1/admin/surge/recompute?region={region}"),
            Some(&ops_token("ops-surge")),
            &Value::Null,
            None,
        )
        .await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "recompute: {reply:?}");
    Ok(reply.body)
}

#[sqlx::test(migrations = "../migrations")]
async fn live_holds_raise_their_cells_multiplier_up_to_the_cap_and_empty_cells_stay_neutral(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool.clone()).await?;
    let t = token("surge-watcher");
    // The first EUW vehicle and its bay.
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let (lat, lon): (f64, f64) = sqlx::query_as(
        "select b.lat, b.lon from vehicles v join parking_bays b on b.id = v.bay_id where v.id = $1",
    )
    .bind(uuid_of(&vehicle)?)
    .fetch_one(&pool)
    .await?;
    let at = format!("/v1/surge?lat={lat}&lon={lon}");

    let quiet = app.get(&at, Some(&t)).await?;
    assert_eq!(quiet.status.as_u16(), 200, "{}", quiet.body);
    assert_eq!(quiet.body["multiplier"], json!(1.0), "{}", quiet.body);
    assert_eq!(quiet.body["resolution"], 8);
    let supply = quiet.body["detail"]["supply"].as_u64().unwrap_or(0);
    assert!(supply >= 1, "{}", quiet.body);

    // Holds on the cell's vehicle, one window each: the multiplier never falls, never passes
    // ×3.0, and the cell's own (unsmoothed) value reaches the cap.
    let mut last = 10_000;
    let mut raw_max = 0;
    for day in 2..(2 + 2 * supply as i64 + 2) {
        let hold = app
            .hold(&format!("holder-{day}"), &vehicle, window(day, 2))
            .await?;
        assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);
        recompute(&app, "EUW").await?;
        let now = app.get(&at, Some(&t)).await?;
        let m = now.body["multiplier_bp"].as_u64().unwrap_or(0);
        let raw = now.body["detail"]["raw_bp"].as_u64().unwrap_or(0);
        assert!(m >= last, "fell from {last} to {m}: {}", now.body);
        assert!(m <= 30_000 && raw <= 30_000, "{}", now.body);
        last = m;
        raw_max = raw_max.max(raw);
    }
    assert!(last > 10_000, "holds did not raise the surge");
    assert_eq!(raw_max, 30_000, "the cell reaches the cap");

    // An empty cell (no bays there) is ×1.0.
    let empty = app.get("/v1/surge?lat=50.0&lon=8.0", Some(&t)).await?;
    assert_eq!(empty.body["multiplier"], json!(1.0), "{}", empty.body);
    assert!(empty.body["detail"].is_null());

    // The same inputs give the same grid.
    let a = recompute(&app, "EUW").await?;
    let b = recompute(&app, "EUW").await?;
    assert_eq!(a["cells"], b["cells"]);
    let whole = app.get("/v1/surge?region=EUW", Some(&t)).await?;
    assert_eq!(whole.body["cells"], b["cells"]);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn surge_queries_are_validated(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let t = token("surge-validator");
    app.get("/v1/surge", Some(&t)).await?.assert_problem(400);
    let bad = app.get("/v1/surge?lat=95&lon=8", Some(&t)).await?;
    bad.assert_problem(422);
    assert_eq!(bad.body["field"], "lat");
    app.get("/v1/surge?lat=50&lon=8", None)
        .await?
        .assert_problem(401);
    app.post(
        "/v1/admin/surge/recompute?region=EUW",
        Some(&t),
        &Value::Null,
        None,
    )
    .await?
    .assert_problem(403);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_grid_adds_the_demand_models_prediction_and_does_without_it_when_it_fails(
    pool: PgPool,
) -> TestResult {
    let fake = crate::inference_fake::FakeInference::start().await?;
    fake.set_demand(50.0, 1.0);
    let app = spawn_app_with(
        pool,
        &[("INFERENCE_URL", &fake.url), ("PRICING_BUDGET_MS", "1000")],
    )
    .await?;
    let grid = recompute(&app, "EUW").await?;
    assert_eq!(grid["prediction_available"], true, "{grid}");
    let cells = grid["cells"].as_object().cloned().unwrap_or_default();
    assert!(!cells.is_empty());
    for cell in cells.values() {
        assert_eq!(cell["predicted"].as_f64(), Some(50.0), "{cell}");
        // 50 predicted bookings on a handful of cars: every cell at the cap, smoothing keeps it.
        assert_eq!(cell["multiplier_bp"], 30_000, "{cell}");
    }

    // The model fails: the grid is live holds only (none here), all ×1.0.
    fake.set_status(500);
    let grid = recompute(&app, "EUW").await?;
    assert_eq!(grid["prediction_available"], false, "{grid}");
    let cells = grid["cells"].as_object().cloned().unwrap_or_default();
    assert!(
        cells.values().all(|c| c["multiplier_bp"] == 10_000),
        "{grid}"
    );
    app.stop().await
}
