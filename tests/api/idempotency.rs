//! Idempotency-Key: retries get the first answer and create nothing new.

use e2e::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn a_retried_post_with_the_same_key_returns_the_same_body_and_creates_nothing(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[2].clone();
    let quote = app.quote("dave", &vehicle, window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let first = app
        .post("/v1/bookings", Some(&token("dave")), &body, Some("k-1"))
        .await?;
    assert_eq!(first.status.as_u16(), 201);
    let counts = (
        app.count("bookings", "true").await?,
        app.count("booking_history", "true").await?,
        app.count("outbox", "true").await?,
    );
    let again = app
        .post("/v1/bookings", Some(&token("dave")), &body, Some("k-1"))
        .await?;
    assert_eq!(again.status.as_u16(), 201);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(
        (
            app.count("bookings", "true").await?,
            app.count("booking_history", "true").await?,
            app.count("outbox", "true").await?,
        ),
        counts
    );

    // The same key on an action is per request: confirm twice with one key → one transition.
    let id = first.body["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/bookings/{id}/confirm");
    let c1 = app
        .post(&path, Some(&token("dave")), &Value::Null, Some("c-1"))
        .await?;
    let c2 = app
        .post(&path, Some(&token("dave")), &Value::Null, Some("c-1"))
        .await?;
    assert_eq!(c1.status.as_u16(), 200);
    assert_eq!(c2.body, c1.body);
    assert_eq!(
        app.count("booking_history", "to_status = 'CONFIRMED'")
            .await?,
        1
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_key_with_another_body_is_422(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicles = app.vehicles("EUW").await?;
    let q1 = app.quote("erin", &vehicles[0], window(2, 2)).await?;
    let q2 = app.quote("erin", &vehicles[1], window(2, 2)).await?;
    let first = app
        .post(
            "/v1/bookings",
            Some(&token("erin")),
            &json!({ "quote_token": q1["quote_token"] }),
            Some("same"),
        )
        .await?;
    assert_eq!(first.status.as_u16(), 201);
    let other = app
        .post(
            "/v1/bookings",
            Some(&token("erin")),
            &json!({ "quote_token": q2["quote_token"] }),
            Some("same"),
        )
        .await?;
    other.assert_problem(422);
    assert_eq!(other.problem_type(), "/problems/idempotency-mismatch");
    assert_eq!(app.count("bookings", "true").await?, 1);
    // Keys are per user: another user may use the same key string.
    let q3 = app.quote("frank", &vehicles[2], window(2, 2)).await?;
    let theirs = app
        .post(
            "/v1/bookings",
            Some(&token("frank")),
            &json!({ "quote_token": q3["quote_token"] }),
            Some("same"),
        )
        .await?;
    assert_eq!(theirs.status.as_u16(), 201);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_requests_with_one_key_run_the_effect_once(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUN").await?[3].clone();
    let quote = app.quote("gina", &vehicle, window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let gina = token("gina");
    let replies =
        join_all((0..12).map(|_| app.post("/v1/bookings", Some(&gina), &body, Some("burst"))))
            .await;
    let mut bodies = Vec::new();
    for reply in replies {
        let reply = reply?;
        match reply.status.as_u16() {
            201 => bodies.push(reply.body),
            409 => assert_eq!(
                reply.assert_problem(409).problem_type(),
                "/problems/idempotency-in-progress"
            ),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(!bodies.is_empty());
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every success is the first answer"
    );
    assert_eq!(app.count("bookings", "true").await?, 1);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_malformed_idempotency_key_is_400(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let long = "x".repeat(300);
    let reply = app
        .post(
            "/v1/bookings",
            Some(&token("hank")),
            &json!({ "quote_token": "x" }),
            Some(&long),
        )
        .await?;
    reply.assert_problem(400);
    app.stop().await
}

/// Stores a response under `key` as the origin did before fingerprints came from the matched
/// route: `request_hash` = sha256(method ‖ 0 ‖ canonical path ‖ 0 ‖ body JSON), computed here by
/// PostgreSQL from the formula, not by the origin's code.
async fn store_legacy_key(
    app: &TestApp,
    user: &str,
    key: &str,
    (method, path, body): (&str, &str, &str),
    stored: &Value,
) -> TestResult {
    sqlx::query(
        "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body)
         values ($1, $2,
                 sha256(convert_to($3, 'UTF8') || '\\x00'::bytea || convert_to($4, 'UTF8')
                        || '\\x00'::bytea || convert_to($5, 'UTF8')),
                 200, convert_to($6, 'UTF8'))",
    )
    .bind(user)
    .bind(key)
    .bind(method)
    .bind(path)
    .bind(body)
    .bind(stored.to_string())
    .execute(&app.pool)
    .await?;
    Ok(())
}

fn replayed(reply: &Reply) -> bool {
    reply
        .headers
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        == Some("true")
}

#[sqlx::test(migrations = "../migrations")]
async fn keys_stored_with_the_canonical_path_replay_however_the_request_spells_its_ids(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[4].clone();
    let hold = app.hold("iris", &vehicle, window(3, 2)).await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();

    // A confirm answered before the change, under the canonical (lower-case) id; the retry
    // spells the id's hex in upper case, which names the same booking.
    let legacy = json!({ "legacy": "confirm" });
    let canonical = format!("/v1/bookings/{id}/confirm");
    store_legacy_key(
        &app,
        "iris",
        "old-confirm",
        ("POST", &canonical, "null"),
        &legacy,
    )
    .await?;
    let (prefix, hex) = id.split_at(id.len() - 32);
    let shouted = format!("/v1/bookings/{prefix}{}/confirm", hex.to_uppercase());
    let reply = app
        .post(
            &shouted,
            Some(&token("iris")),
            &Value::Null,
            Some("old-confirm"),
        )
        .await?;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    assert_eq!(reply.body, legacy);
    assert!(replayed(&reply));
    // A replay runs nothing: the hold is still a hold.
    let read = app
        .get(&format!("/v1/bookings/{id}"), Some(&token("iris")))
        .await?;
    assert_eq!(read.body["status"], "RESERVING", "{}", read.body);

    // The same key with another request (extend, not confirm) is still a mismatch.
    let other = app
        .post(
            &format!("/v1/bookings/{id}/extend"),
            Some(&token("iris")),
            &json!({ "end": window(3, 3).1 }),
            Some("old-confirm"),
        )
        .await?;
    assert_eq!(
        other.assert_problem(422).problem_type(),
        "/problems/idempotency-mismatch"
    );

    // An admin change: the region canonical in upper case, the rule id hyphenated; the retry
    // says `euw` and the id without hyphens.
    let rule = uuid::Uuid::new_v4();
    let legacy = json!({ "legacy": "admin" });
    let canonical = format!("/v1/admin/pricing/EUW/time-multipliers/{rule}");
    store_legacy_key(
        &app,
        "olga",
        "old-delete",
        ("DELETE", &canonical, "null"),
        &legacy,
    )
    .await?;
    let reply = app
        .client
        .delete(format!(
            "{}/v1/admin/pricing/euw/time-multipliers/{}",
            app.base,
            rule.simple()
        ))
        .bearer_auth(ops_token("olga"))
        .header("idempotency-key", "old-delete")
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 200);
    assert_eq!(
        reply
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(reply.json::<Value>().await?, legacy);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_retry_that_spells_the_booking_id_differently_gets_the_first_answer(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[5].clone();
    let id = app.confirmed("jill", &vehicle, window(4, 2)).await?;
    let (prefix, hex) = id.split_at(id.len() - 32);
    let first = app
        .post(
            &format!("/v2/bookings/{id}/cancel"),
            Some(&token("jill")),
            &Value::Null,
            Some("cancel-once"),
        )
        .await?;
    assert_eq!(first.status.as_u16(), 200, "{}", first.body);
    assert!(!replayed(&first));
    let again = app
        .post(
            &format!("/v2/bookings/{prefix}{}/cancel", hex.to_uppercase()),
            Some(&token("jill")),
            &Value::Null,
            Some("cancel-once"),
        )
        .await?;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    assert!(replayed(&again));
    assert_eq!(again.body, first.body);
    // The v1 route is another request: the same key there is a mismatch.
    let v1 = app
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&token("jill")),
            &Value::Null,
            Some("cancel-once"),
        )
        .await?;
    assert_eq!(
        v1.assert_problem(422).problem_type(),
        "/problems/idempotency-mismatch"
    );
    assert_eq!(
        app.count("booking_history", "to_status = 'CANCELLED'")
            .await?,
        1
    );
    app.stop().await
}

/// Found by the fault suite's clock skew: a hold replayed (same key) after its quote expired
/// — here by waiting, there on an origin whose clock ran 5 min ahead — was answered 422 "quote
/// expired" instead of the stored 201, because the quote was checked before the key.
#[sqlx::test(migrations = "../migrations")]
async fn a_hold_retried_with_its_key_after_the_quote_expired_replays_the_201(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("QUOTE_TTL_SECS", "1")]).await?;
    let vehicle = app.vehicles("EUW").await?[2].clone();
    let quote = app.quote("erin", &vehicle, window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let first = app
        .post("/v1/bookings", Some(&token("erin")), &body, Some("k-exp"))
        .await?;
    assert_eq!(first.status.as_u16(), 201);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let again = app
        .post("/v1/bookings", Some(&token("erin")), &body, Some("k-exp"))
        .await?;
    assert_eq!(again.status.as_u16(), 201, "{}", again.body);
    assert_eq!(again.body, first.body);
    // A new key with the expired quote is still refused, and leaves no key behind.
    let fresh = app
        .post("/v1/bookings", Some(&token("erin")), &body, Some("k-new"))
        .await?;
    fresh.assert_problem(422);
    assert_eq!(app.count("bookings", "true").await?, 1);
    assert_eq!(app.count("idempotency_keys", "key = 'k-new'").await?, 0);
    app.stop().await
}

/// The hold's statement waits for its key's lock, then looks the key up; the lookup must see
/// what the lock's previous holder committed while it waited — a fresh snapshot after the
/// wait, which is why `hold_booking` is a VOLATILE function and not one CTE (one statement
/// looks with the snapshot it started with, before the wait: it would miss the stored answer,
/// run the hold again and fail on the key's primary key). The previous holder is the test:
/// it takes the key's lock, stores an answer under the key, lets the hold queue behind it,
/// then commits. (`VEHICLE_LOCK=postgres`: under a Redis vehicle lock the statement does not
/// wait for the key, see `store::bookings::at_once::Waits`.)
#[sqlx::test(migrations = "../migrations")]
async fn a_hold_that_waited_for_its_key_replays_what_the_request_before_it_committed(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(
        pool,
        &[("LOCK_WAIT_MS", "1000"), ("VEHICLE_LOCK", "postgres")],
    )
    .await?;
    let vehicle = app.vehicles("EUW").await?[3].clone();
    let quote = app.quote("nina", &vehicle, window(2, 2)).await?;
    let body = json!({ "quote_token": quote["quote_token"] });
    let planted = json!({ "planted": "by the request before" });
    let mut before = app.pool.begin().await?;
    // The key's lock id (the first 8 bytes of sha256(user ‖ 0 ‖ key), big-endian) and the
    // request's fingerprint, computed by PostgreSQL from their formulas.
    sqlx::query(
        "select pg_advisory_xact_lock(('x' || left(encode(sha256(
                    convert_to($1, 'UTF8') || '\\x00'::bytea || convert_to($2, 'UTF8')), 'hex'), 16)
                )::bit(64)::bigint)",
    )
    .bind("nina")
    .bind("k-wait")
    .execute(&mut *before)
    .await?;
    sqlx::query(
        "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body)
         values ($1, $2,
                 sha256(convert_to('POST', 'UTF8') || '\\x00'::bytea || convert_to('/v1/bookings', 'UTF8')
                        || '\\x00'::bytea || convert_to($3, 'UTF8')),
                 201, convert_to($4, 'UTF8'))",
    )
    .bind("nina")
    .bind("k-wait")
    .bind(body.to_string())
    .bind(planted.to_string())
    .execute(&mut *before)
    .await?;
    let nina = token("nina");
    let (reply, staged) = tokio::join!(
        app.post("/v1/bookings", Some(&nina), &body, Some("k-wait")),
        async {
            // Commit only once the hold is queued on the key's lock: otherwise the race was
            // not staged and the test must fail, not pass.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "select count(*) from pg_locks l join pg_database d on d.oid = l.database
                      where l.locktype = 'advisory' and not l.granted
                        and d.datname = current_database()",
                )
                .fetch_one(&app.pool)
                .await?;
                if waiting > 0 {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the hold never waited on its key's lock: the race was not staged"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            before.commit().await?;
            TestResult::Ok(())
        }
    );
    staged?;
    let reply = reply?;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert_eq!(reply.body, planted);
    assert!(replayed(&reply));
    assert_eq!(
        app.count("bookings", "true").await?,
        0,
        "the effect ran once"
    );
    app.stop().await
}
