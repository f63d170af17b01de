//! Bumps the edge cache's generation counters after a committed booking change.
//!
//! The edge workers cache searches and quotes in Upstash Redis (not the origin's Redis: the
//! edge runs in Cloudflare's and Fermyon's networks and reaches Redis over REST). Their keys
//! embed `gen:<REGION>` (searches) and `gen:veh:<vehicle>` (quotes), spelled by
//! [`domain::edge_cache`] for both sides; incrementing a counter makes every entry under it
//! unreachable at once (see `edge/core/src/cache.rs`). The edge bumps them itself after a write
//! it forwarded; the origin bumps them too, after every booking change it commits for an API
//! request — including writes that did not come through that edge — so a new booking is never
//! hidden behind a stale edge entry.
//!
//! The sweeper bumps too, for each hold it ends ([`crate::jobs::sweeper`]), and the
//! availability consumer ([`crate::jobs::consumer`]) bumps once more for every event about a
//! vehicle, whoever wrote it: the direct bumps are the fast path, the consumer's the one that
//! also covers a bump lost to an origin crash between commit and bump.
//!
//! The bump is one Upstash `/pipeline` request, sent on a task of the origin's job tracker
//! ([`crate::jobs::Jobs::tracker`]) with a short timeout: it never delays or fails the booking,
//! and a shutdown waits for bumps in flight instead of dropping them. A failed bump is logged
//! and counted (`edge_cache_bumps_total{result="error"}`); the affected entries then live out
//! their short TTL (quotes 60 s, searches 10 s). Without `EDGE_CACHE_REST_URL` the feature is
//! off.
//!
//! **A database per region.** When each region's edges have an Upstash database of their own,
//! the other regions' are this origin's *peers* (`EDGE_PEER_<REGION>_REST_URL`, `…_TOKEN`,
//! `…_KEY_PREFIX`): a Sweden edge caches Frankfurt's vehicles too, and enforces Frankfurt's
//! deny list and API keys, so every bump and every publication goes to each of them as well
//! ([`EdgeCacheConfig::targets`]), and the edges' rate-limit counts are copied between them
//! (`crate::jobs::limit_sync`).

use std::time::Duration;

use domain::region::Region;
use domain::VehicleId;
use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, Env, Secret};

/// Where the edge cache lives (`EDGE_CACHE_REST_URL`, `EDGE_CACHE_REST_TOKEN`,
/// `EDGE_CACHE_KEY_PREFIX` — the edge's `EDGE_KEY_PREFIX`).
#[derive(Debug, Clone)]
pub struct EdgeCacheConfig {
    pub url: String,
    pub token: Secret,
    pub key_prefix: String,
    pub timeout: Duration,
    /// The other regions' edge databases, when each region has its own
    /// (`EDGE_PEER_<REGION>_REST_URL`, `…_REST_TOKEN`, `…_KEY_PREFIX`): the rate-limit counts
    /// of this region's edges are copied there ([`crate::jobs::limit_sync`]).
    pub peers: Vec<EdgePeer>,
    /// How often the counts are copied (`EDGE_LIMIT_SYNC_MS`, default 100, at most
    /// `domain::ratelimit::shared::MAX_SYNC_MS`).
    pub limit_sync: Duration,
}

/// Another region's edge database.
#[derive(Debug, Clone)]
pub struct EdgePeer {
    pub region: Region,
    pub url: String,
    pub token: Secret,
    pub key_prefix: String,
}

/// One edge database to write to: its REST endpoint, token and key prefix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub url: &'a str,
    pub token: &'a Secret,
    pub key_prefix: &'a str,
}

impl EdgeCacheConfig {
    /// Every edge database this origin writes its publications to: its own region's, then
    /// each peer's (with a database per region, the other regions' edges must see this
    /// region's deny list, API keys and cache generations too).
    pub(crate) fn targets(&self) -> impl Iterator<Item = Target<'_>> {
        std::iter::once(Target {
            url: &self.url,
            token: &self.token,
            key_prefix: &self.key_prefix,
        })
        .chain(self.peers.iter().map(|p| Target {
            url: &p.url,
            token: &p.token,
            key_prefix: &p.key_prefix,
        }))
    }
}

fn rest_url(env: &dyn Env, name: &'static str) -> Result<Option<String>, ConfigError> {
    let Some(url) = env.var(name) else {
        return Ok(None);
    };
    let url = url.trim().trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            name,
            reason: "expected an http:// or https:// URL (the Upstash REST endpoint)".into(),
        });
    }
    Ok(Some(url))
}

