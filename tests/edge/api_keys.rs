//! API keys for apps at the edge (issue 19 item 2): ops create a key through the admin API,
//! an app uses it beside its user's token, its plan limits it (429 with the RateLimit
//! headers), a revoked key is refused with 401 within seconds on both runtimes, and a key's
//! limit is exact under 200 parallel requests. Beside it, the script against the real Redis.

use std::time::Instant;

use domain::api_key::{self, Plan, Published};
use domain::ratelimit::RateLimit;
use edge_core::ratelimit::{self, key_checks, Check, DenyRead, KeyRead, Subject};
use redis::AsyncCommands;

use super::*;

/// A quote for `user` with the app's `key` (and an `Origin`, when given).
async fn quote_with_key(
    stack: &EdgeStack,
    user: &str,
    key: &str,
    origin: Option<&str>,
    body: &Value,
) -> TestResult<Reply> {
    let t = token(user);
    let mut headers = vec![("x-api-key", key)];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    stack
        .send(
            reqwest::Method::POST,
            "/v1/quotes",
            Some(&t),
            Some(body),
            &headers,
        )
        .await
}

/// Creates a key through the edge; returns its id and secret.
async fn create_key(
    stack: &EdgeStack,
    region: &str,
    body: Value,
    idem: &str,
) -> TestResult<(String, String)> {
    let ops = ops_token("olga");
    let created = stack
        .post(
            &format!("/v1/admin/api-keys?region={region}"),
            Some(&ops),
            &body,
            Some(idem),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap_or_default().to_owned();
    let secret = created.body["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        secret.starts_with(&format!("bpk_{}_", region.to_lowercase())),
        "{secret}"
    );
    Ok((id, secret))
}

/// Waits (at most 5 s) until the key's region has published it to the edges' Upstash.
async fn published(
    stack: &EdgeStack,
    region: domain::Region,
    secret: &str,
) -> TestResult<Published> {
    let mut conn = e2e::test_redis::connect(&e2e::test_redis::shared_url()).await?;
    let hash = api_key::hash_key(&stack.edge_prefix, region);
    let start = Instant::now();
    loop {
        let value: Option<String> = conn.hget(&hash, api_key::secret_hash(secret)).await?;
        if let Some(p) = value.as_deref().and_then(Published::decode) {
            return Ok(p);
        }
        if start.elapsed() > Duration::from_secs(5) {
            anyhow::bail!("key not published to {hash} after 5 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_app_key_is_limited_by_its_plan_and_refused_soon_after_revocation(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let ops = ops_token("olga");
    let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
    let w = window(4, 2);
    let quote = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });

    // A key kept by EUN (the other region than the vehicle's): every edge reads every
    // region's keys. 5 a minute, no burst.
    let (id, secret) = create_key(
        &stack,
        "EUN",
        json!({"name": "fleet app", "per_minute": 5, "per_day": 1000}),
        "key-1",
    )
    .await?;
    let plan = published(&stack, domain::Region::Eun, &secret).await?;
    assert_eq!(plan.plan, Plan::new(5, 1000, 0)?);
    assert_eq!(plan.key_id, id);

    // Used: five pass with the key's limit in the headers (it binds: 5 < the user's 100)...
    inside_one_window(Duration::from_secs(10)).await;
    for i in 0..5u32 {
        // The key costs no Upstash request of its own: a cache hit with it is still one.
        let (r, upstash, _) = counted(&stack, || {
            quote_with_key(&stack, "rita", &secret, None, &quote)
        })
        .await?;
        assert_eq!(r.status, 201, "request {i}: {}", r.body);
        if i > 0 {
            assert_eq!(cache_state(&r), "hit", "request {i}");
            assert_eq!(
                upstash, 1,
                "request {i}: a cache hit with a key is one request"
            );
        }
        assert_eq!(header(&r, "ratelimit-limit"), Some("5"), "request {i}");
        assert_eq!(
            header(&r, "ratelimit-remaining"),
            Some((4 - i).to_string().as_str()),
            "request {i}"
        );
        assert_eq!(header(&r, "ratelimit-policy"), Some("5;w=60"));
    }
    // ...the sixth is over quota: 429 with the headers and Retry-After; another user of the
    // same app is over it too (the key's quota is the app's), while that user without the
    // key is not.
    for user in ["rita", "sven"] {
        let over = quote_with_key(&stack, user, &secret, None, &quote).await?;
        over.assert_problem(429);
        assert_eq!(header(&over, "ratelimit-limit"), Some("5"));
        assert_eq!(header(&over, "ratelimit-remaining"), Some("0"));
        assert_eq!(header(&over, "ratelimit-policy"), Some("5;w=60"));
        let retry: u64 = header(&over, "retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // The sliding window: the previous minute's five still weigh after it ends, so the
        // wait can pass the minute (at most two).
        assert!((1..=120).contains(&retry), "Retry-After {retry}");
    }
    let t = token("sven");
    let plain = stack.post("/v1/quotes", Some(&t), &quote, None).await?;
    assert_eq!(plain.status, 201, "{}", plain.body);

    // On the deny list by its id: refused with 403 within 5 s (the script adds `k:<key id>` to
    // the request's fields from the plan it reads), then lifted.
    let entry = stack
        .post(
            "/v1/admin/deny-list?region=EUW",
            Some(&ops),
            &json!({"kind": "key", "value": id, "reason": "leaked in a public repository"}),
            Some("deny-key-1"),
        )
        .await?;
    assert_eq!(entry.status, 201, "{}", entry.body);
    assert_eq!(entry.body["kind"], "key");
    let entry_id = entry.body["id"].as_str().unwrap_or_default().to_owned();
    let (denied, took) = within_5s(403, || {
        quote_with_key(&stack, "sven", &secret, None, &quote)
    })
    .await?;
    assert_eq!(denied.problem_type(), "/problems/denied");
    assert!(
        denied.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("API key") && !d.contains("leaked")),
        "{}",
        denied.body
    );
    println!("{}: key denied {took:?} after its entry", runtime.name());
    // The isolate now knows the key's id: its flood, whoever the user, costs no Upstash
    // request (counted at the gateway) for `DENIED_MEMORY_MS`.
    let before = stack.redis_requests();
    for user in ["sven", "rita", "olle"] {
        let again = quote_with_key(&stack, user, &secret, None, &quote).await?;
        assert_eq!(again.status, 403, "{}", again.body);
    }
    assert_eq!(
        stack.redis_requests(),
        before,
        "a key known to be denied still cost Upstash requests"
    );
    let lifted = stack
        .delete(
            &format!("/v1/admin/deny-list/{entry_id}"),
            Some(&ops),
            Some("undeny-key-1"),
        )
        .await?;
    assert_eq!(lifted.status, 200, "{}", lifted.body);

    // Unknown and malformed keys: 401 problems, nothing forwarded.
    let origin_before = stack.origin_requests().await?;
    let unknown = quote_with_key(&stack, "rita", "bpk_euw_not-a-real-key", None, &quote).await?;
    unknown.assert_problem(401);
    assert_eq!(unknown.problem_type(), "/problems/invalid-api-key");
    let garbage = quote_with_key(&stack, "rita", &"x".repeat(200), None, &quote).await?;
    garbage.assert_problem(401);
    assert_eq!(stack.origin_requests().await?, origin_before);

    // Revoked: refused with 401 at the edge within 5 s.
    let revoked = stack
        .delete(
            &format!("/v1/admin/api-keys/{id}"),
            Some(&ops),
            Some("unkey-1"),
        )
        .await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.body);
    let start = Instant::now();
    let refused = loop {
        let r = quote_with_key(&stack, "rita", &secret, None, &quote).await?;
        if r.status == 401 {
            break r;
        }
        // Over quota until the revocation is published (or denied, if the lifted entry's
        // publish is still on its way).
        assert!(
            r.status == 429 || r.status == 403,
            "only over quota until revoked: {} {}",
            r.status,
            r.body
        );
        if start.elapsed() > Duration::from_secs(5) {
            anyhow::bail!("key still not refused 5 s after its revocation");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    refused.assert_problem(401);
    assert_eq!(refused.problem_type(), "/problems/invalid-api-key");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("revoked")),
        "{}",
        refused.body
    );
    println!(
        "{}: key refused {:?} after its revocation",
        runtime.name(),
        start.elapsed()
    );

    // A key for browser apps at one origin: refused from another origin (403) and from none.
    let (_, web) = create_key(
        &stack,
        "EUW",
        json!({"name": "web app", "per_minute": 100, "per_day": 1000,
               "allowed_origins": ["https://app.example.com"]}),
        "key-2",
    )
    .await?;
    published(&stack, domain::Region::Euw, &web).await?;
    let other = quote_with_key(&stack, "rita", &web, Some("https://evil.example"), &quote).await?;
    other.assert_problem(403);
    assert_eq!(other.problem_type(), "/problems/origin-not-allowed");
    assert_eq!(
        quote_with_key(&stack, "rita", &web, None, &quote)
            .await?
            .status,
        403
    );
    // (a new request after the 3 s memory of the refusal)
    tokio::time::sleep(Duration::from_millis(ratelimit::DENIED_MEMORY_MS + 100)).await;
    let ok = quote_with_key(
        &stack,
        "rita",
        &web,
        Some("https://app.example.com"),
        &quote,
    )
    .await?;
    assert_eq!(ok.status, 201, "{}", ok.body);

    // An edge that requires a key (`EDGE_REQUIRE_API_KEY=true`) refuses a request without.
    let mut stack = stack;
    stack
        .restart_edge(&[("EDGE_REQUIRE_API_KEY", "true")])
        .await?;
    let t = token("rita");
    let keyless = stack.post("/v1/quotes", Some(&t), &quote, None).await?;
    keyless.assert_problem(401);
    assert_eq!(keyless.problem_type(), "/problems/invalid-api-key");
    let keyed = quote_with_key(
        &stack,
        "rita",
        &web,
        Some("https://app.example.com"),
        &quote,
    )
    .await?;
    assert_eq!(keyed.status, 201, "{}", keyed.body);
    stack.stop().await
}
on_both_runtimes!(an_app_key_is_limited_by_its_plan_and_refused_soon_after_revocation);

/// 200 parallel requests, each from its own user, on a key of 100 a minute without burst:
/// exactly 100 pass, whatever the interleaving (the script decides and counts atomically).
async fn a_keys_limit_is_exact_under_200_parallel_requests(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
    let w = window(4, 2);
    let quote = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let (_, secret) = create_key(
        &stack,
        "EUW",
        json!({"name": "batch app", "per_minute": 100, "per_day": 100000, "burst_secs": 0}),
        "key-par",
    )
    .await?;
    published(&stack, domain::Region::Euw, &secret).await?;
    inside_one_window(Duration::from_secs(20)).await;
    let replies = futures_util::future::join_all((0..200).map(|i| {
        let (stack, secret, quote) = (&stack, &secret, &quote);
        async move { quote_with_key(stack, &format!("user-{i}"), secret, None, quote).await }
    }))
    .await;
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for r in replies {
        *statuses.entry(r?.status.as_u16()).or_default() += 1;
    }
    println!(
        "{}: 200 parallel on a 100/min key: {statuses:?}",
        runtime.name()
    );
    // A Redis failure would let requests through (the edge fails open): none may have.
    let failed_open = stack
        .edge_stdout()
        .iter()
        .filter(|l| l.contains("rate limit check failed"))
        .count();
    assert_eq!(
        failed_open, 0,
        "the edge failed open; the count proves nothing"
    );
    assert_eq!(statuses.get(&201), Some(&100), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&100), "{statuses:?}");
    stack.stop().await
}
on_both_runtimes!(a_keys_limit_is_exact_under_200_parallel_requests);

