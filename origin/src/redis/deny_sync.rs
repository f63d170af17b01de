//! Publishes each region's deny list to the edges' Upstash (`domain::deny` has the rules).
//!
//! The list's system of record is the region's PostgreSQL (`crate::store::deny_list`); the
//! edges read a copy in their database (every region's, with a database per region: see
//! `crate::redis::edge_gen`), one hash per region (`domain::deny::hash_key`): field → expiry in ms
//! (`0`: none), plus the list's version under `#v`. A publish replaces the whole hash with a
//! snapshot of the active entries in one Lua script, and only if the snapshot's version is not
//! older than the one there: two origins publishing at once (a change here, the periodic
//! publish there) cannot put an older list back.
//!
//! When: right after every change commits (on the job tracker, so the answer does not wait
//! and a shutdown does), and every [`PERIOD`] from the sweeper's loop, which heals a publish
//! lost to an Upstash outage or a crash between commit and publish. Expiry needs no publish:
//! the edges compare each entry's expiry with their clock.

use std::time::Duration;

use domain::region::Region;
use serde_json::{json, Value};

use crate::state::AppState;
use crate::store::deny_list;

/// How often the sweeper republishes every served region's list.
pub(crate) const PERIOD: Duration = Duration::from_secs(30);

/// KEYS[1]: the region's hash. ARGV: the version, then field, value pairs (here: expiries;
/// `crate::redis::key_sync` publishes the API keys with it too). Replaces the hash unless it
/// holds a newer version; returns 1 when it replaced, 0 when it was newer.
pub(crate) const REPLACE: &str = r"
local have = tonumber(redis.call('HGET', KEYS[1], '#v') or '-1')
if tonumber(ARGV[1]) < have then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '#v', ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
";

/// The command that publishes `snapshot` under `key`.
fn command(key: &str, snapshot: &deny_list::Snapshot) -> Value {
    let mut cmd = vec![
        json!("EVAL"),
        json!(REPLACE),
        json!("1"),
        json!(key),
        json!(snapshot.version.to_string()),
    ];
    for (field, expires_at) in &snapshot.fields {
        cmd.push(json!(field));
        cmd.push(json!(domain::deny::expiry_value(
            expires_at.map(|t| t.timestamp_millis())
        )));
    }
    Value::Array(cmd)
}

/// Publishes the region's list now. `Ok(false)`: the edges already had a newer one (or the
/// edge cache is not configured).
pub(crate) async fn publish(state: &AppState, region: Region) -> anyhow::Result<bool> {
    if state.edge_gen.rest().is_none() {
        return Ok(false);
    }
    let snapshot = deny_list::snapshot(&state.db, region.code()).await?;
    replace(state, |prefix| {
        command(&domain::deny::hash_key(prefix, region), &snapshot)
    })
    .await
}

/// Sends a [`REPLACE`] command (built for each database's key prefix) to every edge database
/// (the region's own and its peers', `EdgeCacheConfig::targets`). `Ok(false)`: every one
/// already had a newer version, or the edge cache is not configured; an error from any one is
/// the answer (after trying them all: one peer down does not stop the others). Shared with
/// `crate::redis::key_sync`.
pub(crate) async fn replace(
    state: &AppState,
    command: impl Fn(&str) -> Value,
) -> anyhow::Result<bool> {
    let Some((config, client)) = state.edge_gen.rest() else {
        return Ok(false);
    };
    let mut replaced = false;
    let mut failed = None;
    for target in config.targets() {
        let sent = async {
            let reply: Value = client
                .post(target.url)
                .bearer_auth(String::from_utf8_lossy(&target.token.0))
                .json(&command(target.key_prefix))
                .send()
                .await?
                .json()
                .await?;
            match reply.get("result").and_then(Value::as_i64) {
                Some(n) => Ok(n == 1),
                None => anyhow::bail!("Upstash at {} answered {reply}", target.url),
            }
        };
        match sent.await {
            Ok(r) => replaced |= r,
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(replaced),
    }
}

/// Publishes in the background (after a change), counted and logged.
pub(crate) fn publish_soon(state: &AppState, region: Region) {
    let state_ = state.clone();
    state.edge_gen.tasks().spawn(async move {
        publish_counted(&state_, region).await;
    });
}

/// Publishes, counting the outcome in `deny_list_publishes_total{result}`.
pub(crate) async fn publish_counted(state: &AppState, region: Region) {
    let outcome = publish(state, region).await;
    counted("deny_list_publishes_total", "deny list", region, outcome);
}

/// Counts a publish's outcome in `metric{result}` (`ok`, `skipped`: the edges had newer,
/// `error`: logged, the next periodic publish retries).
pub(crate) fn counted(
    metric: &'static str,
    what: &str,
    region: Region,
    outcome: anyhow::Result<bool>,
) {
    let result = match outcome {
        Ok(true) => "ok",
        Ok(false) => "skipped",
        Err(e) => {
            tracing::warn!(error = %e, %region, "{what} publish failed; the next periodic publish retries");
            "error"
        }
    };
    metrics::counter!(metric, "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_sends_the_version_then_each_field_with_its_expiry() {
        let at = chrono::DateTime::from_timestamp_millis(1_800_000_000_000);
        let snapshot = deny_list::Snapshot {
            version: 7,
            fields: vec![("n:203.0.113.0/24".into(), None), ("u:rita".into(), at)],
        };
        assert_eq!(
            command("p:deny:EUW", &snapshot),
            json!([
                "EVAL",
                REPLACE,
                "1",
                "p:deny:EUW",
                "7",
                "n:203.0.113.0/24",
                "0",
                "u:rita",
                "1800000000000"
            ])
        );
    }
}