/// The peers named by `EDGE_PEER_<REGION>_*`: a peer that is this origin's own database (the
/// same URL and prefix) would count every request twice, so it is refused.
fn peers(env: &dyn Env, own: (&str, &str)) -> Result<Vec<EdgePeer>, ConfigError> {
    let mut peers = Vec::new();
    for region in Region::ALL {
        let (url, token, prefix): (&'static str, &'static str, &'static str) = match region {
            Region::Euw => (
                "EDGE_PEER_EUW_REST_URL",
                "EDGE_PEER_EUW_REST_TOKEN",
                "EDGE_PEER_EUW_KEY_PREFIX",
            ),
            Region::Eun => (
                "EDGE_PEER_EUN_REST_URL",
                "EDGE_PEER_EUN_REST_TOKEN",
                "EDGE_PEER_EUN_KEY_PREFIX",
            ),
        };
        let Some(peer_url) = rest_url(env, url)? else {
            continue;
        };
        let key_prefix = env.var(prefix).unwrap_or_else(|| own.1.to_owned());
        if peer_url == own.0 && key_prefix == own.1 {
            return Err(ConfigError::Invalid {
                name: url,
                reason: "names this origin's own edge database (same URL and key prefix): \
                         its counts would be added to themselves"
                    .into(),
            });
        }
        peers.push(EdgePeer {
            region,
            url: peer_url,
            token: Secret(
                env.var(token)
                    .ok_or(ConfigError::Missing(token))?
                    .into_bytes(),
            ),
            key_prefix,
        });
    }
    Ok(peers)
}

/// Reads the edge cache settings: `None` when `EDGE_CACHE_REST_URL` is unset.
pub(crate) fn config(env: &dyn Env) -> Result<Option<EdgeCacheConfig>, ConfigError> {
    let Some(url) = rest_url(env, "EDGE_CACHE_REST_URL")? else {
        return Ok(None);
    };
    let token = env
        .var("EDGE_CACHE_REST_TOKEN")
        .ok_or(ConfigError::Missing("EDGE_CACHE_REST_TOKEN"))?;
    let timeout_ms = match env.var("EDGE_CACHE_TIMEOUT_MS") {
        None => 500,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => ms,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "EDGE_CACHE_TIMEOUT_MS",
                    reason: format!("expected milliseconds greater than 0 (got {v:?})"),
                })
            }
        },
    };
    let key_prefix = env
        .var("EDGE_CACHE_KEY_PREFIX")
        .unwrap_or_else(|| "edge:".into());
    let sync_ms = match env.var("EDGE_LIMIT_SYNC_MS") {
        None => 100,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (1..=domain::ratelimit::shared::MAX_SYNC_MS).contains(&ms) => ms,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "EDGE_LIMIT_SYNC_MS",
                    reason: format!(
                        "expected milliseconds from 1 to {} (got {v:?})",
                        domain::ratelimit::shared::MAX_SYNC_MS
                    ),
                })
            }
        },
    };
    Ok(Some(EdgeCacheConfig {
        peers: peers(env, (&url, &key_prefix))?,
        url,
        token: Secret(token.into_bytes()),
        key_prefix,
        timeout: Duration::from_millis(timeout_ms),
        limit_sync: Duration::from_millis(sync_ms),
    }))
}

/// The bumper: cheap to clone; does nothing when unconfigured.
#[derive(Debug, Clone)]
pub(crate) struct EdgeGen {
    target: Option<(EdgeCacheConfig, reqwest::Client)>,
    /// Where bumps run: the origin's job tracker, so a shutdown awaits them.
    tasks: TaskTracker,
}

impl EdgeGen {
    /// Builds the bumper (an HTTP client with the configured timeout); bumps run on `tasks`.
    pub(crate) fn new(
        config: Option<&EdgeCacheConfig>,
        tasks: TaskTracker,
    ) -> anyhow::Result<Self> {
        let target = match config {
            None => None,
            Some(c) => Some((
                c.clone(),
                reqwest::Client::builder().timeout(c.timeout).build()?,
            )),
        };
        Ok(EdgeGen { target, tasks })
    }

    /// The edge cache's REST endpoint and a client for it (none: off), for other writers of
    /// the edges' Upstash ([`crate::redis::deny_sync`], [`crate::redis::key_sync`]).
    pub(crate) fn rest(&self) -> Option<&(EdgeCacheConfig, reqwest::Client)> {
        self.target.as_ref()
    }

    /// Where background writes run (a shutdown awaits them).
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The commands of one bump, as the `/pipeline` body: the vehicle's and its region's
    /// counters ([`domain::edge_cache::bump_commands`], the edge's own bump).
    fn commands(prefix: &str, vehicle: &VehicleId) -> Value {
        Value::from(domain::edge_cache::bump_commands(
            prefix,
            vehicle.region,
            Some(vehicle),
        ))
    }

