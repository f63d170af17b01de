//! Quote-token verification on arbitrary input: never panics, and anything it accepts was
//! signed by one of our keys (the fuzzer cannot forge an HMAC, so acceptance means the input
//! is a seed token or a re-encoding of one that still verifies to the same claims).
#![no_main]

use chrono::{TimeZone, Utc};
use domain::quote_token::QuoteSigner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let signer = QuoteSigner::new(
        "k1",
        vec![
            ("k1".into(), b"fuzz-quote-key-one-fuzz-quote-key-one".to_vec()),
            ("k0".into(), b"fuzz-quote-key-old-fuzz-quote-key-old".to_vec()),
        ],
    )
    .expect("valid signer");
    let now = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).single().expect("date");
    if let Ok(claims) = signer.verify(text, now) {
        // Accepted: re-signing the claims must verify to the same claims.
        let again = signer.sign(&claims);
        assert_eq!(signer.verify(&again, now).ok(), Some(claims));
    }
});
