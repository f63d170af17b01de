//! The booking lifecycle through the edge: search → quote → hold → confirm → extend → cancel,
//! answered identically by the Cloudflare worker (workerd) and the Spin component (wasmtime).

use super::*;

/// search → quote → hold → confirm → extend → cancel through one edge; returns what a
/// client saw, without the parts that are unique per run (ids, tokens, timestamps).
async fn lifecycle(
    stack: &EdgeStack,
    user: &str,
    w: (DateTime<Utc>, DateTime<Utc>),
) -> TestResult<Value> {
    let t = token(user);
    let rid = format!("edge-lifecycle-{}", stack.runtime.name());
    let search = stack
        .send(
            reqwest::Method::GET,
            &search_path(w),
            Some(&t),
            None,
            &[("x-request-id", &rid)],
        )
        .await?;
    assert_eq!(search.status, 200, "{}", search.body);
    assert_eq!(cache_state(&search), "miss");
    assert_eq!(header(&search, "x-request-id"), Some(rid.as_str()));
    assert_eq!(
        header(&search, "x-edge-runtime"),
        Some(stack.runtime.name())
    );
    assert!(header(&search, "ratelimit-remaining").is_some());
    let again = stack.get(&search_path(w), Some(&t)).await?;
    assert_eq!(cache_state(&again), "hit");
    assert_eq!(again.body, search.body);
    let found = ids(&search);
    let vehicle = found.first().cloned().unwrap_or_default();

    let quote_body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let quote = stack
        .post("/v1/quotes", Some(&t), &quote_body, None)
        .await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    assert_eq!(cache_state(&quote), "miss");
    let cached = stack
        .post("/v1/quotes", Some(&t), &quote_body, None)
        .await?;
    assert_eq!(cache_state(&cached), "hit");
    assert_eq!(cached.body["quote_token"], quote.body["quote_token"]);

    let key = uuid::Uuid::new_v4().to_string();
    let hold = stack
        .send(
            reqwest::Method::POST,
            "/v1/bookings",
            Some(&t),
            Some(&json!({ "quote_token": quote.body["quote_token"] })),
            &[("idempotency-key", &key), ("x-request-id", &rid)],
        )
        .await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let id = hold.body["id"].as_str().unwrap_or_default().to_owned();
    // The origin saw the caller's request id: it is on the booking's history row.
    let traced = stack
        .origin()?
        .count(
            "booking_history",
            &format!("request_id = '{rid}' and to_status = 'RESERVING'"),
        )
        .await?;
    assert_eq!(
        traced, 1,
        "the hold's history row carries the edge request id"
    );

    let confirm = stack
        .post(
            &format!("/v1/bookings/{id}/confirm"),
            Some(&t),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let extend = stack
        .post(
            &format!("/v1/bookings/{id}/extend"),
            Some(&t),
            &json!({ "end": w.1 + chrono::Duration::hours(1) }),
            None,
        )
        .await?;
    assert_eq!(extend.status, 200, "{}", extend.body);
    let cancel = stack
        .post(
            &format!("/v1/bookings/{id}/cancel"),
            Some(&t),
            &Value::Null,
            None,
        )
        .await?;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    let read = stack.get(&format!("/v1/bookings/{id}"), Some(&t)).await?;
    assert_eq!(read.status, 200, "{}", read.body);

    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            for k in [
                "id",
                "quote_id",
                "quote_token",
                "created_at",
                "updated_at",
                "hold_expires_at",
                "expires_at",
            ] {
                o.remove(k);
            }
        }
        v
    };
    Ok(json!({
        "search": found,
        "quote": strip(quote.body),
        "hold": strip(hold.body),
        "confirm": strip(confirm.body),
        "extend": strip(extend.body),
        "cancel": strip(cancel.body),
        "read": strip(read.body),
    }))
}

#[sqlx::test(migrations = "../migrations")]
async fn the_booking_lifecycle_through_the_edge_is_identical_on_workerd_and_wasmtime(
    pool: PgPool,
) -> TestResult {
    let mut seen = Vec::new();
    let w = window(3, 2);
    for runtime in Runtime::ALL {
        // Same database, one runtime after the other: the first run cancels its booking, so
        // the second sees the same fleet, prices and fees.
        let stack = EdgeStack::start(pool.clone(), runtime).await?;
        let result = lifecycle(&stack, "lena", w).await;
        stack.stop().await?;
        seen.push(result?);
    }
    assert_eq!(
        seen[0], seen[1],
        "workerd and wasmtime answered differently"
    );
    assert_eq!(seen[0]["cancel"]["status"], "CANCELLED");
    Ok(())
}
