//! Publishes each region's API keys to the edges' Upstash (`domain::api_key` has the rules).
//!
//! The keys' system of record is the region's PostgreSQL (`crate::store::api_keys`); the edges
//! read a copy, one hash per region (`domain::api_key::hash_key`): the secret's hash →
//! [`Published::encode`](domain::api_key::Published::encode) (plan, expiry, revocation,
//! origins), plus the set's version under `#v`. A publish replaces the whole hash with a
//! snapshot in one Lua script, the deny list's ([`deny_sync::REPLACE`]), and only if the
//! snapshot's version is not older than the one there: two origins publishing at once (a
//! change here, the periodic publish there) cannot put an older set back, so a revoked key
//! never comes back to life.
//!
//! The snapshot holds the usable keys and those revoked or expired in the last week, so an
//! edge can tell an app its key was revoked or has expired rather than that it is unknown; a
//! key past that week drops out at the next periodic publish.
//!
//! When: right after every change commits (on the job tracker, so the answer does not wait
//! and a shutdown does), and every [`deny_sync::PERIOD`] from the sweeper's loop with the deny
//! list, which heals a publish lost to an Upstash outage or a crash between commit and publish.
//! Expiry needs no publish: the edges compare each key's expiry with their clock.

use domain::region::Region;
use serde_json::{json, Value};

use crate::redis::deny_sync;
use crate::state::AppState;
use crate::store::api_keys;

/// The command that publishes `snapshot` under `key`: the version, then each secret hash
/// with its published value.
fn command(key: &str, snapshot: &api_keys::Snapshot) -> Value {
    let mut cmd = vec![
        json!("EVAL"),
        json!(deny_sync::REPLACE),
        json!("1"),
        json!(key),
        json!(snapshot.version.to_string()),
    ];
    for (hash, published) in &snapshot.keys {
        cmd.push(json!(hash));
        cmd.push(json!(published.encode()));
    }
    Value::Array(cmd)
}

/// Publishes the region's keys now. `Ok(false)`: the edges already had a newer set (or the
/// edge cache is not configured).
pub(crate) async fn publish(state: &AppState, region: Region) -> anyhow::Result<bool> {
    if state.edge_gen.rest().is_none() {
        return Ok(false);
    }
    let snapshot = api_keys::snapshot(&state.db, region).await?;
    deny_sync::replace(state, |prefix| {
        command(&domain::api_key::hash_key(prefix, region), &snapshot)
    })
    .await
}

/// Publishes in the background (after a change), counted and logged.
pub(crate) fn publish_soon(state: &AppState, region: Region) {
    let state_ = state.clone();
    state.edge_gen.tasks().spawn(async move {
        publish_counted(&state_, region).await;
    });
}

/// Publishes, counting the outcome in `api_key_publishes_total{result}`.
pub(crate) async fn publish_counted(state: &AppState, region: Region) {
    let outcome = publish(state, region).await;
    deny_sync::counted("api_key_publishes_total", "API key", region, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::api_key::{Plan, Published};

    #[test]
    fn a_publish_sends_the_version_then_each_hash_with_its_value() -> anyhow::Result<()> {
        let published = Published {
            key_id: "key_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e".into(),
            plan: Plan::new(60, 1000, 0)?,
            expires_ms: 0,
            revoked_ms: 1_800_000_000_000,
            origins: vec!["https://app.example.com".into()],
        };
        let snapshot = api_keys::Snapshot {
            version: 4,
            keys: vec![("ab".repeat(32), published.clone())],
        };
        assert_eq!(
            command("p:apikeys:EUW", &snapshot),
            json!([
                "EVAL",
                deny_sync::REPLACE,
                "1",
                "p:apikeys:EUW",
                "4",
                "ab".repeat(32),
                published.encode()
            ])
        );
        Ok(())
    }
}
