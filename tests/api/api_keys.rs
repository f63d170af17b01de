//! `/v1/admin/api-keys` at the origin (issue 19 item 2): ops issue, list, read and revoke apps'
//! API keys; the secret is shown once and stored nowhere (only its hash); every bad input is a
//! problem naming its field; and each change is published to the edges' Upstash (through the
//! REST gateway, into the real Redis) — never putting an older key set over a newer one. The
//! edges' checks: `tests/edge/`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use domain::api_key::{secret_hash, Published};
use e2e::edge::PublishingOrigin;
use e2e::*;
use redis::AsyncCommands;
use serde_json::{json, Value};
use sqlx::PgPool;

const KEYS: &str = "/v1/admin/api-keys";

/// A valid request body with the given plan.
fn body(name: &str, per_minute: u32, per_day: u32) -> Value {
    json!({ "name": name, "per_minute": per_minute, "per_day": per_day })
}

/// The published value of `secret`'s key in `hash`, decoded.
fn plan_in(hash: &HashMap<String, String>, secret: &str) -> TestResult<Published> {
    let value = hash
        .get(&secret_hash(secret))
        .ok_or_else(|| anyhow::anyhow!("no field for the key in {hash:?}"))?;
    Published::decode(value).ok_or_else(|| anyhow::anyhow!("undecodable value {value:?}"))
}

/// The origin's count of key publishes with `result` (ok, skipped, error).
async fn publishes(app: &TestApp, result: &str) -> TestResult<u64> {
    let text = app.metrics_text().await?;
    let series = format!("api_key_publishes_total{{result=\"{result}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// How many rows of every table (and stored idempotent answers) hold `text` anywhere.
async fn rows_holding(pool: &PgPool, text: &str) -> TestResult<Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables
          where table_schema = 'public' and table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await?;
    let mut found = Vec::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(&format!(
            "select count(*) from \"{table}\" t where strpos(row_to_json(t)::text, $1) > 0"
        ))
        .bind(text)
        .fetch_one(pool)
        .await?;
        if n > 0 {
            found.push(format!("{table}: {n}"));
        }
    }
    // Bytes columns appear as hex in JSON: the stored answers are searched as bytes too.
    let answers: i64 = sqlx::query_scalar(
        "select count(*) from idempotency_keys
          where position(convert_to($1, 'UTF8') in response_body) > 0",
    )
    .bind(text)
    .fetch_one(pool)
    .await?;
    if answers > 0 {
        found.push(format!("idempotency_keys.response_body: {answers}"));
    }
    Ok(found)
}

