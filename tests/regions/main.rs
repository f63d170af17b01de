//! The two-region suite: EUW (Frankfurt) and EUN (Sweden) each with its own PostgreSQL
//! cluster, Redis and origin (`ORIGIN_REGIONS` = that region), and a Frankfurt and a Sweden
//! edge in front of both, on each runtime (workerd and wasmtime). Between an edge and the other
//! region's origin every call pays the inter-region round trip (`REGION_RTT_MS`, default 25 ms)
//! through a userspace delay line: this kernel has no `netem` (see `e2e::latency_proxy`).
//!
//! Build first: `cargo build -p origin` (the origins are processes, so a test can SIGKILL one)
//! and `scripts/edge.sh build`; the broker at `KAFKA_BROKERS` must run (`scripts/broker.sh`).
//! Scenarios, one module each, every one on both runtimes:
//! * `journeys`: cross-region searches equal the home origin's pages; bookings through the
//!   other region's edge land in their home cluster; the user's list merges both regions across
//!   pages; events come from the home region's relay with the region; an origin asked about the
//!   other region answers 421; a deny-list entry kept by one region is enforced by both edges;
//!   the added latency of a cross-region booking is measured.
//! * `boundary`: a search circle across the border of two touching service areas merges both
//!   regions' vehicles in ranking order.
//! * `outage`: the EUN origin SIGKILLed under traffic; EUW unaffected, EUN stale or 503,
//!   lists partial, every acknowledged write there exactly once after the restart.
//! * `shared_limits`: each edge with a database of its own; a client alternating between the
//!   edges for a minute gets its limit plus at most the stated overshoot.

use chrono::{DateTime, SecondsFormat, Utc};
use e2e::edge::{header, Runtime};
use e2e::regions::{Http, TwoRegions, WorldOptions, LATENCY_MECHANISM};
use e2e::*;
use serde_json::{json, Value};

/// Runs `$scenario(runtime)` once per runtime, as two tests.
macro_rules! on_both_runtimes {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_cloudflare_workerd() -> TestResult {
                super::$scenario(Runtime::Cloudflare).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_spin_under_wasmtime() -> TestResult {
                super::$scenario(Runtime::Spin).await
            }
        }
    };
}

/// Frankfurt Hbf and Stockholm Centralen: the middle of each demo fleet.
const FRANKFURT: (f64, f64) = (50.1071, 8.6638);
const STOCKHOLM: (f64, f64) = (59.3303, 18.0586);

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A search path around `(lat, lon)` for a window.
fn search_path(
    version: &str,
    (lat, lon): (f64, f64),
    radius_m: u32,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    limit: u32,
) -> String {
    format!(
        "/{version}/vehicles/search?lat={lat}&lon={lon}&radius_m={radius_m}&start={}&end={}&limit={limit}",
        rfc(start),
        rfc(end)
    )
}

/// Every page of a search or list (following `next_cursor`), as the pages' item arrays.
async fn pages(http: &Http, first: &str, token: &str) -> TestResult<Vec<Vec<Value>>> {
    let mut out = Vec::new();
    let mut path = first.to_owned();
    for _ in 0..50 {
        let reply = http.get(&path, Some(token)).await?;
        anyhow::ensure!(reply.status == 200, "{path} via {}: {reply:?}", http.base);
        out.push(reply.body["items"].as_array().cloned().unwrap_or_default());
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("{first}&cursor={}", query_escape(cursor)),
            None => return Ok(out),
        }
    }
    anyhow::bail!("{first}: more than 50 pages")
}

/// Percent-encodes a query value (a cursor may hold `+`, `/`, `=`).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The region of a public id (`veh_eun_…`, `bkg_euw_…`).
fn region_of(id: &str) -> String {
    id.split('_').nth(1).unwrap_or("").to_uppercase()
}

/// Quote `vehicle` for `window` through `http`, then hold it with a fresh Idempotency-Key;
/// the hold reply (any status) and the key.
async fn quote_and_hold(
    http: &Http,
    user: &str,
    vehicle: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<(Reply, String)> {
    let t = token(user);
    let quote = http
        .post(
            "/v1/quotes",
            Some(&t),
            &json!({ "vehicle_id": vehicle, "start": window.0, "end": window.1 }),
            None,
        )
        .await?;
    anyhow::ensure!(quote.status == 201, "quote {vehicle}: {quote:?}");
    let key = uuid::Uuid::new_v4().to_string();
    let hold = http
        .post(
            "/v1/bookings",
            Some(&t),
            &json!({ "quote_token": quote.body["quote_token"] }),
            Some(&key),
        )
        .await?;
    Ok((hold, key))
}

mod boundary;
mod journeys;
mod outage;
mod shared_limits;
