//! Edge cache invalidation: a booking bumps the generations, so cached availability drops the
//! vehicle at once.

use super::*;

async fn a_booking_removes_the_vehicle_from_cached_availability_at_once(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let t = token("ivy");
    let w = window(5, 3);
    let first = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let cached = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(cache_state(&cached), "hit");
    let before = ids(&cached);
    let (booked, direct) = (before[0].clone(), before[1].clone());

    // Booked through the edge: gone from the edge's cached answer on the next request.
    let quote = stack
        .post(
            "/v1/quotes",
            Some(&t),
            &json!({ "vehicle_id": booked, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    let hold = stack
        .post(
            "/v1/bookings",
            Some(&t),
            &json!({ "quote_token": quote.body["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let after = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(
        !ids(&after).contains(&booked),
        "booked vehicle still offered"
    );
    assert_eq!(ids(&after).len(), before.len() - 1);

    // Booked at the origin directly (another edge, another region's user): the origin bumps
    // the generation through the Upstash REST API; the edge's cached answer follows.
    let hold = stack.origin()?.hold("dora", &direct, w).await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let mut gone = false;
    for _ in 0..20 {
        let reply = stack.get(&search_path(w), Some(&t)).await?;
        if !ids(&reply).contains(&direct) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "a booking made at the origin did not invalidate the edge cache"
    );
    stack.stop().await
}
on_both_runtimes!(a_booking_removes_the_vehicle_from_cached_availability_at_once);
