//! The edge suite: every scenario runs against the Cloudflare worker in workerd (miniflare)
//! and the Spin component under `wasmtime serve`, each in front of a real origin, PostgreSQL,
//! Redis (through the Upstash REST gateway). Build the workers first: `scripts/edge.sh build`.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use e2e::edge::{header, EdgeStack, Runtime};
use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Runs `$scenario(pool, runtime)` once per runtime, as two tests.
macro_rules! on_both_runtimes {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[sqlx::test(migrations = "../migrations")]
            async fn on_cloudflare_workerd(pool: PgPool) -> TestResult {
                super::$scenario(pool, Runtime::Cloudflare).await
            }

            #[sqlx::test(migrations = "../migrations")]
            async fn on_spin_under_wasmtime(pool: PgPool) -> TestResult {
                super::$scenario(pool, Runtime::Spin).await
            }
        }
    };
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn search_path((start, end): (DateTime<Utc>, DateTime<Utc>)) -> String {
    format!(
        "/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&start={}&end={}&limit=100",
        rfc(start),
        rfc(end)
    )
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["vehicle_id"].as_str().map(str::to_owned))
        .collect()
}

fn cache_state(reply: &Reply) -> &str {
    header(reply, "x-edge-cache").unwrap_or("")
}

/// Waits, if needed, so that the next few seconds fall inside one rate-limit window (the
/// sliding estimate then counts every request of the test at full weight).
async fn inside_one_window(needed: Duration) {
    let now = Utc::now().timestamp_millis() as u64;
    let left = 60_000 - now % 60_000;
    if u128::from(left) < needed.as_millis() {
        tokio::time::sleep(Duration::from_millis(left + 100)).await;
    }
}

// --- the booking lifecycle, identical on both runtimes ------------------------------------

/// search → quote → hold → confirm → extend → cancel through one edge; returns what a
/// client saw, without the parts that are unique per run (ids, tokens, timestamps).
async fn lifecycle(
    stack: &EdgeStack,
    user: &str,
    w: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<Value> {
    let t = token(user);
    let rid = format!("edge-lifecycle-{}", stack.runtime.name());
    let search = stack
        .send(
            reqwest::Method::GET,
            &search_path(w),
            Some(&t),
            None,
            &[("x-request-id", &rid)],
        )
        .await?;
    assert_eq!(search.status, 200, "{}", search.body);
    assert_eq!(cache_state(&search), "miss");
    assert_eq!(header(&search, "x-request-id"), Some(rid.as_str()));
    assert_eq!(
        header(&search, "x-edge-runtime"),
        Some(stack.runtime.name())
    );
    assert!(header(&search, "ratelimit-remaining").is_some());
    let again = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(cache_state(&again), "hit");
    assert_eq!(again.body, search.body);
    let found = ids(&search);
    let vehicle = found.first().cloned().unwrap_or_default();

    let quote_body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let quote = stack
        .post("/v1/quotes", Some(&t), &quote_body, None)
        .await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    assert_eq!(cache_state(&quote), "miss");
    let cached = stack
        .post("/v1/quotes", Some(&t), &quote_body, None)
        .await?;
    assert_eq!(cache_state(&cached), "hit");
    assert_eq!(cached.body["quote_token"], quote.body["quote_token"]);

    let key = uuid::Uuid::new_v4().to_string();
    let hold = stack
        .send(
            reqwest::Method::POST,
            "/v1/bookings",
            Some(&t),
            Some(&json!({ "quote_token": quote.body["quote_token"] })),
            &[("idempotency-key", &key), ("x-request-id", &rid)],
        )
        .await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    // The origin saw the caller's request id: it is on the booking's history row.
    let traced = stack
        .origin()?
        .count(
            "booking_history",
            &format!("request_id = '{rid}' and to_status = 'RESERVING'"),
        )
        .await?;
    assert_eq!(
        traced, 1,
        "the hold's history row carries the edge request id"
    );

    let confirm = stack
        .post(
            &format!("/v1/bookings/{id}/confirm"),
            Some(&t),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let extend = stack
        .post(
            &format!("/v1/bookings/{id}/extend"),
            Some(&t),
            &json!({ "end": w.1 + chrono::Duration::hours(1) }),
            None,
        )
        .await?;
    assert_eq!(extend.status, 200, "{}", extend.body);
    let cancel = stack
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&t),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    let read = stack.get(&format!("/v1/bookings/{id}"), Some(&t)).await?;
    assert_eq!(read.status, 200, "{}", read.body);

    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            for k in [
                "id",
                "quote_id",
                "quote_token",
                "created_at",
                "updated_at",
                "hold_expires_at",
                "expires_at",
            ] {
                o.remove(k);
            }
        }
        v
    };
    Ok(json!({
        "search": found,
        "quote": strip(quote.body),
        "hold": strip(hold.body),
        "confirm": strip(confirm.body),
        "extend": strip(extend.body),
        "cancel": strip(cancel.body),
        "read": strip(read.body),
    }))
}

