//! Edge → origin request signatures: how an origin knows a request came through one of our
//! edges.
//!
//! An origin is reachable on the network (a load balancer, an ingress), so anyone who finds
//! its address could skip every edge limit and the edge's JWT check in front of it. Each
//! request an edge forwards therefore carries an HMAC-SHA256 signature over what the request
//! *is*, made with a secret only edges and origins hold; the origin refuses a public route
//! without a valid one (`origin/src/http/edge_guard.rs`). Mutual TLS would say the same, but
//! only one runtime could present a client certificate: Workers' `fetch` does so only through
//! an mTLS certificate binding (a certificate uploaded to the Cloudflare account; not
//! something the local workerd/miniflare setup presents), and wasi:http 0.2's outgoing
//! handler (Spin, `wasmtime serve`) has no TLS client options at all. A signature works the
//! same on both runtimes and in tests.
//!
//! # What is signed
//!
//! The *canonical string* ([`canonical`]): nine lines joined by `\n`,
//!
//! ```text
//! EDGE-HMAC-SHA256        format and algorithm, so a future v2 cannot be confused with it
//! POST                    method, upper case
//! /v1/bookings            path, exactly as sent on the request line (percent-encoding kept)
//! lat=50.1&lon=8.6        query without `?`, exactly as sent (empty line when none)
//! 1764660000              timestamp, Unix seconds of the edge's clock
//! 3f2a…                   nonce: 16–64 of [A-Za-z0-9_-], fresh per request
//! e3b0c442…               SHA-256 of the body, lower-case hex (of the empty string when none)
//! 7d0e…                   request id (`X-Request-Id`, which the origin logs and stores)
//! EUW                     the signing edge's region (`X-Edge-Region`)
//! ```
//!
//! No field can hold a newline (a request line and header values cannot), and [`verify`]
//! refuses one anyway, so the lines cannot be shifted into each other. Header names are not
//! signed: the origin acts on `Authorization`, `Idempotency-Key` and the body, and the JWT and
//! the body carry their own integrity (a stolen signature replayed with another token is a
//! replay, refused below).
//!
//! # On the wire
//!
//! `X-Edge-Signature: kid=<key id>,ts=<unix seconds>,nonce=<nonce>,sig=<base64url MAC>`
//! (unpadded base64url of the 32-byte HMAC-SHA256 of the canonical string) and
//! `X-Edge-Region: <region>`. The key id selects the secret, so keys rotate like quote keys:
//! origins learn the new key, edges switch to it, origins forget the old one.
//!
//! # What the origin checks (in this order, all before any database or cache work)
//!
//! shape and size of the header, a known key id, the timestamp within ±[`WINDOW_SECS`] of the
//! origin's clock, and the MAC (constant-time). Then, outside this pure module, that the
//! signature was not seen before: the origin remembers each accepted signature in Redis for
//! [`REPLAY_TTL_SECS`] (> twice the window, so a signature cannot outlive its memory). The
//! nonce makes two legitimate requests with the same content (a fan-out asking two regions
//! served by one origin, a client's retry) two different signatures.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The request header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-edge-signature";
/// The request header carrying the signing edge's region (also signed).
pub const REGION_HEADER: &str = "x-edge-region";
/// First line of the canonical string.
pub const SCHEME: &str = "EDGE-HMAC-SHA256";
/// How far the signing edge's clock may be from the origin's, either way.
pub const WINDOW_SECS: i64 = 60;
/// How long an origin remembers a signature it accepted: longer than the whole window
/// (2 × [`WINDOW_SECS`]), so a signature is refused as a replay for as long as it is fresh.
pub const REPLAY_TTL_SECS: u64 = 120;
/// Minimum secret length (as for quote keys).
pub const MIN_SECRET_LEN: usize = 32;
/// A signature header longer than this is refused before any work.
pub const MAX_HEADER_LEN: usize = 256;
const MAX_KID_LEN: usize = 32;

/// Why a signature was refused, or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeAuthError {
    /// No signature header.
    #[error("the request carries no edge signature")]
    Missing,
    /// Not a header of our format (or too long); at construction, a bad key id.
    #[error("the edge signature is malformed")]
    Malformed,
    /// The key id is not (or no longer) known.
    #[error("the edge signature names an unknown key")]
    UnknownKey,
    /// The timestamp is more than [`WINDOW_SECS`] away from now.
    #[error("the edge signature is outside the ±60 s window")]
    Expired,
    /// The MAC does not match the request: altered, or signed with another secret.
    #[error("the edge signature does not match the request")]
    BadSignature,
    /// A secret shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("edge signing keys must be at least 32 bytes long")]
    WeakKey,
}

