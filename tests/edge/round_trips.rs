//! What a request costs in Upstash requests, counted at the gateway: a cache hit exactly one
//! (the rate-limit script, which also reads the entry), a client the edge knows is blocked
//! none.

use std::collections::BTreeMap;

use super::*;

async fn a_cache_hit_costs_one_upstash_request_and_a_blocked_client_none(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    // Five requests a minute for the user: the test makes five that pass, then two refused.
    // The window alone (no burst allowance), so the sixth request is the first refused; the
    // burst's bucket rides in the same script (`burst_allowance` counts its requests too).
    let stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_USER_LIMIT_PER_MIN", "5"),
            ("EDGE_RATE_LIMIT_BURST_SECS", "0"),
        ],
    )
    .await?;
    inside_one_window(Duration::from_secs(20)).await;
    let t = token("rita");
    let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
    let w = window(3, 2);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let evalsha_only = BTreeMap::from([("EVALSHA".to_owned(), 1)]);

    // A quote: the miss stores the entry, the next identical request is a hit.
    let miss = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(miss.status, 201, "{}", miss.body);
    assert_eq!(cache_state(&miss), "miss");
    let (hit, requests, commands) =
        counted(&stack, || stack.post("/v1/quotes", Some(&t), &body, None)).await?;
    assert_eq!(hit.status, 201, "{}", hit.body);
    assert_eq!(cache_state(&hit), "hit");
    assert_eq!(hit.body["quote_token"], miss.body["quote_token"]);
    assert_eq!(
        requests, 1,
        "Upstash requests for a cached quote: {commands:?}"
    );
    assert_eq!(commands, evalsha_only);

    // A search: the same.
    let path = search_path(w);
    let first = stack.get(&path, Some(&t)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(cache_state(&first), "miss");
    let (hit, requests, commands) = counted(&stack, || stack.get(&path, Some(&t))).await?;
    assert_eq!(cache_state(&hit), "hit", "{}", hit.body);
    assert_eq!(
        requests, 1,
        "Upstash requests for a cached search: {commands:?}"
    );
    assert_eq!(commands, evalsha_only);

    // The limit: the fifth request passes, the sixth is refused by the script (one request,
    // which reads no entry), the seventh by the edge's memory (none).
    let fifth = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(cache_state(&fifth), "hit", "{}", fifth.body);
    let (refused, requests, _) =
        counted(&stack, || stack.post("/v1/quotes", Some(&t), &body, None)).await?;
    refused.assert_problem(429);
    assert_eq!(
        requests, 1,
        "Upstash requests for the request that hits the limit"
    );
    let (again, requests, commands) =
        counted(&stack, || stack.post("/v1/quotes", Some(&t), &body, None)).await?;
    again.assert_problem(429);
    assert!(header(&again, "retry-after").is_some());
    assert_eq!(
        requests, 0,
        "Upstash requests for a client known to be blocked: {commands:?}"
    );
    stack.stop().await
}
on_both_runtimes!(a_cache_hit_costs_one_upstash_request_and_a_blocked_client_none);
