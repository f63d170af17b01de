//! The front door of an origin (issue 19, item 1): only requests an edge signed get in, a
//! signature is good once, keys rotate, and one user cannot exceed the origin's own limit.
//! The same through real edges, on both runtimes: `tests/edge/front_door.rs`.

use std::time::Duration;

use chrono::Utc;
use e2e::edge_signing::TestSigner;
use e2e::*;
use serde_json::json;
use sqlx::PgPool;

const OLD_KEY: &str = "old-edge-key-old-edge-key-old-edge-key-0";
const NEW_KEY: &str = "new-edge-key-new-edge-key-new-edge-key-1";

fn keys(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(kid, key)| format!("{kid}={key}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An origin that lets only edges in, with the edge keys `list`.
async fn edges_only(pool: PgPool, list: &[(&str, &str)]) -> TestResult<TestApp> {
    spawn_app_with(
        pool,
        &[
            ("EDGE_SIGNING_KEYS", &keys(list)),
            ("ORIGIN_ALLOW_DIRECT", "0"),
        ],
    )
    .await
}

/// Sends `req` as built (no signing by the harness) and reads the reply.
async fn send(app: &TestApp, req: reqwest::Request) -> TestResult<Reply> {
    Reply::read(app.client.execute(req).await?).await
}

fn bookings(app: &TestApp, user: &str) -> TestResult<reqwest::Request> {
    Ok(app
        .client
        .get(format!("{}/v1/bookings", app.base))
        .bearer_auth(token(user))
        .build()?)
}

fn signed(signer: &TestSigner, mut req: reqwest::Request) -> TestResult<reqwest::Request> {
    signer.sign(&mut req)?;
    Ok(req)
}

fn assert_edge_refusal(reply: &Reply, why: &str) {
    reply.assert_problem(401);
    assert_eq!(
        reply.problem_type(),
        "/problems/edge-signature",
        "{why}: {}",
        reply.body
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn an_origin_refuses_unsigned_tampered_expired_and_replayed_requests_before_any_work(
    pool: PgPool,
) -> TestResult {
    let app = edges_only(pool, &[("e1", NEW_KEY)]).await?;
    let edge = TestSigner::new("e1", NEW_KEY, "EUW")?;

    // Through "an edge": served.
    let ok = send(&app, signed(&edge, bookings(&app, "ann")?)?).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);

    // Straight to the origin: no signature, a stranger's key, a well-formed lie.
    let unsigned = send(&app, bookings(&app, "ann")?).await?;
    assert_edge_refusal(&unsigned, "unsigned");
    assert!(unsigned.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("no edge signature"));
    let stranger = TestSigner::new("e1", "someone-elses-key-someone-elses-key-000", "EUW")?;
    let forged = send(&app, signed(&stranger, bookings(&app, "ann")?)?).await?;
    assert_edge_refusal(&forged, "signed with another secret");
    let unknown = TestSigner::new("e9", NEW_KEY, "EUW")?;
    assert_edge_refusal(
        &send(&app, signed(&unknown, bookings(&app, "ann")?)?).await?,
        "unknown key id",
    );
    let mut garbage = bookings(&app, "ann")?;
    garbage
        .headers_mut()
        .insert("x-edge-signature", "kid=e1,sig=AAAA".parse()?);
    assert_edge_refusal(&send(&app, garbage).await?, "malformed");

    // Tampered after signing: the query, the body, the region, the request id.
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let w = window(3, 2);
    let quote = |body: serde_json::Value| -> TestResult<reqwest::Request> {
        Ok(app
            .client
            .post(format!("{}/v1/quotes", app.base))
            .bearer_auth(token("ann"))
            .json(&body)
            .build()?)
    };
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let mut other_body = signed(&edge, quote(body.clone())?)?;
    *other_body.body_mut() = Some(
        serde_json::to_vec(
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1, "promo_code": "FREE" }),
        )?
        .into(),
    );
    assert_edge_refusal(&send(&app, other_body).await?, "body changed");
    let mut other_query = signed(&edge, bookings(&app, "ann")?)?;
    other_query.url_mut().set_query(Some("limit=1"));
    assert_edge_refusal(&send(&app, other_query).await?, "query changed");
    let mut other_region = signed(&edge, bookings(&app, "ann")?)?;
    other_region
        .headers_mut()
        .insert("x-edge-region", "EUN".parse()?);
    assert_edge_refusal(&send(&app, other_region).await?, "region changed");
    let mut other_id = signed(&edge, bookings(&app, "ann")?)?;
    other_id
        .headers_mut()
        .insert("x-request-id", "another-id".parse()?);
    assert_edge_refusal(&send(&app, other_id).await?, "request id changed");
    // The untouched quote passes: what failed above was the tampering.
    let quoted = send(&app, signed(&edge, quote(body)?)?).await?;
    assert_eq!(quoted.status, 201, "{}", quoted.body);

    // Outside the ±60 s window, either way.
    let now = Utc::now().timestamp();
    for skew in [-90, 90] {
        let mut req = bookings(&app, "ann")?;
        edge.sign_at(
            &mut req,
            now + skew,
            &uuid::Uuid::new_v4().simple().to_string(),
        )?;
        let reply = send(&app, req).await?;
        assert_edge_refusal(&reply, "expired");
        assert!(reply.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("window"));
    }
    let mut recent = bookings(&app, "ann")?;
    edge.sign_at(
        &mut recent,
        now - 30,
        &uuid::Uuid::new_v4().simple().to_string(),
    )?;
    assert_eq!(
        send(&app, recent).await?.status,
        200,
        "30 s old is inside the window"
    );

    // Replayed: the same signed request twice.
    let once = signed(&edge, bookings(&app, "ann")?)?;
    let again = once
        .try_clone()
        .ok_or_else(|| anyhow::anyhow!("clone request"))?;
    assert_eq!(send(&app, once).await?.status, 200);
    let replay = send(&app, again).await?;
    assert_edge_refusal(&replay, "replayed");
    assert!(replay.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("replay"));

    // A refused write costs nothing: no booking, no idempotency record.
    let hold = app
        .client
        .post(format!("{}/v1/bookings", app.base))
        .bearer_auth(token("ann"))
        .header("idempotency-key", "front-door-refused")
        .json(&json!({ "quote_token": quoted.body["quote_token"] }))
        .build()?;
    assert_edge_refusal(&send(&app, hold).await?, "unsigned hold");
    assert_eq!(app.count("bookings", "true").await?, 0);
    assert_eq!(app.count("idempotency_keys", "true").await?, 0);

    // The cluster's routes stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let resp = app.client.get(format!("{}{path}", app.base)).send().await?;
        assert_eq!(resp.status(), 200, "{path}");
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?
        .text()
        .await?;
    for reason in [
        "missing",
        "bad-signature",
        "unknown-key",
        "malformed",
        "expired",
        "replayed",
    ] {
        assert!(
            metrics.contains(&format!(
                "edge_signature_refusals_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted"
        );
    }
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_key_rotation_adds_the_new_key_switches_the_edges_then_removes_the_old_one(
    pool: PgPool,
) -> TestResult {
    let old = TestSigner::new("e0", OLD_KEY, "EUW")?;
    let new = TestSigner::new("e1", NEW_KEY, "EUW")?;

    // Before: only the old key.
    let app = edges_only(pool.clone(), &[("e0", OLD_KEY)]).await?;
    assert_eq!(
        send(&app, signed(&old, bookings(&app, "rot")?)?)
            .await?
            .status,
        200
    );
    assert_edge_refusal(
        &send(&app, signed(&new, bookings(&app, "rot")?)?).await?,
        "new key before the origins know it",
    );
    app.stop().await?;

    // Step 1: the origins learn the new key; edges on either key get in.
    let app = edges_only(pool.clone(), &[("e0", OLD_KEY), ("e1", NEW_KEY)]).await?;
    for (name, signer) in [("old", &old), ("new", &new)] {
        let reply = send(&app, signed(signer, bookings(&app, "rot")?)?).await?;
        assert_eq!(
            reply.status, 200,
            "{name} key during the rotation: {}",
            reply.body
        );
    }
    app.stop().await?;

    // Step 3: the old key removed; a request signed with it is refused.
    let app = edges_only(pool, &[("e1", NEW_KEY)]).await?;
    assert_eq!(
        send(&app, signed(&new, bookings(&app, "rot")?)?)
            .await?
            .status,
        200
    );
    let stale = send(&app, signed(&old, bookings(&app, "rot")?)?).await?;
    assert_edge_refusal(&stale, "old key after its removal");
    assert!(stale.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("unknown key"));
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn with_direct_calls_allowed_a_signature_that_is_present_is_still_checked(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[
            ("EDGE_SIGNING_KEYS", &keys(&[("e1", NEW_KEY)])),
            ("ORIGIN_ALLOW_DIRECT", "1"),
        ],
    )
    .await?;
    assert_eq!(
        send(&app, bookings(&app, "dev")?).await?.status,
        200,
        "unsigned, allowed"
    );
    let good = TestSigner::new("e1", NEW_KEY, "EUW")?;
    assert_eq!(
        send(&app, signed(&good, bookings(&app, "dev")?)?)
            .await?
            .status,
        200
    );
    let bad = TestSigner::new("e1", OLD_KEY, "EUW")?;
    assert_edge_refusal(
        &send(&app, signed(&bad, bookings(&app, "dev")?)?).await?,
        "a wrong signature is never let through",
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn with_redis_down_signatures_are_still_checked_but_not_remembered(
    pool: PgPool,
) -> TestResult {
    // Nobody listens on this port: the origin starts degraded (Redis down).
    let dead = format!("redis://127.0.0.1:{}", test_redis::free_port()?);
    let app = spawn_app_with(
        pool,
        &[
            ("EDGE_SIGNING_KEYS", &keys(&[("e1", NEW_KEY)])),
            ("ORIGIN_ALLOW_DIRECT", "0"),
            ("REDIS_URL", &dead),
        ],
    )
    .await?;
    let edge = TestSigner::new("e1", NEW_KEY, "EUW")?;
    assert_edge_refusal(&send(&app, bookings(&app, "deg")?).await?, "unsigned");
    let once = signed(&edge, bookings(&app, "deg")?)?;
    let again = once
        .try_clone()
        .ok_or_else(|| anyhow::anyhow!("clone request"))?;
    // The documented degraded mode: window and MAC only, no replay memory.
    assert_eq!(send(&app, once).await?.status, 200);
    assert_eq!(send(&app, again).await?.status, 200);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_user_past_the_origins_own_limit_gets_429_with_retry_after_and_others_do_not(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("ORIGIN_USER_LIMIT_PER_MIN", "5")]).await?;
    // All six requests inside one minute window, so the sliding estimate counts each fully
    // (a boundary in between would weigh the first ones down and the sixth would pass: the
    // test then fails, it does not pass by luck).
    let now = Utc::now().timestamp_millis();
    let left = 60_000 - now.rem_euclid(60_000);
    if left < 10_000 {
        tokio::time::sleep(Duration::from_millis(u64::try_from(left)? + 100)).await;
    }
    for i in 0..5 {
        let reply = app.get("/v1/bookings", Some(&token("heavy"))).await?;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    let over = app.get("/v1/bookings", Some(&token("heavy"))).await?;
    over.assert_problem(429);
    assert_eq!(over.problem_type(), "/problems/rate-limited");
    let retry: u64 = edge::header(&over, "retry-after")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Retry-After: {:?}", over.headers))?;
    // Sliding window: the wait runs past this window's end until the previous window's
    // weight (5 requests, fading over the next minute) leaves room for one more, 60 s / 5
    // after the boundary at most: at most 60 + 12 s.
    assert!((1..=72).contains(&retry), "Retry-After {retry}");
    assert_eq!(edge::header(&over, "ratelimit-policy"), Some("5;w=60"));
    assert_eq!(edge::header(&over, "ratelimit-remaining"), Some("0"));

    // Another user is not affected; a refused request did not count (still refused, not
    // pushed further out).
    assert_eq!(
        app.get("/v1/bookings", Some(&token("light"))).await?.status,
        200
    );
    let still = app.get("/v1/bookings", Some(&token("heavy"))).await?;
    assert_eq!(still.status, 429);
    let retry_again: u64 = edge::header(&still, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retry_again <= retry, "{retry_again} > {retry}");
    // The limit is per user: without a valid token nothing is counted (the 401 comes from
    // the token check, not from the limit).
    assert_eq!(app.get("/v1/bookings", None).await?.status, 401);
    app.stop().await
}
