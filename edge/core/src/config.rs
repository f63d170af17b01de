//! Edge configuration from platform variables, parsed once per isolate (Cloudflare) or
//! per request (Spin and `wasmtime serve` start a fresh instance for every request; parsing
//! is a few string splits and, for HS256, no crypto at all).
//!
//! A bad or missing variable is an error naming it, like the origin's `config.rs`; the edge
//! answers such a misconfiguration with a 500 problem naming the variable (never its value).

use std::collections::BTreeMap;

use domain::area::ServiceAreas;
use domain::auth::{JwtVerifier, VerifyKey};
use domain::edge_auth::EdgeSigner;
use domain::region::Region;

use crate::platform::Platform;

/// A configuration error naming the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Everything the edge needs, validated.
#[derive(Debug)]
pub struct EdgeConfig {
    /// The region this edge sits in: reads that name no region go to its origin.
    pub region: Region,
    /// Origin base URLs by region (no trailing slash).
    pub origins: Vec<(Region, String)>,
    /// Every region's service area (`SERVICE_AREAS`, the origins' variable; default
    /// [`domain::area::DEFAULT_SERVICE_AREAS`]): where searches and surge reads go.
    pub areas: ServiceAreas,
    /// Upstash REST endpoint and token (`UPSTASH_REDIS_REST_URL` / `_TOKEN`, Upstash's names).
    pub upstash_url: String,
    pub upstash_token: String,
    /// Prepended to every Redis key the edge uses, so deployments (and tests) can share one
    /// database; the origin's `EDGE_CACHE_KEY_PREFIX` must match to bump generations.
    pub key_prefix: String,
    pub jwt: JwtVerifier,
    /// Signs every request forwarded to an origin (`EDGE_SIGNING_KID` / `EDGE_SIGNING_KEY`,
    /// one of the origins' `EDGE_SIGNING_KEYS`): see `domain::edge_auth`.
    pub signer: EdgeSigner,
    /// Requests per rate-limit window (`EDGE_USER_LIMIT_PER_MIN`, `EDGE_IP_LIMIT_PER_MIN`:
    /// per minute unless `EDGE_RATE_LIMIT_WINDOW_SECS` says otherwise).
    pub user_limit_per_min: u32,
    pub ip_limit_per_min: u32,
    /// The sliding window's length (`EDGE_RATE_LIMIT_WINDOW_SECS`, default 60): a minute in
    /// production; tests shorten it to see a window slide in seconds.
    pub rate_limit_window_secs: u64,
    /// How long a client may burst to five times its rate (`EDGE_RATE_LIMIT_BURST_SECS`,
    /// default 10; 0 turns the burst allowance off): `domain::ratelimit::burst`.
    pub rate_limit_burst_secs: u64,
    /// Fresh lifetimes of cached quotes and searches; entries are kept `stale_secs` longer
    /// to be served (marked stale) while the origin is unreachable.
    pub quote_ttl_secs: u64,
    pub search_ttl_secs: u64,
    pub stale_secs: u64,
    pub origin_timeout_ms: u64,
    pub redis_timeout_ms: u64,
    /// `Retry-After` sent with a 503 when the origin is unreachable or the edge is full.
    pub retry_after_secs: u64,
    /// Requests one isolate (or instance) serves at once; more are answered 503 with
    /// `Retry-After` at once. Default [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Whether every request must carry an app's API key (`EDGE_REQUIRE_API_KEY=true`;
    /// default false: a key is optional, and applied when present).
    pub require_api_key: bool,
    /// Whether this region's counts are shared with the other regions' databases
    /// (`EDGE_SHARE_LIMITS=true`, default false): on when each region has its own Upstash
    /// database and its origin copies the outbox (`domain::ratelimit::shared`); off when the
    /// edges of every region share one database (their counts are then shared already).
    pub share_limits: bool,
}

/// Below the host limits that fail less politely: `wasmtime serve`'s pooling allocator
/// refuses instances past 1,000 (an HTML 500 page), and one workerd isolate holding
/// thousands of open subrequests drops connections. Spin instances serve one request at a
/// time, so there the host's own limits (README, "Edge limits") are what bind.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

