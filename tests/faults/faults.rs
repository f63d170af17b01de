//! The faults, injected one after the other: process kills, restarts, unreachable and slow
//! links, terminated connections, an overload burst.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DurationRound, Utc};
use e2e::fault_proxy::Mode;
use e2e::{token, TestResult};

use crate::cluster::Cluster;
use crate::ORIGIN_PORTS;

/// Floods both origins with searches for `lasting`; returns (shed 503s, 2xx, other answers,
/// milliseconds from the burst's end to the first 200 of a fresh search).
async fn overload_burst(lasting: Duration) -> TestResult<(usize, usize, usize, u128)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let start =
        (Utc::now() + chrono::Duration::days(3)).duration_trunc(chrono::Duration::hours(1))?;
    let path = format!(
        "/v1/vehicles/search?lat=50.11&lon=8.68&radius_m=20000&start={}&end={}",
        start.format("%Y-%m-%dT%H:%M:%SZ"),
        (start + chrono::Duration::hours(2)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let until = Instant::now() + lasting;
    let mut tasks = Vec::new();
    for i in 0..160usize {
        let (http, url) = (
            http.clone(),
            format!("http://127.0.0.1:{}{path}", ORIGIN_PORTS[i % 2]),
        );
        tasks.push(tokio::spawn(async move {
            let (mut shed, mut ok, mut other) = (0usize, 0usize, 0usize);
            while Instant::now() < until {
                match http.get(&url).bearer_auth(token("burst")).send().await {
                    Ok(r) if r.status().as_u16() == 503 => shed += 1,
                    Ok(r) if r.status().is_success() => ok += 1,
                    _ => other += 1,
                }
            }
            (shed, ok, other)
        }));
    }
    let (mut shed, mut ok, mut other) = (0, 0, 0);
    for t in tasks {
        let (s, o, x) = t.await?;
        shed += s;
        ok += o;
        other += x;
    }
    let ended = Instant::now();
    loop {
        let r = http
            .get(format!("http://127.0.0.1:{}{path}", ORIGIN_PORTS[0]))
            .bearer_auth(token("burst"))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 200) || ended.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((shed, ok, other, ended.elapsed().as_millis()))
}

/// One fault: what it is, and when it ran (relative to the run's start).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Injected {
    fault: &'static str,
    at_ms: u128,
    lasted_ms: u128,
    note: String,
}

/// Injects every fault once, one after the other, logging each.
pub(crate) async fn inject_all(
    c: &mut Cluster,
    t0: Instant,
    log: &mut Vec<Injected>,
) -> TestResult {
    let hold = Duration::from_secs(3);
    let gap = Duration::from_secs(3);
    let mut note = String::new();
    macro_rules! fault {
        ($name:expr, $body:block) => {{
            let at = t0.elapsed();
            let started = Instant::now();
            $body
            log.push(Injected { fault: $name, at_ms: at.as_millis(), lasted_ms: started.elapsed().as_millis(), note: std::mem::take(&mut note) });
            eprintln!("[faults] {} at {:?}", $name, at);
            tokio::time::sleep(gap).await;
        }};
    }
    fault!("origin SIGKILL + restart", {
        let mut o = c.origins[0].lock().await;
        o.kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        o.up().await?;
    });
    fault!("redis restart", {
        c.redis.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.redis.up().await?;
    });
    fault!("redis unreachable (half-open)", {
        c.redis_proxy.set(Mode::Blackhole);
        tokio::time::sleep(hold).await;
        c.redis_proxy.set(Mode::Reset);
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.redis_proxy.set(Mode::Pass);
    });
    fault!("broker SIGKILL + restart", {
        c.broker.kill();
        tokio::time::sleep(hold).await;
        c.broker.up().await?;
    });
    fault!("pg_terminate_backend of every origin connection", {
        for _ in 0..3 {
            sqlx::query(
                "select pg_terminate_backend(pid) from pg_stat_activity
                  where pid <> pg_backend_pid() and datname = 'postgres' and backend_type = 'client backend'",
            )
            .execute(&c.pool)
            .await
            .context("terminate backends")?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    fault!("postgres restart", {
        c.pool.close().await;
        c.pg.down()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.pg.up().await?;
        c.pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&c.pg.url("postgres"))
            .await?;
    });
    fault!("postgres link: 300 ms latency", {
        c.pg_proxy.set(Mode::Latency(300));
        tokio::time::sleep(hold).await;
        c.pg_proxy.set(Mode::Pass);
    });
    fault!("postgres link: resets", {
        for _ in 0..3 {
            c.pg_proxy.set(Mode::Reset);
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.pg_proxy.set(Mode::Pass);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    });
    fault!("postgres link: half-open", {
        c.pg_proxy.set(Mode::Blackhole);
        tokio::time::sleep(hold).await;
        c.pg_proxy.set(Mode::Reset);
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.pg_proxy.set(Mode::Pass);
    });
    fault!("overload: 160 concurrent searches past MAX_IN_FLIGHT=24", {
        let (shed, ok, other, p_recover) = overload_burst(hold).await?;
        note = format!(
            "{shed} shed (503 overloaded), {ok} served, {other} other; first 200 after the burst in {p_recover} ms"
        );
        anyhow::ensure!(shed > 0, "the burst was never shed: {note}");
        anyhow::ensure!(p_recover < 2000, "no recovery within 2 s: {note}");
    });
    fault!("redis link: 300 ms latency then resets", {
        c.redis_proxy.set(Mode::Latency(300));
        tokio::time::sleep(hold).await;
        c.redis_proxy.set(Mode::Reset);
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.redis_proxy.set(Mode::Pass);
    });
    Ok(())
}
