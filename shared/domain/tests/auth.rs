//! JWT verification rules, end to end with real RS256 / EdDSA keys (see `fixtures/README.md`).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use domain::auth::{sign_hs256, AuthError, Claims, JwtVerifier, VerifyKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const RS_PRIVATE: &str = include_str!("fixtures/rs256_private.pem");
const RS_PUBLIC: &str = include_str!("fixtures/rs256_public.pem");
const RS_OTHER_PUBLIC: &str = include_str!("fixtures/rs256_other_public.pem");
const ED_PRIVATE: &str = include_str!("fixtures/ed25519_private.pem");
const ED_PUBLIC: &str = include_str!("fixtures/ed25519_public.pem");
const SECRET: &[u8] = b"an-hs256-dev-secret-of-32-bytes!";

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://id.example";
const AUD: &str = "booking-api";

fn claims() -> Claims {
    Claims {
        sub: "user-42".into(),
        iss: ISS.into(),
        aud: serde_json::json!(AUD),
        exp: NOW + 300,
        nbf: None,
        iat: Some(NOW),
        roles: vec![],
        membership: None,
    }
}

fn verifier(keys: Vec<VerifyKey>) -> JwtVerifier {
    JwtVerifier::new(keys, ISS.into(), AUD.into(), 60).unwrap()
}

fn rs_key(kid: Option<&str>) -> VerifyKey {
    VerifyKey::Rs256Pem {
        kid: kid.map(Into::into),
        pem: RS_PUBLIC.as_bytes().to_vec(),
    }
}

fn sign_rs(claims: &Claims, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(Into::into);
    let key = EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn sign_ed(claims: &Claims, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(Into::into);
    let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json)
}

#[test]
fn valid_rs256_eddsa_and_hs256_tokens_are_accepted() {
    let v = verifier(vec![
        rs_key(Some("rsa-1")),
        VerifyKey::EdDsaPem {
            kid: Some("ed-1".into()),
            pem: ED_PUBLIC.as_bytes().to_vec(),
        },
        VerifyKey::Hs256 {
            kid: Some("dev".into()),
            secret: SECRET.to_vec(),
        },
    ]);
    assert_eq!(
        v.verify(&sign_rs(&claims(), Some("rsa-1")), NOW).unwrap(),
        claims()
    );
    assert_eq!(
        v.verify(&sign_ed(&claims(), Some("ed-1")), NOW).unwrap(),
        claims()
    );
    let hs = sign_hs256(&claims(), SECRET, Some("dev")).unwrap();
    assert_eq!(v.verify(&hs, NOW).unwrap(), claims());
}

#[test]
fn without_kid_the_single_key_of_the_header_algorithm_is_used() {
    let v = verifier(vec![
        rs_key(None),
        VerifyKey::Hs256 {
            kid: None,
            secret: SECRET.to_vec(),
        },
    ]);
    assert!(v.verify(&sign_rs(&claims(), None), NOW).is_ok());
    assert!(v
        .verify(&sign_hs256(&claims(), SECRET, None).unwrap(), NOW)
        .is_ok());
    // Two RS256 keys and no kid: ambiguous, refused.
    let two = verifier(vec![
        rs_key(Some("a")),
        VerifyKey::Rs256Pem {
            kid: Some("b".into()),
            pem: RS_OTHER_PUBLIC.as_bytes().to_vec(),
        },
    ]);
    assert_eq!(
        two.verify(&sign_rs(&claims(), None), NOW),
        Err(AuthError::UnknownKey)
    );
    assert!(two.verify(&sign_rs(&claims(), Some("a")), NOW).is_ok());
}

#[test]
fn a_token_signed_by_another_key_has_a_bad_signature() {
    let v = verifier(vec![VerifyKey::Rs256Pem {
        kid: None,
        pem: RS_OTHER_PUBLIC.as_bytes().to_vec(),
    }]);
    assert_eq!(
        v.verify(&sign_rs(&claims(), None), NOW),
        Err(AuthError::BadSignature)
    );
    let hs = verifier(vec![VerifyKey::Hs256 {
        kid: None,
        secret: SECRET.to_vec(),
    }]);
    let forged = sign_hs256(&claims(), b"another-secret-that-is-32-bytes!", None).unwrap();
    assert_eq!(hs.verify(&forged, NOW), Err(AuthError::BadSignature));
}