/// Runs the script once (EVAL) with `checks` and `key` at `now`.
async fn run_script(
    conn: &redis::aio::MultiplexedConnection,
    prefix: &str,
    checks: &[Check],
    key: &KeyRead,
    now: u64,
) -> redis::RedisResult<redis::Value> {
    let mut conn = conn.clone();
    // The deny list's hashes (no fields of the request's own: a key's entry is found by the
    // id the script reads from the plan).
    let deny = DenyRead {
        keys: domain::Region::ALL
            .iter()
            .map(|r| domain::deny::hash_key(prefix, *r))
            .collect(),
        fields: vec![],
    };
    let cmd = ratelimit::command(prefix, checks, None, &deny, Some(key), now);
    let mut c = redis::cmd("EVAL");
    c.arg(ratelimit::SCRIPT);
    for part in cmd.iter().skip(2) {
        c.arg(part.as_str().unwrap_or_default());
    }
    c.query_async::<redis::Value>(&mut conn).await
}

/// The key's refusal word in a reply, `denied <field>` for the deny list, or `limits` when
/// the script went on to the limits.
fn verdict(v: &redis::Value) -> String {
    let redis::Value::Array(parts) = v else {
        return format!("not an array: {v:?}");
    };
    match (parts.get(3), parts.get(4)) {
        (Some(redis::Value::BulkString(f)), _) => {
            format!("denied {}", String::from_utf8_lossy(f))
        }
        (_, Some(redis::Value::BulkString(w))) => String::from_utf8_lossy(w).into_owned(),
        _ => "limits".into(),
    }
}

