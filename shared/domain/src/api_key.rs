//! API keys for apps, shared by the origin (which issues and keeps them) and the edges (which
//! check them and apply their plans).
//!
//! A key is a secret the app sends in `X-Api-Key` beside its user's JWT:
//! `bpk_<region>_<43 base64url characters>` (32 random bytes). The origin shows it once and
//! keeps only its SHA-256: a 256-bit random secret needs no slow password hash (there is
//! nothing to guess), and a fast one lets the edge find it by hash in one `HGET`.
//!
//! Each key has a [`Plan`]: requests per minute (with a burst allowance of five times that rate
//! for `burst_secs` seconds, `ratelimit::burst`) and per day, and optionally the browser
//! origins allowed to use it. The origin publishes each region's keys to the edges' Upstash as
//! one hash, [`hash_key`]: field [`secret_hash`] → [`Published::encode`]. The edge sends the
//! presented key's hash inside the rate-limit script it already sends; the script reads the
//! plan, refuses an unknown, revoked or expired key or a disallowed origin, and applies the
//! plan's two limits with the user's and the address's — one Upstash request, and a revoked
//! key is refused as soon as the origin has published (no copy to go stale).

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::ratelimit::{Burst, RateLimit};
use crate::region::Region;

/// The secret's prefix: "booking & pricing key", recognisable in a leaked config.
pub const SECRET_PREFIX: &str = "bpk";
/// The plan's windows: a minute and a day.
pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;
/// Bounds on a plan, so a typo cannot publish a limit no Redis counter should hold. The day's
/// bound also keeps the edge script exact: it compares `(prev + curr + 1) × window` with
/// `limit × window` in Lua's doubles, and with a day's window in ms (8.64 × 10⁷) and counts up
/// to the limit each, 2 × 5 × 10⁷ × 8.64 × 10⁷ stays below 2⁵³.
pub const MAX_PER_MINUTE: u32 = 1_000_000;
pub const MAX_PER_DAY: u32 = 50_000_000;
pub const MAX_BURST_SECS: u64 = 60;
/// At most this many allowed origins per key (the edge script scans them).
pub const MAX_ORIGINS: usize = 16;
/// The longest `X-Api-Key` value the edge looks at (a secret is 51 characters).
pub const MAX_SECRET_LEN: usize = 128;

/// A key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub per_minute: u32,
    pub per_day: u32,
    /// Seconds of burst at five times the per-minute rate; 0: no burst.
    pub burst_secs: u64,
}

/// Why a plan or an origin cannot be used; the message names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("per_minute must be 1 to {MAX_PER_MINUTE}")]
    PerMinute,
    #[error("per_day must be at least per_minute and at most {MAX_PER_DAY}")]
    PerDay,
    #[error("burst_secs must be 0 to {MAX_BURST_SECS}")]
    BurstSecs,
    #[error("at most {MAX_ORIGINS} allowed origins")]
    TooManyOrigins,
    #[error("{0:?} is not an origin: scheme://host[:port], no path, e.g. https://app.example.com")]
    Origin(String),
}

impl Plan {
    pub fn new(per_minute: u32, per_day: u32, burst_secs: u64) -> Result<Self, PlanError> {
        if per_minute == 0 || per_minute > MAX_PER_MINUTE {
            return Err(PlanError::PerMinute);
        }
        if per_day < per_minute || per_day > MAX_PER_DAY {
            return Err(PlanError::PerDay);
        }
        if burst_secs > MAX_BURST_SECS {
            return Err(PlanError::BurstSecs);
        }
        Ok(Plan {
            per_minute,
            per_day,
            burst_secs,
        })
    }

    /// The per-minute limit.
    pub fn minute(&self) -> RateLimit {
        RateLimit {
            limit: self.per_minute,
            window_ms: MINUTE_MS,
        }
    }

    /// The per-minute limit's burst allowance.
    pub fn burst(&self) -> Option<Burst> {
        Burst::new(&self.minute(), self.burst_secs)
    }

    /// The per-day limit (no burst).
    pub fn day(&self) -> RateLimit {
        RateLimit {
            limit: self.per_day,
            window_ms: DAY_MS,
        }
    }
}

