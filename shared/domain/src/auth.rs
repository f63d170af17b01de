//! JWT verification rules shared by the edge and the origin.
//!
//! Both tiers must accept exactly the same tokens, so the rules live here once:
//!
//! * the header's `alg` must be one we support (`HS256`, `RS256`, `EdDSA`); `none` and anything
//!   else is refused before any key is touched;
//! * the key is chosen by `kid` when the header has one (unknown kid → error); without a kid,
//!   the single configured key of the header's algorithm is used (none or several → error);
//! * the header algorithm must be *exactly* the chosen key's algorithm. This is what defeats
//!   algorithm confusion: an `HS256` token is never checked against an RSA or Ed25519 public key
//!   (whose PEM bytes an attacker knows and could use as an HMAC secret), and vice versa;
//! * the signature is checked by `jsonwebtoken` with all of its time-based validation switched
//!   off — `exp`/`nbf` are checked here against a caller-supplied `now_unix` (with leeway), which
//!   keeps the crate clock-free (no `SystemTime` in Wasm) and testable;
//! * finally `iss` must equal the issuer and `aud` must equal — or, if an array, contain — the
//!   audience.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Tokens longer than this are rejected unread (real tokens are well under 2 KiB).
pub const MAX_JWT_LEN: usize = 16 * 1024;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// Why a token (or the verifier's configuration) was rejected. Messages are safe for clients;
/// none of them reveals key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed JWT (shape, base64, JSON, missing claims).
    #[error("malformed token")]
    Malformed,
    /// `alg` is `none`, unknown, or not the algorithm of the selected key.
    #[error("unsupported or unexpected token algorithm")]
    UnsupportedAlgorithm,
    /// No configured key matches the token's `kid` (or, without a kid, its algorithm).
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A configured key cannot be used (bad PEM, short secret, duplicate kid …).
    #[error("invalid verification key: {0}")]
    InvalidKey(String),
}

/// The claims our tokens carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Issuer; must equal the configured issuer.
    #[serde(default)]
    pub iss: String,
    /// Audience: a string or an array of strings (RFC 7519 allows both).
    #[serde(default)]
    pub aud: serde_json::Value,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not-before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued-at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Roles; `"ops"` grants operations endpoints.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Membership tier, used for membership discounts.
    #[serde(default)]
    pub membership: Option<String>,
}

impl Claims {
    /// Whether the caller has the operations role.
    pub fn is_ops(&self) -> bool {
        self.roles.iter().any(|r| r == "ops")
    }
}

/// A key tokens may be verified with. The variant fixes the one algorithm accepted for it.
#[derive(Clone)]
pub enum VerifyKey {
    /// Shared-secret HMAC-SHA256 (dev, internal services). Secret ≥ 32 bytes.
    Hs256 {
        /// Key id expected in the header, if the issuer sets one.
        kid: Option<String>,
        /// Shared secret.
        secret: Vec<u8>,
    },
    /// RSA PKCS#1 v1.5 SHA-256 with a PEM public key.
    Rs256Pem {
        /// Key id expected in the header, if the issuer sets one.
        kid: Option<String>,
        /// PEM-encoded public key.
        pem: Vec<u8>,
    },
    /// Ed25519 with a PEM public key.
    EdDsaPem {
        /// Key id expected in the header, if the issuer sets one.
        kid: Option<String>,
        /// PEM-encoded public key.
        pem: Vec<u8>,
    },
}

impl std::fmt::Debug for VerifyKey {
    /// Never prints secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (alg, kid) = match self {
            VerifyKey::Hs256 { kid, .. } => ("HS256", kid),
            VerifyKey::Rs256Pem { kid, .. } => ("RS256", kid),
            VerifyKey::EdDsaPem { kid, .. } => ("EdDSA", kid),
        };
        f.debug_struct("VerifyKey")
            .field("alg", &alg)
            .field("kid", kid)
            .finish()
    }
}

struct Entry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// The signature check only: the claims are checked by hand below. Built once, not per
    /// token (`Validation::new` allocates; it showed in the edge's profile).
    validation: Validation,
}

impl Entry {
    /// jsonwebtoken's checks reduced to the signature and the algorithm.
    fn new(kid: Option<String>, alg: Algorithm, key: DecodingKey) -> Entry {
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        Entry {
            kid,
            alg,
            key,
            validation,
        }
    }
}

/// Verifies JWTs against a fixed key set, issuer and audience (see the module docs).
pub struct JwtVerifier {
    keys: Vec<Entry>,
    issuer: String,
    audience: String,
    leeway_secs: i64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.alg, k.kid.as_deref()))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

fn key_error(e: jsonwebtoken::errors::Error) -> AuthError {
    AuthError::InvalidKey(e.to_string())
}