    /// Bumps the vehicle's and its region's generations in the background, in every edge
    /// database ([`EdgeCacheConfig::targets`]).
    pub(crate) fn bump(&self, vehicle: &VehicleId) {
        let Some((config, client)) = &self.target else {
            return;
        };
        for target in config.targets() {
            let body = Self::commands(target.key_prefix, vehicle);
            let url = format!("{}/pipeline", target.url);
            let token = String::from_utf8_lossy(&target.token.0).into_owned();
            let (client, vehicle) = (client.clone(), *vehicle);
            self.tasks.spawn(async move {
                let sent = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                let result = match sent {
                    Ok(_) => "ok",
                    Err(e) => {
                        tracing::warn!(error = %e, %vehicle, "edge cache generation bump failed; edge entries expire by TTL");
                        "error"
                    }
                };
                metrics::counter!("edge_cache_bumps_total", "result" => result).increment(1);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_edge_cache_is_off_without_a_url() -> Result<(), ConfigError> {
        assert!(config(&env(&[]))?.is_none());
        Ok(())
    }

    #[test]
    fn a_bad_edge_cache_setting_is_named() {
        for (pairs, name) in [
            (
                vec![("EDGE_CACHE_REST_URL", "redis://x")],
                "EDGE_CACHE_REST_URL",
            ),
            (
                vec![("EDGE_CACHE_REST_URL", "https://x")],
                "EDGE_CACHE_REST_TOKEN",
            ),
            (
                vec![
                    ("EDGE_CACHE_REST_URL", "https://x"),
                    ("EDGE_CACHE_REST_TOKEN", "t"),
                    ("EDGE_CACHE_TIMEOUT_MS", "0"),
                ],
                "EDGE_CACHE_TIMEOUT_MS",
            ),
        ] {
            let err = config(&env(&pairs)).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with(name)),
                "{pairs:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn peers_are_read_per_region_and_one_naming_the_own_database_is_refused(
    ) -> Result<(), ConfigError> {
        let base = [
            ("EDGE_CACHE_REST_URL", "https://euw.example/"),
            ("EDGE_CACHE_REST_TOKEN", "t"),
            ("EDGE_CACHE_KEY_PREFIX", "edge:"),
        ];
        let none = config(&env(&base))?.map(|c| (c.peers.len(), c.limit_sync));
        assert_eq!(none, Some((0, Duration::from_millis(100))));
        let mut pairs = base.to_vec();
        pairs.extend([
            ("EDGE_PEER_EUN_REST_URL", "https://eun.example"),
            ("EDGE_PEER_EUN_REST_TOKEN", "u"),
            ("EDGE_LIMIT_SYNC_MS", "50"),
        ]);
        let c = config(&env(&pairs))?.ok_or(ConfigError::Missing("config"))?;
        assert_eq!(c.limit_sync, Duration::from_millis(50));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].region, Region::Eun);
        assert_eq!(c.peers[0].url, "https://eun.example");
        assert_eq!(c.peers[0].key_prefix, "edge:");
        for (extra, name) in [
            (
                vec![
                    ("EDGE_PEER_EUN_REST_URL", "https://euw.example"),
                    ("EDGE_PEER_EUN_REST_TOKEN", "u"),
                ],
                "EDGE_PEER_EUN_REST_URL",
            ),
            (
                vec![("EDGE_PEER_EUN_REST_URL", "https://eun.example")],
                "EDGE_PEER_EUN_REST_TOKEN",
            ),
            (vec![("EDGE_LIMIT_SYNC_MS", "500")], "EDGE_LIMIT_SYNC_MS"),
        ] {
            let mut pairs = base.to_vec();
            pairs.extend(extra);
            let err = config(&env(&pairs)).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with(name)),
                "{pairs:?} gave {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_bump_increments_the_region_and_the_vehicle_counters() {
        use serde_json::json;
        let vehicle: VehicleId = "veh_eun_0123456789abcdef0123456789abcdef"
            .parse()
            .unwrap_or_else(|_| VehicleId::new(Region::Eun, uuid::Uuid::nil()));
        let cmds = EdgeGen::commands("p:", &vehicle);
        let key = "p:gen:veh:veh_eun_0123456789abcdef0123456789abcdef";
        assert_eq!(
            cmds,
            json!([
                ["INCR", "p:gen:EUN"],
                ["INCR", key],
                ["EXPIRE", key, "86400"]
            ])
        );
    }
}
