//! Limits shared across regions, at the level of the parts: the edge's script (with its
//! outbox) against the real Redis under two key prefixes — two regions' databases as far as
//! anything can tell — and a real origin copying one region's outbox to the other
//! (`origin/src/jobs/limit_sync.rs`). The runtimes' end-to-end run, a client alternating
//! between the two edges for a minute, is in the regions suite (`tests/regions/
//! shared_limits.rs`).

use domain::ratelimit::shared::{clock, outbox_key};
use domain::ratelimit::{decide, Bucket, Burst, RateLimit};
use domain::Region;
use edge_core::ratelimit::{self, Check, DenyRead, Outbox, Subject};
use redis::AsyncCommands;

use super::*;

/// Runs the script once for `check` in `region`'s database, with its outbox; whether it
/// admitted the request (by the rule the edge applies to what the script read).
async fn admits(
    conn: &redis::aio::MultiplexedConnection,
    prefix: &str,
    region: Region,
    check: &Check,
) -> TestResult<bool> {
    let now = clock(
        region,
        u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0),
    );
    let mut cmd = ratelimit::command(
        prefix,
        std::slice::from_ref(check),
        None,
        &DenyRead::default(),
        None,
        now,
    );
    Outbox::new(prefix, region).append_to(&mut cmd);
    let mut c = redis::cmd("EVAL");
    c.arg(ratelimit::SCRIPT);
    for part in cmd.iter().skip(2) {
        c.arg(part.as_str().unwrap_or_default());
    }
    let reply: redis::Value = c.query_async(&mut conn.clone()).await?;
    let state: Vec<u64> = match &reply {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    redis::Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                })
                .collect(),
            _ => vec![],
        },
        _ => vec![],
    };
    let [prev, curr, tokens, at] = state[..] else {
        anyhow::bail!("unexpected reply {reply:?}");
    };
    let bucket = Bucket {
        tokens,
        refilled_at_ms: at,
    };
    Ok(decide(
        &check.limit,
        check.burst.as_ref(),
        prev,
        curr,
        now,
        Some(bucket),
    )
    .paid
    .is_some())
}

