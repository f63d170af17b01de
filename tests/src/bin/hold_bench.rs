//! `hold-bench`: how many holds per second the origin commits, over distinct vehicles.
//!
//! A deliberately simple closed-loop load (the open-loop load generator is a separate tool):
//! it finds the fleet through the search API, prepares one quote per (vehicle, day) so that no
//! two holds contend, then posts all holds with a fixed concurrency and reports successful
//! holds per second and latency percentiles. Every hold is a full API call: JWT, quote-token
//! verification, idempotency key, booking + history + outbox rows in one transaction.
//!
//! `mixed` mode replays the design's read-heavy mix instead (95 % reads: searches near the two
//! city centres and quotes, users and vehicles drawn with a skew so popular ones repeat; 5 %
//! holds) and reports the L1/L2 cache hit ratios from the origin's `/metrics`.
//!
//! Usage: `hold-bench <base-url> <requests> <concurrency> [holds|mixed]`; JWT settings from
//! `JWT_HS256_SECRET`, `JWT_ISSUER`, `JWT_AUDIENCE` (the dev defaults of `scripts/dev.sh`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DurationRound, Utc};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn jwt(user: &str) -> anyhow::Result<String> {
    let now = Utc::now().timestamp();
    let claims = domain::auth::Claims {
        sub: user.to_owned(),
        iss: env_or("JWT_ISSUER", "booking-dev"),
        aud: Value::String(env_or("JWT_AUDIENCE", "booking-api")),
        exp: now + 3600,
        nbf: None,
        iat: Some(now),
        roles: vec![],
        membership: None,
    };
    let secret = env_or("JWT_HS256_SECRET", "dev-only-secret-change-me-0123456789");
    domain::auth::sign_hs256(&claims, secret.as_bytes(), None).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn fleet(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<Vec<String>> {
    let start =
        (Utc::now() + chrono::Duration::days(1)).duration_trunc(chrono::Duration::hours(1))?;
    let end = start + chrono::Duration::hours(1);
    let mut ids = Vec::new();
    for (lat, lon) in [(50.1109, 8.6821), (59.3293, 18.0686)] {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "{base}/v1/vehicles/search?lat={lat}&lon={lon}&radius_m=50000&limit=100&start={}&end={}",
                start.format("%Y-%m-%dT%H:%M:%SZ"),
                end.format("%Y-%m-%dT%H:%M:%SZ")
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = client
                .get(&url)
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            for item in page["items"].as_array().context("search items")? {
                ids.push(
                    item["vehicle_id"]
                        .as_str()
                        .context("vehicle id")?
                        .to_owned(),
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
    }
    Ok(ids)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let base = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let holds: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3000);
    let concurrency: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let token = jwt("bench")?;
    let vehicles = fleet(&client, &base, &token).await?;
    ensure!(
        !vehicles.is_empty(),
        "no vehicles found: seed the demo fleet first"
    );
    if args.get(3).map(String::as_str) == Some("mixed") {
        return mixed(&client, &base, &vehicles, holds, concurrency).await;
    }
    let day0 =
        (Utc::now() + chrono::Duration::days(2)).duration_trunc(chrono::Duration::days(1))?;
    let bench_run = Utc::now().timestamp() % 97;
    let plans: Vec<(String, String, chrono::DateTime<Utc>)> = (0..holds)
        .map(|i| {
            let vehicle = vehicles[i % vehicles.len()].clone();
            let day = (i / vehicles.len()) as i64;
            // Distinct (vehicle, day) pairs; the hour shifts per run so reruns do not collide.
            let start =
                day0 + chrono::Duration::days(day) + chrono::Duration::hours(bench_run % 20);
            (format!("bench-{}", i % 500), vehicle, start)
        })
        .collect();
    eprintln!(
        "hold-bench: {} vehicles; preparing {holds} quotes",
        vehicles.len()
    );
    let quotes: Vec<anyhow::Result<(String, String)>> = stream::iter(plans)
        .map(|(user, vehicle, start)| {
            let client = &client;
            let base = &base;
            async move {
                let token = jwt(&user)?;
                let reply: Value = client
                    .post(format!("{base}/v1/quotes"))
                    .bearer_auth(&token)
                    .json(&json!({ "vehicle_id": vehicle, "start": start, "end": start + chrono::Duration::hours(2) }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let quote = reply["quote_token"].as_str().context("quote token")?.to_owned();
                Ok((token, quote))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let quotes: Vec<(String, String)> = quotes.into_iter().filter_map(Result::ok).collect();
    eprintln!(
        "hold-bench: {} quotes; posting holds with concurrency {concurrency}",
        quotes.len()
    );
    let started = Instant::now();
    let results: Vec<(u16, Duration)> = stream::iter(quotes)
        .map(|(token, quote)| {
            let client = &client;
            let base = &base;
            async move {
                let t0 = Instant::now();
                let status = client
                    .post(format!("{base}/v1/bookings"))
                    .bearer_auth(&token)
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(&json!({ "quote_token": quote }))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                (status, t0.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = results.iter().filter(|r| r.0 == 201).count();
    let mut latencies: Vec<Duration> = results.iter().map(|r| r.1).collect();
    latencies.sort();
    let mut by_status = std::collections::BTreeMap::new();
    for (status, _) in &results {
        *by_status.entry(*status).or_insert(0usize) += 1;
    }
    println!(
        "holds_ok {ok} in {elapsed:.2}s = {:.1} holds/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; statuses {by_status:?}",
        ok as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    Ok(())
}

/// Sum of a Prometheus counter's samples whose labels contain all of `labels`.
async fn counter(client: &reqwest::Client, base: &str, name: &str, labels: &[&str]) -> f64 {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn cache_counts(client: &reqwest::Client, base: &str) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (i, (layer, result)) in [("l1", "hit"), ("l1", "miss"), ("l2", "hit"), ("l2", "miss")]
        .iter()
        .enumerate()
    {
        out[i] = counter(
            client,
            base,
            "cache_requests_total",
            &[
                &format!("layer=\"{layer}\""),
                &format!("result=\"{result}\""),
            ],
        )
        .await;
    }
    out
}

/// A skewed index in `0..n`: low indexes are drawn far more often (u² over a uniform u).
fn skewed(rng: &mut impl rand::Rng, n: usize) -> usize {
    let u: f64 = rng.gen();
    ((u * u) * n as f64) as usize % n.max(1)
}

enum Op {
    Search(String),
    Quote(String, Value),
    Hold(String, Value),
}

async fn mixed(
    client: &reqwest::Client,
    base: &str,
    vehicles: &[String],
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let day0 =
        (Utc::now() + chrono::Duration::days(2)).duration_trunc(chrono::Duration::days(1))?;
    let windows: Vec<_> = (0..4)
        .map(|d| {
            let s = day0 + chrono::Duration::days(d) + chrono::Duration::hours(9);
            (s, s + chrono::Duration::hours(3))
        })
        .collect();
    let centres = [(50.1109, 8.6821), (59.3293, 18.0686)];
    let mut ops = Vec::with_capacity(requests);
    for i in 0..requests {
        let r: f64 = rng.gen();
        let (s, e) = windows[skewed(&mut rng, windows.len())];
        let user = format!("mixed-{}", skewed(&mut rng, 200));
        if r < 0.475 {
            let (lat, lon) = centres[rng.gen_range(0..2)];
            ops.push(Op::Search(format!(
                "{base}/v1/vehicles/search?lat={lat}&lon={lon}&radius_m=5000&limit=20&start={}&end={}",
                s.format("%Y-%m-%dT%H:%M:%SZ"),
                e.format("%Y-%m-%dT%H:%M:%SZ")
            )));
        } else if r < 0.95 {
            let vehicle = &vehicles[skewed(&mut rng, vehicles.len())];
            ops.push(Op::Quote(
                user,
                json!({ "vehicle_id": vehicle, "start": s, "end": e }),
            ));
        } else {
            // Holds on days of their own, so they rarely collide with each other.
            let vehicle = &vehicles[i % vehicles.len()];
            let s = day0 + chrono::Duration::days(10 + (i / vehicles.len()) as i64);
            ops.push(Op::Hold(
                user,
                json!({ "vehicle_id": vehicle, "start": s, "end": s + chrono::Duration::hours(2) }),
            ));
        }
    }
    let before = cache_counts(client, base).await;
    let started = Instant::now();
    let statuses: Vec<u16> = stream::iter(ops)
        .map(|op| async move {
            let send = |req: reqwest::RequestBuilder| async move {
                req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            };
            match op {
                Op::Search(url) => {
                    send(
                        client
                            .get(url)
                            .bearer_auth(jwt("searcher").unwrap_or_default()),
                    )
                    .await
                }
                Op::Quote(user, body) => {
                    let t = jwt(&user).unwrap_or_default();
                    send(
                        client
                            .post(format!("{base}/v1/quotes"))
                            .bearer_auth(t)
                            .json(&body),
                    )
                    .await
                }
                Op::Hold(user, body) => {
                    let t = jwt(&user).unwrap_or_default();
                    let quote: Value = match client
                        .post(format!("{base}/v1/quotes"))
                        .bearer_auth(&t)
                        .json(&body)
                        .send()
                        .await
                    {
                        // A refused quote (the vehicle is taken) ends the attempt: count its status.
                        Ok(r) if !r.status().is_success() => return r.status().as_u16(),
                        Ok(r) => r.json().await.unwrap_or_default(),
                        Err(_) => return 0,
                    };
                    send(
                        client
                            .post(format!("{base}/v1/bookings"))
                            .bearer_auth(t)
                            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                            .json(&json!({ "quote_token": quote["quote_token"] })),
                    )
                    .await
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = cache_counts(client, base).await;
    let d: Vec<f64> = (0..4).map(|i| after[i] - before[i]).collect();
    let ratio = |h: f64, m: f64| if h + m > 0.0 { h / (h + m) } else { 0.0 };
    let mut by_status = std::collections::BTreeMap::new();
    for s in &statuses {
        *by_status.entry(*s).or_insert(0usize) += 1;
    }
    println!(
        "mixed {} requests in {elapsed:.2}s = {:.1} req/s; statuses {by_status:?}",
        statuses.len(),
        statuses.len() as f64 / elapsed
    );
    println!(
        "cache L1 hit ratio {:.3} ({} hits / {} misses); L2 hit ratio {:.3} ({} hits / {} misses)",
        ratio(d[0], d[1]),
        d[0],
        d[1],
        ratio(d[2], d[3]),
        d[2],
        d[3]
    );
    Ok(())
}
