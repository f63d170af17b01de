//! Shares the edges' rate-limit counts with the other regions (`domain::ratelimit::shared`
//! has the design and the bound on the overshoot).
//!
//! Every `EDGE_LIMIT_SYNC_MS` (100 ms) this job empties the outbox of each region this
//! origin serves in the edges' Upstash (one [`DRAIN`] script: read and delete at once, so two
//! origins draining never both copy a spend) and adds every spend to each peer's database
//! (`EDGE_PEER_<REGION>_*`) with one [`APPLY`] script per peer, sent concurrently. It runs only
//! where singleton jobs run, and only while this replica leads (`crate::jobs::leader`); a
//! second drainer would be harmless, just wasted requests.
//!
//! Failure loses, never doubles: spends drained but not applied (a peer down, a timeout) are
//! dropped, logged and counted (`edge_limit_sync_spends_total{result="error"}`), and the
//! limits fail open by that much — like the edge when Upstash is down. Counting a spend twice
//! would refuse clients that are within their limit. On shutdown the job drains once more, so
//! the last 100 ms are not lost.

use std::time::{Duration, Instant};

use domain::ratelimit::shared::{self, Spend};
use domain::region::Region;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::redis::edge_gen::{EdgeCacheConfig, EdgePeer};
use crate::state::AppState;

/// KEYS[1]: the outbox. Returns its fields and values and deletes it.
pub(crate) const DRAIN: &str = r"
local h = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return h
";

/// ARGV: the peer's key prefix, its limiter clock (ms), then per spend its kind (`w`, `b`),
/// its two numbers, its key without the prefix and its count (`domain::ratelimit::shared::
/// Spend`). A window counter is incremented by the count and kept for its time to live; a
/// burst bucket is refilled to now (the edge script's rule, `edge/core/src/ratelimit.rs`)
/// and loses the count in tokens. Tokens this region already gave out are not taken twice:
/// what the bucket lacks becomes a **debt**, kept as a refill clock in the future (no token
/// comes back until it is paid, `domain::ratelimit::Bucket` reads it so with no change), so
/// two regions refilling side by side still give out one region's refills, not two.
/// Returns the spends applied.
pub(crate) const APPLY: &str = r"
local prefix, now = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 5 do
  local kind, a, b = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local key, n = prefix .. ARGV[i + 3], tonumber(ARGV[i + 4])
  if kind == 'w' then
    redis.call('INCRBY', key, n)
    redis.call('PEXPIRE', key, a)
  else
    local cap, every = a, b
    local tokens, at = cap, now
    local t = redis.call('HMGET', key, 't', 'r')
    if t[1] and t[2] then
      tokens, at = tonumber(t[1]), tonumber(t[2])
      local k = 0
      if now > at then k = math.floor((now - at) / every) end
      tokens = math.min(cap, tokens + k)
      if tokens >= cap then at = now else at = at + k * every end
    end
    if tokens >= n then
      tokens = tokens - n
    else
      at = at + (n - tokens) * every
      tokens = 0
    end
    redis.call('HSET', key, 't', tokens, 'r', at)
    redis.call('PEXPIRE', key, math.max(1, at + (cap - tokens) * every - now))
  end
end
return (#ARGV - 2) / 5
";

/// Spends per [`APPLY`] request: keeps a request well under Upstash's size limit when many
/// clients were active in one interval.
const CHUNK: usize = 500;

/// The longest one drain-and-apply may take before it is abandoned (its spends lost).
const CYCLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until `stop`, then drains once more.
pub(crate) async fn run(state: AppState, stop: CancellationToken) {
    let Some((config, client)) = state.edge_gen.rest().cloned() else {
        return;
    };
    if config.peers.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(config.limit_sync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        if state.leadership.is_leader() {
            cycle(&state, &config, &client).await;
        }
    }
    if state.leadership.is_leader() {
        cycle(&state, &config, &client).await;
    }
}

/// One drain of every served region's outbox into every peer, timed.
async fn cycle(state: &AppState, config: &EdgeCacheConfig, client: &reqwest::Client) {
    let started = Instant::now();
    // Every peer's series exist (at 0) before the first spend: an alert's `rate()` sees a copy
    // that never succeeds, and a scrape shows the job runs. Each cycle, not once at start: the
    // metrics recorder may be installed after the jobs start.
    for peer in &config.peers {
        for result in ["ok", "error"] {
            metrics::counter!("edge_limit_sync_spends_total", "peer" => peer.region.code(), "result" => result)
                .increment(0);
        }
    }
    for region in state.config.regions.clone() {
        match tokio::time::timeout(CYCLE_TIMEOUT, sync(config, client, region)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %region, "rate-limit outbox drain failed; its spends stay for the next cycle");
                metrics::counter!("edge_limit_sync_cycles_total", "result" => "error").increment(1);
            }
            Err(_) => {
                tracing::warn!(%region, "rate-limit sync timed out; spends drained in it are lost");
                metrics::counter!("edge_limit_sync_cycles_total", "result" => "timeout")
                    .increment(1);
            }
        }
    }
    metrics::histogram!("edge_limit_sync_seconds").record(started.elapsed().as_secs_f64());
}

