//! Forged, confused and stale JWTs: one list of attacks, used against the origin
//! (`tests/api/jwt_attacks.rs`) and through both edge runtimes (`tests/edge/security.rs`).
//!
//! The keys are the domain's test fixtures (`shared/domain/tests/fixtures`): an RS256 pair
//! (`rs1`), another RS256 public key (`rs2`) and an Ed25519 pair (`ed1`); the HS256 secret is
//! the harness's [`crate::JWT_SECRET`] (no kid).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::auth::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::{TestResult, AUDIENCE, ISSUER, JWT_SECRET};

pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/domain/tests/fixtures"
);
pub const RS_PRIVATE: &[u8] =
    include_bytes!("../../shared/domain/tests/fixtures/rs256_private.pem");
pub const RS_PUBLIC: &[u8] = include_bytes!("../../shared/domain/tests/fixtures/rs256_public.pem");
pub const ED_PRIVATE: &[u8] =
    include_bytes!("../../shared/domain/tests/fixtures/ed25519_private.pem");

pub fn claims(sub: &str) -> Claims {
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

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap_or_default()
}

pub fn rs256(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RS_PRIVATE).ok();
    key.map(|k| sign(Algorithm::RS256, kid, claims, &k))
        .unwrap_or_default()
}

pub fn hs256_with(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        kid,
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// A token with an arbitrary header, signed with HMAC-SHA256 over `secret` (or unsigned when
/// `secret` is None): for headers jsonwebtoken refuses to write.
pub fn raw(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
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

/// Every attack as (name, token), built around claims for `sub`: each must be a 401 wherever
/// the HS256 secret (no kid) and the RS256 keys `rs1` and `rs2` are trusted.
pub fn attacks(sub: &str) -> TestResult<Vec<(&'static str, String)>> {
    let c = serde_json::to_value(claims(sub))?;
    let now = chrono::Utc::now().timestamp();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = c.clone();
        f(&mut v);
        hs256_with(JWT_SECRET.as_bytes(), None, &v)
    };
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE)?;
    let good = hs256_with(JWT_SECRET.as_bytes(), None, &c);
    let good_parts: Vec<&str> = good.split('.').collect();
    let attacks: Vec<(&'static str, String)> = vec![
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
    Ok(attacks)
}