#[sqlx::test(migrations = "../migrations")]
async fn the_booking_lifecycle_through_the_edge_is_identical_on_workerd_and_wasmtime(
    pool: PgPool,
) -> TestResult {
    let mut seen = Vec::new();
    let w = window(3, 2);
    for runtime in Runtime::ALL {
        // Same database, one runtime after the other: the first run cancels its booking, so
        // the second sees the same fleet, prices and fees.
        let stack = EdgeStack::start(pool.clone(), runtime).await?;
        let result = lifecycle(&stack, "lena", w).await;
        stack.stop().await?;
        seen.push(result?);
    }
    assert_eq!(
        seen[0], seen[1],
        "workerd and wasmtime answered differently"
    );
    assert_eq!(seen[0]["cancel"]["status"], "CANCELLED");
    Ok(())
}

// --- rate limits ------------------------------------------------------------------------

async fn burst(
    stack: &EdgeStack,
    users: &[String],
    per_user: usize,
    path: &str,
) -> TestResult<usize> {
    let mut limited = 0;
    for user in users {
        let t = token(user);
        let replies = futures_util::future::join_all((0..per_user).map(|i| {
            let t = t.clone();
            // A different spoofed X-Forwarded-For on every request: it must not matter.
            let xff = format!("10.0.{}.{}", i / 250, i % 250);
            async move {
                stack
                    .send(
                        reqwest::Method::GET,
                        path,
                        Some(&t),
                        None,
                        &[("x-forwarded-for", &xff)],
                    )
                    .await
            }
        }))
        .await;
        for reply in replies {
            let reply = reply?;
            if reply.status == 429 {
                limited += 1;
            } else {
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        }
    }
    Ok(limited)
}

async fn the_101st_request_of_a_user_and_the_1001st_of_an_address_are_429(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let path = search_path(window(2, 1));
    inside_one_window(Duration::from_secs(30)).await;

    // One user: 100 pass, the 101st is refused with Retry-After, whatever X-Forwarded-For says.
    assert_eq!(burst(&stack, &["uma".into()], 100, &path).await?, 0);
    let over = stack
        .send(
            reqwest::Method::GET,
            &path,
            Some(&token("uma")),
            None,
            &[("x-forwarded-for", "203.0.113.77")],
        )
        .await?;
    over.assert_problem(429);
    let retry: u64 = header(&over, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A sliding window may ask for up to one window plus the time one request's share of the
    // previous window takes to slide out: 60 s + 60/100 s, so at most 61 s once rounded up.
    assert!((1..=61).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&over, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&over, "ratelimit-limit"), Some("100"));

    // Blocked clients are remembered in the isolate: on Cloudflare (isolates live across
    // requests) the next refusal costs no Redis call; Spin instantiates per request and asks.
    let calls = stack.redis_requests();
    let again = stack.get(&path, Some(&token("uma"))).await?;
    again.assert_problem(429);
    assert!(header(&again, "retry-after").is_some());
    let expected = match runtime {
        Runtime::Cloudflare => 0,
        Runtime::Spin => 1,
    };
    assert_eq!(
        stack.redis_requests() - calls,
        expected,
        "Upstash calls for a known-blocked user"
    );

    // Another user from the same address is unaffected.
    let other = stack.get(&path, Some(&token("vic"))).await?;
    assert_eq!(other.status, 200, "{}", other.body);

    // The address: 101 requests so far (uma's refused one was not counted, vic's was);
    // 899 more from nine users (≤ 100 each) reach 1000, the next is refused for the address.
    let users: Vec<String> = (0..9).map(|i| format!("ip-user-{i}")).collect();
    let mut limited = burst(&stack, &users[..8], 100, &path).await?;
    limited += burst(&stack, &users[8..], 99, &path).await?;
    assert_eq!(limited, 0, "the first 1000 requests of the address pass");
    let fresh = stack
        .send(
            reqwest::Method::GET,
            &path,
            Some(&token("newcomer")),
            None,
            &[("x-forwarded-for", "198.51.100.9")],
        )
        .await?;
    fresh.assert_problem(429);
    assert_eq!(header(&fresh, "ratelimit-limit"), Some("1000"));
    assert!(header(&fresh, "retry-after").is_some());
    stack.stop().await
}
on_both_runtimes!(the_101st_request_of_a_user_and_the_1001st_of_an_address_are_429);

// --- origin down ------------------------------------------------------------------------

async fn with_the_origin_stopped_cached_quotes_are_served_stale_reads_and_writes_are_503(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let mut stack = EdgeStack::start_with(pool, runtime, &[("EDGE_QUOTE_TTL_SECS", "1")]).await?;
    let t = token("olga");
    let w = window(4, 2);
    let vehicles = stack.origin()?.vehicles("EUW").await?;
    let body = json!({ "vehicle_id": vehicles[0], "start": w.0, "end": w.1 });
    let quote = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    let bookings_before = stack.origin()?.count("bookings", "true").await?;

    stack.stop_origin().await?;
    tokio::time::sleep(Duration::from_millis(1_200)).await; // past the quote's fresh TTL

    // The cached quote is still served, marked stale.
    let stale = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(stale.status, 201, "{}", stale.body);
    assert_eq!(cache_state(&stale), "stale");
    assert_eq!(stale.body["quote_token"], quote.body["quote_token"]);

    // An uncached read: 503 with Retry-After.
    let other = json!({ "vehicle_id": vehicles[1], "start": w.0, "end": w.1 });
    let miss = stack.post("/v1/quotes", Some(&t), &other, None).await?;
    miss.assert_problem(503);
    assert!(header(&miss, "retry-after").is_some());
    let search = stack.get(&search_path(w), Some(&t)).await?;
    search.assert_problem(503);

    // A write: 503, and nothing happened.
    let key = uuid::Uuid::new_v4().to_string();
    let hold_body = json!({ "quote_token": quote.body["quote_token"] });
    let refused = stack
        .post("/v1/bookings", Some(&t), &hold_body, Some(&key))
        .await?;
    refused.assert_problem(503);
    assert!(header(&refused, "retry-after").is_some());

    // The origin returns: the retry with the same key succeeds, once.
    stack.start_origin().await?;
    assert_eq!(
        stack.origin()?.count("bookings", "true").await?,
        bookings_before
    );
    let retried = stack
        .post("/v1/bookings", Some(&t), &hold_body, Some(&key))
        .await?;
    assert_eq!(retried.status, 201, "{}", retried.body);
    let replayed = stack
        .post("/v1/bookings", Some(&t), &hold_body, Some(&key))
        .await?;
    assert_eq!(replayed.status, 201, "{}", replayed.body);
    assert_eq!(header(&replayed, "idempotent-replayed"), Some("true"));
    assert_eq!(replayed.body["id"], retried.body["id"]);
    assert_eq!(
        stack.origin()?.count("bookings", "true").await?,
        bookings_before + 1
    );
    stack.stop().await
}
on_both_runtimes!(with_the_origin_stopped_cached_quotes_are_served_stale_reads_and_writes_are_503);

// --- invalidation -----------------------------------------------------------------------

async fn a_booking_removes_the_vehicle_from_cached_availability_at_once(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let t = token("ivy");
    let w = window(5, 3);
    let first = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let cached = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(cache_state(&cached), "hit");
    let before = ids(&cached);
    let (booked, direct) = (before[0].clone(), before[1].clone());

    // Booked through the edge: gone from the edge's cached answer on the next request.
    let quote = stack
        .post(
            "/v1/quotes",
            Some(&t),
            &json!({ "vehicle_id": booked, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    let hold = stack
        .post(
            "/v1/bookings",
            Some(&t),
            &json!({ "quote_token": quote.body["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let after = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(
        !ids(&after).contains(&booked),
        "booked vehicle still offered"
    );
    assert_eq!(ids(&after).len(), before.len() - 1);

    // Booked at the origin directly (another edge, another region's user): the origin bumps
    // the generation through the Upstash REST API; the edge's cached answer follows.
    let hold = stack.origin()?.hold("dora", &direct, w).await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let mut gone = false;
    for _ in 0..20 {
        let reply = stack.get(&search_path(w), Some(&t)).await?;
        if !ids(&reply).contains(&direct) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "a booking made at the origin did not invalidate the edge cache"
    );
    stack.stop().await
}
on_both_runtimes!(a_booking_removes_the_vehicle_from_cached_availability_at_once);

// --- authentication ---------------------------------------------------------------------

async fn bad_tokens_are_401_at_the_edge_without_reaching_the_origin(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let now = Utc::now().timestamp();
    let good = token("kim");
    let payload = good.split('.').nth(1).unwrap_or_default().to_owned();
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let wrong_key = domain::auth::sign_hs256(
        &domain::auth::Claims {
            sub: "kim".into(),
            iss: ISSUER.into(),
            aud: Value::String(AUDIENCE.into()),
            exp: now + 600,
            nbf: None,
            iat: None,
            roles: vec![],
            membership: None,
        },
        b"another-secret-another-secret-another!",
        None,
    )?;
    let expired = token_with("kim", |c| {
        c.exp = now - 3_600;
        c.iat = Some(now - 7_200);
        c.nbf = Some(now - 7_200);
    });
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64(format!(
            r#"{{"sub":"admin","iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{}}}"#,
            now + 600
        )
        .as_bytes());
        parts.join(".")
    };

    let before = stack.origin_requests().await?;
    let w = window(2, 1);
    for (what, bad) in [
        ("wrong signature", Some(wrong_key.as_str())),
        ("tampered claims", Some(tampered.as_str())),
        ("expired", Some(expired.as_str())),
        ("alg none", Some(alg_none.as_str())),
        ("garbage", Some("not.a.jwt")),
        ("missing", None),
    ] {
        let read = stack.get(&search_path(w), bad).await?;
        read.assert_problem(401);
        assert_eq!(read.problem_type(), "/problems/unauthorized", "{what}");
        let write = stack
            .post(
                "/v1/bookings",
                bad,
                &json!({ "quote_token": "x" }),
                Some("k"),
            )
            .await?;
        write.assert_problem(401);
        assert!(header(&write, "www-authenticate").is_some(), "{what}");
    }
    assert_eq!(
        stack.origin_requests().await?,
        before,
        "a request with a bad token reached the origin"
    );
    // The same edge lets a good token through (so the counter above can move).
    let ok = stack.get(&search_path(w), Some(&good)).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(stack.origin_requests().await? > before);
    stack.stop().await
}
on_both_runtimes!(bad_tokens_are_401_at_the_edge_without_reaching_the_origin);

// --- slow origin ------------------------------------------------------------------------

async fn a_slow_origin_times_out_into_the_stale_quote_or_a_503(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let proxy = e2e::edge::HangProxy::start().await?;
    let url = proxy.url();
    let stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_QUOTE_TTL_SECS", "1"),
            ("EDGE_ORIGIN_TIMEOUT_MS", "800"),
            ("ORIGIN_EUW_URL", &url),
        ],
    )
    .await?;
    proxy.forward_to(&stack.origin()?.base)?;
    let t = token("sam");
    let w = window(4, 2);
    let vehicles = stack.origin()?.vehicles("EUW").await?;
    let body = json!({ "vehicle_id": vehicles[0], "start": w.0, "end": w.1 });
    let quote = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(quote.status, 201, "{}", quote.body);

    proxy.hang();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let started = std::time::Instant::now();
    let stale = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    let waited = started.elapsed();
    assert_eq!(stale.status, 201, "{}", stale.body);
    assert_eq!(cache_state(&stale), "stale");
    assert_eq!(stale.body["quote_token"], quote.body["quote_token"]);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "the edge gave up after {waited:?}, not after its 800 ms timeout"
    );

    let other = json!({ "vehicle_id": vehicles[1], "start": w.0, "end": w.1 });
    let miss = stack.post("/v1/quotes", Some(&t), &other, None).await?;
    miss.assert_problem(503);
    assert!(header(&miss, "retry-after").is_some());
    stack.stop().await
}
on_both_runtimes!(a_slow_origin_times_out_into_the_stale_quote_or_a_503);

// --- requests the origin (or the edge) refuses early ---------------------------------------

/// Sends one raw request to `base` (no JSON re-encoding: the body is sent as given).
async fn raw(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> TestResult<Reply> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut req = client.request(method, format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = header_str(&headers, "content-type");
    let body = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        content_type,
        headers,
        body,
    })
}

fn header_str(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// What a request is, its method, path, headers and raw body.
type EarlyCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
);

/// Requests schemathesis found answered 503 `/problems/origin-unavailable` by an edge while
/// the origin answers them with a 4xx: through the edge they must get the origin's answer.
async fn requests_the_origin_refuses_early_get_its_4xx_through_the_edge(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let user = format!("Bearer {}", token("ria"));
    let ops = format!("Bearer {}", ops_token("ops-ria"));
    let json = ("content-type", "application/json");
    let rule = r#"{"active": null, "code": null, "kind": "", "membership_tier": null,
        "min_duration_minutes": 0, "percent_bp": 0, "valid_from": "2000-01-01T00:00:00Z",
        "valid_until": "2000-01-01T00:00:00Z"}"#;
    let cases: Vec<EarlyCase<'_>> = vec![
        (
            "OPTIONS on a write route",
            "OPTIONS",
            "/v1/bookings/schemathesis-ops/start",
            vec![("idempotency-key", "k1"), ("authorization", &ops)],
            None,
        ),
        (
            "POST without a body",
            "POST",
            "/v2/bookings/schemathesis-ops/cancel",
            vec![("idempotency-key", "k2"), ("authorization", &ops)],
            None,
        ),
        (
            "GET with a JSON body",
            "GET",
            "/v1/admin/pricing/0/discount-rules",
            vec![("authorization", &ops), json],
            Some(rule),
        ),
        (
            "POST with the body false",
            "POST",
            "/v2/bookings/schemathesis-ops/extend",
            vec![("idempotency-key", "k3"), ("authorization", &user), json],
            Some("false"),
        ),
        (
            "percent-encoded non-UTF-8 path",
            "PUT",
            "/v1/admin/pricing/%F3%9D%BD%81%15/discount-rules/%3B%F1%AA%A0%A2U",
            vec![("authorization", &ops), json],
            Some(rule),
        ),
        (
            "DELETE without a body",
            "DELETE",
            "/v1/admin/pricing/EUW/discount-rules/nope",
            vec![("authorization", &ops)],
            None,
        ),
    ];
    let origin = stack.origin()?;
    for (what, method, path, headers, body) in &cases {
        let direct = raw(&origin.client, &origin.base, method, path, headers, *body).await?;
        assert!(
            direct.status.is_client_error(),
            "{what}: the origin answered {} {}",
            direct.status,
            direct.body
        );
        let edged = raw(&stack.client, &stack.base, method, path, headers, *body).await?;
        assert_eq!(
            (edged.status, edged.problem_type()),
            (direct.status, direct.problem_type()),
            "{what}: the edge answered {} where the origin answers {}",
            edged.body,
            direct.body
        );
    }

    // A method the edge does not forward is refused at the edge, as the origin would.
    let before = stack.origin_requests().await?;
    for method in ["QUERY", "PROPFIND"] {
        let reply = raw(
            &stack.client,
            &stack.base,
            method,
            "/v1/bookings",
            &[("authorization", &user)],
            None,
        )
        .await?;
        reply.assert_problem(405);
        assert_eq!(reply.problem_type(), "/problems/method-not-allowed");
        let allow = header(&reply, "allow").unwrap_or("");
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(allow.contains(m), "Allow: {allow}");
        }
        assert!(!allow.contains(method), "Allow: {allow}");
    }
    assert_eq!(
        stack.origin_requests().await?,
        before,
        "a request with a method the edge does not forward reached the origin"
    );
    stack.stop().await
}
on_both_runtimes!(requests_the_origin_refuses_early_get_its_4xx_through_the_edge);

// Security at the edge (issue 8): JWT attacks and the anonymous column of the authz matrix.
mod security;
