//! The origin's access log (issue 15): the real `origin` binary with `LOG_FORMAT=json` writes
//! one JSON line per request at INFO, target `access`, with the route template, status,
//! duration, request id, trace id, region and the user's pseudonym — read back from the
//! process's standard output. Needs the origin binary to be current (`cargo build --workspace
//! --bins`).

use std::time::Duration;

use anyhow::Context;
use e2e::cluster::{ensure_origin_bin_is_current, OriginProcess};
use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

fn database_url(pool: &PgPool) -> TestResult<String> {
    let options = pool.connect_options();
    let db = options.get_database().context("the test database's name")?;
    Ok(format!(
        "postgres://{}@{}:{}/{db}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    ))
}

/// The JSON lines of `log` whose target is `access`.
fn access_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_origin_writes_one_json_access_line_per_request_with_its_route_template_and_no_token(
    pool: PgPool,
) -> TestResult {
    ensure_origin_bin_is_current()?;
    demo_fleet::seed_demo(&pool, FLEET_PER_CITY).await?;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url(&pool)?),
        ("REDIS_URL", test_redis::shared_url()),
        (
            "REDIS_KEY_PREFIX",
            format!("test:{}:", uuid::Uuid::new_v4().simple()),
        ),
        ("JWT_ISSUER", ISSUER.into()),
        ("JWT_AUDIENCE", AUDIENCE.into()),
        ("JWT_HS256_SECRET", JWT_SECRET.into()),
        (
            "QUOTE_SIGNING_KEYS",
            "k1=quote-key-one-quote-key-one-quote-key-one".into(),
        ),
        ("LOG_FORMAT", "json".into()),
        // An origin tested alone: no edge signs these requests.
        ("ORIGIN_ALLOW_DIRECT", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let dir = std::env::temp_dir().join(format!("access-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("origin.log");
    let port = test_redis::free_port()?;
    let origin = OriginProcess::start(port, env, log.clone()).await?;
    let base = origin.base();
    let client = reqwest::Client::new();
    let vehicle: String =
        sqlx::query_scalar("select 'veh_euw_' || replace(id::text, '-', '') from vehicles where region = 'EUW' and status = 'active' order by id limit 1")
            .fetch_one(&pool)
            .await?;
    let ann = token("ann");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let w = window(4, 2);

    // A quote with a trace, a refused token, an unknown route.
    let quote = client
        .post(format!("{base}/v1/quotes"))
        .bearer_auth(&ann)
        .header("x-request-id", "access-quote-1")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }))
        .send()
        .await?;
    let quote_status = quote.status().as_u16();
    let quote_body: Value = quote.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(quote_status == 201, "quote: {quote_status} {quote_body}");
    let refused = client
        .get(format!("{base}/v1/bookings"))
        .bearer_auth("garbage.token.value")
        .header("x-request-id", "access-refused-1")
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 401);
    let unknown = client
        .get(format!("{base}/v1/nowhere/ann"))
        .header("x-request-id", "access-unknown-1")
        .send()
        .await?;
    assert_eq!(unknown.status().as_u16(), 404);

    // The lines are written as the responses go out; the file may lag a little.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = access_lines(&log);
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(origin);
    let by_id = |id: &str| -> TestResult<Value> {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["fields"]["request_id"] == id)
            .collect();
        anyhow::ensure!(
            mine.len() == 1,
            "{} access lines for {id}: {lines:#?}",
            mine.len()
        );
        Ok(mine[0]["fields"].clone())
    };

    let q = by_id("access-quote-1")?;
    assert_eq!(q["method"], "POST", "{q}");
    assert_eq!(q["route"], "/v1/quotes", "{q}");
    assert_eq!(q["status"], 201, "{q}");
    assert_eq!(q["trace_id"], trace_id, "{q}");
    assert_eq!(q["region"], "EUW,EUN", "{q}");
    assert_eq!(q["user"], domain::trace::user_hash("ann").as_str(), "{q}");
    assert!(q["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{q}");
    let r = by_id("access-refused-1")?;
    assert_eq!(r["status"], 401, "{r}");
    assert_eq!(r["route"], "/v1/bookings", "{r}");
    assert!(
        r.get("user").is_none(),
        "an unverified caller was named: {r}"
    );
    assert!(r.get("trace_id").is_none(), "{r}");
    let u = by_id("access-unknown-1")?;
    assert_eq!(u["status"], 404, "{u}");
    assert_eq!(u["route"], "unmatched", "{u}");

    // One line per request: the access target at INFO, nothing else in it.
    let whole = std::fs::read_to_string(&log)?;
    for (name, secret) in [
        ("the bearer token", ann.as_str()),
        ("the refused token", "garbage.token.value"),
        ("the JWT secret", JWT_SECRET),
        (
            "the quote token",
            quote_body["quote_token"].as_str().unwrap_or("-"),
        ),
    ] {
        assert!(!whole.contains(secret), "{name} is in the origin's log");
    }
    for line in &lines {
        assert_eq!(line["level"], "INFO", "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
