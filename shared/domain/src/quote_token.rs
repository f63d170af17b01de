//! Signed quote tokens.
//!
//! A quote is a promise: "this user can book this vehicle for this window at this price until
//! `expires_at`". The origin signs it so that the edge can cache and serve it and the booking
//! endpoint can trust it without a database lookup, and so that a client cannot change a price.
//!
//! Format: `v1.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>` (unpadded base64url).
//! The MAC covers the bytes `v1.<kid>.<payload>` exactly as they appear in the token, so the
//! version and key id are authenticated too. The key id selects the secret, which allows key
//! rotation: sign with the new key, keep verifying with the old one until its tokens expired.
//!
//! Verification order is deliberate: size cap, shape, key lookup, constant-time MAC check, and
//! only then base64/JSON decoding of the payload — untrusted JSON is never parsed.
//! User and vehicle binding are checked by the caller ([`QuoteClaims::check_binding`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::ids::VehicleId;
use crate::money::Money;
use crate::pricing::PriceLine;
use crate::region::Region;
use crate::window::TimeWindow;

type HmacSha256 = Hmac<Sha256>;

/// Token format version prefix.
const VERSION: &str = "v1";
/// Tokens longer than this are rejected before any work (a quote is well under 2 KiB).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Minimum secret length: HMAC-SHA256 keys shorter than the hash output weaken it.
pub const MIN_SECRET_LEN: usize = 32;
const MAX_KID_LEN: usize = 32;

/// Why a token was rejected or a signer could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of our format (or too long). At construction: a key id that is empty,
    /// longer than 32 bytes, duplicated or not `[A-Za-z0-9_-]` (it must not contain `.`).
    #[error("malformed quote token or quote key id")]
    Malformed,
    /// The key id is not (or no longer) known; at construction: the active kid has no key.
    #[error("unknown quote signing key id")]
    UnknownKey,
    /// The MAC does not match: the token was altered or forged.
    #[error("quote token signature is invalid")]
    BadSignature,
    /// The quote's validity ended.
    #[error("quote has expired")]
    Expired,
    /// A configured secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("quote signing keys must be at least 32 bytes long")]
    WeakKey,
    /// The quote was issued to a different user.
    #[error("quote was issued to a different user")]
    WrongUser,
}

/// What a quote binds. Field names on the wire are short to keep tokens small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteClaims {
    /// Quote id (caller-generated), for audit and idempotency.
    #[serde(rename = "qid")]
    pub quote_id: Uuid,
    /// User the quote was issued to (JWT `sub`).
    #[serde(rename = "sub")]
    pub user_id: String,
    /// Vehicle quoted.
    #[serde(rename = "veh")]
    pub vehicle_id: VehicleId,
    /// Region that issued the quote.
    #[serde(rename = "reg")]
    pub region: Region,
    /// Booking window quoted.
    #[serde(rename = "win")]
    pub window: TimeWindow,
    /// Price promised.
    #[serde(rename = "tot")]
    pub total: Money,
    /// Breakdown shown with the price.
    #[serde(rename = "brk")]
    pub breakdown: Vec<PriceLine>,
    /// Drop-off bay for one-way trips.
    #[serde(rename = "dst", default, skip_serializing_if = "Option::is_none")]
    pub destination_bay_id: Option<Uuid>,
    /// Issue time.
    #[serde(rename = "iat")]
    pub issued_at: DateTime<Utc>,
    /// The quote is invalid from this instant on.
    #[serde(rename = "exp")]
    pub expires_at: DateTime<Utc>,
}

impl QuoteClaims {
    /// Checks that the token is presented by the user it was issued to.
    pub fn check_binding(&self, user_id: &str) -> Result<(), TokenError> {
        if self.user_id == user_id {
            Ok(())
        } else {
            Err(TokenError::WrongUser)
        }
    }
}

/// Signs and verifies quote tokens with a set of HMAC keys, one of them active for signing.
#[derive(Clone)]
pub struct QuoteSigner {
    active: usize,
    keys: Vec<(String, HmacSha256)>,
}

