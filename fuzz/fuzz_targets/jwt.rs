//! JWT verification on arbitrary input, with an HS256 key and a kid: never panics, and a token
//! it accepts passed every rule (issuer, audience, expiry).
#![no_main]

use domain::auth::{JwtVerifier, VerifyKey};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = JwtVerifier::new(
        vec![VerifyKey::Hs256 {
            kid: Some("hs1".into()),
            secret: b"fuzz-jwt-secret-fuzz-jwt-secret-fuzz!".to_vec(),
        }],
        "fuzz-issuer".into(),
        "fuzz-api".into(),
        30,
    )
    .expect("valid verifier");
    if let Ok(claims) = verifier.verify(text, NOW) {
        assert_eq!(claims.iss, "fuzz-issuer");
        assert!(NOW < claims.exp.saturating_add(30));
    }
});