#[sqlx::test(migrations = "../migrations")]
async fn ops_issue_list_read_and_revoke_keys_and_the_secret_is_shown_once_and_stored_nowhere(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let ops = ops_token("olga");
    let request = json!({
        "name": " partner app ",
        "per_minute": 120,
        "per_day": 50_000,
        "burst_secs": 10,
        "allowed_origins": ["HTTPS://App.Example.com/", "https://app.example.com", "http://localhost:3000"],
        "expires_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
    });

    // Issued: the secret once, in its format, with the key's id in Location.
    let made = app
        .post(
            &format!("{KEYS}?region=EUW"),
            Some(&ops),
            &request,
            Some("i1"),
        )
        .await?;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.body["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("key_euw_") && id.len() == 40, "{id}");
    let secret = made.body["secret"].as_str().unwrap_or_default().to_owned();
    assert!(
        secret.starts_with("bpk_euw_") && secret.len() == 51,
        "{secret}"
    );
    assert_eq!(
        made.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{KEYS}/{id}").as_str())
    );
    assert_eq!(made.body["secret_prefix"], json!(&secret[..12]));
    assert_eq!(made.body["name"], "partner app");
    assert_eq!(
        (
            &made.body["per_minute"],
            &made.body["per_day"],
            &made.body["burst_secs"]
        ),
        (&json!(120), &json!(50_000), &json!(10))
    );
    assert_eq!(
        made.body["allowed_origins"],
        json!(["https://app.example.com", "http://localhost:3000"])
    );
    assert_eq!(made.body["created_by"], "olga");
    assert_eq!(made.body["region"], "EUW");
    assert_eq!(made.body["active"], true);
    assert!(made.body["expires_at"].is_string(), "{}", made.body);
    assert!(made.body["revoked_at"].is_null() && made.body["revoked_by"].is_null());

    // The same request again (same Idempotency-Key): the same key, without its secret.
    let replay = app
        .post(
            &format!("{KEYS}?region=EUW"),
            Some(&ops),
            &request,
            Some("i1"),
        )
        .await?;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.body["id"], json!(&id));
    assert!(replay.body.get("secret").is_none(), "{}", replay.body);
    assert_eq!(
        replay
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(
        replay.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{KEYS}/{id}").as_str())
    );

    // Read back: never the secret.
    let one = app.get(&format!("{KEYS}/{id}"), Some(&ops)).await?;
    assert_eq!(one.status, 200, "{}", one.body);
    assert!(one.body.get("secret").is_none(), "{}", one.body);
    assert_eq!(one.body["name"], "partner app");
    assert!(!one.body.to_string().contains(&secret[12..]));

    // Stored: the hash and the prefix only; the secret's random part is in no row of any
    // table, the stored idempotent answer included.
    let stored: (String, String) =
        sqlx::query_as("select secret_hash, secret_prefix from api_keys where id = $1")
            .bind(uuid_of(&id)?)
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(stored, (secret_hash(&secret), secret[..12].to_owned()));
    assert_eq!(
        rows_holding(&app.pool, &secret[12..]).await?,
        Vec::<String>::new()
    );
    assert_eq!(
        rows_holding(&app.pool, &secret).await?,
        Vec::<String>::new()
    );

    // A second key; the list is newest first.
    let second = app
        .post(
            &format!("{KEYS}?region=EUW"),
            Some(&ops),
            &body("batch jobs", 10, 10),
            None,
        )
        .await?;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["burst_secs"], 0);
    assert_eq!(second.body["allowed_origins"], json!([]));
    assert!(second.body["expires_at"].is_null());
    let second_id = second.body["id"].as_str().unwrap_or_default().to_owned();
    assert_ne!(second.body["secret"], made.body["secret"]);
    let list = app.get(&format!("{KEYS}?region=EUW"), Some(&ops)).await?;
    assert_eq!(list.status, 200, "{}", list.body);
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids, [second_id.as_str(), id.as_str()]);
    assert!(
        !list.body.to_string().contains("\"secret\""),
        "{}",
        list.body
    );
    let limited = app
        .get(&format!("{KEYS}?region=EUW&limit=1"), Some(&ops))
        .await?;
    assert_eq!(limited.body["items"].as_array().map(Vec::len), Some(1));

    // Revoked: recorded, out of the usable list, kept in the whole list; a second revocation
    // is 404 (as the deny list's second removal).
    let revoked = app
        .delete(&format!("{KEYS}/{id}"), Some(&ops), Some("r1"))
        .await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(
        (&revoked.body["active"], &revoked.body["revoked_by"]),
        (&json!(false), &json!("olga"))
    );
    assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.body);
    let again = app
        .delete(&format!("{KEYS}/{id}"), Some(&ops), Some("r1"))
        .await?;
    assert_eq!(
        (again.status.as_u16(), &again.body["id"]),
        (200, &json!(&id)),
        "a replay answers the revocation again"
    );
    app.delete(&format!("{KEYS}/{id}"), Some(&ops), Some("r2"))
        .await?
        .assert_problem(404);
    let active = app.get(&format!("{KEYS}?region=EUW"), Some(&ops)).await?;
    assert_eq!(active.body["items"].as_array().map(Vec::len), Some(1));
    let all = app
        .get(&format!("{KEYS}?region=EUW&all=true"), Some(&ops))
        .await?;
    assert_eq!(all.body["items"].as_array().map(Vec::len), Some(2));
    let audit = app.get(&format!("{KEYS}/{id}"), Some(&ops)).await?;
    assert_eq!(
        (&audit.body["revoked_by"], &audit.body["created_by"]),
        (&json!("olga"), &json!("olga"))
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from api_keys")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(rows, 2, "a revocation deletes nothing");

    // Ids that name nothing: 404.
    for missing in [
        "key_euw_nope".to_owned(),
        format!("key_euw_{}", uuid::Uuid::new_v4().simple()),
        id.replace("key_", "dny_"),
    ] {
        app.get(&format!("{KEYS}/{missing}"), Some(&ops))
            .await?
            .assert_problem(404);
        app.delete(&format!("{KEYS}/{missing}"), Some(&ops), None)
            .await?
            .assert_problem(404);
    }
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn every_bad_key_request_is_refused_with_a_problem_naming_its_field(
    pool: PgPool,
) -> TestResult {
    // An origin of EUW only: EUN's keys are another origin's.
    let app = spawn_app_with(pool, &[("ORIGIN_REGIONS", "EUW")]).await?;
    let ops = ops_token("olga");
    let post = |body: Value, query: &'static str, who: String| {
        let app = &app;
        async move {
            app.post(&format!("{KEYS}{query}"), Some(&who), &body, None)
                .await
        }
    };
    let now = chrono::Utc::now();
    let origins =
        |n: usize| -> Vec<String> { (0..n).map(|i| format!("https://a{i}.example")).collect() };
    for (body, field, says) in [
        (body("x", 0, 10), "per_minute", "1 to"),
        (body("x", 1_000_001, 2_000_000), "per_minute", "1 to"),
        (body("x", 100, 99), "per_day", "at least per_minute"),
        (body("x", 100, 1_000_000_001), "per_day", "at most"),
        (
            json!({"name": "x", "per_minute": 1, "per_day": 1, "burst_secs": 61}),
            "burst_secs",
            "0 to 60",
        ),
        (
            json!({"name": "x", "per_minute": 1, "per_day": 1, "allowed_origins": ["app.example.com"]}),
            "allowed_origins",
            "not an origin",
        ),
        (
            json!({"name": "x", "per_minute": 1, "per_day": 1, "allowed_origins": ["https://a.example/path"]}),
            "allowed_origins",
            "not an origin",
        ),
        (
            json!({"name": "x", "per_minute": 1, "per_day": 1, "allowed_origins": origins(17)}),
            "allowed_origins",
            "at most 16",
        ),
        (body("", 1, 1), "name", "1 to 100"),
        (body("   ", 1, 1), "name", "1 to 100"),
        (body(&"n".repeat(101), 1, 1), "name", "1 to 100"),
        (body("a\u{7}b", 1, 1), "name", "control"),
        (
            json!({"name": "x", "per_minute": 1, "per_day": 1, "expires_at": (now - chrono::Duration::minutes(1)).to_rfc3339()}),
            "expires_at",
            "future",
        ),
        (
            json!({"name": "x", "per_minute": 1, "per_day": 1, "expires_at": (now + chrono::Duration::days(731)).to_rfc3339()}),
            "expires_at",
            "two years",
        ),
        // Shapes serde refuses: the field is named too.
        (
            body("x", 1, 1).tap(|b| b["per_minute"] = json!(-1)),
            "per_minute",
            "per_minute",
        ),
        (
            body("x", 1, 1).tap(|b| b["allowed_origins"] = json!("https://a.example")),
            "allowed_origins",
            "allowed_origins",
        ),
    ] {
        let reply = post(body.clone(), "?region=EUW", ops.clone()).await?;
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
    // An unknown field and a missing one: 422, the detail naming it.
    for (body, says) in [
        (body("x", 1, 1).tap(|b| b["tier"] = json!("gold")), "tier"),
        (json!({"name": "x", "per_minute": 1}), "per_day"),
    ] {
        let reply = post(body.clone(), "?region=EUW", ops.clone()).await?;
        reply.assert_problem(422);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(says)),
            "{body}: {}",
            reply.body
        );
    }
    // The region: missing (422 naming it), unknown (404), another origin's (421).
    let none = post(body("x", 1, 1), "", ops.clone()).await?;
    none.assert_problem(422);
    assert_eq!(none.body["field"], "region");
    post(body("x", 1, 1), "?region=XYZ", ops.clone())
        .await?
        .assert_problem(404);
    let eun = post(body("x", 1, 1), "?region=EUN", ops.clone()).await?;
    eun.assert_problem(421);
    assert_eq!(eun.problem_type(), "/problems/misdirected");
    app.get(&format!("{KEYS}?region=EUN"), Some(&ops))
        .await?
        .assert_problem(421);
    app.get(&format!("{KEYS}?region=EUW&limit=0"), Some(&ops))
        .await?
        .assert_problem(422);
    // A key of EUN (by its id): the deny list's answer for another origin's entry, 421.
    let eun_key = format!("key_eun_{}", uuid::Uuid::new_v4().simple());
    let read = app.get(&format!("{KEYS}/{eun_key}"), Some(&ops)).await?;
    read.assert_problem(421);
    assert!(
        read.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&eun_key) && d.contains("EUN")),
        "{}",
        read.body
    );
    app.delete(&format!("{KEYS}/{eun_key}"), Some(&ops), None)
        .await?
        .assert_problem(421);

    // Not ops: 403 on every route; no token: 401.
    let made = post(body("kept", 5, 50), "?region=EUW", ops.clone()).await?;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.body["id"].as_str().unwrap_or_default().to_owned();
    let rita = token("rita");
    post(body("x", 1, 1), "?region=EUW", rita.clone())
        .await?
        .assert_problem(403);
    app.get(&format!("{KEYS}?region=EUW"), Some(&rita))
        .await?
        .assert_problem(403);
    app.get(&format!("{KEYS}/{id}"), Some(&rita))
        .await?
        .assert_problem(403);
    app.delete(&format!("{KEYS}/{id}"), Some(&rita), None)
        .await?
        .assert_problem(403);
    app.get(&format!("{KEYS}?region=EUW"), None)
        .await?
        .assert_problem(401);

    // Nothing was written by a refused request: the one key, not revoked.
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("select name, revoked_by from api_keys")
            .fetch_all(&app.pool)
            .await?;
    assert_eq!(rows, [("kept".to_owned(), None)]);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn every_change_reaches_the_edges_hash_and_an_older_key_set_never_replaces_a_newer_one(
    pool: PgPool,
) -> TestResult {
    let redis_url = e2e::test_redis::shared_url();
    let origin = PublishingOrigin::spawn(pool).await?;
    let (app, edge_prefix) = (&origin.app, origin.edge_prefix.clone());
    let mut conn = e2e::test_redis::connect(&redis_url).await?;
    let key = domain::api_key::hash_key(&edge_prefix, domain::Region::Euw);
    let ops = ops_token("olga");
    let issue = |body: Value| {
        let (app, ops) = (&app, ops.clone());
        async move {
            let made = app
                .post(&format!("{KEYS}?region=EUW"), Some(&ops), &body, None)
                .await?;
            anyhow::ensure!(made.status == 201, "{}", made.body);
            let id = made.body["id"].as_str().unwrap_or_default().to_owned();
            let secret = made.body["secret"].as_str().unwrap_or_default().to_owned();
            anyhow::Ok((id, secret))
        }
    };

    // Issued: the key's field, its hash, holds its plan, origins and expiry at version 1.
    let expires = chrono::Utc::now() + chrono::Duration::days(3);
    let (id, secret) = issue(json!({
        "name": "partner", "per_minute": 120, "per_day": 50_000, "burst_secs": 10,
        "allowed_origins": ["https://app.example.com"], "expires_at": expires.to_rfc3339(),
    }))
    .await?;
    let hash =
        e2e::test_redis::hash_until(&mut conn, &key, |h| h.contains_key(&secret_hash(&secret)))
            .await?;
    assert_eq!(hash.get("#v").map(String::as_str), Some("1"));
    let p = plan_in(&hash, &secret)?;
    assert_eq!(p.key_id, id);
    assert_eq!(
        (p.plan.per_minute, p.plan.per_day, p.plan.burst_secs),
        (120, 50_000, 10)
    );
    assert_eq!(p.origins, ["https://app.example.com"]);
    assert_eq!(p.expires_ms, u64::try_from(expires.timestamp_millis())?);
    assert_eq!(p.revoked_ms, 0);
    assert_eq!(p.refusal(now_ms(), Some("https://app.example.com")), None);
    // Neither the secret nor a field other than hashes and the version is published.
    assert!(hash.keys().all(|k| k == "#v" || k.len() == 64));
    assert!(!hash.values().any(|v| v.contains(&secret[12..])));

    // Revoked: still published (so an edge says "revoked", not "unknown"), with the time.
    let revoked = app
        .delete(&format!("{KEYS}/{id}"), Some(&ops), None)
        .await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let hash = e2e::test_redis::hash_until(&mut conn, &key, |h| {
        h.get("#v").map(String::as_str) == Some("2")
    })
    .await?;
    let p = plan_in(&hash, &secret)?;
    assert!(p.revoked_ms > 0, "{p:?}");
    assert_eq!(
        p.refusal(now_ms(), Some("https://app.example.com")),
        Some(domain::api_key::KeyRefusal::Revoked)
    );

    // A week after its end a key is forgotten; within it, it stays (here a key that expired
    // yesterday). The next change's publish shows both.
    let (_, expired) = issue(body("expired yesterday", 1, 1)).await?;
    sqlx::query("update api_keys set revoked_at = now() - interval '8 days' where id = $1")
        .bind(uuid_of(&id)?)
        .execute(&app.pool)
        .await?;
    sqlx::query("update api_keys set expires_at = now() - interval '1 day' where secret_hash = $1")
        .bind(secret_hash(&expired))
        .execute(&app.pool)
        .await?;
    let (_, fresh) = issue(body("fresh", 2, 2)).await?;
    let hash =
        e2e::test_redis::hash_until(&mut conn, &key, |h| h.contains_key(&secret_hash(&fresh)))
            .await?;
    assert!(!hash.contains_key(&secret_hash(&secret)), "{hash:?}");
    assert_eq!(
        plan_in(&hash, &expired)?.refusal(now_ms(), None),
        Some(domain::api_key::KeyRefusal::Expired)
    );
    assert_eq!(hash.get("#v").map(String::as_str), Some("4"));

    // An older set never replaces a newer one: with a newer version planted in the hash, the
    // next change's publish leaves it as it is (and says so in the metric).
    conn.hset_multiple::<_, _, _, ()>(&key, &[("#v", "1000"), ("planted", "v1")])
        .await?;
    let skipped = publishes(app, "skipped").await?;
    let (_, later) = issue(body("later", 3, 3)).await?;
    let start = Instant::now();
    while publishes(app, "skipped").await? <= skipped {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "no skipped publish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hash: HashMap<String, String> = conn.hgetall(&key).await?;
    assert_eq!(hash.get("#v").map(String::as_str), Some("1000"), "{hash:?}");
    assert!(!hash.contains_key(&secret_hash(&later)), "{hash:?}");
    assert!(hash.contains_key("planted"), "{hash:?}");
    assert!(publishes(app, "ok").await? >= 3);

    origin.stop().await
}

/// Now, in ms since the epoch.
fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Changes a value in place and hands it back (for a body with one field changed).
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
