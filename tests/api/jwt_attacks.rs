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

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::auth::Claims;
use e2e::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sqlx::PgPool;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/domain/tests/fixtures"
);
const RS_PRIVATE: &[u8] = include_bytes!("../../shared/domain/tests/fixtures/rs256_private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("../../shared/domain/tests/fixtures/rs256_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../shared/domain/tests/fixtures/ed25519_private.pem");

fn claims(sub: &str) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: sub.to_owned(),
        iss: ISSUER.to_owned(),
        aud: Value::String(AUDIENCE.to_owned()),
        exp: now + 600,
        nbf: Some(now - 10),
        iat: Some(now),
        roles: vec![],
        membership: None,
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap_or_default()
}

fn rs256(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RS_PRIVATE).ok();
    key.map(|k| sign(Algorithm::RS256, kid, claims, &k))
        .unwrap_or_default()
}

fn hs256_with(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        kid,
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// A token with an arbitrary header, signed with HMAC-SHA256 over `secret` (or unsigned when
/// `secret` is None): for headers jsonwebtoken refuses to write.
fn raw(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{h}.{c}");
    match secret {
        None => format!("{signing_input}."),
        Some(secret) => {
            let key = EncodingKey::from_secret(secret);
            let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256)
                .unwrap_or_default();
            format!("{signing_input}.{sig}")
        }
    }
}

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
    let c = serde_json::to_value(claims("ann"))?;
    let now = chrono::Utc::now().timestamp();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = c.clone();
        f(&mut v);
        hs256_with(JWT_SECRET.as_bytes(), None, &v)
    };
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE)?;
    let good = hs256_with(JWT_SECRET.as_bytes(), None, &c);
    let good_parts: Vec<&str> = good.split('.').collect();
    let attacks: Vec<(&str, String)> = vec![
        // Algorithm confusion: the RS256 public key is public; used as an HMAC secret it must
        // not verify anything, whatever the header claims.
        (
            "HS256 keyed with the RS public key, kid rs1",
            hs256_with(RS_PUBLIC, Some("rs1"), &c),
        ),
        (
            "HS256 keyed with the RS public key, no kid",
            hs256_with(RS_PUBLIC, None, &c),
        ),
        // The RS private key signs, but the header names the HS key's algorithm.
        ("RS256 signature under an HS256 header", {
            let rs = rs256(Some("rs1"), &c);
            let mut parts: Vec<String> = rs.split('.').map(str::to_owned).collect();
            parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            parts.join(".")
        }),
        // Right key material, wrong kid: rs2 is another RSA key.
        (
            "RS256 signed by rs1's key but labelled rs2",
            rs256(Some("rs2"), &c),
        ),
        ("RS256 with an unknown kid", rs256(Some("rs9"), &c)),
        // Without a kid two RS keys are ambiguous: refused rather than tried in turn.
        (
            "RS256 without kid with two RS keys configured",
            rs256(None, &c),
        ),
        (
            "EdDSA signed but labelled with the RS kid",
            sign(Algorithm::EdDSA, Some("rs1"), &c, &ed),
        ),
        (
            "kid path traversal",
            raw(
                &json!({"alg":"HS256","kid":"../../../../dev/null"}),
                &c,
                Some(b""),
            ),
        ),
        (
            "kid SQL injection",
            raw(
                &json!({"alg":"HS256","kid":"x' or '1'='1"}),
                &c,
                Some(JWT_SECRET.as_bytes()),
            ),
        ),
        // alg none in its spellings, with and without a signature part.
        (
            "alg none",
            raw(&json!({"alg":"none","typ":"JWT"}), &c, None),
        ),
        ("alg None", raw(&json!({"alg":"None"}), &c, None)),
        ("alg NONE", raw(&json!({"alg":"NONE"}), &c, None)),
        (
            "alg nOnE with the good signature",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"nOnE"}"#),
                good_parts[1],
                good_parts[2]
            ),
        ),
        (
            "alg missing",
            raw(&json!({"typ":"JWT"}), &c, Some(JWT_SECRET.as_bytes())),
        ),
        // Algorithms that are not configured, even with the right secret.
        (
            "HS512 with the right secret",
            sign(
                Algorithm::HS512,
                None,
                &c,
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            ),
        ),
        (
            "HS384 with the right secret",
            sign(
                Algorithm::HS384,
                None,
                &c,
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            ),
        ),
        (
            "PS256 header",
            raw(
                &json!({"alg":"PS256","kid":"rs1"}),
                &c,
                Some(JWT_SECRET.as_bytes()),
            ),
        ),
        // Signature games.
        (
            "empty signature",
            format!("{}.{}.", good_parts[0], good_parts[1]),
        ),
        ("signature of another payload", {
            let other = with(&|v| v["sub"] = json!("olga"));
            let other_sig = other.rsplit('.').next().unwrap_or_default().to_owned();
            format!("{}.{}.{other_sig}", good_parts[0], good_parts[1])
        }),
        ("payload swapped to ops under the user's signature", {
            let mut ops = c.clone();
            ops["roles"] = json!(["ops"]);
            format!(
                "{}.{}.{}",
                good_parts[0],
                URL_SAFE_NO_PAD.encode(ops.to_string()),
                good_parts[2]
            )
        }),
        ("two dots only", "..".to_owned()),
        ("four segments", format!("{good}.extra")),
        ("not base64", "!!!.###.$$$".to_owned()),
        (
            "header not JSON",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("not json"),
                good_parts[1],
                good_parts[2]
            ),
        ),
        (
            "oversized token",
            format!("{}.{}.{}", good_parts[0], "A".repeat(20_000), good_parts[2]),
        ),
        // Time and audience.
        (
            "expired beyond the leeway",
            with(&|v| v["exp"] = json!(now - 31)),
        ),
        (
            "not valid for another hour",
            with(&|v| v["nbf"] = json!(now + 3600)),
        ),
        (
            "not valid beyond the leeway",
            with(&|v| v["nbf"] = json!(now + 40)),
        ),
        (
            "exp missing",
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("exp"));
            }),
        ),
        ("exp as a string", with(&|v| v["exp"] = json!("tomorrow"))),
        (
            "sub missing",
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("sub"));
            }),
        ),
        (
            "wrong issuer",
            with(&|v| v["iss"] = json!("https://evil.example")),
        ),
        (
            "issuer missing",
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("iss"));
            }),
        ),
        (
            "issuer with a trailing space",
            with(&|v| v["iss"] = json!(format!("{ISSUER} "))),
        ),
        ("wrong audience", with(&|v| v["aud"] = json!("other-api"))),
        (
            "audience array without ours",
            with(&|v| v["aud"] = json!(["a", "b"])),
        ),
        ("audience as a number", with(&|v| v["aud"] = json!(7))),
        (
            "audience missing",
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("aud"));
            }),
        ),
    ];
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
