//! The burst allowance (issue 19, item 4): beside the sliding window, a token bucket lets a
//! client burst to five times its rate for `EDGE_RATE_LIMIT_BURST_SECS`, then the window holds
//! it (`domain::ratelimit::burst`).
//!
//! On both runtimes, with a 6 s window of 15 requests (2.5/s) and bursts of 2 s, so the story
//! takes seconds: a client at 0.6 × its rate for a window, then at 5 × for the burst
//! seconds, gets no 429; kept at 5 × it is limited soon after, with a `Retry-After` that is
//! enough; the headers are checked on every reply; every request costs exactly one Upstash
//! request, counted at the gateway. The same traffic with the burst off is refused within the
//! burst seconds. Beside it, the Lua script is held to `domain::ratelimit::decide` step by
//! step on a real Redis.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;

use domain::ratelimit::{decide, Bucket, Burst, Paid, RateLimit};
use edge_core::ratelimit::{Check, Subject};

use super::*;

const WINDOW_SECS: u64 = 6;
const LIMIT: u32 = 15;
const BURST_SECS: u64 = 2;
/// 15 per 6 s.
const RATE: f64 = LIMIT as f64 / WINDOW_SECS as f64;

fn limit() -> RateLimit {
    RateLimit {
        limit: LIMIT,
        window_ms: WINDOW_SECS * 1000,
    }
}

/// One paced request: when it was due (from the phase's start) and its reply.
struct Sent {
    due: Duration,
    reply: Reply,
}

