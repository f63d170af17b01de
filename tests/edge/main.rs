//! The edge suite: every scenario runs against the Cloudflare worker in workerd (miniflare)
//! and the Spin component under `wasmtime serve`, each in front of a real origin, PostgreSQL,
//! Redis (through the Upstash REST gateway). Build the workers first: `scripts/edge.sh build`.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use e2e::edge::{header, platform_address, EdgeStack, Runtime};
use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Runs `$scenario(pool, runtime)` once per runtime, as two tests.
macro_rules! on_both_runtimes {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[sqlx::test(migrations = "../migrations")]
            async fn on_cloudflare_workerd(pool: PgPool) -> TestResult {
                super::$scenario(pool, Runtime::Cloudflare).await
            }

            #[sqlx::test(migrations = "../migrations")]
            async fn on_spin_under_wasmtime(pool: PgPool) -> TestResult {
                super::$scenario(pool, Runtime::Spin).await
            }
        }
    };
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn search_path((start, end): (DateTime<Utc>, DateTime<Utc>)) -> String {
    format!(
        "/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&start={}&end={}&limit=100",
        rfc(start),
        rfc(end)
    )
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["vehicle_id"].as_str().map(str::to_owned))
        .collect()
}

fn cache_state(reply: &Reply) -> &str {
    header(reply, "x-edge-cache").unwrap_or("")
}

/// Waits, if needed, so that the next few seconds fall inside one rate-limit window (the
/// sliding estimate then counts every request of the test at full weight).
async fn inside_one_window(needed: Duration) {
    let now = Utc::now().timestamp_millis() as u64;
    let left = 60_000 - now % 60_000;
    if u128::from(left) < needed.as_millis() {
        tokio::time::sleep(Duration::from_millis(left + 100)).await;
    }
}

/// Runs `f` and returns its reply with the Upstash requests and commands it caused, counted at
/// the gateway (`round_trips`, `deny_list`).
pub(crate) async fn counted<F, Fut>(
    stack: &EdgeStack,
    f: F,
) -> TestResult<(Reply, u64, std::collections::BTreeMap<String, u64>)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = TestResult<Reply>>,
{
    let (requests, commands) = (stack.redis_requests(), stack.redis_commands());
    let reply = f().await?;
    let after = stack.redis_commands();
    let diff = after
        .into_iter()
        .filter_map(|(name, n)| {
            let d = n - commands.get(&name).copied().unwrap_or(0);
            (d > 0).then_some((name, d))
        })
        .collect();
    Ok((reply, stack.redis_requests() - requests, diff))
}

/// Polls `f` until its reply has `status`, for at most 5 s; returns the reply and how long.
pub(crate) async fn within_5s<F, Fut>(status: u16, mut f: F) -> TestResult<(Reply, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Reply>>,
{
    let start = std::time::Instant::now();
    loop {
        let reply = f().await?;
        if reply.status.as_u16() == status {
            return Ok((reply, start.elapsed()));
        }
        if start.elapsed() > Duration::from_secs(5) {
            anyhow::bail!(
                "still {} after 5 s (wanted {status}): {}",
                reply.status,
                reply.body
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// One module per capability; every scenario runs on both runtimes (`on_both_runtimes!`).
// Issue 15: the edge's JSON access line.
mod access_log;
mod api_keys;
mod authentication;
// Issue 17: a burst past the runtime's capacity is answered, never dropped.
mod burst;
// Issue 19: bursts to five times the rate for a few seconds, then the sliding window.
mod burst_allowance;
// Issue 19: networks and users ops deny, refused at every edge within seconds.
mod deny_list;
mod early_refusals;
// Issue 19: only edges reach the origin; true client addresses.
mod front_door;
mod invalidation;
mod lifecycle;
mod origin_down;
mod rate_limits;
// Issue 17: Upstash requests per cached read and per blocked request, counted at the gateway.
mod round_trips;
// Security at the edge (issue 8): JWT attacks and the anonymous column of the authz matrix.
mod security;
// Issue 19: limits shared across regions (the script's outbox and the origin's copy).
mod shared_limits;
mod slow_origin;
// Issue 15: traces from the client through the edge to the origin's spans and Kafka.
mod traces;
