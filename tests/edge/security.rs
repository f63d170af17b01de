//! Security at the edge, on both runtimes: the JWT attack list of the origin suite
//! (`e2e::jwt_forge`) and the anonymous column of the authorization matrix.
//!
//! The edge verifies tokens itself (same `domain::auth` rules) so a forged token must be a
//! 401 problem *at the edge*, without costing the origin a request. The edge here trusts the
//! HS256 secret and two RS256 public keys (`rs1`, `rs2`), the mixed set where algorithm
//! confusion lives. For the matrix, every secured operation of the origin's `/openapi.json`
//! is called anonymously through the edge: each must be a 401, none may reach the origin.

use super::*;

fn rs_keys_json() -> String {
    let read = |f: &str| {
        std::fs::read_to_string(format!("{}/{f}", e2e::jwt_forge::FIXTURES)).unwrap_or_default()
    };
    json!({ "rs1": read("rs256_public.pem"), "rs2": read("rs256_other_public.pem") }).to_string()
}

async fn forged_tokens_are_401_at_the_edge_and_never_reach_the_origin(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let keys = rs_keys_json();
    let stack =
        EdgeStack::start_with(pool, runtime, &[("JWT_RS256_PUBLIC_KEYS", keys.as_str())]).await?;
    let before = stack.origin_requests().await?;
    let w = window(2, 1);
    let mut wrong = Vec::new();
    let attacks = e2e::jwt_forge::attacks("kim")?;
    for (name, bad) in &attacks {
        let read = stack.get(&search_path(w), Some(bad)).await?;
        let write = stack
            .post(
                "/v1/bookings",
                Some(bad),
                &json!({ "quote_token": "x" }),
                Some("k"),
            )
            .await?;
        for (what, reply) in [("read", &read), ("write", &write)] {
            if reply.status != 401 || !reply.content_type.starts_with("application/problem+json") {
                wrong.push(format!("{name} ({what}): {} {}", reply.status, reply.body));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "attacks not refused at the edge:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        stack.origin_requests().await?,
        before,
        "a forged token reached the origin"
    );
    // Control: a good token goes through.
    let ok = stack.get(&search_path(w), Some(&token("kim"))).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(attacks.len() >= 30);
    stack.stop().await
}
on_both_runtimes!(forged_tokens_are_401_at_the_edge_and_never_reach_the_origin);

async fn every_secured_operation_is_401_anonymously_at_the_edge(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let doc = stack.origin()?.get("/openapi.json", None).await?.body;
    let before = stack.origin_requests().await?;
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            if !secured {
                continue;
            }
            let concrete = path
                .replace("{id}", "bkg_euw_0190a0a0a0a07000800000000000aaaa")
                .replace("{region}", "EUW")
                .replace("{class}", "compact");
            let body = (method != reqwest::Method::GET).then(|| json!({}));
            let reply = stack
                .send(method.clone(), &concrete, None, body.as_ref(), &[])
                .await?;
            checked += 1;
            if reply.status != 401 {
                wrong.push(format!("{method} {path}: {} {}", reply.status, reply.body));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "anonymous requests not refused at the edge:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 20, "only {checked} secured operations");
    assert_eq!(
        stack.origin_requests().await?,
        before,
        "an anonymous request reached the origin"
    );
    stack.stop().await
}
on_both_runtimes!(every_secured_operation_is_401_anonymously_at_the_edge);