/// The script against the real Redis: it finds the key's plan in either region's hash,
/// refuses unknown, revoked, expired and wrong-origin keys without counting, applies the
/// plan's per-minute and per-day limits exactly (the placeholders the edge sends are not
/// used), and 200 concurrent runs on a 100/min key allow exactly 100.
#[tokio::test]
async fn the_script_reads_the_plan_refuses_bad_keys_and_applies_its_limits() -> TestResult {
    let url = e2e::test_redis::shared_url();
    let mut conn = e2e::test_redis::connect(&url).await?;
    let prefix = format!("test:keys:{}:", uuid::Uuid::new_v4().simple());
    let hashes: Vec<String> = domain::Region::ALL
        .iter()
        .map(|r| api_key::hash_key(&prefix, *r))
        .collect();
    let now: u64 = 1_900_000_020_000;
    let user = Check {
        subject: Subject::User,
        id: "rita".into(),
        limit: RateLimit {
            limit: 1000,
            window_ms: 60_000,
        },
        burst: None,
    };
    let secret = api_key::new_secret(domain::Region::Eun, &[9; 32]);
    let key = |origin: &str| KeyRead {
        keys: hashes.clone(),
        hash: api_key::secret_hash(&secret),
        origin: origin.into(),
    };
    // The edge has not seen the plan: placeholders.
    let checks = |plan: Option<&Plan>| {
        let mut c = vec![user.clone()];
        c.extend(key_checks(&api_key::secret_hash(&secret), plan));
        c
    };
    let key_pattern = format!("{prefix}rl:key:*");

    // Unknown: refused, nothing counted.
    let v = run_script(&conn, &prefix, &checks(None), &key(""), now).await?;
    assert_eq!(verdict(&v), "unknown");
    // Published in EUN's hash: 3 a minute, 4 a day.
    let mut published = Published {
        key_id: "key_eun_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e".into(),
        plan: Plan::new(3, 4, 0)?,
        expires_ms: 0,
        revoked_ms: 0,
        origins: vec![],
    };
    let field = api_key::secret_hash(&secret);
    conn.hset::<_, _, _, ()>(&hashes[1], &field, published.encode())
        .await?;
    for _ in 0..5 {
        let v = run_script(&conn, &prefix, &checks(None), &key(""), now).await?;
        assert_eq!(verdict(&v), "limits");
    }
    // Each allowed request counts once in the key's minute window.
    assert_eq!(
        e2e::test_redis::sum_counters(&conn, &key_pattern).await?,
        3,
        "the plan's per-minute limit, not the placeholder's 1"
    );
    // Two minutes later the minute is clear, the day is not: one more (4 a day).
    let later = now + 120_000;
    for _ in 0..3 {
        run_script(&conn, &prefix, &checks(None), &key(""), later).await?;
    }
    let before = e2e::test_redis::sum_counters(&conn, &key_pattern).await?;
    assert_eq!(before, 4, "the plan's per-day limit");

    // Revoked, expired, wrong origin: refused by name, nothing counted.
    published.revoked_ms = now - 1;
    conn.hset::<_, _, _, ()>(&hashes[1], &field, published.encode())
        .await?;
    assert_eq!(
        verdict(&run_script(&conn, &prefix, &checks(None), &key(""), later).await?),
        "revoked"
    );
    published.revoked_ms = 0;
    published.expires_ms = later;
    conn.hset::<_, _, _, ()>(&hashes[1], &field, published.encode())
        .await?;
    assert_eq!(
        verdict(&run_script(&conn, &prefix, &checks(None), &key(""), later).await?),
        "expired"
    );
    published.expires_ms = 0;
    published.origins = vec!["https://app.example.com".into()];
    conn.hset::<_, _, _, ()>(&hashes[1], &field, published.encode())
        .await?;
    assert_eq!(
        verdict(
            &run_script(
                &conn,
                &prefix,
                &checks(None),
                &key("https://evil.example"),
                later
            )
            .await?
        ),
        "origin"
    );
    // On the deny list by its id (`k:<key id>`, in EUW's deny hash): denied, by that field.
    published.origins = vec![];
    conn.hset::<_, _, _, ()>(&hashes[1], &field, published.encode())
        .await?;
    let deny_field = format!("k:{}", published.key_id);
    conn.hset::<_, _, _, ()>(
        domain::deny::hash_key(&prefix, domain::Region::Euw),
        &deny_field,
        "0",
    )
    .await?;
    assert_eq!(
        verdict(&run_script(&conn, &prefix, &checks(None), &key(""), later).await?),
        format!("denied {deny_field}")
    );
    assert_eq!(
        e2e::test_redis::sum_counters(&conn, &key_pattern).await?,
        before
    );

    // 200 concurrent runs on a 100/min key (in EUW's hash this time): exactly 100 allowed.
    let secret2 = api_key::new_secret(domain::Region::Euw, &[3; 32]);
    let key2 = KeyRead {
        keys: hashes.clone(),
        hash: api_key::secret_hash(&secret2),
        origin: String::new(),
    };
    let plan2 = Published {
        key_id: "key_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7f".into(),
        plan: Plan::new(100, 100_000, 0)?,
        expires_ms: 0,
        revoked_ms: 0,
        origins: vec![],
    };
    conn.hset::<_, _, _, ()>(&hashes[0], &key2.hash, plan2.encode())
        .await?;
    let checks2: Vec<Check> = key_checks(&key2.hash, None).into_iter().collect();
    let runs = futures_util::future::join_all(
        (0..200).map(|_| run_script(&conn, &prefix, &checks2, &key2, later)),
    )
    .await;
    for r in runs {
        assert_eq!(verdict(&r?), "limits");
    }
    assert_eq!(
        e2e::test_redis::sum_counters(&conn, &key_pattern).await? - before,
        100,
        "exactly the key's 100 counted (allowed) of 200"
    );
    e2e::test_redis::delete_prefix(&url, &prefix).await?;
    Ok(())
}