/// A client spends its whole allowance (window and burst) in EUW; EUN, with a database of its
/// own, still admits it — the violation the sharing exists for. Once an origin copies EUW's
/// outbox to EUN, EUN refuses it: the window's count and the bucket's spent tokens both
/// arrived, and the tokens EUN had given out itself are owed (a debt), not forgotten. A field
/// in the outbox that is not a spend is never applied.
#[sqlx::test(migrations = "../migrations")]
async fn spends_in_one_region_close_the_limit_in_the_other_once_copied(pool: PgPool) -> TestResult {
    let url = e2e::test_redis::shared_url();
    let conn = e2e::test_redis::connect(&url).await?;
    let root = format!("test:shared:{}:", uuid::Uuid::new_v4().simple());
    let (euw, eun) = (format!("{root}EUW:"), format!("{root}EUN:"));
    // An hour's window: no rollover or refill in the test's few seconds.
    let limit = RateLimit {
        limit: 5,
        window_ms: 3_600_000,
    };
    let burst = Burst::new(&limit, 600);
    let capacity = burst.map_or(0, |b| b.capacity);
    anyhow::ensure!(capacity > 0, "the test needs a burst");
    let check = Check {
        subject: Subject::User,
        id: format!("sharer-{}", uuid::Uuid::new_v4().simple()),
        limit,
        burst,
    };

    // EUW: the window's five, then the bucket's tokens, then no more.
    let mut admitted = 0;
    while admits(&conn, &euw, Region::Euw, &check).await? {
        admitted += 1;
        anyhow::ensure!(admitted <= 1000, "EUW never refused");
    }
    assert_eq!(admitted, u64::from(limit.limit) + capacity);
    let mut redis = conn.clone();
    let outbox: std::collections::HashMap<String, u64> =
        redis.hgetall(outbox_key(&euw, Region::Euw)).await?;
    assert_eq!(outbox.values().sum::<u64>(), admitted, "{outbox:?}");

    // EUN has not heard of it: it admits the client again — its window's five and three of
    // its bucket's tokens.
    for n in 0..limit.limit + 3 {
        assert!(
            admits(&conn, &eun, Region::Eun, &check).await?,
            "EUN refused request {n}"
        );
    }
    let eun_outbox: std::collections::HashMap<String, u64> =
        redis.hgetall(outbox_key(&eun, Region::Eun)).await?;
    let bucket_key = eun_outbox
        .keys()
        .find_map(|f| f.strip_prefix("b ")?.splitn(3, ' ').nth(2))
        .map(|k| format!("{eun}{k}"))
        .ok_or_else(|| anyhow::anyhow!("no bucket spend in EUN's outbox: {eun_outbox:?}"))?;

    // A hostile field beside the spends: names a key outside the limiter's.
    let planted = format!("w 60000 0 gen:{}", Region::Euw.code());
    let _: () = redis
        .hset(outbox_key(&euw, Region::Euw), &planted, 7)
        .await?;

    // EUW's origin copies its outbox to EUN's database.
    let gateway = upstash_gateway::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        &url,
        e2e::edge::GATEWAY_TOKEN,
    )
    .await?;
    let app = spawn_app_with(
        pool,
        &[
            ("EDGE_CACHE_REST_URL", gateway.url().as_str()),
            ("EDGE_CACHE_REST_TOKEN", e2e::edge::GATEWAY_TOKEN),
            ("EDGE_CACHE_KEY_PREFIX", euw.as_str()),
            ("EDGE_PEER_EUN_REST_URL", gateway.url().as_str()),
            ("EDGE_PEER_EUN_REST_TOKEN", e2e::edge::GATEWAY_TOKEN),
            ("EDGE_PEER_EUN_KEY_PREFIX", eun.as_str()),
            ("EDGE_LIMIT_SYNC_MS", "50"),
        ],
    )
    .await?;
    // Drained (the key gone) within 5 s.
    let started = std::time::Instant::now();
    let drained = loop {
        let left: bool = redis.exists(outbox_key(&euw, Region::Euw)).await?;
        if !left {
            break Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(5) {
            break Err(anyhow::anyhow!("EUW's outbox was not drained within 5 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = !admits(&conn, &eun, Region::Eun, &check).await?;
    // EUN's bucket had given three of its tokens away itself, so EUW's spends left it owing
    // three: no token, and a refill clock three intervals ahead (the next token comes after
    // the debt is paid, not at the next interval).
    let (tokens, refill_at): (u64, u64) = {
        let b: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(&bucket_key)
            .arg("t")
            .arg("r")
            .query_async(&mut redis)
            .await?;
        (
            b.first().copied().flatten().unwrap_or(99),
            b.get(1).copied().flatten().unwrap_or(0),
        )
    };
    let every = burst.map_or(1, |b| b.refill_ms);
    let eun_now = clock(
        Region::Eun,
        u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0),
    );
    let gen_key = format!("{eun}gen:EUW");
    let planted_applied: bool = redis.exists(&gen_key).await?;
    let skipped = e2e::metric_sum(
        &app.metrics_text().await?,
        "edge_limit_sync_spends_total",
        "result=\"skipped\"",
    );
    app.stop().await?;
    gateway.stop().await;
    e2e::test_redis::delete_prefix(&url, &root).await?;

    println!(
        "EUW's outbox drained into EUN's database {:?} after the origin started",
        drained?
    );
    assert!(refused, "EUN still admits a client EUW's spends exhausted");
    assert_eq!(tokens, 0, "EUN's bucket after the copy");
    assert!(
        refill_at + 10_000 >= eun_now + 3 * every,
        "EUN's bucket does not owe the three tokens it gave out (refill clock {refill_at}, \
         now {eun_now}, interval {every})"
    );
    assert!(!planted_applied, "a field that is not a spend was applied");
    assert!(
        skipped >= 1.0,
        "the planted field was not counted as skipped"
    );
    Ok(())
}