impl JwtVerifier {
    /// Builds a verifier; fails on an empty key set, unparsable PEM, a short HS256 secret or a
    /// duplicate kid, so misconfiguration is caught at startup.
    pub fn new(
        keys: Vec<VerifyKey>,
        issuer: String,
        audience: String,
        leeway_secs: u64,
    ) -> Result<Self, AuthError> {
        if keys.is_empty() {
            return Err(AuthError::InvalidKey(
                "no verification keys configured".into(),
            ));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = match key {
                VerifyKey::Hs256 { kid, secret } => {
                    if secret.len() < MIN_HS256_SECRET_LEN {
                        return Err(AuthError::InvalidKey(
                            "HS256 secret must be at least 32 bytes".into(),
                        ));
                    }
                    Entry::new(kid, Algorithm::HS256, DecodingKey::from_secret(&secret))
                }
                VerifyKey::Rs256Pem { kid, pem } => Entry::new(
                    kid,
                    Algorithm::RS256,
                    DecodingKey::from_rsa_pem(&pem).map_err(key_error)?,
                ),
                VerifyKey::EdDsaPem { kid, pem } => Entry::new(
                    kid,
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_pem(&pem).map_err(key_error)?,
                ),
            };
            if let Some(kid) = &entry.kid {
                if entries.iter().any(|e| e.kid.as_ref() == Some(kid)) {
                    return Err(AuthError::InvalidKey(format!("duplicate kid {kid:?}")));
                }
            }
            entries.push(entry);
        }
        Ok(JwtVerifier {
            keys: entries,
            issuer,
            audience,
            leeway_secs: i64::try_from(leeway_secs).unwrap_or(i64::MAX),
        })
    }

    /// Verifies `token` at time `now_unix` (seconds since the epoch) and returns its claims.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, AuthError> {
        if token.len() > MAX_JWT_LEN {
            return Err(AuthError::Malformed);
        }
        let header_b64 = match token.split('.').collect::<Vec<_>>().as_slice() {
            [h, _, _] => *h,
            _ => return Err(AuthError::Malformed),
        };
        let (alg, kid) = read_header(header_b64)?;

        let entry = match kid.as_deref() {
            Some(kid) => self
                .keys
                .iter()
                .find(|e| e.kid.as_deref() == Some(kid))
                .ok_or(AuthError::UnknownKey)?,
            None => {
                let mut candidates = self.keys.iter().filter(|e| e.alg == alg);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    _ => return Err(AuthError::UnknownKey),
                }
            }
        };
        if entry.alg != alg {
            return Err(AuthError::UnsupportedAlgorithm);
        }

        let claims = jsonwebtoken::decode::<Claims>(token, &entry.key, &entry.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => AuthError::UnsupportedAlgorithm,
                ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidKeyFormat => AuthError::InvalidKey(e.to_string()),
                _ => AuthError::Malformed,
            })?
            .claims;

        if now_unix >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if now_unix.saturating_add(self.leeway_secs) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if claims.iss != self.issuer {
            return Err(AuthError::WrongIssuer);
        }
        let aud_ok = match &claims.aud {
            serde_json::Value::String(a) => *a == self.audience,
            serde_json::Value::Array(items) => {
                items.iter().any(|a| a.as_str() == Some(&self.audience))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        Ok(claims)
    }
}

/// Reads `alg` and `kid` from the raw header ourselves, so that `alg: "none"` or an unknown
/// algorithm is reported as such instead of as a generic parse error.
fn read_header(header_b64: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    let alg = match raw.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(AuthError::UnsupportedAlgorithm),
    };
    Ok((alg, raw.kid))
}

/// Mints an HS256 token. For dev tooling (a local dev JWT) and tests; production tokens come
/// from the identity provider.
pub fn sign_hs256(claims: &Claims, secret: &[u8], kid: Option<&str>) -> Result<String, AuthError> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).map_err(key_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            sub: "user-1".into(),
            iss: "https://id.example".into(),
            aud: serde_json::json!("booking-api"),
            exp: NOW + 600,
            nbf: Some(NOW - 10),
            iat: Some(NOW - 10),
            roles: vec!["ops".into()],
            membership: Some("gold".into()),
        }
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(
            vec![VerifyKey::Hs256 {
                kid: None,
                secret: SECRET.to_vec(),
            }],
            "https://id.example".into(),
            "booking-api".into(),
            30,
        )
        .unwrap()
    }

    #[test]
    fn a_valid_hs256_token_round_trips() {
        let t = sign_hs256(&claims(), SECRET, None).unwrap();
        let c = verifier().verify(&t, NOW).unwrap();
        assert_eq!(c, claims());
        assert!(c.is_ops());
    }

    #[test]
    fn claims_defaults_apply_to_minimal_tokens() {
        let c: Claims = serde_json::from_str(r#"{"sub":"u","iss":"i","aud":"a","exp":1}"#).unwrap();
        assert!(c.roles.is_empty() && c.membership.is_none() && !c.is_ops());
    }

    #[test]
    fn configuration_errors_are_reported() {
        let short = JwtVerifier::new(
            vec![VerifyKey::Hs256 {
                kid: None,
                secret: vec![1; 31],
            }],
            "i".into(),
            "a".into(),
            0,
        );
        assert!(matches!(short, Err(AuthError::InvalidKey(_))));
        assert!(matches!(
            JwtVerifier::new(vec![], "i".into(), "a".into(), 0),
            Err(AuthError::InvalidKey(_))
        ));
        let bad_pem = JwtVerifier::new(
            vec![VerifyKey::Rs256Pem {
                kid: None,
                pem: b"nope".to_vec(),
            }],
            "i".into(),
            "a".into(),
            0,
        );
        assert!(matches!(bad_pem, Err(AuthError::InvalidKey(_))));
        let k = || VerifyKey::Hs256 {
            kid: Some("a".into()),
            secret: SECRET.to_vec(),
        };
        assert!(matches!(
            JwtVerifier::new(vec![k(), k()], "i".into(), "a".into(), 0),
            Err(AuthError::InvalidKey(_))
        ));
        assert!(!format!("{:?}", k()).contains("0123"));
    }
}
