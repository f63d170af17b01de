//! The origin stopped: cached quotes are served stale, uncached reads and writes are 503 with
//! Retry-After.

use super::*;

async fn with_the_origin_stopped_cached_quotes_are_served_stale_reads_and_writes_are_503(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let mut stack = EdgeStack::start_with(pool, runtime, &[("EDGE_QUOTE_TTL_SECS", "1")]).await?;
    let t = token("olga");
    let w = window(4, 2);
    let vehicles = stack.origin()?.vehicles("EUW").await?;
    let body = json!({ "vehicle_id": vehicles[0], "start": w.0, "end": w.1 });
    let quote = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    let bookings_before = stack.origin()?.count("bookings", "true").await?;

    stack.stop_origin().await?;
    tokio::time::sleep(Duration::from_millis(1_200)).await; // past the quote's fresh TTL

    // The cached quote is still served, marked stale.
    let stale = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(stale.status, 201, "{}", stale.body);
    assert_eq!(cache_state(&stale), "stale");
    assert_eq!(stale.body["quote_token"], quote.body["quote_token"]);

    // An uncached read: 503 with Retry-After.
    let other = json!({ "vehicle_id": vehicles[1], "start": w.0, "end": w.1 });
    let miss = stack.post("/v1/quotes", Some(&t), &other, None).await?;
    miss.assert_problem(503);
    assert!(header(&miss, "retry-after").is_some());
    let search = stack.get(&search_path(w), Some(&t)).await?;
    search.assert_problem(503);

    // A write: 503, and nothing happened.
    let key = uuid::Uuid::new_v4().to_string();
    let hold_body = json!({ "quote_token": quote.body["quote_token"] });
    let refused = stack
        .post("/v1/bookings", Some(&t), &hold_body, Some(&key))
        .await?;
    refused.assert_problem(503);
    assert!(header(&refused, "retry-after").is_some());

    // The origin returns: the retry with the same key succeeds, once.
    stack.start_origin().await?;
    assert_eq!(
        stack.origin()?.count("bookings", "true").await?,
        bookings_before
    );
    let retried = stack
        .post("/v1/bookings", Some(&t), &hold_body, Some(&key))
        .await?;
    assert_eq!(retried.status, 201, "{}", retried.body);
    let replayed = stack
        .post("/v1/bookings", Some(&t), &hold_body, Some(&key))
        .await?;
    assert_eq!(replayed.status, 201, "{}", replayed.body);
    assert_eq!(header(&replayed, "idempotent-replayed"), Some("true"));
    assert_eq!(replayed.body["id"], retried.body["id"]);
    assert_eq!(
        stack.origin()?.count("bookings", "true").await?,
        bookings_before + 1
    );
    stack.stop().await
}
on_both_runtimes!(with_the_origin_stopped_cached_quotes_are_served_stale_reads_and_writes_are_503);
