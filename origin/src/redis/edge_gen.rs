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

use std::time::Duration;

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
}

/// Reads the edge cache settings: `None` when `EDGE_CACHE_REST_URL` is unset.
pub(crate) fn config(env: &dyn Env) -> Result<Option<EdgeCacheConfig>, ConfigError> {
    let Some(url) = env.var("EDGE_CACHE_REST_URL") else {
        return Ok(None);
    };
    let url = url.trim().trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            name: "EDGE_CACHE_REST_URL",
            reason: "expected an http:// or https:// URL (the Upstash REST endpoint)".into(),
        });
    }
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
    Ok(Some(EdgeCacheConfig {
        url,
        token: Secret(token.into_bytes()),
        key_prefix: env
            .var("EDGE_CACHE_KEY_PREFIX")
            .unwrap_or_else(|| "edge:".into()),
        timeout: Duration::from_millis(timeout_ms),
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

    /// Bumps the vehicle's and its region's generations in the background.
    pub(crate) fn bump(&self, vehicle: &VehicleId) {
        let Some((config, client)) = self.target.clone() else {
            return;
        };
        let body = Self::commands(&config.key_prefix, vehicle);
        let vehicle = *vehicle;
        self.tasks.spawn(async move {
            let token = String::from_utf8_lossy(&config.token.0).into_owned();
            let sent = client
                .post(format!("{}/pipeline", config.url))
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
    fn a_bump_increments_the_region_and_the_vehicle_counters() {
        use domain::region::Region;
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
