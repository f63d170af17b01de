//! Authentication at the edge: bad tokens are 401 without reaching the origin.

use super::*;

async fn bad_tokens_are_401_at_the_edge_without_reaching_the_origin(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let now = Utc::now().timestamp();
    let good = token("kim");
    let payload = good.split('.').nth(1).unwrap_or_default().to_owned();
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let wrong_key = domain::auth::sign_hs256(
        &domain::auth::Claims {
            sub: "kim".into(),
            iss: ISSUER.into(),
            aud: Value::String(AUDIENCE.into()),
            exp: now + 600,
            nbf: None,
            iat: None,
            roles: vec![],
            membership: None,
        },
        b"another-secret-another-secret-another!",
        None,
    )?;
    let expired = token_with("kim", |c| {
        c.exp = now - 3_600;
        c.iat = Some(now - 7_200);
        c.nbf = Some(now - 7_200);
    });
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64(format!(
            r#"{{"sub":"admin","iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{}}}"#,
            now + 600
        )
        .as_bytes());
        parts.join(".")
    };

    let before = stack.origin_requests().await?;
    let w = window(2, 1);
    for (what, bad) in [
        ("wrong signature", Some(wrong_key.as_str())),
        ("tampered claims", Some(tampered.as_str())),
        ("expired", Some(expired.as_str())),
        ("alg none", Some(alg_none.as_str())),
        ("garbage", Some("not.a.jwt")),
        ("missing", None),
    ] {
        let read = stack.get(&search_path(w), bad).await?;
        read.assert_problem(401);
        assert_eq!(read.problem_type(), "/problems/unauthorized", "{what}");
        let write = stack
            .post(
                "/v1/bookings",
                bad,
                &json!({ "quote_token": "x" }),
                Some("k"),
            )
            .await?;
        write.assert_problem(401);
        assert!(header(&write, "www-authenticate").is_some(), "{what}");
    }
    assert_eq!(
        stack.origin_requests().await?,
        before,
        "a request with a bad token reached the origin"
    );
    // The same edge lets a good token through (so the counter above can move).
    let ok = stack.get(&search_path(w), Some(&good)).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(stack.origin_requests().await? > before);
    stack.stop().await
}
on_both_runtimes!(bad_tokens_are_401_at_the_edge_without_reaching_the_origin);
