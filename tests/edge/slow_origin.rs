//! A slow origin: the edge's deadline turns into the stale quote or a 503.

use super::*;

async fn a_slow_origin_times_out_into_the_stale_quote_or_a_503(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let proxy = e2e::edge::HangProxy::start().await?;
    let url = proxy.url();
    let stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_QUOTE_TTL_SECS", "1"),
            ("EDGE_ORIGIN_TIMEOUT_MS", "800"),
            ("ORIGIN_EUW_URL", &url),
        ],
    )
    .await?;
    proxy.forward_to(&stack.origin()?.base)?;
    let t = token("sam");
    let w = window(4, 2);
    let vehicles = stack.origin()?.vehicles("EUW").await?;
    let body = json!({ "vehicle_id": vehicles[0], "start": w.0, "end": w.1 });
    let quote = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(quote.status, 201, "{}", quote.body);

    proxy.hang();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let started = std::time::Instant::now();
    let stale = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    let waited = started.elapsed();
    assert_eq!(stale.status, 201, "{}", stale.body);
    assert_eq!(cache_state(&stale), "stale");
    assert_eq!(stale.body["quote_token"], quote.body["quote_token"]);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "the edge gave up after {waited:?}, not after its 800 ms timeout"
    );

    let other = json!({ "vehicle_id": vehicles[1], "start": w.0, "end": w.1 });
    let miss = stack.post("/v1/quotes", Some(&t), &other, None).await?;
    miss.assert_problem(503);
    assert!(header(&miss, "retry-after").is_some());
    stack.stop().await
}
on_both_runtimes!(a_slow_origin_times_out_into_the_stale_quote_or_a_503);
