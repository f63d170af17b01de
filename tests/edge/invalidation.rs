//! Edge cache invalidation: a booking bumps the generations, so cached availability drops the
//! vehicle at once.

use super::*;

/// A quote then a hold of `vehicle` over `w`, both through the edge; the hold (201 checked).
async fn hold_through(
    stack: &EdgeStack,
    token: &str,
    vehicle: &str,
    w: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<Reply> {
    let quote = stack
        .post(
            "/v1/quotes",
            Some(token),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    let hold = stack
        .post(
            "/v1/bookings",
            Some(token),
            &json!({ "quote_token": quote.body["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    anyhow::ensure!(hold.status == 201, "hold: {}", hold.body);
    Ok(hold)
}

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
    hold_through(&stack, &t, &booked, w).await?;
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

/// A hold the sweeper ends frees its window at the edge too: the sweeper moves the vehicle's
/// generations as a change through the API does, so a cached answer that hid the vehicle is
/// not served until its TTL (two minutes here) runs out.
async fn a_hold_the_sweeper_ends_returns_the_vehicle_to_cached_availability(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start_full(
        pool,
        runtime,
        &[("EDGE_SEARCH_TTL_SECS", "120")],
        &[("HOLD_TTL_SECS", "3"), ("SWEEPER_INTERVAL_MS", "200")],
    )
    .await?;
    let t = token("ivo");
    let w = window(6, 2);
    let first = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let vehicle = ids(&first)[0].clone();
    let hold = hold_through(&stack, &t, &vehicle, w).await?;
    let booking = uuid_of(hold.body["id"].as_str().unwrap_or_default())?;
    // The answer without the held vehicle is cached (a hit), while the hold still lives: had
    // the hold already ended, the cached answer would list the vehicle and this fails.
    // The edge may store the answer after it has sent it: asked again until a hit.
    let mut cached = stack.get(&search_path(w), Some(&t)).await?;
    for _ in 0..20 {
        if cache_state(&cached) == "hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        cached = stack.get(&search_path(w), Some(&t)).await?;
    }
    assert_eq!(cache_state(&cached), "hit", "{:?}", cached.headers);
    assert!(
        !ids(&cached).contains(&vehicle),
        "the held vehicle is offered"
    );
    // The sweeper ends the hold (3 s TTL, 200 ms period).
    let mut status = String::new();
    for _ in 0..100 {
        status = sqlx::query_scalar("select status from bookings where id = $1")
            .bind(booking)
            .fetch_one(&stack.pool)
            .await?;
        if status == "FAILED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, "FAILED",
        "the sweeper did not end the hold within 10 s"
    );
    // Within 1 s of the expiry's commit (issue 18's figure).
    let expired_at = std::time::Instant::now();
    let mut back = false;
    while expired_at.elapsed() < Duration::from_secs(1) {
        let reply = stack.get(&search_path(w), Some(&t)).await?;
        if ids(&reply).contains(&vehicle) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back,
        "the edge kept serving a cached answer without the vehicle 1 s after its hold expired"
    );
    stack.stop().await
}
on_both_runtimes!(a_hold_the_sweeper_ends_returns_the_vehicle_to_cached_availability);

/// The search over `w` once the edge answers it from its cache (asked again until a hit: the
/// edge may store an answer after sending it), so what follows tests the invalidation and not
/// a miss.
async fn cached_search(
    stack: &EdgeStack,
    token: &str,
    w: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<Reply> {
    let mut reply = stack.get(&search_path(w), Some(token)).await?;
    for _ in 0..40 {
        if cache_state(&reply) == "hit" {
            return Ok(reply);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = stack.get(&search_path(w), Some(token)).await?;
    }
    anyhow::bail!("no cache hit for {w:?}: {:?}", reply.headers)
}

/// A booking moved through the edge (issue 18 item 7): the next cached search shows the vehicle
/// free in the window it left and taken in the one it moved to.
async fn a_reschedule_through_the_edge_moves_the_vehicle_in_cached_availability(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let t = token("remy");
    let (old, new) = (window(5, 2), window(8, 2));
    let first = stack.get(&search_path(old), Some(&t)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let vehicle = ids(&first)[0].clone();
    let hold = hold_through(&stack, &t, &vehicle, old).await?;
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    // Both answers cached before the move: the old window without the car, the new with it.
    assert!(!ids(&cached_search(&stack, &t, old).await?).contains(&vehicle));
    assert!(ids(&cached_search(&stack, &t, new).await?).contains(&vehicle));
    let moved = stack
        .post(
            &format!("/v1/bookings/{id}/reschedule"),
            Some(&t),
            &json!({ "start": new.0, "end": new.1 }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(moved.status, 200, "{}", moved.body);
    let old_after = stack.get(&search_path(old), Some(&t)).await?;
    assert!(
        ids(&old_after).contains(&vehicle),
        "the window the booking left is still shown taken: {:?}",
        old_after.headers
    );
    let new_after = stack.get(&search_path(new), Some(&t)).await?;
    assert!(
        !ids(&new_after).contains(&vehicle),
        "the window the booking moved to is still shown free: {:?}",
        new_after.headers
    );

    // Moved again at the origin directly (as through the other region's edge): the origin
    // bumps the vehicle's generation itself, and the edge's cached answers follow.
    let third = window(11, 2);
    assert!(!ids(&cached_search(&stack, &t, new).await?).contains(&vehicle));
    assert!(ids(&cached_search(&stack, &t, third).await?).contains(&vehicle));
    let direct = stack
        .origin()?
        .post(
            &format!("/v1/bookings/{id}/reschedule"),
            Some(&t),
            &json!({ "start": third.0, "end": third.1 }),
            None,
        )
        .await?;
    assert_eq!(direct.status, 200, "{}", direct.body);
    let mut followed = false;
    for _ in 0..20 {
        let freed = stack.get(&search_path(new), Some(&t)).await?;
        let taken = stack.get(&search_path(third), Some(&t)).await?;
        if ids(&freed).contains(&vehicle) && !ids(&taken).contains(&vehicle) {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        followed,
        "a move made at the origin did not reach the edge's cached availability within 1 s"
    );
    stack.stop().await
}
on_both_runtimes!(a_reschedule_through_the_edge_moves_the_vehicle_in_cached_availability);

/// A maintenance block made through the edge (issue 18 item 6) hides the vehicle from the
/// edge's cached search for its window at once, and ending it brings the vehicle back.
async fn a_block_through_the_edge_hides_the_vehicle_from_cached_search_until_it_ends(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let t = token("bea");
    let ops = ops_token("ops-bea");
    let w = window(6, 3);
    let first = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let vehicle = ids(&first)[0].clone();
    // Cached with the car in it before the block.
    assert!(ids(&cached_search(&stack, &t, w).await?).contains(&vehicle));
    let blocks = format!("/v1/admin/vehicles/{vehicle}/blocks");
    let made = stack
        .post(
            &blocks,
            Some(&ops),
            &json!({ "start": w.0, "end": w.1, "reason": "windscreen" }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(made.status, 201, "{}", made.body);
    let hidden = stack.get(&search_path(w), Some(&t)).await?;
    assert!(
        !ids(&hidden).contains(&vehicle),
        "the blocked vehicle is still shown free: {:?}",
        hidden.headers
    );
    // The hidden answer is cached in turn; ending the block brings the car back at once.
    assert!(!ids(&cached_search(&stack, &t, w).await?).contains(&vehicle));
    let block = made.body["block"]["id"].as_str().unwrap_or_default();
    let ended = stack
        .delete(
            &format!("{blocks}/{block}"),
            Some(&ops),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let back = stack.get(&search_path(w), Some(&t)).await?;
    assert!(
        ids(&back).contains(&vehicle),
        "the vehicle is still hidden after its block ended: {:?}",
        back.headers
    );

    // A block made at the origin directly (as through the other region's edge, which bumps
    // only its own cache): the origin bumps the vehicle's generation itself.
    let later = window(9, 3);
    assert!(ids(&cached_search(&stack, &t, later).await?).contains(&vehicle));
    let direct = stack
        .origin()?
        .post(
            &blocks,
            Some(&ops),
            &json!({ "start": later.0, "end": later.1, "reason": "windscreen, again" }),
            None,
        )
        .await?;
    assert_eq!(direct.status, 201, "{}", direct.body);
    let mut followed = false;
    for _ in 0..20 {
        if !ids(&stack.get(&search_path(later), Some(&t)).await?).contains(&vehicle) {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        followed,
        "a block made at the origin did not reach the edge's cached availability within 1 s"
    );
    stack.stop().await
}
on_both_runtimes!(a_block_through_the_edge_hides_the_vehicle_from_cached_search_until_it_ends);

/// The waitlist through the edge (issue 18 item 4): a join goes to the vehicle's origin, the
/// cancellation that frees the window brings the vehicle back into the edge's cached search and
/// offers it to the waiter alone: another user's quote and hold through the edge are 409s, the
/// waiter's hold is a 201.
async fn a_waitlist_offer_through_the_edge_is_the_waiters_alone(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let (owner, waiter, other) = (token("oda"), token("wyn"), token("ozzy"));
    let w = window(7, 2);
    let first = stack.get(&search_path(w), Some(&owner)).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let vehicle = ids(&first)[0].clone();
    // Another user's quote, got while the window is free (during the offer a quote is refused).
    let quote = stack
        .post(
            "/v1/quotes",
            Some(&other),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    let booking = hold_through(&stack, &owner, &vehicle, w).await?.body["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let joined = stack
        .post(
            "/v1/waitlist",
            Some(&waiter),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(joined.status, 201, "{}", joined.body);
    let entry = format!(
        "/v1/waitlist/{}",
        joined.body["id"].as_str().unwrap_or_default()
    );
    assert!(!ids(&cached_search(&stack, &owner, w).await?).contains(&vehicle));

    let cancelled = stack
        .post(
            &format!("/v1/bookings/{booking}/cancel"),
            Some(&owner),
            &Value::Null,
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let offered = stack.get(&entry, Some(&waiter)).await?;
    assert_eq!(offered.status, 200, "{}", offered.body);
    assert_eq!(offered.body["state"], "offered", "{}", offered.body);
    assert!(
        ids(&stack.get(&search_path(w), Some(&owner)).await?).contains(&vehicle),
        "the freed vehicle is not back in the edge's search"
    );
    let requote = stack
        .post(
            "/v1/quotes",
            Some(&other),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    assert_eq!(requote.status, 409, "{}", requote.body);
    let refused = stack
        .post(
            "/v1/bookings",
            Some(&other),
            &json!({ "quote_token": quote.body["quote_token"] }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("waitlist"),
        "{}",
        refused.body
    );
    hold_through(&stack, &waiter, &vehicle, w).await?;
    let booked = stack.get(&entry, Some(&waiter)).await?;
    assert_eq!(booked.body["state"], "booked", "{}", booked.body);
    stack.stop().await
}
on_both_runtimes!(a_waitlist_offer_through_the_edge_is_the_waiters_alone);