#[test]
fn a_tampered_payload_fails_the_signature_check() {
    let v = verifier(vec![rs_key(None)]);
    let token = sign_rs(&claims(), None);
    let parts: Vec<&str> = token.split('.').collect();
    let evil = Claims {
        sub: "admin".into(),
        roles: vec!["ops".into()],
        ..claims()
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_eq!(v.verify(&tampered, NOW), Err(AuthError::BadSignature));
}

#[test]
fn expiry_and_not_before_are_checked_against_now_with_leeway() {
    let v = verifier(vec![rs_key(None)]);
    let token = sign_rs(&claims(), None); // exp = NOW + 300, leeway 60
    assert!(v.verify(&token, NOW + 359).is_ok());
    assert_eq!(v.verify(&token, NOW + 360), Err(AuthError::Expired));
    let future = sign_rs(
        &Claims {
            nbf: Some(NOW + 100),
            ..claims()
        },
        None,
    );
    assert_eq!(v.verify(&future, NOW), Err(AuthError::NotYetValid));
    assert!(v.verify(&future, NOW + 40).is_ok());
}

#[test]
fn issuer_and_audience_must_match() {
    let v = verifier(vec![rs_key(None)]);
    let wrong_iss = sign_rs(
        &Claims {
            iss: "https://evil.example".into(),
            ..claims()
        },
        None,
    );
    assert_eq!(v.verify(&wrong_iss, NOW), Err(AuthError::WrongIssuer));
    let wrong_aud = sign_rs(
        &Claims {
            aud: serde_json::json!("other-api"),
            ..claims()
        },
        None,
    );
    assert_eq!(v.verify(&wrong_aud, NOW), Err(AuthError::WrongAudience));
    let no_aud = sign_rs(
        &Claims {
            aud: serde_json::Value::Null,
            ..claims()
        },
        None,
    );
    assert_eq!(v.verify(&no_aud, NOW), Err(AuthError::WrongAudience));
    let array = sign_rs(
        &Claims {
            aud: serde_json::json!(["x", AUD]),
            ..claims()
        },
        None,
    );
    assert!(v.verify(&array, NOW).is_ok());
    let array_without = sign_rs(
        &Claims {
            aud: serde_json::json!(["x", "y"]),
            ..claims()
        },
        None,
    );
    assert_eq!(v.verify(&array_without, NOW), Err(AuthError::WrongAudience));
}

#[test]
fn alg_none_is_rejected() {
    let v = verifier(vec![
        rs_key(None),
        VerifyKey::Hs256 {
            kid: None,
            secret: SECRET.to_vec(),
        },
    ]);
    let payload = b64(&serde_json::to_string(&claims()).unwrap());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None","typ":"JWT"}"#,
        r#"{"alg":"HS512"}"#,
    ] {
        let token = format!("{}.{payload}.", b64(header));
        assert_eq!(
            v.verify(&token, NOW),
            Err(AuthError::UnsupportedAlgorithm),
            "{header}"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected_when_only_rs256_is_configured() {
    // The classic algorithm-confusion attack: the attacker knows the public PEM and uses it as
    // an HMAC secret, hoping the verifier feeds the same bytes to HMAC.
    let forged = sign_hs256(&claims(), RS_PUBLIC.as_bytes(), None).unwrap();
    let v = verifier(vec![rs_key(None)]);
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::UnknownKey));
    // With the RSA key's kid in the header the algorithm mismatch is caught explicitly.
    let forged_kid = sign_hs256(&claims(), RS_PUBLIC.as_bytes(), Some("rsa-1")).unwrap();
    let v = verifier(vec![rs_key(Some("rsa-1"))]);
    assert_eq!(
        v.verify(&forged_kid, NOW),
        Err(AuthError::UnsupportedAlgorithm)
    );
    // Same for an EdDSA key.
    let forged_ed = sign_hs256(&claims(), ED_PUBLIC.as_bytes(), Some("ed")).unwrap();
    let v = verifier(vec![VerifyKey::EdDsaPem {
        kid: Some("ed".into()),
        pem: ED_PUBLIC.as_bytes().to_vec(),
    }]);
    assert_eq!(
        v.verify(&forged_ed, NOW),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn rs256_token_is_never_checked_against_an_hs256_secret() {
    let v = verifier(vec![VerifyKey::Hs256 {
        kid: Some("k".into()),
        secret: SECRET.to_vec(),
    }]);
    assert_eq!(
        v.verify(&sign_rs(&claims(), Some("k")), NOW),
        Err(AuthError::UnsupportedAlgorithm)
    );
    assert_eq!(
        v.verify(&sign_rs(&claims(), None), NOW),
        Err(AuthError::UnknownKey)
    );
}

#[test]
fn unknown_kid_is_rejected() {
    let v = verifier(vec![rs_key(Some("rsa-1"))]);
    assert_eq!(
        v.verify(&sign_rs(&claims(), Some("rsa-2")), NOW),
        Err(AuthError::UnknownKey)
    );
}

#[test]
fn malformed_tokens_are_rejected() {
    let v = verifier(vec![rs_key(None)]);
    for t in [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "!!!.b.c",
        &format!("{}.!!!.sig", b64(r#"{"alg":"RS256"}"#)),
    ] {
        assert!(
            matches!(
                v.verify(t, NOW),
                Err(AuthError::Malformed | AuthError::BadSignature)
            ),
            "{t}"
        );
    }
    assert_eq!(
        v.verify(&"a".repeat(20_000), NOW),
        Err(AuthError::Malformed)
    );
    // A correctly signed token without `sub`/`exp` is malformed, not valid.
    let key = EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap();
    let bare = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &serde_json::json!({"iss": ISS, "aud": AUD}),
        &key,
    )
    .unwrap();
    assert_eq!(v.verify(&bare, NOW), Err(AuthError::Malformed));
}