/// Sends `per_sec` requests a second from `start` for `length` (open loop: each request is
/// sent when due, whether or not the earlier ones have been answered); with `stop_at_429`
/// no request is started after the first 429 has come back.
async fn paced(
    stack: &EdgeStack,
    t: &str,
    path: &str,
    per_sec: f64,
    length: Duration,
    stop_at_429: bool,
) -> TestResult<Vec<Sent>> {
    let start = tokio::time::Instant::now();
    let count = (length.as_secs_f64() * per_sec).ceil() as usize;
    let refused = std::sync::atomic::AtomicBool::new(false);
    let replies = futures_util::future::join_all((0..count).map(|i| {
        let due = Duration::from_secs_f64(i as f64 / per_sec);
        let refused = &refused;
        async move {
            tokio::time::sleep_until(start + due).await;
            if stop_at_429 && refused.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let reply = stack.get(path, Some(t)).await;
            if matches!(&reply, Ok(r) if r.status == 429) {
                refused.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Some(reply.map(|reply| Sent { due, reply }))
        }
    }))
    .await;
    replies.into_iter().flatten().collect()
}

/// What every reply must say, allowed or refused.
struct Expect {
    policy: String,
    /// Most `RateLimit-Remaining` can be (the window's room plus a full bucket).
    max_remaining: u32,
    /// Most a `Retry-After` can be.
    max_retry: u64,
}

fn check_headers(reply: &Reply, expect: &Expect, what: &str) -> TestResult<u32> {
    assert_eq!(
        header(reply, "ratelimit-policy"),
        Some(expect.policy.as_str()),
        "{what}: policy"
    );
    assert_eq!(
        header(reply, "ratelimit-limit"),
        Some(LIMIT.to_string().as_str()),
        "{what}: limit"
    );
    let number = |name: &str| -> TestResult<u64> {
        header(reply, name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{what}: no numeric {name}"))
    };
    let remaining = u32::try_from(number("ratelimit-remaining")?)?;
    assert!(
        remaining <= expect.max_remaining,
        "{what}: remaining {remaining}"
    );
    let reset = number("ratelimit-reset")?;
    assert!((1..=WINDOW_SECS).contains(&reset), "{what}: reset {reset}");
    if reply.status == 429 {
        reply.assert_problem(429);
        assert_eq!(remaining, 0, "{what}: a refusal leaves nothing");
        let retry = number("retry-after")?;
        assert!(
            (1..=expect.max_retry).contains(&retry),
            "{what}: Retry-After {retry}"
        );
    } else {
        assert_eq!(reply.status, 200, "{what}: {}", reply.body);
        assert_eq!(
            cache_state(reply),
            "hit",
            "{what}: every request a cache hit"
        );
        assert!(
            header(reply, "retry-after").is_none(),
            "{what}: Retry-After on a 200"
        );
    }
    Ok(remaining)
}

/// Upstash requests and `EVALSHA`s the gateway has served so far.
fn upstash(stack: &EdgeStack) -> (u64, u64) {
    let evalsha = stack.redis_commands().get("EVALSHA").copied().unwrap_or(0);
    (stack.redis_requests(), evalsha)
}

/// The story for one client: 0.6 × the rate for a window, then 5 × until the first 429
/// (at most `BURST_SECS + 3` s). Checks the headers of every reply and the Upstash requests
/// (one `EVALSHA` per request that reached the script: every allowed one, a cache hit read
/// in the same script whichever budget paid; a refusal costs one or, from the edge's memory
/// of blocked clients, none). Returns the burst's replies and when the first 429 was due.
async fn warm_then_burst(
    stack: &EdgeStack,
    user: &str,
    path: &str,
    expect: &Expect,
) -> TestResult<(Vec<Sent>, Option<Duration>)> {
    let t = token(user);
    let before = upstash(stack);
    // First request of a fresh client: both budgets whole, minus this request.
    let first = stack.get(path, Some(&t)).await?;
    let remaining = check_headers(&first, expect, "first request")?;
    assert_eq!(
        remaining,
        expect.max_remaining - 1,
        "first request: remaining"
    );

    let warm = paced(
        stack,
        &t,
        path,
        0.6 * RATE,
        Duration::from_secs(WINDOW_SECS),
        false,
    )
    .await?;
    for s in &warm {
        let what = format!("warm-up at 0.6 x, {:?}", s.due);
        let remaining = check_headers(&s.reply, expect, &what)?;
        assert_eq!(s.reply.status, 200, "{what}");
        // Below the rate the bucket is never touched: at least its tokens remain.
        let bucket = expect.max_remaining.saturating_sub(LIMIT);
        assert!(
            remaining >= bucket,
            "{what}: remaining {remaining} < {bucket}"
        );
    }
    let warmed = upstash(stack);
    let sent = 1 + warm.len() as u64;
    assert_eq!(
        (warmed.0 - before.0, warmed.1 - before.1),
        (sent, sent),
        "Upstash requests and EVALSHAs for {sent} requests at the rate"
    );
    let burst = paced(
        stack,
        &t,
        path,
        5.0 * RATE,
        Duration::from_secs(BURST_SECS + 3),
        true,
    )
    .await?;
    let mut first_429 = None;
    for s in &burst {
        check_headers(&s.reply, expect, &format!("burst at 5 x, {:?}", s.due))?;
        if s.reply.status == 429 && first_429.is_none_or(|d| s.due < d) {
            first_429 = Some(s.due);
        }
    }
    let after = upstash(stack);
    let allowed = burst.iter().filter(|s| s.reply.status == 200).count() as u64;
    let refused = burst.len() as u64 - allowed;
    let (requests, evalsha) = (after.0 - warmed.0, after.1 - warmed.1);
    assert_eq!(
        requests,
        evalsha,
        "only the script: {:?}",
        stack.redis_commands()
    );
    assert!(
        (allowed..=allowed + refused).contains(&requests),
        "{requests} Upstash requests at 5 x for {allowed} allowed and {refused} refused"
    );
    Ok((burst, first_429))
}

async fn a_client_bursting_to_five_times_its_rate_is_not_limited_for_the_burst_seconds_then_is(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let window_secs = WINDOW_SECS.to_string();
    let per_window = LIMIT.to_string();
    let burst_secs = BURST_SECS.to_string();
    let mut stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_RATE_LIMIT_WINDOW_SECS", &window_secs),
            ("EDGE_USER_LIMIT_PER_MIN", &per_window),
            ("EDGE_RATE_LIMIT_BURST_SECS", &burst_secs),
            // Every request after the first a cache hit: one Upstash request each.
            ("EDGE_SEARCH_TTL_SECS", "600"),
        ],
    )
    .await?;
    let path = search_path(window(2, 1));
    let primed = stack.get(&path, Some(&token("primer"))).await?;
    assert_eq!(primed.status, 200, "{}", primed.body);

    // With the burst: 15;w=6 and 25 in 2 s, up to 22 of them from the bucket ((4 × 15 + 1) ×
    // 2/6, rounded up, plus one), one token back every 4 s.
    let b = Burst::new(&limit(), BURST_SECS).context("burst off")?;
    assert_eq!(
        (b.capacity, b.refill_ms, b.quota(&limit())),
        (22, 4_000, 25)
    );
    let on = Expect {
        policy: format!("{LIMIT};w={WINDOW_SECS}, 25;w={BURST_SECS};burst=22"),
        max_remaining: LIMIT + 22,
        // The next token is at most one refill interval away.
        max_retry: 4,
    };
    let started = Instant::now();
    let (burst, first_429) = warm_then_burst(&stack, "bursty", &path, &on).await?;
    let first_429 = first_429.context("never limited at 5 x the rate")?;
    println!(
        "[{}] burst on: first 429 {:?} into 5 x ({} requests at 5 x, story {:?})",
        runtime.name(),
        first_429,
        burst.len(),
        started.elapsed()
    );
    assert!(
        first_429 >= Duration::from_secs(BURST_SECS),
        "a 429 {first_429:?} into the burst, before its {BURST_SECS} s"
    );
    assert!(
        first_429 < Duration::from_secs(BURST_SECS + 2),
        "still not limited {first_429:?} into the burst"
    );
    // Waiting the last refusal's Retry-After is enough.
    let last = burst
        .iter()
        .filter(|s| s.reply.status == 429)
        .max_by_key(|s| s.due)
        .context("no refusal")?;
    let retry: u64 = header(&last.reply, "retry-after")
        .and_then(|v| v.parse().ok())
        .context("Retry-After")?;
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let after = stack.get(&path, Some(&token("bursty"))).await?;
    check_headers(&after, &on, "after Retry-After")?;
    assert_eq!(
        after.status, 200,
        "waiting Retry-After ({retry} s) was not enough"
    );

    // The same traffic with the burst off: refused within the burst seconds.
    stack
        .restart_edge(&[("EDGE_RATE_LIMIT_BURST_SECS", "0")])
        .await?;
    let off = Expect {
        policy: format!("{LIMIT};w={WINDOW_SECS}"),
        max_remaining: LIMIT,
        // One window plus one request's share of the previous one.
        max_retry: WINDOW_SECS + 1,
    };
    let (_, off_429) = warm_then_burst(&stack, "no-burst", &path, &off).await?;
    let off_429 = off_429.context("without the burst, never limited")?;
    println!(
        "[{}] burst off: first 429 {off_429:?} into 5 x",
        runtime.name()
    );
    assert!(
        off_429 < Duration::from_secs(BURST_SECS),
        "without the burst the first 429 came only {off_429:?} into 5 x"
    );
    stack.stop().await
}
on_both_runtimes!(
    a_client_bursting_to_five_times_its_rate_is_not_limited_for_the_burst_seconds_then_is
);

