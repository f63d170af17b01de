//! The deny list at the edge (issue 19 item 3): ops add a network and a user through the
//! admin API, every edge refuses them with a 403 problem within seconds and without an origin
//! call, a client that is not denied costs exactly the Upstash requests it cost before, and a
//! removal lets the client in again. Beside it, the script itself against the real Redis.

use domain::ratelimit::RateLimit;
use edge_core::ratelimit::{self, Check, DenyRead, Subject};
use redis::AsyncCommands;

use super::*;

/// Sends `method path` as `user` from `ip` (the platform's address).
async fn from(
    stack: &EdgeStack,
    ip: &str,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> TestResult<Reply> {
    let (name, value) = platform_address(stack.runtime, ip);
    let t = token(user);
    stack
        .send(method, path, Some(&t), body, &[(name, value.as_str())])
        .await
}

async fn denied_networks_and_users_are_refused_at_the_edge_within_seconds(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let ops = ops_token("olga");
    let (bad_ip, good_ip) = ("203.0.113.7", "198.51.100.20");
    let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
    let w = window(4, 2);
    let quote = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let quote_as = |ip: &'static str, user: &'static str| {
        let (stack, quote) = (&stack, &quote);
        move || async move {
            from(
                stack,
                ip,
                user,
                reqwest::Method::POST,
                "/v1/quotes",
                Some(quote),
            )
            .await
        }
    };

    // A cached quote for rita, and what its hit costs before the list has any entry.
    let miss = quote_as(good_ip, "rita")().await?;
    assert_eq!(miss.status, 201, "{}", miss.body);
    let (hit, before, before_cmds) = counted(&stack, quote_as(good_ip, "rita")).await?;
    assert_eq!(cache_state(&hit), "hit", "{}", hit.body);
    assert_eq!(before, 1, "a cache hit is one Upstash request");

    // Ops deny a network (kept by EUW) and a user (kept by EUN): every edge reads both.
    let added = stack
        .post(
            "/v1/admin/deny-list?region=EUW",
            Some(&ops),
            &json!({"kind": "network", "value": "203.0.113.0/24", "reason": "credential stuffing"}),
            Some("deny-net-1"),
        )
        .await?;
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.body["value"], "203.0.113.0/24");
    let net_id = added.body["id"].as_str().unwrap_or_default().to_owned();
    assert!(net_id.starts_with("dny_euw_"), "{net_id}");
    let user_added = stack
        .post(
            "/v1/admin/deny-list?region=EUN",
            Some(&ops),
            &json!({"kind": "user", "value": "mallory", "reason": "scraping", "ttl_secs": 3600}),
            Some("deny-user-1"),
        )
        .await?;
    assert_eq!(user_added.status, 201, "{}", user_added.body);

    // Refused within 5 s: any user from the network, the user from anywhere.
    let (refused, took) = within_5s(403, quote_as(bad_ip, "rita")).await?;
    refused.assert_problem(403);
    assert_eq!(refused.problem_type(), "/problems/denied");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("address") && !d.contains("credential")),
        "names what is denied, not why: {}",
        refused.body
    );
    println!("{}: network denied {took:?} after the 201", runtime.name());
    let (refused, took) = within_5s(403, quote_as(good_ip, "mallory")).await?;
    assert_eq!(refused.problem_type(), "/problems/denied");
    println!("{}: user denied {took:?} after the 201", runtime.name());
    // An address of the network with a bad token is refused as denied too (before the 401).
    let (name, value) = platform_address(runtime, "203.0.113.200");
    let bad_token = stack
        .send(
            reqwest::Method::GET,
            "/v1/bookings",
            Some("not-a-jwt"),
            None,
            &[(name, value.as_str())],
        )
        .await?;
    assert_eq!(bad_token.status, 403, "{}", bad_token.body);

    // A denied request costs no origin call.
    let origin_before = stack.origin_requests().await?;
    for _ in 0..3 {
        let r = quote_as(bad_ip, "rita")().await?;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(stack.origin_requests().await?, origin_before);

    // A client that is not denied costs exactly what it cost before: one request, the script.
    let (hit, after, after_cmds) = counted(&stack, quote_as(good_ip, "rita")).await?;
    assert_eq!(cache_state(&hit), "hit", "{}", hit.body);
    assert_eq!((after, &after_cmds), (before, &before_cmds));

    // Lifted: the network's clients are let in again within 5 s (the isolate's memory of a
    // denial lasts `DENIED_MEMORY_MS`).
    let removed = stack
        .delete(
            &format!("/v1/admin/deny-list/{net_id}"),
            Some(&ops),
            Some("undeny-net-1"),
        )
        .await?;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.body["removed_by"], "olga");
    assert_eq!(removed.body["active"], false);
    let (_, took) = within_5s(201, quote_as(bad_ip, "rita")).await?;
    println!(
        "{}: network let in {took:?} after the removal",
        runtime.name()
    );
    // The user stays denied.
    assert_eq!(quote_as(good_ip, "mallory")().await?.status, 403);
    stack.stop().await
}
on_both_runtimes!(denied_networks_and_users_are_refused_at_the_edge_within_seconds);

