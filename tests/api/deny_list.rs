//! `/v1/admin/deny-list` at the origin (issue 19 item 3): ops add, list, read and remove
//! entries, every bad input is a precise problem, the log keeps removals, and each change is
//! published to the edges' Upstash (through the REST gateway, into the real Redis) — never
//! putting an older list over a newer one. The edges' enforcement: `tests/edge/deny_list.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::edge::PublishingOrigin;
use e2e::*;
use redis::AsyncCommands;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn ops_add_list_and_remove_entries_and_every_change_reaches_the_edges_hash(
    pool: PgPool,
) -> TestResult {
    let redis_url = e2e::test_redis::shared_url();
    let origin = PublishingOrigin::spawn(pool).await?;
    let (app, edge_prefix) = (&origin.app, origin.edge_prefix.clone());
    let mut conn = e2e::test_redis::connect(&redis_url).await?;
    let key = domain::deny::hash_key(&edge_prefix, domain::Region::Euw);
    let ops = ops_token("olga");
    let add = |body: Value, idem: &'static str| {
        let (app, ops) = (&app, ops.clone());
        async move {
            app.post(
                "/v1/admin/deny-list?region=EUW",
                Some(&ops),
                &body,
                Some(idem),
            )
            .await
        }
    };

    // Not ops: 403; the list is untouched.
    let not_ops = app
        .post(
            "/v1/admin/deny-list?region=EUW",
            Some(&token("rita")),
            &json!({"kind": "user", "value": "x", "reason": "r"}),
            Some("k0"),
        )
        .await?;
    not_ops.assert_problem(403);

    // Every bad input: 422 naming its field (or 400 for what does not parse).
    for (body, field, says) in [
        (
            json!({"kind": "app", "value": "x", "reason": "r"}),
            "kind",
            "\"key\"",
        ),
        (
            json!({"kind": "key", "value": "key_euw_x", "reason": "r"}),
            "value",
            "key_<region>_<32 hex>",
        ),
        (
            json!({"kind": "network", "value": "203.0.113.5/24", "reason": "r"}),
            "value",
            "203.0.113.0/24",
        ),
        (
            json!({"kind": "network", "value": "10.0.0.0/7", "reason": "r"}),
            "value",
            "8 to 32",
        ),
        (
            json!({"kind": "network", "value": "2001:db8::/50", "reason": "r"}),
            "value",
            "steps of 4",
        ),
        (
            json!({"kind": "network", "value": "not-an-ip", "reason": "r"}),
            "value",
            "CIDR",
        ),
        (
            json!({"kind": "user", "value": " ", "reason": "r"}),
            "value",
            "user id",
        ),
        (
            json!({"kind": "user", "value": "x", "reason": "  "}),
            "reason",
            "500",
        ),
        (
            json!({"kind": "user", "value": "x", "reason": "r", "ttl_secs": 0}),
            "ttl_secs",
            "between",
        ),
        (
            json!({"kind": "user", "value": "x", "reason": "r", "ttl_secs": 60, "expires_at": "2099-01-01T00:00:00Z"}),
            "ttl_secs",
            "not both",
        ),
        (
            json!({"kind": "user", "value": "x", "reason": "r", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
            "future",
        ),
        (
            json!({"kind": "user", "value": "x", "reason": "r", "expires_at": "2999-01-01T00:00:00Z"}),
            "expires_at",
            "year",
        ),
    ] {
        let reply = add(body.clone(), "bad").await?;
        reply.assert_problem(422);
        assert_eq!(reply.body["field"], field, "{body}: {}", reply.body);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(says)),
            "{body}: {}",
            reply.body
        );
    }
    let no_region = app
        .post(
            "/v1/admin/deny-list",
            Some(&ops),
            &json!({"kind": "user", "value": "x", "reason": "r"}),
            Some("k1"),
        )
        .await?;
    no_region.assert_problem(422);
    assert_eq!(no_region.body["field"], "region");
    let unknown_field = add(
        json!({"kind": "user", "value": "x", "reason": "r", "why": 1}),
        "k2",
    )
    .await?;
    assert!(
        unknown_field.status.is_client_error(),
        "{}",
        unknown_field.body
    );
    let count: i64 = sqlx::query_scalar("select count(*) from deny_list")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(count, 0, "nothing half-written by a refused request");

    // Added: a network (canonical form) and a user with a TTL.
    let net = add(
        json!({"kind": "network", "value": " 203.0.113.0/24 ", "reason": "stuffing"}),
        "a1",
    )
    .await?;
    assert_eq!(net.status, 201, "{}", net.body);
    assert_eq!(net.body["kind"], "network");
    assert_eq!(net.body["active"], true);
    assert_eq!(net.body["created_by"], "olga");
    let net_id = net.body["id"].as_str().unwrap_or_default().to_owned();
    // The same request again (same key): the same answer; the same target under a new key: 409.
    let replay = add(
        json!({"kind": "network", "value": " 203.0.113.0/24 ", "reason": "stuffing"}),
        "a1",
    )
    .await?;
    assert_eq!(
        (replay.status.as_u16(), &replay.body["id"]),
        (201, &net.body["id"])
    );
    let twice = add(
        json!({"kind": "network", "value": "203.0.113.0/24", "reason": "again"}),
        "a2",
    )
    .await?;
    twice.assert_problem(409);
    assert_eq!(twice.problem_type(), "/problems/already-exists");
    let user = add(
        json!({"kind": "user", "value": "mallory", "reason": "scraping", "ttl_secs": 600}),
        "a3",
    )
    .await?;
    assert_eq!(user.status, 201, "{}", user.body);
    let expires =
        chrono::DateTime::parse_from_rfc3339(user.body["expires_at"].as_str().unwrap_or_default())?;

    // Published: both fields, with their expiries, at the list's version.
    let hash = e2e::test_redis::hash_until(&mut conn, &key, |h| h.len() == 3).await?;
    assert_eq!(hash.get("n:203.0.113.0/24").map(String::as_str), Some("0"));
    assert_eq!(
        hash.get("u:mallory"),
        Some(&expires.timestamp_millis().to_string())
    );
    assert_eq!(hash.get("#v").map(String::as_str), Some("2"));

    // Listed and read back.
    let list = app
        .get("/v1/admin/deny-list?region=EUW", Some(&ops))
        .await?;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(2));
    let one = app
        .get(&format!("/v1/admin/deny-list/{net_id}"), Some(&ops))
        .await?;
    assert_eq!(one.body["value"], "203.0.113.0/24");
    app.get("/v1/admin/deny-list/dny_euw_nope", Some(&ops))
        .await?
        .assert_problem(404);

    // Removed: recorded, gone from the active list and from the hash; a second removal is 404.
    let removed = app
        .delete(
            &format!("/v1/admin/deny-list/{net_id}"),
            Some(&ops),
            Some("d1"),
        )
        .await?;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(
        (
            removed.body["active"].clone(),
            removed.body["removed_by"].clone()
        ),
        (json!(false), json!("olga"))
    );
    app.delete(
        &format!("/v1/admin/deny-list/{net_id}"),
        Some(&ops),
        Some("d2"),
    )
    .await?
    .assert_problem(404);
    let active = app
        .get("/v1/admin/deny-list?region=EUW", Some(&ops))
        .await?;
    assert_eq!(active.body["items"].as_array().map(Vec::len), Some(1));
    let log = app
        .get("/v1/admin/deny-list?region=EUW&all=true", Some(&ops))
        .await?;
    assert_eq!(log.body["items"].as_array().map(Vec::len), Some(2));
    let hash =
        e2e::test_redis::hash_until(&mut conn, &key, |h| !h.contains_key("n:203.0.113.0/24"))
            .await?;
    assert_eq!(hash.get("#v").map(String::as_str), Some("3"));

    // An older list never replaces a newer one: with a newer version planted in the hash,
    // the next change's publish leaves it as it is (and says so in the metric).
    conn.hset_multiple::<_, _, _, ()>(&key, &[("#v", "1000"), ("n:192.0.2.0/24", "0")])
        .await?;
    let later = add(
        json!({"kind": "network", "value": "198.51.100.0/24", "reason": "r"}),
        "a4",
    )
    .await?;
    assert_eq!(later.status, 201, "{}", later.body);
    let start = Instant::now();
    while !app
        .metrics_text()
        .await?
        .contains("deny_list_publishes_total{result=\"skipped\"}")
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "no skipped publish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hash: HashMap<String, String> = conn.hgetall(&key).await?;
    assert_eq!(hash.get("#v").map(String::as_str), Some("1000"), "{hash:?}");
    assert!(!hash.contains_key("n:198.51.100.0/24"), "{hash:?}");

    origin.stop().await
}