/// The model the script must follow: per check, the window counters and the stored bucket.
#[derive(Default)]
struct Model {
    counts: BTreeMap<u64, u64>,
    bucket: Option<Bucket>,
}

/// The Lua script on a real Redis, step by step against `domain::ratelimit::decide`: for a
/// user and an address with different limits and bursts, a seeded history of bursts and
/// pauses; at every step the state the script read (counters, bucket after refill) is the
/// model's, and a spent token's key lives exactly until the bucket would be full again.
#[tokio::test]
async fn the_rate_limit_script_decides_as_domain_decide_on_a_real_redis() -> TestResult {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("BURST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(19);
    println!("BURST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let url = e2e::test_redis::shared_url();
    let mut conn = e2e::test_redis::connect(&url).await?;
    let prefix = format!("test:burst:{}:", uuid::Uuid::new_v4().simple());
    let window_ms = 10_000;
    let checks: Vec<Check> = [
        (Subject::User, "u", 7, 3),
        (Subject::Ip, "203.0.113.9", 20, 2),
    ]
    .into_iter()
    .map(|(subject, id, per_window, secs)| {
        let limit = RateLimit {
            limit: per_window,
            window_ms,
        };
        Check {
            subject,
            id: id.into(),
            limit,
            burst: Burst::new(&limit, secs),
        }
    })
    .collect();
    let mut models: Vec<Model> = checks.iter().map(|_| Model::default()).collect();
    // A realistic clock (13 digits), moved by the test, not by waiting.
    let mut now = u64::try_from(Utc::now().timestamp_millis())?;
    let (mut allowed, mut by_bucket, mut refused) = (0, 0, 0);
    for step in 0..600 {
        now += match rng.gen_range(0..100) {
            0..=79 => rng.gen_range(0..300),
            80..=97 => rng.gen_range(300..3_000),
            _ => rng.gen_range(10_000..60_000),
        };
        let cmd = edge_core::ratelimit::command(
            &prefix,
            &checks,
            None,
            &edge_core::ratelimit::DenyRead::default(),
            None,
            now,
        );
        let mut eval = redis::cmd("EVAL");
        eval.arg(edge_core::ratelimit::SCRIPT);
        for a in cmd.iter().skip(2) {
            eval.arg(a.as_str().unwrap_or_default());
        }
        let reply: redis::Value = eval.query_async(&mut conn).await?;
        let redis::Value::Array(parts) = reply else {
            anyhow::bail!("step {step}: reply {reply:?}");
        };
        let state: Vec<u64> = redis::from_redis_value_ref(&parts[0])?;
        let mut verdicts = Vec::new();
        for (i, (check, model)) in checks.iter().zip(&models).enumerate() {
            let index = now / window_ms;
            let prev = model.counts.get(&(index - 1)).copied().unwrap_or(0);
            let curr = model.counts.get(&index).copied().unwrap_or(0);
            let b = check.burst.context("burst")?;
            let bucket = model
                .bucket
                .unwrap_or_else(|| Bucket::full(&b, now))
                .refilled(&b, now);
            assert_eq!(
                &state[4 * i..4 * i + 4],
                &[prev, curr, bucket.tokens, bucket.refilled_at_ms],
                "step {step}, check {i} at {now}: script read vs model"
            );
            verdicts.push(decide(
                &check.limit,
                check.burst.as_ref(),
                prev,
                curr,
                now,
                model.bucket,
            ));
        }
        if verdicts.iter().all(|v| v.decision.allowed) {
            allowed += 1;
            for (i, (check, (model, v))) in checks
                .iter()
                .zip(models.iter_mut().zip(&verdicts))
                .enumerate()
            {
                match v.paid {
                    Some(Paid::Window) => *model.counts.entry(now / window_ms).or_insert(0) += 1,
                    Some(Paid::Bucket) => {
                        by_bucket += 1;
                        model.bucket = v.bucket;
                        let b = check.burst.context("burst")?;
                        let keep = v.bucket.context("bucket")?.keep_ms(&b, now);
                        let key = edge_core::ratelimit::command(
                            &prefix,
                            &checks[i..=i],
                            None,
                            &edge_core::ratelimit::DenyRead::default(),
                            None,
                            now,
                        )[5]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
                        assert!(
                            ttl > 0 && ttl as u64 <= keep && keep - ttl as u64 <= 1_000,
                            "step {step}: bucket key lives {ttl} ms, the bucket is full in {keep}"
                        );
                        // The test's clock runs faster than Redis's: keep the key, a full
                        // bucket and no key being the same (`Bucket::refilled`).
                        let _: i64 = redis::cmd("PERSIST")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await?;
                    }
                    None => anyhow::bail!("step {step}: allowed but unpaid"),
                }
            }
        } else {
            refused += 1;
        }
    }
    println!("script vs decide: {allowed} allowed ({by_bucket} tokens spent), {refused} refused");
    assert!(
        by_bucket > 20 && refused > 20,
        "the history must exercise both budgets and refusals"
    );
    e2e::test_redis::delete_prefix(&url, &prefix).await?;
    Ok(())
}
