//! The edge's access log (issue 15): one JSON line per request on the runtime's standard
//! output, with the route template, status, request and trace ids, the user's pseudonym —
//! and no token, key or quote token.

use super::*;

async fn the_edge_writes_one_json_access_line_per_request_and_no_token(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let t = token("ada");
    let vehicle = stack.origin()?.vehicles("EUW").await?[1].clone();
    let w = window(5, 2);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let miss = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(miss.status, 201, "{}", miss.body);
    let hit = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(header(&hit, "x-edge-cache"), Some("hit"));
    let refused = stack.get("/v1/bookings", Some("not-a-token")).await?;
    assert_eq!(refused.status, 401);
    let booking = stack
        .get(
            "/v1/bookings/bkg_euw_0000000000000000000000000000",
            Some(&t),
        )
        .await?;
    let replies = [&miss, &hit, &refused, &booking];

    // The lines arrive through a pipe: wait (bounded) for one per request.
    let rid = |r: &Reply| header(r, "x-request-id").unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = stack.edge_access_lines();
        let all_there = replies
            .iter()
            .all(|r| lines.iter().any(|l| l["request_id"] == rid(r)));
        if all_there || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let line_of = |r: &Reply| -> TestResult<Value> {
        let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == rid(r)).collect();
        anyhow::ensure!(
            mine.len() == 1,
            "{} access lines for request {}: {lines:#?}",
            mine.len(),
            rid(r)
        );
        Ok(mine[0].clone())
    };

    let ada = domain::trace::user_hash("ada");
    for (reply, cache) in [(&miss, "miss"), (&hit, "hit")] {
        let line = line_of(reply)?;
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["route"], "/v1/quotes", "{line}");
        assert_eq!(line["status"], 201, "{line}");
        assert_eq!(line["cache"], cache, "{line}");
        assert_eq!(line["user"], ada.as_str(), "{line}");
        assert_eq!(line["region"], "EUW", "{line}");
        assert_eq!(line["runtime"], runtime.name(), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["duration_ms"].is_u64(), "{line}");
        let traced = header(reply, "traceresponse")
            .and_then(domain::trace::TraceParent::parse)
            .map(|tp| (tp.trace_id_hex(), tp.parent_id_hex()));
        assert_eq!(
            traced,
            Some((
                line["trace_id"].as_str().unwrap_or_default().to_owned(),
                line["span_id"].as_str().unwrap_or_default().to_owned()
            )),
            "{line}"
        );
    }
    let line = line_of(&refused)?;
    assert_eq!(line["status"], 401, "{line}");
    assert_eq!(line["route"], "/v1/bookings", "{line}");
    assert!(
        line["user"].is_null(),
        "an unverified caller was named: {line}"
    );
    let line = line_of(&booking)?;
    assert_eq!(line["route"], "/v1/bookings/{id}", "{line}");

    // Nothing secret in anything the edge wrote.
    let out = stack.edge_stdout().join("\n");
    let quote_token = miss.body["quote_token"].as_str().unwrap_or_default();
    let signature = |s: &str| s.rsplit('.').next().unwrap_or_default().to_owned();
    for (name, secret) in [
        ("the bearer token", t.clone()),
        ("the token's signature", signature(&t)),
        ("the JWT secret", JWT_SECRET.to_owned()),
        ("the gateway token", e2e::edge::GATEWAY_TOKEN.to_owned()),
        ("the quote token", quote_token.to_owned()),
        ("the quote token's signature", signature(quote_token)),
        ("the refused token", "not-a-token".to_owned()),
    ] {
        assert!(
            secret.len() < 8 || !out.contains(&secret),
            "{name} is in the edge's output"
        );
    }
    stack.stop().await
}

on_both_runtimes!(the_edge_writes_one_json_access_line_per_request_and_no_token);