/// Sends one command to an Upstash REST endpoint and returns its `result`.
async fn call(
    client: &reqwest::Client,
    url: &str,
    token: &crate::config::Secret,
    command: &Value,
) -> anyhow::Result<Value> {
    let mut reply: Value = client
        .post(url)
        .bearer_auth(String::from_utf8_lossy(&token.0))
        .json(command)
        .send()
        .await?
        .json()
        .await?;
    match reply.get_mut("result") {
        Some(result) => Ok(result.take()),
        None => anyhow::bail!("Upstash answered {reply}"),
    }
}

/// The spends in a drained outbox (`[field, count, field, count, …]`), with how many fields
/// were not spends (never applied).
pub(crate) fn spends(drained: &Value) -> (Vec<(Spend, u64)>, usize) {
    let items = drained.as_array().map_or(&[][..], Vec::as_slice);
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut bad = 0;
    for pair in items.chunks(2) {
        let parsed = match pair {
            [Value::String(field), count] => Spend::parse(field).zip(match count {
                Value::String(s) => s.parse::<u64>().ok(),
                other => other.as_u64(),
            }),
            _ => None,
        };
        match parsed {
            Some((spend, n)) if n > 0 => out.push((spend, n)),
            _ => bad += 1,
        }
    }
    (out, bad)
}

/// The [`APPLY`] commands for `peer` at `now_ms` (wall clock; the peer's limiter clock is
/// derived here).
pub(crate) fn apply_commands(peer: &EdgePeer, spends: &[(Spend, u64)], now_ms: u64) -> Vec<Value> {
    spends
        .chunks(CHUNK)
        .map(|chunk| {
            let mut cmd = vec![
                json!("EVAL"),
                json!(APPLY),
                json!("0"),
                json!(peer.key_prefix),
                json!(shared::clock(peer.region, now_ms).to_string()),
            ];
            for (spend, n) in chunk {
                let (kind, a, b, key) = match spend {
                    Spend::Window { ttl_ms, key } => ("w", *ttl_ms, 0, key),
                    Spend::Bucket {
                        capacity,
                        refill_ms,
                        key,
                    } => ("b", *capacity, *refill_ms, key),
                };
                cmd.extend([
                    json!(kind),
                    json!(a.to_string()),
                    json!(b.to_string()),
                    json!(key),
                    json!(n.to_string()),
                ]);
            }
            Value::Array(cmd)
        })
        .collect()
}

/// Drains `region`'s outbox and applies it to every peer.
async fn sync(
    config: &EdgeCacheConfig,
    client: &reqwest::Client,
    region: Region,
) -> anyhow::Result<()> {
    let outbox = shared::outbox_key(&config.key_prefix, region);
    let drained = call(
        client,
        &config.url,
        &config.token,
        &json!(["EVAL", DRAIN, "1", outbox]),
    )
    .await?;
    let (spends, bad) = spends(&drained);
    if bad > 0 {
        tracing::warn!(%region, bad, "rate-limit outbox held fields that are not spends; skipped");
        metrics::counter!("edge_limit_sync_spends_total", "result" => "skipped")
            .increment(bad as u64);
    }
    if spends.is_empty() {
        return Ok(());
    }
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let sends = config.peers.iter().map(|peer| {
        let spends = &spends;
        async move {
            let mut result = "ok";
            for cmd in apply_commands(peer, spends, now_ms) {
                if let Err(e) = call(client, &peer.url, &peer.token, &cmd).await {
                    tracing::warn!(error = %e, peer = %peer.region, "rate-limit spends not applied to a peer; lost (limits fail open)");
                    result = "error";
                    break;
                }
            }
            metrics::counter!("edge_limit_sync_spends_total", "peer" => peer.region.code(), "result" => result)
                .increment(spends.len() as u64);
        }
    });
    futures_util::future::join_all(sends).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_outbox_reads_as_spends_and_anything_else_is_skipped() {
        let drained = json!([
            "w 120000 0 rl:user:ab:7",
            "3",
            "b 68 6000 rlb:user:ab",
            "1",
            "gen:EUW",
            "1",
            "w 120000 0 rl:ip:cd:7",
            "0",
            "w 120000 0 rl:ip:cd:8"
        ]);
        let (spends, bad) = spends(&drained);
        assert_eq!(
            spends,
            vec![
                (
                    Spend::Window {
                        ttl_ms: 120_000,
                        key: "rl:user:ab:7".into()
                    },
                    3
                ),
                (
                    Spend::Bucket {
                        capacity: 68,
                        refill_ms: 6_000,
                        key: "rlb:user:ab".into()
                    },
                    1
                ),
            ]
        );
        assert_eq!(bad, 3);
    }

    #[test]
    fn spends_are_sent_in_chunks_under_the_peers_prefix_and_clock() {
        let peer = EdgePeer {
            region: Region::Eun,
            url: "https://eun.example".into(),
            token: crate::config::Secret(b"t".to_vec()),
            key_prefix: "eun:".into(),
        };
        let spend = Spend::Window {
            ttl_ms: 120_000,
            key: "rl:user:ab:7".into(),
        };
        let spends = vec![(spend, 2); CHUNK + 1];
        let cmds = apply_commands(&peer, &spends, 1_000_000);
        assert_eq!(cmds.len(), 2);
        let last = cmds[1].as_array().map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            last[3..],
            [
                json!("eun:"),
                json!((1_000_000 - shared::STAGGER_MS).to_string()),
                json!("w"),
                json!("120000"),
                json!("0"),
                json!("rl:user:ab:7"),
                json!("2")
            ]
        );
    }
}
