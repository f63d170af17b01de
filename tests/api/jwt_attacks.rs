//! JWT attacks at the origin, beyond the basic bad-token list in `auth.rs`: algorithm
//! confusion (an HS256 token keyed with the RS256 *public* key), `alg: none` spelled every way,
//! algorithms the origin does not accept, an unknown or hostile `kid`, a key that signs for the
//! wrong kid, expiry and not-before at the leeway's edge, audiences as arrays, oversized and
//! truncated tokens, tokens outside the Authorization header.
//!
//! The origin here trusts an HS256 secret (no kid) and an RS256 public key (kid `rs1`), the
//! mixed set where confusion attacks live. Every attack must be a 401 problem with
//! `WWW-Authenticate: Bearer`, must not echo the token, and a correctly signed token of each
//! kind must pass (so the 401s are not an origin that refuses everything).

use e2e::jwt_forge::*;
use e2e::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use sqlx::PgPool;

async fn app_with_mixed_keys(pool: PgPool) -> TestResult<TestApp> {
    let rs_keys = format!("rs1={FIXTURES}/rs256_public.pem,rs2={FIXTURES}/rs256_other_public.pem");
    let ed_keys = format!("ed1={FIXTURES}/ed25519_public.pem");
    spawn_app_with(
        pool,
        &[
            ("JWT_RS256_PUBLIC_KEYS", &rs_keys),
            ("JWT_EDDSA_PUBLIC_KEYS", &ed_keys),
            ("JWT_LEEWAY_SECS", "30"),
        ],
    )
    .await
}

#[sqlx::test(migrations = "../migrations")]
async fn correctly_signed_tokens_of_every_configured_kind_are_accepted(pool: PgPool) -> TestResult {
    let app = app_with_mixed_keys(pool).await?;
    let c = serde_json::to_value(claims("ann"))?;
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE)?;
    let mut aud_array = c.clone();
    aud_array["aud"] = json!(["another-api", AUDIENCE]);
    let now = chrono::Utc::now().timestamp();
    let mut within_leeway = c.clone();
    within_leeway["exp"] = json!(now - 5);
    for (name, good) in [
        (
            "HS256 without kid",
            hs256_with(JWT_SECRET.as_bytes(), None, &c),
        ),
        ("RS256 kid rs1", rs256(Some("rs1"), &c)),
        (
            "EdDSA kid ed1",
            sign(Algorithm::EdDSA, Some("ed1"), &c, &ed),
        ),
        (
            "audience array holding ours",
            hs256_with(JWT_SECRET.as_bytes(), None, &aud_array),
        ),
        (
            "expired 5 s ago, inside the 30 s leeway",
            hs256_with(JWT_SECRET.as_bytes(), None, &within_leeway),
        ),
    ] {
        let reply = app.get("/v1/bookings", Some(&good)).await?;
        assert_eq!(reply.status.as_u16(), 200, "{name}: {}", reply.body);
    }
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn forged_confused_and_stale_tokens_are_refused_with_401(pool: PgPool) -> TestResult {
    let app = app_with_mixed_keys(pool).await?;
    let attacks = e2e::jwt_forge::attacks("ann")?;
    let mut wrong = Vec::new();
    for (name, bad) in &attacks {
        let reply = app.get("/v1/bookings", Some(bad)).await?;
        if reply.status.as_u16() != 401 {
            wrong.push(format!("{name}: {} {}", reply.status, reply.body));
            continue;
        }
        reply.assert_problem(401);
        assert_eq!(
            reply
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{name}"
        );
        // The refusal says why without echoing the token.
        let detail = reply.body.to_string();
        if let Some(sig) = bad.rsplit('.').next().filter(|s| s.len() > 8) {
            assert!(
                !detail.contains(sig),
                "{name}: the 401 echoes the token: {detail}"
            );
        }
        // The same token on a write is refused too, and writes nothing.
        let write = app.post("/v1/quotes", Some(bad), &json!({}), None).await?;
        assert_eq!(write.status.as_u16(), 401, "{name} on POST: {}", write.body);
    }
    assert!(
        wrong.is_empty(),
        "attacks not refused:\n{}",
        wrong.join("\n")
    );
    assert_eq!(app.count("idempotency_keys", "true").await?, 0);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_token_outside_the_authorization_bearer_header_is_not_accepted(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let good = token("ann");
    let url = format!("{}/v1/bookings", app.base);
    let attempts = [
        app.client.get(format!("{url}?access_token={good}")),
        app.client
            .get(&url)
            .header("cookie", format!("token={good}")),
        app.client.get(&url).header("x-access-token", &good),
        app.client.get(&url).header("authorization", &good),
        app.client
            .get(&url)
            .header("authorization", format!("Basic {good}")),
        app.client.get(&url).header("authorization", "Bearer "),
        app.client
            .get(&url)
            .header("authorization", format!("Bearer {good} {good}")),
    ];
    for (i, req) in attempts.into_iter().enumerate() {
        let status = req.send().await?.status().as_u16();
        assert_eq!(status, 401, "attempt {i}");
    }
    // Control: the same token in the right place works.
    assert_eq!(
        app.get("/v1/bookings", Some(&good)).await?.status.as_u16(),
        200
    );
    app.stop().await
}
