//! Webhook signatures in the [Standard Webhooks](https://www.standardwebhooks.com/) scheme, for
//! the dispatcher that will sign deliveries and for receivers, which can reuse [`verify`].
//!
//! A delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
//! space-separated `v1,<base64 HMAC-SHA256 over "id.timestamp.body">`, one per secret in use, so
//! during a secret rotation a delivery is signed with both and a receiver holding either accepts
//! it. A receiver refuses a timestamp further than [`TOLERANCE_SECS`] from its own clock (a
//! replay of an old delivery) and compares signatures in constant time (`hmac`'s
//! `verify_slice`).
//!
//! Why not the `standardwebhooks` crate: its `verify` reads the system clock itself, and this
//! crate is pure (time is passed in: the edge, the origin and property tests share it); it would
//! also bring `time`, `http` and a second `base64` into the wasm builds. The scheme is one HMAC,
//! done here with the kept `hmac` and `sha2` crates.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a delivery's timestamp may be from the receiver's clock, either way (5 minutes).
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// The prefix of a secret as the scheme writes it.
const SECRET_PREFIX: &str = "whsec_";

/// Why a secret or a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not `whsec_<base64>` (or bare base64) of 24 to 64 bytes.
    #[error("the secret is not whsec_ followed by base64 of 24 to 64 bytes")]
    BadSecret,
    /// `webhook-timestamp` is not a whole number of seconds.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is more than [`TOLERANCE_SECS`] before or after now (a replay, or a
    /// clock far off).
    #[error("webhook-timestamp is {0} s from now, more than the {TOLERANCE_SECS} s allowed")]
    OutOfTolerance(i64),
    /// No `v1` signature in the header matches any secret.
    #[error("no webhook-signature matches")]
    NoMatch,
}

/// A signing secret: the raw key bytes, and the HMAC keyed with them.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
    mac: Hmac<Sha256>,
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for WebhookSecret {}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (or the base64 alone), 24 to 64 bytes of key.
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .unwrap_or(text.trim());
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookError::BadSecret)?;
        Self::from_key(&key)
    }

    /// A secret from raw key bytes (24 to 64), e.g. 32 random bytes made by the dispatcher's
    /// host when a webhook is registered or its secret rotated.
    pub fn from_key(key: &[u8]) -> Result<Self, WebhookError> {
        if !(24..=64).contains(&key.len()) {
            return Err(WebhookError::BadSecret);
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| WebhookError::BadSecret)?;
        Ok(WebhookSecret {
            key: key.to_vec(),
            mac,
        })
    }

    /// The secret as the scheme writes it (`whsec_<base64>`), shown once to its owner.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// This secret's signature of a delivery: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(digest))
    }
}

/// The `webhook-signature` header of a delivery signed with every secret in `secrets` (two
/// during a rotation), space-separated.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a delivery: its `webhook-id`, `webhook-timestamp`, `webhook-signature` and raw
/// body, against the receiver's `secrets` (several during a rotation), at `now`.
pub fn verify(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::BadTimestamp)?;
    let skew = now.timestamp().saturating_sub(sent);
    if skew.saturating_abs() > TOLERANCE_SECS {
        return Err(WebhookError::OutOfTolerance(skew));
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    for secret in secrets {
        for candidate in &candidates {
            if secret
                .mac(id, timestamp.trim(), body)
                .verify_slice(candidate)
                .is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(WebhookError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // The Standard Webhooks specification's own example (its reference libraries test it).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).single().expect("valid time")
    }

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(SECRET).expect("the spec's secret parses")
    }

    #[test]
    fn the_specifications_example_signs_and_verifies() {
        assert_eq!(secret().sign(ID, TIMESTAMP, BODY), SIGNATURE);
        let ts = TIMESTAMP.to_string();
        assert_eq!(
            verify(&[secret()], ID, &ts, SIGNATURE, BODY, at(TIMESTAMP + 10)),
            Ok(())
        );
        assert_eq!(secret().to_text(), SECRET);
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_is_refused() {
        let ts = TIMESTAMP.to_string();
        let now = at(TIMESTAMP);
        let tampered = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&[secret()], ID, &ts, SIGNATURE, tampered, now),
            Err(WebhookError::NoMatch)
        );
        assert_eq!(
            verify(&[secret()], "msg_other", &ts, SIGNATURE, BODY, now),
            Err(WebhookError::NoMatch)
        );
        let moved = (TIMESTAMP + 1).to_string();
        assert_eq!(
            verify(&[secret()], ID, &moved, SIGNATURE, BODY, now),
            Err(WebhookError::NoMatch)
        );
        let other = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32])))
            .expect("a 32-byte secret");
        assert_eq!(
            verify(&[other], ID, &ts, SIGNATURE, BODY, now),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn a_replay_older_than_five_minutes_or_from_the_future_is_refused() {
        let ts = TIMESTAMP.to_string();
        assert_eq!(
            verify(&[secret()], ID, &ts, SIGNATURE, BODY, at(TIMESTAMP + 300)),
            Ok(())
        );
        assert_eq!(
            verify(&[secret()], ID, &ts, SIGNATURE, BODY, at(TIMESTAMP + 301)),
            Err(WebhookError::OutOfTolerance(301))
        );
        assert_eq!(
            verify(&[secret()], ID, &ts, SIGNATURE, BODY, at(TIMESTAMP - 301)),
            Err(WebhookError::OutOfTolerance(-301))
        );
        assert_eq!(
            verify(&[secret()], ID, "yesterday", SIGNATURE, BODY, at(TIMESTAMP)),
            Err(WebhookError::BadTimestamp)
        );
    }

    #[test]
    fn during_a_rotation_either_secret_verifies_and_unknown_versions_are_ignored() {
        let new = WebhookSecret::parse(&STANDARD.encode([9u8; 32])).expect("bare base64");
        let header = signature_header(&[secret(), new.clone()], ID, TIMESTAMP, BODY);
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.starts_with(SIGNATURE));
        let ts = TIMESTAMP.to_string();
        let now = at(TIMESTAMP);
        assert_eq!(verify(&[secret()], ID, &ts, &header, BODY, now), Ok(()));
        assert_eq!(
            verify(std::slice::from_ref(&new), ID, &ts, &header, BODY, now),
            Ok(())
        );
        // Another scheme version, garbage and an empty header match nothing.
        let odd = SIGNATURE.replacen("v1,", "v1a,", 1);
        for header in [odd.as_str(), "v1,not-base64!", "", "   "] {
            assert_eq!(
                verify(&[secret(), new.clone()], ID, &ts, header, BODY, now),
                Err(WebhookError::NoMatch),
                "{header:?}"
            );
        }
    }

    #[test]
    fn a_secret_must_be_base64_of_24_to_64_bytes() {
        assert_eq!(
            WebhookSecret::parse("whsec_not base64"),
            Err(WebhookError::BadSecret)
        );
        let short = format!("whsec_{}", STANDARD.encode([1u8; 23]));
        assert_eq!(WebhookSecret::parse(&short), Err(WebhookError::BadSecret));
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert_eq!(WebhookSecret::parse(&long), Err(WebhookError::BadSecret));
        assert!(format!("{:?}", secret()).contains(".."), "no key in Debug");
    }
}