impl std::fmt::Debug for QuoteSigner {
    /// Shows key ids only; secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("QuoteSigner")
            .field("active_kid", &kids.get(self.active))
            .field("kids", &kids)
            .finish()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl QuoteSigner {
    /// Builds a signer. `active_kid` signs new tokens; all `keys` verify. Every secret must be
    /// at least [`MIN_SECRET_LEN`] bytes and key ids must be unique `[A-Za-z0-9_-]{1,32}`.
    pub fn new(active_kid: &str, keys: Vec<(String, Vec<u8>)>) -> Result<Self, TokenError> {
        let mut built: Vec<(String, HmacSha256)> = Vec::with_capacity(keys.len());
        for (kid, secret) in keys {
            if !valid_kid(&kid) || built.iter().any(|(k, _)| *k == kid) {
                return Err(TokenError::Malformed);
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(TokenError::WeakKey);
            }
            let mac = HmacSha256::new_from_slice(&secret).map_err(|_| TokenError::WeakKey)?;
            built.push((kid, mac));
        }
        let active = built
            .iter()
            .position(|(k, _)| k == active_kid)
            .ok_or(TokenError::UnknownKey)?;
        Ok(QuoteSigner {
            active,
            keys: built,
        })
    }

    /// The key id new tokens are signed with.
    pub fn active_kid(&self) -> &str {
        self.keys
            .get(self.active)
            .map(|(k, _)| k.as_str())
            .unwrap_or_default()
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &QuoteClaims) -> String {
        // Serialising these plain types cannot fail (no maps with non-string keys, no
        // fallible custom serialisers); an empty payload would fail verification anyway.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let (kid, mac) = match self.keys.get(self.active) {
            Some((kid, mac)) => (kid.as_str(), mac),
            None => return String::new(),
        };
        let mut token = format!("{VERSION}.{kid}.{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = mac.clone();
        mac.update(token.as_bytes());
        let tag = mac.finalize().into_bytes();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag));
        token
    }

    /// Verifies a token and returns its claims if it is authentic and not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<QuoteClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, tag_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(version), Some(kid), Some(payload_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        let mac = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, m)| m)
            .ok_or(TokenError::UnknownKey)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::BadSignature)?;
        let mut mac = mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;

        // Authentic from here on; decoding failures mean a signer bug, still reported as
        // malformed.
        let json = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let claims: QuoteClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now >= claims.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use crate::pricing::LineKind;
    use chrono::{Duration, TimeZone};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 6, 1, 12, 0, 0).unwrap()
    }

    pub(crate) fn claims() -> QuoteClaims {
        let start = Utc.with_ymd_and_hms(2027, 6, 2, 10, 0, 0).unwrap();
        QuoteClaims {
            quote_id: Uuid::from_u128(7),
            user_id: "user-1".into(),
            vehicle_id: VehicleId::new(Region::Euw, Uuid::from_u128(99)),
            region: Region::Euw,
            window: TimeWindow::new(start, start + Duration::hours(3)).unwrap(),
            total: Money::new(3_000, Currency::EUR),
            breakdown: vec![PriceLine {
                kind: LineKind::Base,
                label: "Base (3 h)".into(),
                amount_minor: 3_000,
            }],
            destination_bay_id: None,
            issued_at: now(),
            expires_at: now() + Duration::minutes(15),
        }
    }

    fn signer() -> QuoteSigner {
        QuoteSigner::new(
            "k2",
            vec![("k1".into(), vec![1; 32]), ("k2".into(), vec![2; 32])],
        )
        .unwrap()
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let s = signer();
        let token = s.sign(&claims());
        assert!(token.starts_with("v1.k2."));
        assert_eq!(token.split('.').count(), 4);
        let back = s.verify(&token, now()).unwrap();
        assert_eq!(back, claims());
        assert_eq!(back.check_binding("user-1"), Ok(()));
        assert_eq!(back.check_binding("user-2"), Err(TokenError::WrongUser));
    }

    #[test]
    fn expiry_is_exclusive() {
        let s = signer();
        let token = s.sign(&claims());
        let exp = claims().expires_at;
        assert!(s.verify(&token, exp - Duration::seconds(1)).is_ok());
        assert_eq!(s.verify(&token, exp), Err(TokenError::Expired));
    }

    #[test]
    fn rotation_old_keys_still_verify_unknown_keys_do_not() {
        let old = QuoteSigner::new("k1", vec![("k1".into(), vec![1; 32])]).unwrap();
        let token = old.sign(&claims());
        assert!(signer().verify(&token, now()).is_ok());
        let other = QuoteSigner::new("k3", vec![("k3".into(), vec![1; 32])]).unwrap();
        assert_eq!(other.verify(&token, now()), Err(TokenError::UnknownKey));
        // Same kid, different secret.
        let impostor = QuoteSigner::new("k1", vec![("k1".into(), vec![9; 32])]).unwrap();
        assert_eq!(
            signer().verify(&impostor.sign(&claims()), now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn construction_rejects_weak_keys_and_bad_kids() {
        assert_eq!(
            QuoteSigner::new("a", vec![("a".into(), vec![0; 31])]).unwrap_err(),
            TokenError::WeakKey
        );
        assert_eq!(
            QuoteSigner::new("a.b", vec![("a.b".into(), vec![0; 32])]).unwrap_err(),
            TokenError::Malformed
        );
        assert!(matches!(
            QuoteSigner::new(
                "a",
                vec![("a".into(), vec![0; 32]), ("a".into(), vec![1; 32])]
            ),
            Err(TokenError::Malformed)
        ));
        assert_eq!(
            QuoteSigner::new("b", vec![("a".into(), vec![0; 32])]).unwrap_err(),
            TokenError::UnknownKey
        );
        let dbg = format!("{:?}", signer());
        assert!(dbg.contains("k2") && !dbg.contains("[2, 2"), "{dbg}");
    }

    #[test]
    fn malformed_and_oversized_tokens_are_rejected_early() {
        let s = signer();
        let token = s.sign(&claims());
        assert_eq!(s.verify("", now()), Err(TokenError::Malformed));
        assert_eq!(s.verify("v1.k2.abc", now()), Err(TokenError::Malformed));
        assert_eq!(
            s.verify(&format!("{token}.x"), now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            s.verify(&token.replacen("v1", "v2", 1), now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            s.verify(&"a".repeat(MAX_TOKEN_LEN + 1), now()),
            Err(TokenError::Malformed)
        );
        // A forged payload with a syntactically valid but wrong MAC is refused before parsing.
        let (head, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            s.verify(&format!("{head}.AAAA"), now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let s = signer();
        let token = s.sign(&claims());
        let bytes = token.as_bytes();
        let mut tried = 0;
        for i in 0..bytes.len() {
            for v in 0..=255u8 {
                if v == bytes[i] {
                    continue;
                }
                let mut t = bytes.to_vec();
                t[i] = v;
                if let Ok(t) = String::from_utf8(t) {
                    tried += 1;
                    assert!(s.verify(&t, now()).is_err(), "position {i} value {v}");
                }
            }
        }
        assert!(tried > bytes.len() * 100);
    }
}