/// The parts of a request the signature covers, as the origin receives them.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Path as on the request line (percent-encoding kept).
    pub path: &'a str,
    /// Query without `?` (empty when none), as on the request line.
    pub query: &'a str,
    /// SHA-256 of the body ([`body_sha256`]).
    pub body_sha256: &'a [u8; 32],
    pub request_id: &'a str,
    pub region: &'a str,
}

/// A signature that verified: its key id, its timestamp and the MAC's text (the replay key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub kid: String,
    pub timestamp: i64,
    /// The base64url MAC as sent: unique per signed request, remembered against replays.
    pub sig: String,
}

/// SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The canonical string (see the module doc).
pub fn canonical(parts: &RequestParts<'_>, timestamp: i64, nonce: &str) -> String {
    format!(
        "{SCHEME}\n{}\n{}\n{}\n{timestamp}\n{nonce}\n{}\n{}\n{}",
        parts.method,
        parts.path,
        parts.query,
        hex_lower(parts.body_sha256),
        parts.request_id,
        parts.region,
    )
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn token_chars(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn mac_for(secret: &[u8]) -> Result<HmacSha256, EdgeAuthError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(EdgeAuthError::WeakKey);
    }
    HmacSha256::new_from_slice(secret).map_err(|_| EdgeAuthError::WeakKey)
}

/// The edge's side: one key, the one it signs with.
#[derive(Clone)]
pub struct EdgeSigner {
    kid: String,
    mac: HmacSha256,
}

impl std::fmt::Debug for EdgeSigner {
    /// The key id only; the secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl EdgeSigner {
    /// A signer for key `kid` (`[A-Za-z0-9_-]{1,32}`) with a secret of at least 32 bytes.
    pub fn new(kid: &str, secret: &[u8]) -> Result<Self, EdgeAuthError> {
        if !token_chars(kid, 1, MAX_KID_LEN) {
            return Err(EdgeAuthError::Malformed);
        }
        Ok(EdgeSigner {
            kid: kid.to_owned(),
            mac: mac_for(secret)?,
        })
    }

    /// The key id this signer names.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `X-Edge-Signature` value for `parts` at `timestamp` (Unix seconds) with `nonce`
    /// (16–64 of `[A-Za-z0-9_-]`, fresh for each request; the caller draws it, this module
    /// has no randomness).
    pub fn sign(&self, parts: &RequestParts<'_>, timestamp: i64, nonce: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(canonical(parts, timestamp, nonce).as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("kid={},ts={timestamp},nonce={nonce},sig={sig}", self.kid)
    }
}

/// The origin's side: every key it accepts (two during a rotation).
#[derive(Clone)]
pub struct EdgeVerifier {
    keys: Vec<(String, HmacSha256)>,
}

impl std::fmt::Debug for EdgeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("EdgeVerifier").field("kids", &kids).finish()
    }
}

/// The four fields of a signature header.
struct Header<'h> {
    kid: &'h str,
    ts: i64,
    nonce: &'h str,
    sig: &'h str,
}

fn parse_header(value: &str) -> Result<Header<'_>, EdgeAuthError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(EdgeAuthError::Malformed);
    }
    let (mut kid, mut ts, mut nonce, mut sig) = (None, None, None, None);
    for item in value.split(',') {
        let (name, v) = item
            .trim()
            .split_once('=')
            .ok_or(EdgeAuthError::Malformed)?;
        let slot = match name {
            "kid" => &mut kid,
            "ts" => &mut ts,
            "nonce" => &mut nonce,
            "sig" => &mut sig,
            _ => return Err(EdgeAuthError::Malformed),
        };
        if slot.replace(v).is_some() {
            return Err(EdgeAuthError::Malformed);
        }
    }
    let (Some(kid), Some(ts), Some(nonce), Some(sig)) = (kid, ts, nonce, sig) else {
        return Err(EdgeAuthError::Malformed);
    };
    let ts_ok = !ts.is_empty() && ts.len() <= 12 && ts.bytes().all(|b| b.is_ascii_digit());
    if !token_chars(kid, 1, MAX_KID_LEN) || !token_chars(nonce, 16, 64) || !ts_ok {
        return Err(EdgeAuthError::Malformed);
    }
    let ts = ts.parse().map_err(|_| EdgeAuthError::Malformed)?;
    Ok(Header {
        kid,
        ts,
        nonce,
        sig,
    })
}

