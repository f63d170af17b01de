//! Rate limits at the edge (Upstash REST): the 101st request of a user and the 1001st of an
//! address in a minute are 429.

use super::*;

async fn burst(
    stack: &EdgeStack,
    users: &[String],
    per_user: usize,
    path: &str,
) -> TestResult<usize> {
    let mut limited = 0;
    for user in users {
        let t = token(user);
        let replies = futures_util::future::join_all((0..per_user).map(|i| {
            let t = t.clone();
            // A different spoofed X-Forwarded-For on every request: it must not matter.
            let xff = format!("10.0.{}.{}", i / 250, i % 250);
            async move {
                stack
                    .send(
                        reqwest::Method::GET,
                        path,
                        Some(&t),
                        None,
                        &[("x-forwarded-for", &xff)],
                    )
                    .await
            }
        }))
        .await;
        for reply in replies {
            let reply = reply?;
            if reply.status == 429 {
                limited += 1;
            } else {
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        }
    }
    Ok(limited)
}

async fn the_101st_request_of_a_user_and_the_1001st_of_an_address_are_429(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    // The window alone: the burst allowance on top of it is `burst_allowance`'s test.
    let stack =
        EdgeStack::start_with(pool, runtime, &[("EDGE_RATE_LIMIT_BURST_SECS", "0")]).await?;
    let path = search_path(window(2, 1));
    inside_one_window(Duration::from_secs(30)).await;

    // One user: 100 pass, the 101st is refused with Retry-After, whatever X-Forwarded-For says.
    assert_eq!(burst(&stack, &["uma".into()], 100, &path).await?, 0);
    let over = stack
        .send(
            reqwest::Method::GET,
            &path,
            Some(&token("uma")),
            None,
            &[("x-forwarded-for", "203.0.113.77")],
        )
        .await?;
    over.assert_problem(429);
    let retry: u64 = header(&over, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A sliding window may ask for up to one window plus the time one request's share of the
    // previous window takes to slide out: 60 s + 60/100 s, so at most 61 s once rounded up.
    assert!((1..=61).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&over, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&over, "ratelimit-limit"), Some("100"));

    // Blocked clients are remembered in the isolate: on Cloudflare (one isolate) the next
    // refusal costs no Redis call; `wasmtime serve` runs many instances after the burst and
    // the next request may land on one that has not seen the refusal (one call, the script's).
    // Exactly zero on both runtimes is `round_trips`' test (sequential requests, one instance).
    // Counted by command: the origin's own writes to the same Upstash (its periodic deny-list
    // and API-key publications, `EVAL`) are not the edge's.
    let edge_commands = |stack: &EdgeStack| -> u64 {
        stack
            .redis_commands()
            .iter()
            .filter(|(name, _)| name.as_str() != "EVAL")
            .map(|(_, n)| n)
            .sum()
    };
    let (calls, commands) = (edge_commands(&stack), stack.redis_commands());
    let again = stack.get(&path, Some(&token("uma"))).await?;
    again.assert_problem(429);
    assert!(header(&again, "retry-after").is_some());
    let most = match runtime {
        Runtime::Cloudflare => 0,
        Runtime::Spin => 1,
    };
    assert!(
        edge_commands(&stack) - calls <= most,
        "Upstash calls for a known-blocked user: before {commands:?}, after {:?}",
        stack.redis_commands()
    );

    // Another user from the same address is unaffected.
    let other = stack.get(&path, Some(&token("vic"))).await?;
    assert_eq!(other.status, 200, "{}", other.body);

    // The address: 101 requests so far (uma's refused one was not counted, vic's was);
    // 899 more from nine users (≤ 100 each) reach 1000, the next is refused for the address.
    let users: Vec<String> = (0..9).map(|i| format!("ip-user-{i}")).collect();
    let mut limited = burst(&stack, &users[..8], 100, &path).await?;
    limited += burst(&stack, &users[8..], 99, &path).await?;
    assert_eq!(limited, 0, "the first 1000 requests of the address pass");
    let fresh = stack
        .send(
            reqwest::Method::GET,
            &path,
            Some(&token("newcomer")),
            None,
            &[("x-forwarded-for", "198.51.100.9")],
        )
        .await?;
    fresh.assert_problem(429);
    assert_eq!(header(&fresh, "ratelimit-limit"), Some("1000"));
    assert!(header(&fresh, "retry-after").is_some());
    stack.stop().await
}
on_both_runtimes!(the_101st_request_of_a_user_and_the_1001st_of_an_address_are_429);