fn parsed<T: std::str::FromStr>(
    p: &impl Platform,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match p.var(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

fn required(p: &impl Platform, name: &'static str) -> Result<String, ConfigError> {
    p.var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or(ConfigError::Missing(name))
}

fn url(p: &impl Platform, name: &'static str) -> Result<String, ConfigError> {
    let v = required(p, name)?;
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            name,
            reason: "expected an http:// or https:// URL".into(),
        });
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// `{"kid": "-----BEGIN PUBLIC KEY-----…"}`: PEM text, since Workers and Spin have no files.
fn pem_map(p: &impl Platform, name: &'static str) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    let Some(raw) = p.var(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let map: BTreeMap<String, String> =
        serde_json::from_str(&raw).map_err(|e| ConfigError::Invalid {
            name,
            reason: format!("expected a JSON object of key id to PEM text: {e}"),
        })?;
    Ok(map.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
}

/// Longest burst allowed: an hour of five times the rate is no longer a burst.
pub const MAX_BURST_SECS: u64 = 3_600;

fn burst_secs(p: &impl Platform) -> Result<u64, ConfigError> {
    const NAME: &str = "EDGE_RATE_LIMIT_BURST_SECS";
    let secs: u64 = parsed(p, NAME, 10)?;
    if secs > MAX_BURST_SECS {
        return Err(ConfigError::Invalid {
            name: NAME,
            reason: format!("at most {MAX_BURST_SECS} (0 turns bursts off)"),
        });
    }
    Ok(secs)
}

impl EdgeConfig {
    /// Reads and validates every variable.
    pub fn from_platform(p: &impl Platform) -> Result<Self, ConfigError> {
        let region: Region =
            required(p, "EDGE_REGION")?
                .parse()
                .map_err(|_| ConfigError::Invalid {
                    name: "EDGE_REGION",
                    reason: "expected EUW or EUN".into(),
                })?;
        let origins = vec![
            (Region::Euw, url(p, "ORIGIN_EUW_URL")?),
            (Region::Eun, url(p, "ORIGIN_EUN_URL")?),
        ];

        let mut keys = Vec::new();
        if let Some(secret) = p.var("JWT_HS256_SECRET").filter(|v| !v.is_empty()) {
            keys.push(VerifyKey::Hs256 {
                kid: p.var("JWT_HS256_KID").filter(|v| !v.is_empty()),
                secret: secret.into_bytes(),
            });
        }
        for (kid, pem) in pem_map(p, "JWT_RS256_PUBLIC_KEYS")? {
            keys.push(VerifyKey::Rs256Pem {
                kid: Some(kid),
                pem,
            });
        }
        for (kid, pem) in pem_map(p, "JWT_EDDSA_PUBLIC_KEYS")? {
            keys.push(VerifyKey::EdDsaPem {
                kid: Some(kid),
                pem,
            });
        }
        if keys.is_empty() {
            return Err(ConfigError::Missing(
                "JWT_HS256_SECRET (or JWT_RS256_PUBLIC_KEYS / JWT_EDDSA_PUBLIC_KEYS)",
            ));
        }
        let jwt = JwtVerifier::new(
            keys,
            required(p, "JWT_ISSUER")?,
            required(p, "JWT_AUDIENCE")?,
            parsed(p, "JWT_LEEWAY_SECS", 30)?,
        )
        .map_err(|e| ConfigError::Invalid {
            name: "JWT_HS256_SECRET",
            reason: e.to_string(),
        })?;

        let signer = EdgeSigner::new(
            &required(p, "EDGE_SIGNING_KID")?,
            required(p, "EDGE_SIGNING_KEY")?.as_bytes(),
        )
        .map_err(|e| ConfigError::Invalid {
            name: "EDGE_SIGNING_KEY",
            reason: format!(
                "{e} (EDGE_SIGNING_KID: 1-32 of A-Z a-z 0-9 _ -; the key: at least 32 bytes)"
            ),
        })?;

        let positive = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            let v: u64 = parsed(p, name, default)?;
            if v == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than 0".into(),
                });
            }
            Ok(v)
        };
        let areas = match p.var("SERVICE_AREAS").filter(|v| !v.trim().is_empty()) {
            Some(text) => ServiceAreas::parse(&text).map_err(|e| ConfigError::Invalid {
                name: "SERVICE_AREAS",
                reason: e.to_string(),
            })?,
            None => ServiceAreas::default(),
        };
        Ok(EdgeConfig {
            region,
            origins,
            areas,
            upstash_url: url(p, "UPSTASH_REDIS_REST_URL")?,
            upstash_token: required(p, "UPSTASH_REDIS_REST_TOKEN")?,
            key_prefix: p
                .var("EDGE_KEY_PREFIX")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "edge:".into()),
            jwt,
            signer,
            user_limit_per_min: u32::try_from(positive("EDGE_USER_LIMIT_PER_MIN", 100)?)
                .unwrap_or(u32::MAX),
            ip_limit_per_min: u32::try_from(positive("EDGE_IP_LIMIT_PER_MIN", 1000)?)
                .unwrap_or(u32::MAX),
            rate_limit_window_secs: positive("EDGE_RATE_LIMIT_WINDOW_SECS", 60)?,
            rate_limit_burst_secs: burst_secs(p)?,
            quote_ttl_secs: positive("EDGE_QUOTE_TTL_SECS", 60)?,
            search_ttl_secs: positive("EDGE_SEARCH_TTL_SECS", 10)?,
            stale_secs: positive("EDGE_STALE_SECS", 300)?,
            origin_timeout_ms: positive("EDGE_ORIGIN_TIMEOUT_MS", 5_000)?,
            redis_timeout_ms: positive("EDGE_REDIS_TIMEOUT_MS", 1_000)?,
            retry_after_secs: positive("EDGE_RETRY_AFTER_SECS", 5)?,
            max_in_flight: usize::try_from(positive(
                "EDGE_MAX_IN_FLIGHT",
                DEFAULT_MAX_IN_FLIGHT as u64,
            )?)
            .unwrap_or(usize::MAX),
            require_api_key: parsed(p, "EDGE_REQUIRE_API_KEY", false)?,
            share_limits: parsed(p, "EDGE_SHARE_LIMITS", false)?,
        })
    }

    /// The origin of `region`.
    pub fn origin(&self, region: Region) -> &str {
        self.origins
            .iter()
            .find(|(r, _)| *r == region)
            .map(|(_, url)| url.as_str())
            .unwrap_or("")
    }
}
