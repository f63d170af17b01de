//! A slow origin: the edge's deadline turns into the stale quote or a 503, and clients that
//! give up on it do not use up the edge.

use e2e::edge::HangProxy;

use super::*;

/// An edge whose EUW origin is reached through a [`HangProxy`] (forwarding), with `vars`;
/// the EUW fleet's ids.
async fn behind_a_hang_proxy(
    pool: PgPool,
    runtime: Runtime,
    vars: &[(&str, &str)],
) -> TestResult<(HangProxy, EdgeStack, Vec<String>)> {
    let proxy = HangProxy::start().await?;
    let url = proxy.url();
    let mut all = vars.to_vec();
    all.push(("ORIGIN_EUW_URL", &url));
    let stack = EdgeStack::start_with(pool, runtime, &all).await?;
    proxy.forward_to(&stack.origin()?.base)?;
    let vehicles = stack.origin()?.vehicles("EUW").await?;
    Ok((proxy, stack, vehicles))
}

async fn a_slow_origin_times_out_into_the_stale_quote_or_a_503(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let (proxy, stack, vehicles) = behind_a_hang_proxy(
        pool,
        runtime,
        &[
            ("EDGE_QUOTE_TTL_SECS", "1"),
            ("EDGE_ORIGIN_TIMEOUT_MS", "800"),
        ],
    )
    .await?;
    let t = token("sam");
    let w = window(4, 2);
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

/// Clients that hang up while their request waits on a stuck origin must not use up the
/// edge's in-flight allowance (`EDGE_MAX_IN_FLIGHT`) for good: whether the host drops an
/// abandoned request or lets it run into its origin deadline, its slot must come back, or
/// after enough of them the edge would answer 503 to everyone, forever.
async fn clients_that_hang_up_do_not_use_up_the_in_flight_allowance(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let (proxy, stack, vehicles) = behind_a_hang_proxy(
        pool,
        runtime,
        &[
            ("EDGE_MAX_IN_FLIGHT", "4"),
            ("EDGE_ORIGIN_TIMEOUT_MS", "1000"),
        ],
    )
    .await?;
    let t = token("hanna");
    let w = window(4, 2);
    let body =
        |i: usize| json!({ "vehicle_id": vehicles[i % vehicles.len()], "start": w.0, "end": w.1 });
    let first = stack.post("/v1/quotes", Some(&t), &body(0), None).await?;
    assert_eq!(first.status, 201, "{}", first.body);

    // Twelve clients give up after 200 ms on requests the stuck origin never answers.
    proxy.hang();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()?;
    let mut gave_up = 0;
    for i in 1..=12 {
        let sent = impatient
            .post(format!("{}/v1/quotes", stack.base))
            .bearer_auth(&t)
            .json(&body(i))
            .send()
            .await;
        if sent.as_ref().is_err_and(reqwest::Error::is_timeout) {
            gave_up += 1;
        }
    }
    anyhow::ensure!(
        gave_up >= 4,
        "only {gave_up} clients hung up: the scenario did not fill the allowance"
    );

    // The origin answers again; once the abandoned requests' own deadline has passed, the
    // edge serves again instead of answering 503 for good.
    proxy.resume();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let started = std::time::Instant::now();
    loop {
        let reply = stack.post("/v1/quotes", Some(&t), &body(100), None).await?;
        if reply.status == 201 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the edge still answers {} 10 s after the origin came back: {}",
            reply.status,
            reply.body["type"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stack.stop().await
}
on_both_runtimes!(clients_that_hang_up_do_not_use_up_the_in_flight_allowance);