/// The script against the real Redis: an entry in either region's hash refuses the request
/// and counts nothing; an expired entry and an unrelated one do not; no field, no lookup.
#[tokio::test]
async fn the_script_refuses_by_any_regions_hash_honours_expiry_and_counts_nothing() -> TestResult {
    let url = e2e::test_redis::shared_url();
    let mut conn = e2e::test_redis::connect(&url).await?;
    let prefix = format!("test:deny:{}:", uuid::Uuid::new_v4().simple());
    let now: u64 = 1_900_000_000_000;
    let checks = [Check {
        subject: Subject::User,
        id: "rita".into(),
        limit: RateLimit {
            limit: 100,
            window_ms: 60_000,
        },
        burst: None,
    }];
    let deny = DenyRead {
        keys: vec![
            domain::deny::hash_key(&prefix, domain::Region::Euw),
            domain::deny::hash_key(&prefix, domain::Region::Eun),
        ],
        fields: domain::deny::candidates(Some("203.0.113.7"), Some("rita")),
    };
    // The user's counters under the test's prefix (one window: one key), summed.
    let user_pattern = format!("{prefix}rl:user:*");
    let script_conn = conn.clone();
    let run = |deny: DenyRead| {
        let mut conn = script_conn.clone();
        let cmd = ratelimit::command(&prefix, &checks, None, &deny, None, now);
        async move {
            let mut c = redis::cmd("EVAL");
            c.arg(ratelimit::SCRIPT);
            for part in cmd.iter().skip(2) {
                c.arg(part.as_str().unwrap_or_default());
            }
            c.query_async::<redis::Value>(&mut conn).await
        }
    };
    let denied_field = |v: &redis::Value| match v {
        redis::Value::Array(parts) => match parts.get(3) {
            Some(redis::Value::BulkString(f)) => Some(String::from_utf8_lossy(f).into_owned()),
            _ => None,
        },
        _ => None,
    };

    // Empty hashes: allowed and counted.
    assert_eq!(denied_field(&run(deny.clone()).await?), None);
    assert_eq!(
        e2e::test_redis::sum_counters(&conn, &user_pattern).await?,
        1
    );
    // The user in EUN's hash, no expiry: refused, nothing counted.
    conn.hset::<_, _, _, ()>(&deny.keys[1], "u:rita", "0")
        .await?;
    assert_eq!(
        denied_field(&run(deny.clone()).await?).as_deref(),
        Some("u:rita")
    );
    assert_eq!(
        e2e::test_redis::sum_counters(&conn, &user_pattern).await?,
        1
    );
    // Expired: allowed again; a future expiry on the /16 in EUW's hash: refused.
    conn.hset::<_, _, _, ()>(&deny.keys[1], "u:rita", (now - 1).to_string())
        .await?;
    assert_eq!(denied_field(&run(deny.clone()).await?), None);
    conn.hset::<_, _, _, ()>(&deny.keys[0], "n:203.0.0.0/16", (now + 1).to_string())
        .await?;
    assert_eq!(
        denied_field(&run(deny.clone()).await?).as_deref(),
        Some("n:203.0.0.0/16")
    );
    // Another address is not in it; and without fields the hashes are not read at all.
    let other = DenyRead {
        fields: domain::deny::candidates(Some("198.51.100.1"), Some("rita")),
        ..deny.clone()
    };
    assert_eq!(denied_field(&run(other).await?), None);
    let none = DenyRead {
        fields: vec![],
        ..deny.clone()
    };
    assert_eq!(denied_field(&run(none).await?), None);
    assert_eq!(
        e2e::test_redis::sum_counters(&conn, &user_pattern).await?,
        4
    );
    e2e::test_redis::delete_prefix(&url, &prefix).await?;
    Ok(())
}