/// An allowed origin in canonical form (lower case, no trailing slash): `https://host[:port]`
/// or `http://…` (for development).
pub fn parse_origin(text: &str) -> Result<String, PlanError> {
    let bad = || PlanError::Origin(text.to_owned());
    let t = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if ok {
        Ok(t)
    } else {
        Err(bad())
    }
}

/// A new secret for `region` from 32 random bytes.
pub fn new_secret(region: Region, random: &[u8; 32]) -> String {
    format!(
        "{SECRET_PREFIX}_{}_{}",
        region.code().to_ascii_lowercase(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// The first characters of a secret, kept beside its hash so ops can tell keys apart
/// (`bpk_euw_AbCd`); the rest is never stored.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(12).collect()
}

/// The hash a key is stored and found by: SHA-256 of the secret, lower-case hex.
pub fn secret_hash(secret: &str) -> String {
    hex_lower(&Sha256::digest(secret.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether an `X-Api-Key` value is worth looking up: printable ASCII, not too long. (Anything
/// else is refused as unknown without a round trip.)
pub fn plausible_secret(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SECRET_LEN
        && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The Upstash hash holding `region`'s keys (the edge's key prefix in front).
pub fn hash_key(prefix: &str, region: Region) -> String {
    format!("{prefix}apikeys:{}", region.code())
}

/// A key as the edges see it: the hash value the origin publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub key_id: String,
    pub plan: Plan,
    /// ms since the epoch; 0: never.
    pub expires_ms: u64,
    /// ms since the epoch; 0: not revoked.
    pub revoked_ms: u64,
    /// Canonical origins; empty: any (and requests without an `Origin`).
    pub origins: Vec<String>,
}

/// The published value's format version: its first word.
const FORMAT: &str = "v1";

impl Published {
    /// `v1 <key id> <per minute> <burst capacity> <refill ms> <per day> <expires ms>
    /// <revoked ms> <burst secs> [origin …]`: space-separated words, so the edge script splits
    /// it with one `gmatch`; the burst's capacity and refill interval are computed here once
    /// (`ratelimit::Burst::new`), so the script needs no arithmetic of its own for them.
    pub fn encode(&self) -> String {
        let (capacity, refill_ms) = self
            .plan
            .burst()
            .map_or((0, 1), |b| (b.capacity, b.refill_ms));
        let mut out = format!(
            "{FORMAT} {} {} {capacity} {refill_ms} {} {} {} {}",
            self.key_id,
            self.plan.per_minute,
            self.plan.per_day,
            self.expires_ms,
            self.revoked_ms,
            self.plan.burst_secs
        );
        for o in &self.origins {
            out.push(' ');
            out.push_str(o);
        }
        out
    }

    /// The inverse of [`Published::encode`]; `None` for anything else.
    pub fn decode(value: &str) -> Option<Published> {
        let mut words = value.split(' ');
        if words.next()? != FORMAT {
            return None;
        }
        let key_id = words.next()?.to_owned();
        let per_minute = words.next()?.parse().ok()?;
        let _capacity: u64 = words.next()?.parse().ok()?;
        let _refill: u64 = words.next()?.parse().ok()?;
        let per_day = words.next()?.parse().ok()?;
        let expires_ms = words.next()?.parse().ok()?;
        let revoked_ms = words.next()?.parse().ok()?;
        let burst_secs = words.next()?.parse().ok()?;
        let origins = words.map(str::to_owned).collect();
        Some(Published {
            key_id,
            plan: Plan::new(per_minute, per_day, burst_secs).ok()?,
            expires_ms,
            revoked_ms,
            origins,
        })
    }

    /// Why the key refuses a request at `now_ms` from `origin` (the request's `Origin`
    /// header), if it does: the edge script's rule, for tests of it.
    pub fn refusal(&self, now_ms: u64, origin: Option<&str>) -> Option<KeyRefusal> {
        if self.revoked_ms != 0 {
            return Some(KeyRefusal::Revoked);
        }
        if self.expires_ms != 0 && self.expires_ms <= now_ms {
            return Some(KeyRefusal::Expired);
        }
        if !self.origins.is_empty() && !origin.is_some_and(|o| self.origins.iter().any(|a| a == o))
        {
            return Some(KeyRefusal::Origin);
        }
        None
    }
}

/// Why a presented key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Unknown,
    Revoked,
    Expired,
    /// The key allows browser origins and the request's is not one of them.
    Origin,
}

impl KeyRefusal {
    /// The word the edge script returns.
    pub fn word(self) -> &'static str {
        match self {
            KeyRefusal::Unknown => "unknown",
            KeyRefusal::Revoked => "revoked",
            KeyRefusal::Expired => "expired",
            KeyRefusal::Origin => "origin",
        }
    }

    pub fn from_word(word: &str) -> Option<Self> {
        [
            KeyRefusal::Unknown,
            KeyRefusal::Revoked,
            KeyRefusal::Expired,
            KeyRefusal::Origin,
        ]
        .into_iter()
        .find(|r| r.word() == word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plans_are_bounded_and_named() {
        assert!(Plan::new(100, 10_000, 10).is_ok());
        assert_eq!(Plan::new(0, 10, 0), Err(PlanError::PerMinute));
        assert_eq!(Plan::new(100, 99, 0), Err(PlanError::PerDay));
        assert_eq!(Plan::new(100, 100, 61), Err(PlanError::BurstSecs));
        assert!(Plan::new(100, 100, 0).unwrap().burst().is_none());
        assert!(Plan::new(100, 100, 10).unwrap().burst().is_some());
    }

    #[test]
    fn origins_are_canonical() {
        assert_eq!(
            parse_origin("HTTPS://App.Example.com/"),
            Ok("https://app.example.com".into())
        );
        assert_eq!(
            parse_origin("http://localhost:3000"),
            Ok("http://localhost:3000".into())
        );
        for bad in [
            "",
            "app.example.com",
            "https://",
            "https://a.b/path",
            "ftp://x",
            "https://a b",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_secret_names_its_region_and_is_found_by_its_hash() {
        let s = new_secret(Region::Eun, &[7; 32]);
        assert!(s.starts_with("bpk_eun_"));
        assert_eq!(s.len(), 8 + 43);
        assert!(plausible_secret(&s));
        assert_eq!(secret_hash(&s).len(), 64);
        assert_ne!(
            secret_hash(&s),
            secret_hash(&new_secret(Region::Eun, &[8; 32]))
        );
        assert_eq!(display_prefix(&s), &s[..12]);
        assert!(!plausible_secret(""));
        assert!(!plausible_secret("a b"));
        assert!(!plausible_secret(&"x".repeat(129)));
    }

    #[test]
    fn refusals_follow_revocation_expiry_and_origins() {
        let mut p = Published {
            key_id: "key_euw_01".into(),
            plan: Plan::new(10, 100, 0).unwrap(),
            expires_ms: 0,
            revoked_ms: 0,
            origins: vec![],
        };
        assert_eq!(p.refusal(5, None), None);
        p.expires_ms = 5;
        assert_eq!(p.refusal(4, None), None);
        assert_eq!(p.refusal(5, None), Some(KeyRefusal::Expired));
        p.revoked_ms = 1;
        assert_eq!(p.refusal(0, None), Some(KeyRefusal::Revoked));
        p.revoked_ms = 0;
        p.expires_ms = 0;
        p.origins = vec!["https://a.example".into()];
        assert_eq!(p.refusal(0, None), Some(KeyRefusal::Origin));
        assert_eq!(
            p.refusal(0, Some("https://b.example")),
            Some(KeyRefusal::Origin)
        );
        assert_eq!(p.refusal(0, Some("https://a.example")), None);
        for r in [
            KeyRefusal::Unknown,
            KeyRefusal::Revoked,
            KeyRefusal::Expired,
            KeyRefusal::Origin,
        ] {
            assert_eq!(KeyRefusal::from_word(r.word()), Some(r));
        }
    }

    proptest! {
        #[test]
        fn published_values_round_trip(
            per_minute in 1u32..=MAX_PER_MINUTE, extra in 0u32..1_000_000, burst_secs in 0u64..=MAX_BURST_SECS,
            expires_ms in any::<u64>(), revoked_ms in any::<u64>(), n in 0usize..4
        ) {
            let p = Published {
                key_id: "key_eun_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e".into(),
                plan: Plan::new(per_minute, per_minute + extra, burst_secs).unwrap(),
                expires_ms,
                revoked_ms,
                origins: (0..n).map(|i| format!("https://app{i}.example")).collect(),
            };
            prop_assert_eq!(Published::decode(&p.encode()), Some(p));
        }
    }
}
