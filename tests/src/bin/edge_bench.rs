//! `edge-bench`: requests per second and latency percentiles of a *cached* quote through each
//! edge runtime (workerd and wasmtime), measured with `wrk`.
//!
//! ```sh
//! scripts/edge.sh build
//! cargo run -p e2e --release --bin edge-bench -- [seconds] [connections]
//! ```
//!
//! It starts the same stack as the edge suite (a real origin on a scratch database, the
//! Upstash REST gateway in front of the local Redis, the worker in its runtime), fills the
//! edge cache with one quote, then lets `wrk` POST that same quote request: every request
//! verifies the JWT, runs the rate-limit script with the cache-generation read (one Upstash
//! round trip) and reads the cached entry (a second one) — the origin is not involved. The
//! rate limits are raised for the run, so it measures the edge, not the 429 path.

use std::process::Command;

use anyhow::{bail, Context};
use e2e::edge::{header, EdgeStack, Runtime};
use e2e::{token, window, TestResult};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

async fn scratch_database() -> TestResult<(PgPool, String, String)> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("edge_bench_{}", std::process::id());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await?;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&format!("{base}/{name}"))
        .await?;
    Ok((pool, url, name))
}

async fn bench(pool: PgPool, runtime: Runtime, secs: u32, conns: u32) -> TestResult {
    let stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_USER_LIMIT_PER_MIN", "1000000000"),
            ("EDGE_IP_LIMIT_PER_MIN", "1000000000"),
        ],
    )
    .await?;
    let result = async {
        let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
        let w = window(2, 3);
        let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
        let t = token("bench-user");
        let first = stack.post("/v1/quotes", Some(&t), &body, None).await?;
        let second = stack.post("/v1/quotes", Some(&t), &body, None).await?;
        if first.status != 201 || header(&second, "x-edge-cache") != Some("hit") {
            bail!("the quote is not cached at the edge: {first:?} / {second:?}");
        }
        let script = std::env::temp_dir().join(format!("edge-bench-{}.lua", std::process::id()));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = [[{body}]]\n\
                 wrk.headers[\"content-type\"] = \"application/json\"\n\
                 wrk.headers[\"authorization\"] = \"Bearer {t}\"\n"
            ),
        )?;
        let out = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{conns}"),
                &format!("-d{secs}s"),
                "--latency",
                "-s",
            ])
            .arg(&script)
            .arg(format!("{}/v1/quotes", stack.base))
            .output()
            .context("run wrk (apt-get install wrk)")?;
        let _ = std::fs::remove_file(&script);
        println!(
            "== cached quote through {} ({} s, {conns} connections)\n{}",
            runtime.name(),
            secs,
            String::from_utf8_lossy(&out.stdout)
        );
        let after = stack.post("/v1/quotes", Some(&t), &body, None).await?;
        println!(
            "after the run: HTTP {} x-edge-cache={:?}",
            after.status,
            header(&after, "x-edge-cache")
        );
        Ok(())
    }
    .await;
    stack.stop().await?;
    result
}

#[tokio::main]
async fn main() -> TestResult {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let conns: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let (pool, url, name) = scratch_database().await?;
    let mut result = Ok(());
    for runtime in Runtime::ALL {
        if let Err(e) = bench(pool.clone(), runtime, secs, conns).await {
            result = Err(e);
            break;
        }
    }
    pool.close().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&admin)
        .await?;
    result
}