impl EdgeVerifier {
    /// A verifier accepting every `(kid, secret)` (unique `[A-Za-z0-9_-]{1,32}` ids,
    /// secrets of at least 32 bytes).
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<Self, EdgeAuthError> {
        let mut built: Vec<(String, HmacSha256)> = Vec::with_capacity(keys.len());
        for (kid, secret) in keys {
            if !token_chars(&kid, 1, MAX_KID_LEN) || built.iter().any(|(k, _)| *k == kid) {
                return Err(EdgeAuthError::Malformed);
            }
            let mac = mac_for(&secret)?;
            built.push((kid, mac));
        }
        Ok(EdgeVerifier { keys: built })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The accepted key ids.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// Verifies the `X-Edge-Signature` value `header` for `parts` at `now` (Unix seconds).
    /// Replays are the caller's to refuse ([`Verified::sig`]).
    pub fn verify(
        &self,
        header: Option<&str>,
        parts: &RequestParts<'_>,
        now: i64,
    ) -> Result<Verified, EdgeAuthError> {
        let header = parse_header(header.ok_or(EdgeAuthError::Missing)?)?;
        let fields = [
            parts.method,
            parts.path,
            parts.query,
            parts.request_id,
            parts.region,
        ];
        if fields.iter().any(|f| f.contains('\n')) {
            return Err(EdgeAuthError::Malformed);
        }
        let mac = self
            .keys
            .iter()
            .find(|(k, _)| k == header.kid)
            .map(|(_, m)| m)
            .ok_or(EdgeAuthError::UnknownKey)?;
        if (now - header.ts).abs() > WINDOW_SECS {
            return Err(EdgeAuthError::Expired);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(header.sig)
            .map_err(|_| EdgeAuthError::BadSignature)?;
        let mut mac = mac.clone();
        mac.update(canonical(parts, header.ts, header.nonce).as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| EdgeAuthError::BadSignature)?;
        Ok(Verified {
            kid: header.kid.to_owned(),
            timestamp: header.ts,
            sig: header.sig.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"edge-signing-key-edge-signing-key-0001";
    const NOW: i64 = 1_764_660_000;
    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn body_hash() -> [u8; 32] {
        body_sha256(br#"{"quote_token":"v1.k1.e30.sig"}"#)
    }

    fn parts(hash: &[u8; 32]) -> RequestParts<'_> {
        RequestParts {
            method: "POST",
            path: "/v1/bookings",
            query: "",
            body_sha256: hash,
            request_id: "req-42",
            region: "EUW",
        }
    }

    fn verifier() -> EdgeVerifier {
        EdgeVerifier::new(vec![
            (
                "e0".into(),
                b"old-edge-key-old-edge-key-old-edge-key".to_vec(),
            ),
            ("e1".into(), SECRET.to_vec()),
        ])
        .unwrap()
    }

    /// A fixed vector, computed independently of this code (Python's `hmac` and `hashlib`):
    /// `hmac.new(SECRET, canonical, sha256)`, base64url without padding. An edge written in
    /// another language can check itself against it.
    #[test]
    fn the_test_vector_matches_an_independent_computation() {
        let hash = body_hash();
        assert_eq!(
            hex_lower(&hash),
            "1b00948dd91956827395f3762534529d9f36cc26dd4d1d60764db46513c5730b"
        );
        let signer = EdgeSigner::new("e1", SECRET).unwrap();
        let header = signer.sign(&parts(&hash), NOW, NONCE);
        assert_eq!(
            canonical(&parts(&hash), NOW, NONCE),
            format!(
                "EDGE-HMAC-SHA256\nPOST\n/v1/bookings\n\n1764660000\n{NONCE}\n{}\nreq-42\nEUW",
                hex_lower(&hash)
            )
        );
        assert_eq!(
            header,
            format!("kid=e1,ts={NOW},nonce={NONCE},sig={VECTOR_SIG}")
        );
    }

    const VECTOR_SIG: &str = "_TteTclhV8QOr7y870-9geMapdsg6CB1mWElrULFz14";

    #[test]
    fn a_signed_request_verifies_with_either_key_of_a_rotation() {
        let hash = body_hash();
        for kid in ["e0", "e1"] {
            let secret: &[u8] = if kid == "e0" {
                b"old-edge-key-old-edge-key-old-edge-key"
            } else {
                SECRET
            };
            let header = EdgeSigner::new(kid, secret)
                .unwrap()
                .sign(&parts(&hash), NOW, NONCE);
            let ok = verifier()
                .verify(Some(&header), &parts(&hash), NOW)
                .unwrap();
            assert_eq!(ok.kid, kid);
            assert_eq!(ok.timestamp, NOW);
            assert!(header.ends_with(&ok.sig));
        }
        // The old key removed: its signatures are refused, the new one's still pass.
        let after = EdgeVerifier::new(vec![("e1".into(), SECRET.to_vec())]).unwrap();
        let old = EdgeSigner::new("e0", b"old-edge-key-old-edge-key-old-edge-key")
            .unwrap()
            .sign(&parts(&hash), NOW, NONCE);
        assert_eq!(
            after.verify(Some(&old), &parts(&hash), NOW),
            Err(EdgeAuthError::UnknownKey)
        );
    }

    #[test]
    fn every_signed_part_is_bound() {
        let hash = body_hash();
        let header = EdgeSigner::new("e1", SECRET)
            .unwrap()
            .sign(&parts(&hash), NOW, NONCE);
        let other_hash = body_sha256(br#"{"quote_token":"v1.k1.e30.sig2"}"#);
        let base = parts(&hash);
        let changed = [
            RequestParts {
                method: "PUT",
                ..base
            },
            RequestParts {
                path: "/v1/bookings/x",
                ..base
            },
            RequestParts {
                query: "a=1",
                ..base
            },
            RequestParts {
                body_sha256: &other_hash,
                ..base
            },
            RequestParts {
                request_id: "req-43",
                ..base
            },
            RequestParts {
                region: "EUN",
                ..base
            },
        ];
        for p in &changed {
            assert_eq!(
                verifier().verify(Some(&header), p, NOW),
                Err(EdgeAuthError::BadSignature),
                "{p:?}"
            );
        }
        // The header's own fields are bound too: another timestamp or nonce breaks the MAC.
        let moved = header.replace(&format!("ts={NOW}"), &format!("ts={}", NOW + 1));
        assert_eq!(
            verifier().verify(Some(&moved), &base, NOW),
            Err(EdgeAuthError::BadSignature)
        );
        let renonced = header.replace(NONCE, "ffeeddccbbaa99887766554433221100");
        assert_eq!(
            verifier().verify(Some(&renonced), &base, NOW),
            Err(EdgeAuthError::BadSignature)
        );
    }

    #[test]
    fn the_window_is_sixty_seconds_either_way() {
        let hash = body_hash();
        let signer = EdgeSigner::new("e1", SECRET).unwrap();
        for (skew, ok) in [
            (0, true),
            (60, true),
            (-60, true),
            (61, false),
            (-61, false),
        ] {
            let header = signer.sign(&parts(&hash), NOW + skew, NONCE);
            let got = verifier().verify(Some(&header), &parts(&hash), NOW);
            assert_eq!(got.is_ok(), ok, "skew {skew}: {got:?}");
            if !ok {
                assert_eq!(got, Err(EdgeAuthError::Expired));
            }
        }
    }

    #[test]
    fn missing_malformed_and_foreign_headers_are_refused() {
        let hash = body_hash();
        let p = parts(&hash);
        let v = verifier();
        assert_eq!(v.verify(None, &p, NOW), Err(EdgeAuthError::Missing));
        let good = EdgeSigner::new("e1", SECRET).unwrap().sign(&p, NOW, NONCE);
        for bad in [
            String::new(),
            "kid=e1".to_owned(),
            format!("{good},kid=e1"),
            format!("{good},extra=1"),
            good.replace("kid=e1", "kid=e.1"),
            good.replace(NONCE, "short"),
            good.replace(&format!("ts={NOW}"), "ts=-5"),
            good.replace(&format!("ts={NOW}"), "ts=99999999999999999"),
            "a".repeat(MAX_HEADER_LEN + 1),
        ] {
            assert_eq!(
                v.verify(Some(&bad), &p, NOW),
                Err(EdgeAuthError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            v.verify(Some(&good.replace("kid=e1", "kid=e9")), &p, NOW),
            Err(EdgeAuthError::UnknownKey)
        );
        let (head, _) = good.rsplit_once("sig=").unwrap();
        for sig in ["", "AAAA", "not base64!"] {
            assert_eq!(
                v.verify(Some(&format!("{head}sig={sig}")), &p, NOW),
                Err(EdgeAuthError::BadSignature)
            );
        }
        // A newline in a signed part could shift the lines: refused outright.
        let shifted = RequestParts {
            request_id: "a\nEUW",
            ..p
        };
        assert_eq!(
            v.verify(Some(&good), &shifted, NOW),
            Err(EdgeAuthError::Malformed)
        );
    }

    #[test]
    fn keys_are_checked_when_built_and_never_printed() {
        assert_eq!(
            EdgeSigner::new("e1", &[0; 31]).unwrap_err(),
            EdgeAuthError::WeakKey
        );
        assert_eq!(
            EdgeSigner::new("e 1", SECRET).unwrap_err(),
            EdgeAuthError::Malformed
        );
        assert!(matches!(
            EdgeVerifier::new(vec![
                ("a".into(), SECRET.to_vec()),
                ("a".into(), SECRET.to_vec())
            ]),
            Err(EdgeAuthError::Malformed)
        ));
        let printed = format!(
            "{:?} {:?}",
            verifier(),
            EdgeSigner::new("e1", SECRET).unwrap()
        );
        assert!(
            printed.contains("e1") && !printed.contains("edge-signing-key"),
            "{printed}"
        );
    }
}
