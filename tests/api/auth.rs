//! Authentication and ownership.

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn a_user_cannot_read_cancel_or_extend_another_users_booking(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[9].clone();
    let (start, end) = window(3, 2);
    let id = app.confirmed("ann", &vehicle, (start, end)).await?;
    let bob = token("bob");
    app.get(&format!("/v1/bookings/{id}"), Some(&bob))
        .await?
        .assert_problem(404);
    app.get(&format!("/v2/bookings/{id}"), Some(&bob))
        .await?
        .assert_problem(404);
    app.post(
        &format!("/v1/bookings/{id}/cancel"),
        Some(&bob),
        &Value::Null,
        None,
    )
    .await?
    .assert_problem(404);
    app.post(
        &format!("/v1/bookings/{id}/extend"),
        Some(&bob),
        &json!({ "end": end + chrono::Duration::hours(1) }),
        None,
    )
    .await?
    .assert_problem(404);
    app.post(
        &format!("/v1/bookings/{id}/confirm"),
        Some(&bob),
        &Value::Null,
        None,
    )
    .await?
    .assert_problem(404);
    let bobs = app.get("/v1/bookings", Some(&bob)).await?;
    assert_eq!(bobs.body["items"].as_array().map(Vec::len), Some(0));
    app.get("/v1/bookings?user_id=ann", Some(&bob))
        .await?
        .assert_problem(403);
    // Nothing changed.
    let got = app
        .get(&format!("/v1/bookings/{id}"), Some(&token("ann")))
        .await?;
    assert_eq!(got.body["status"], "CONFIRMED");
    assert_eq!(
        got.body["end"].as_str().map(str::to_owned),
        Some(end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    );
    // Ops may read it and list ann's bookings, but not act on it.
    let ops = ops_token("olga");
    assert_eq!(
        app.get(&format!("/v1/bookings/{id}"), Some(&ops))
            .await?
            .status
            .as_u16(),
        200
    );
    let listed = app.get("/v1/bookings?user_id=ann", Some(&ops)).await?;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
    app.post(
        &format!("/v1/bookings/{id}/cancel"),
        Some(&ops),
        &Value::Null,
        None,
    )
    .await?
    .assert_problem(404);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_tokens_are_401(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let now = chrono::Utc::now().timestamp();
    let good = token("ann");
    let parts: Vec<&str> = good.split('.').collect();
    let alg_none = {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        format!("{header}.{}.", parts[1])
    };
    let wrong_secret = domain::auth::sign_hs256(
        &domain::auth::Claims {
            sub: "ann".into(),
            iss: ISSUER.into(),
            aud: Value::String(AUDIENCE.into()),
            exp: now + 600,
            nbf: None,
            iat: None,
            roles: vec![],
            membership: None,
        },
        b"another-secret-another-secret-another!!",
        None,
    )?;
    let cases = [
        ("wrong signature", wrong_secret),
        (
            "wrong issuer",
            token_with("ann", |c| c.iss = "someone-else".into()),
        ),
        (
            "wrong audience",
            token_with("ann", |c| c.aud = Value::String("other-api".into())),
        ),
        ("expired", token_with("ann", |c| c.exp = now - 3600)),
        (
            "not yet valid",
            token_with("ann", |c| c.nbf = Some(now + 3600)),
        ),
        ("alg none", alg_none),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, bad) in cases {
        let reply = app.get("/v1/bookings", Some(&bad)).await?;
        reply.assert_problem(401);
        assert_eq!(
            reply
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{name}"
        );
    }
    app.get("/v1/bookings", None).await?.assert_problem(401);
    let reply = app
        .client
        .get(format!("{}/v1/bookings", app.base))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 401);
    assert_eq!(
        app.get("/v1/bookings", Some(&good)).await?.status.as_u16(),
        200
    );
    app.stop().await
}
