//! Requests the origin refuses early (schemathesis findings): through the edge they get the
//! origin's 4xx, not a 503.

use super::*;

/// Sends one raw request to `base` (no JSON re-encoding: the body is sent as given).
/// Sends a request as given; signed as an edge does when `signer` is given (the origin
/// called directly lets only edges in).
async fn raw(
    client: &reqwest::Client,
    base: &str,
    signer: Option<&e2e::edge_signing::TestSigner>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> TestResult<Reply> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut req = client.request(method, format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let mut req = req.build()?;
    if let Some(signer) = signer {
        signer.sign(&mut req)?;
    }
    let resp = client.execute(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = header_str(&headers, "content-type");
    let body = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        content_type,
        headers,
        body,
    })
}

fn header_str(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// What a request is, its method, path, headers and raw body.
type EarlyCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
);

/// Requests schemathesis found answered 503 `/problems/origin-unavailable` by an edge while
/// the origin answers them with a 4xx: through the edge they must get the origin's answer.
async fn requests_the_origin_refuses_early_get_its_4xx_through_the_edge(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let user = format!("Bearer {}", token("ria"));
    let ops = format!("Bearer {}", ops_token("ops-ria"));
    let json = ("content-type", "application/json");
    let rule = r#"{"active": null, "code": null, "kind": "", "membership_tier": null,
        "min_duration_minutes": 0, "percent_bp": 0, "valid_from": "2000-01-01T00:00:00Z",
        "valid_until": "2000-01-01T00:00:00Z"}"#;
    let cases: Vec<EarlyCase<'_>> = vec![
        (
            "OPTIONS on a write route",
            "OPTIONS",
            "/v1/bookings/schemathesis-ops/start",
            vec![("idempotency-key", "k1"), ("authorization", &ops)],
            None,
        ),
        (
            "POST without a body",
            "POST",
            "/v2/bookings/schemathesis-ops/cancel",
            vec![("idempotency-key", "k2"), ("authorization", &ops)],
            None,
        ),
        (
            "GET with a JSON body",
            "GET",
            "/v1/admin/pricing/0/discount-rules",
            vec![("authorization", &ops), json],
            Some(rule),
        ),
        (
            "POST with the body false",
            "POST",
            "/v2/bookings/schemathesis-ops/extend",
            vec![("idempotency-key", "k3"), ("authorization", &user), json],
            Some("false"),
        ),
        (
            "percent-encoded non-UTF-8 path",
            "PUT",
            "/v1/admin/pricing/%F3%9D%BD%81%15/discount-rules/%3B%F1%AA%A0%A2U",
            vec![("authorization", &ops), json],
            Some(rule),
        ),
        (
            "DELETE without a body",
            "DELETE",
            "/v1/admin/pricing/EUW/discount-rules/nope",
            vec![("authorization", &ops)],
            None,
        ),
    ];
    let origin = stack.origin()?;
    for (what, method, path, headers, body) in &cases {
        let direct = raw(
            &origin.client,
            &origin.base,
            origin.signer.as_ref(),
            method,
            path,
            headers,
            *body,
        )
        .await?;
        assert!(
            direct.status.is_client_error(),
            "{what}: the origin answered {} {}",
            direct.status,
            direct.body
        );
        let edged = raw(
            &stack.client,
            &stack.base,
            None,
            method,
            path,
            headers,
            *body,
        )
        .await?;
        assert_eq!(
            (edged.status, edged.problem_type()),
            (direct.status, direct.problem_type()),
            "{what}: the edge answered {} where the origin answers {}",
            edged.body,
            direct.body
        );
    }

    // A method the edge does not forward is refused at the edge, as the origin would.
    let before = stack.origin_requests().await?;
    for method in ["QUERY", "PROPFIND"] {
        let reply = raw(
            &stack.client,
            &stack.base,
            None,
            method,
            "/v1/bookings",
            &[("authorization", &user)],
            None,
        )
        .await?;
        reply.assert_problem(405);
        assert_eq!(reply.problem_type(), "/problems/method-not-allowed");
        let allow = header(&reply, "allow").unwrap_or("");
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(allow.contains(m), "Allow: {allow}");
        }
        assert!(!allow.contains(method), "Allow: {allow}");
    }
    assert_eq!(
        stack.origin_requests().await?,
        before,
        "a request with a method the edge does not forward reached the origin"
    );
    stack.stop().await
}
on_both_runtimes!(requests_the_origin_refuses_early_get_its_4xx_through_the_edge);
