//! Issue 19, items 1 and 6, through real edges: the origin lets only the edge in (every other
//! scenario of this suite runs against such an origin too, so each proves the edge signs);
//! a key rotation across edge and origin; the client address from the platform only, an
//! IPv6 client limited by its /64, `X-Forwarded-For` ignored.

use super::*;
use e2e::edge_signing::{TestSigner, EDGE_KEY, EDGE_KID};

/// A GET written byte for byte on a fresh connection: the status and the whole answer.
async fn raw_get(base: &str, path: &str, token: &str) -> TestResult<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {text}"))?;
    Ok((status, text))
}

async fn only_requests_through_the_edge_reach_the_origin(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let stack = EdgeStack::start(pool, runtime).await?;
    let t = token("front");
    let origin = stack.origin()?;

    // Through the edge: a read, a write with a body, and odd request targets sent raw, byte
    // for byte (reqwest would normalise them first): what the edge signs must be what the
    // origin receives on either runtime (workerd's WHATWG parser normalises a URL on arrival,
    // wasi:http passes it as sent).
    let list = stack.get("/v1/bookings", Some(&t)).await?;
    assert_eq!(list.status, 200, "{}", list.body);
    let vehicle = origin.vehicles("EUW").await?[0].clone();
    let w = window(3, 2);
    let quote = stack
        .post(
            "/v1/quotes",
            Some(&t),
            &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    for target in [
        format!("{}&class=it's", search_path(w)),
        "/v1/bookings/../bookings".to_owned(),
        "/v1/bookings/%2e%2e/bookings?status=%27x%27".to_owned(),
        "/v1/bookings?status=a%20b&status=%C3%A9".to_owned(),
    ] {
        let (status, text) = raw_get(&stack.base, &target, &t).await?;
        println!("{} {target}: {status}", runtime.name());
        assert!(
            status < 500 && !text.contains("edge-signature"),
            "{target}: {status}: {text}"
        );
    }

    // Straight to the origin, with the same valid token: refused.
    let direct = reqwest::Client::new()
        .get(format!("{}/v1/bookings", origin.base))
        .bearer_auth(&t)
        .send()
        .await?;
    let direct = Reply::read(direct).await?;
    direct.assert_problem(401);
    assert_eq!(direct.problem_type(), "/problems/edge-signature");
    // A signature made with a key the origin does not hold: refused too.
    let mut forged = reqwest::Client::new()
        .get(format!("{}/v1/bookings", origin.base))
        .bearer_auth(&t)
        .build()?;
    TestSigner::new(EDGE_KID, "not-the-edge-key-not-the-edge-key-00", "EUW")?.sign(&mut forged)?;
    let forged = Reply::read(reqwest::Client::new().execute(forged).await?).await?;
    assert_eq!(forged.problem_type(), "/problems/edge-signature");
    // A client cannot pass a signature through the edge: the edge signs itself.
    let smuggled = stack
        .send(
            reqwest::Method::GET,
            "/v1/bookings",
            Some(&t),
            None,
            &[(
                "x-edge-signature",
                "kid=e1,ts=1,nonce=00000000000000000000,sig=AAAA",
            )],
        )
        .await?;
    assert_eq!(smuggled.status, 200, "{}", smuggled.body);
    stack.stop().await
}
on_both_runtimes!(only_requests_through_the_edge_reach_the_origin);

async fn an_edge_key_rotation_passes_without_a_refused_request(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    const NEXT_KID: &str = "e2";
    const NEXT_KEY: &str = "next-edge-signing-key-next-edge-signing-k";
    let mut stack = EdgeStack::start(pool, runtime).await?;
    let t = token("rotor");
    let through = |stack: &EdgeStack| {
        let t = t.clone();
        let base = stack.base.clone();
        let client = stack.client.clone();
        async move {
            let resp = client
                .get(format!("{base}/v1/bookings"))
                .bearer_auth(t)
                .send()
                .await?;
            Reply::read(resp).await
        }
    };
    assert_eq!(through(&stack).await?.status, 200, "before");

    // 1. The origin learns the next key (restart = rollout); the edge still signs with e1.
    let both = format!("{EDGE_KID}={EDGE_KEY},{NEXT_KID}={NEXT_KEY}");
    stack.set_origin_var("EDGE_SIGNING_KEYS", &both);
    stack.stop_origin().await?;
    stack.start_origin().await?;
    assert_eq!(through(&stack).await?.status, 200, "origin knows both");

    // 2. The edge switches to the next key.
    stack
        .restart_edge(&[
            ("EDGE_SIGNING_KID", NEXT_KID),
            ("EDGE_SIGNING_KEY", NEXT_KEY),
        ])
        .await?;
    let switched = through(&stack).await?;
    assert_eq!(
        switched.status, 200,
        "edge on the next key: {}",
        switched.body
    );

    // 3. The origin forgets the old key: the edge is unaffected, the old key is refused.
    stack.set_origin_var("EDGE_SIGNING_KEYS", &format!("{NEXT_KID}={NEXT_KEY}"));
    stack.stop_origin().await?;
    stack.start_origin().await?;
    assert_eq!(through(&stack).await?.status, 200, "old key removed");
    let origin = stack.origin()?;
    let mut old = reqwest::Client::new()
        .get(format!("{}/v1/bookings", origin.base))
        .bearer_auth(&t)
        .build()?;
    TestSigner::suite()?.sign(&mut old)?;
    let old = Reply::read(reqwest::Client::new().execute(old).await?).await?;
    old.assert_problem(401);
    assert_eq!(old.problem_type(), "/problems/edge-signature");
    stack.stop().await
}
on_both_runtimes!(an_edge_key_rotation_passes_without_a_refused_request);

async fn the_address_limit_uses_the_platforms_address_an_ipv6_64_and_never_x_forwarded_for(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    const LIMIT: usize = 3;
    let stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_IP_LIMIT_PER_MIN", "3"),
            ("EDGE_USER_LIMIT_PER_MIN", "1000"),
            // The window alone: three requests, the fourth refused.
            ("EDGE_RATE_LIMIT_BURST_SECS", "0"),
        ],
    )
    .await?;
    inside_one_window(Duration::from_secs(20)).await;
    let t = token("addr");
    let ask = |ip: &str, xff: &str| {
        let (name, value) = platform_address(runtime, ip);
        let t = t.clone();
        let xff = xff.to_owned();
        let stack = &stack;
        async move {
            stack
                .send(
                    reqwest::Method::GET,
                    "/v1/bookings",
                    Some(&t),
                    None,
                    &[(name, &value), ("x-forwarded-for", &xff)],
                )
                .await
        }
    };

    // Four addresses of one /64, each request with another X-Forwarded-For: one bucket.
    for i in 0..LIMIT {
        let reply = ask(
            &format!("2001:db8:19:6::{}", i + 1),
            &format!("198.51.100.{i}"),
        )
        .await?;
        assert_eq!(reply.status, 200, "request {i} of the /64: {}", reply.body);
    }
    let over = ask("2001:db8:19:6:ffff:1:2:3", "198.51.100.99").await?;
    over.assert_problem(429);
    assert!(header(&over, "retry-after").is_some());

    // The next /64 is another subscriber: its own bucket.
    let next = ask("2001:db8:19:7::1", "198.51.100.1").await?;
    assert_eq!(next.status, 200, "another /64: {}", next.body);

    // IPv4: one address is one bucket whatever X-Forwarded-For claims (here: the address
    // of a client that is not limited yet, and then a fresh one each time).
    for i in 0..LIMIT {
        let reply = ask("203.0.113.19", &format!("192.0.2.{i}")).await?;
        assert_eq!(
            reply.status, 200,
            "request {i} of the IPv4 client: {}",
            reply.body
        );
    }
    let v4_over = ask("203.0.113.19", "2001:db8:19:7::1").await?;
    assert_eq!(v4_over.status, 429, "{}", v4_over.body);
    let neighbour = ask("203.0.113.20", "203.0.113.19").await?;
    assert_eq!(
        neighbour.status, 200,
        "the next IPv4 address is its own bucket"
    );
    stack.stop().await
}
on_both_runtimes!(
    the_address_limit_uses_the_platforms_address_an_ipv6_64_and_never_x_forwarded_for
);
