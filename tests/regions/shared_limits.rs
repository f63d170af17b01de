//! Limits that hold across regions: each edge has a database of its own and counts there; the
//! origins copy each region's counts to the other (`domain::ratelimit::shared`). A client
//! alternating between the Frankfurt and Sweden edges as fast as it can for a minute gets its
//! limit plus at most the stated overshoot.
//!
//! "Its limit" is what the same requests, at the same moments, would get from one limiter:
//! the test replays the client's send times through `domain::ratelimit::decide` (window and
//! burst, the rule both edges apply). Without the sharing the client would get about twice
//! that; the stated overshoot — what the client sends to the other region in
//! `domain::ratelimit::shared::STAGGER_MS` — stays well below it, so the test tells the two
//! apart, and it checks that the copy ran and that both edges admitted their part.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use domain::ratelimit::shared::STAGGER_MS;
use domain::ratelimit::{decide, Bucket, Burst, Paid, RateLimit};

use super::*;

const LIMIT: u32 = 120;
const BURST_SECS: u64 = 10;
const RUN: Duration = Duration::from_secs(60);

/// How many of `sends` (ms since the epoch, in order) one limiter admits.
fn one_limiter_admits(sends: &[u64]) -> u64 {
    let limit = RateLimit {
        limit: LIMIT,
        window_ms: 60_000,
    };
    let burst = Burst::new(&limit, BURST_SECS);
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut bucket: Option<Bucket> = None;
    let mut admitted = 0;
    for &t in sends {
        let index = t / limit.window_ms;
        let prev = counts.get(&index.wrapping_sub(1)).copied().unwrap_or(0);
        let curr = counts.get(&index).copied().unwrap_or(0);
        let verdict = decide(&limit, burst.as_ref(), prev, curr, t, bucket);
        match verdict.paid {
            Some(Paid::Window) => *counts.entry(index).or_default() += 1,
            Some(Paid::Bucket) => bucket = verdict.bucket,
            None => {}
        }
        if verdict.paid.is_some() {
            admitted += 1;
        }
    }
    admitted
}

/// A counter of the origin's `/metrics`, summed over the label sets that contain `labels`.
async fn metric(http: &Http, name: &str, labels: &str) -> TestResult<f64> {
    let text = http
        .client
        .get(format!("{}/metrics", http.base))
        .send()
        .await?
        .text()
        .await?;
    Ok(e2e::metric_sum(&text, name, labels))
}

async fn a_client_alternating_between_the_regions_gets_its_limit_plus_the_stated_overshoot(
    runtime: Runtime,
) -> TestResult {
    let options = WorldOptions {
        edge_database_per_region: true,
        edge_vars: [
            ("EDGE_USER_LIMIT_PER_MIN", LIMIT.to_string()),
            ("EDGE_RATE_LIMIT_BURST_SECS", BURST_SECS.to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec(),
        ..WorldOptions::default()
    };
    let world = TwoRegions::start(runtime, options).await?;
    let user = format!("alternating-{}", uuid::Uuid::new_v4().simple());
    let t = token(&user);
    let w = window(4, 2);
    let path = search_path("v1", FRANKFURT, 2_000, w, 5);
    let edges = [&world.edge_euw, &world.edge_eun];

    let started = Instant::now();
    let mut sends = Vec::new();
    let mut admitted = [0u64; 2];
    let mut refused = [0u64; 2];
    let mut i = 0usize;
    // The client's pace while everything is admitted (until the first 429): the pace at which
    // the other region can admit it before the counts arrive.
    let mut first_refusal: Option<(usize, Duration)> = None;
    while started.elapsed() < RUN {
        let edge = i % 2;
        i += 1;
        let at = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let reply = edges[edge].get(&path, Some(&t)).await?;
        sends.push(at);
        match reply.status.as_u16() {
            200 => admitted[edge] += 1,
            429 => {
                refused[edge] += 1;
                first_refusal.get_or_insert((i, started.elapsed()));
            }
            other => anyhow::bail!("request {i} via {}: {other} {reply:?}", edges[edge].base),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let reference = one_limiter_admits(&sends);
    let total: u64 = admitted.iter().sum();
    let overshoot = total.saturating_sub(reference);
    // The stated bound: what the client sends to one edge in STAGGER_MS (the sync lag it
    // covers), at its pace while admitted (its requests alternate: half to each edge).
    let (n0, t0) = first_refusal.ok_or_else(|| anyhow::anyhow!("the client was never limited"))?;
    let per_edge_rate = n0 as f64 / 2.0 / t0.as_secs_f64().max(0.001);
    let bound = (per_edge_rate * STAGGER_MS as f64 / 1000.0).ceil() as u64;
    let copied = metric(
        &world.euw.direct()?,
        "edge_limit_sync_spends_total",
        "result=\"ok\"",
    )
    .await?
        + metric(
            &world.eun.direct()?,
            "edge_limit_sync_spends_total",
            "result=\"ok\"",
        )
        .await?;
    println!(
        "[{}] shared limits: {} requests in {secs:.1} s ({per_edge_rate:.0}/s per edge until \
         the first 429), \
         limit {LIMIT}/min with a {BURST_SECS} s burst: admitted {total} (EUW {}, EUN {}), \
         one limiter would admit {reference}, overshoot {overshoot} (stated bound {bound}: \
         {STAGGER_MS} ms of the client's requests to one edge); spends copied {copied}",
        runtime.name(),
        sends.len(),
        admitted[0],
        admitted[1],
    );
    // The run did what it claims: both edges admitted their part, and the copy ran.
    anyhow::ensure!(
        admitted.iter().all(|a| *a * 4 >= reference),
        "one edge admitted too little to show anything: {admitted:?} of {reference}"
    );
    anyhow::ensure!(copied > 0.0, "no spend was copied between the regions");
    // Without the sharing the client gets about twice the reference: the bound must be the
    // tighter of the two, or the test could not tell.
    anyhow::ensure!(
        bound < reference,
        "the client was so fast that the stated bound ({bound}) no longer tells a shared \
         limit from two separate ones ({reference} each)"
    );
    anyhow::ensure!(
        total <= reference + bound,
        "admitted {total}: more than {reference} + {bound}"
    );
    // And the sharing counts nothing twice: the client gets (about) its limit.
    anyhow::ensure!(
        total * 10 >= reference * 9,
        "admitted {total}: well under the {reference} one limiter admits (counted twice?)"
    );

    // The other publications reach the peer database too: a deny-list entry kept by
    // Stockholm's origin is enforced by the Frankfurt edge, which reads only its own database.
    let mallory = format!("mallory-{}", uuid::Uuid::new_v4().simple());
    let entry = world
        .edge_euw
        .post(
            "/v1/admin/deny-list?region=EUN",
            Some(&ops_token("olaf")),
            &json!({ "kind": "user", "value": mallory, "reason": "peer publishing" }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    anyhow::ensure!(entry.status == 201, "{entry:?}");
    let start = Instant::now();
    loop {
        let reply = world
            .edge_euw
            .get("/v1/bookings", Some(&token(&mallory)))
            .await?;
        if reply.status == 403 {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "the Frankfurt edge still answers {} after 5 s to a user Stockholm denied",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[{}] a deny-list entry kept by EUN refused at the EUW edge after {:?}",
        runtime.name(),
        start.elapsed()
    );
    world.stop().await
}

on_both_runtimes!(
    a_client_alternating_between_the_regions_gets_its_limit_plus_the_stated_overshoot
);
