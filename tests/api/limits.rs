//! Request size and time limits: what a hostile or broken client cannot make the origin do.
//!
//! * Bodies over `MAX_BODY_BYTES` are a 413 problem, whether announced by Content-Length or
//!   streamed chunked without one (the limit counts bytes read, not the header).
//! * Deeply nested JSON is refused by the parser's recursion limit, not a stack overflow.
//! * A client that stops sending mid-body gets a 503 within the request deadline instead of
//!   holding a handler (and its database connection) forever; one that stops mid-headers is
//!   disconnected (hyper's header read timeout).
//! * No query is unbounded: every list and search takes a page size capped at 100, and the
//!   default page is 20 whatever is stored.

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[sqlx::test(migrations = "../migrations")]
async fn bodies_over_the_limit_are_413_problems_announced_or_streamed(pool: PgPool) -> TestResult {
    let app = spawn_app_with(pool, &[("MAX_BODY_BYTES", "4096")]).await?;
    let user = token("ann");
    // Announced with Content-Length.
    let big = json!({ "quote_token": "x".repeat(5000) });
    app.post("/v1/bookings", Some(&user), &big, None)
        .await?
        .assert_problem(413);
    app.post(
        "/v2/quotes",
        Some(&user),
        &json!({ "pad": "y".repeat(10_000) }),
        None,
    )
    .await?
    .assert_problem(413);
    // Streamed chunked, no Content-Length: 64 chunks of 1 KiB over a raw connection.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /v1/quotes HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {user}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    for _ in 0..64 {
        // The server may answer and close before all chunks are sent.
        if stream
            .write_all(format!("400\r\n{}\r\n", " ".repeat(1024)).as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let (reply, _) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");
    assert!(reply.contains("application/problem+json"), "{reply}");
    // Control: a body under the limit is parsed (and refused for what it says, not its size).
    app.post(
        "/v1/quotes",
        Some(&user),
        &json!({ "pad": "z".repeat(1000) }),
        None,
    )
    .await?
    .assert_problem(422);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn deeply_nested_json_is_a_client_error_not_a_crash(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let depth = 20_000;
    let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
    let reply = app
        .post_raw("/v1/quotes", Some(&token("ann")), "application/json", body)
        .await?;
    // 422 when the shape is wrong before the depth matters, 400 past the parser's limit.
    reply.assert_problem(if reply.status.as_u16() == 422 {
        422
    } else {
        400
    });
    let nested_object =
        format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000)).into_bytes();
    let reply = app
        .post_raw(
            "/v1/bookings",
            Some(&token("ann")),
            "application/json",
            nested_object,
        )
        .await?;
    reply.assert_problem(if reply.status.as_u16() == 422 {
        422
    } else {
        400
    });
    // Still serving.
    assert_eq!(app.get("/healthz", None).await?.status.as_u16(), 200);
    app.stop().await
}

/// Reads until the server closes the connection or `limit` passes; returns what was read and
/// whether the connection was closed.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_client_that_stalls_mid_body_gets_a_503_within_the_request_deadline(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app_with(pool, &[("REQUEST_TIMEOUT_MS", "1000")]).await?;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /v1/quotes HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 500\r\n\r\n{{\"vehicle_id\":",
        token("ann")
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await?;
    // Then nothing: the remaining 487 bytes never come.
    let (reply, _) = read_until_close(&mut stream, Duration::from_secs(8)).await;
    let waited = started.elapsed();
    assert!(
        reply.starts_with("HTTP/1.1 503") || reply.starts_with("HTTP/1.1 408"),
        "after {waited:?}: {reply:?}"
    );
    assert!(reply.contains("application/problem+json"), "{reply}");
    // Generous margin: the deadline is 1 s.
    assert!(waited < Duration::from_secs(6), "answered after {waited:?}");
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_client_that_stalls_mid_headers_is_disconnected(pool: PgPool) -> TestResult {
    let app = spawn_app_with(pool, &[("HEADER_READ_TIMEOUT_MS", "1000")]).await?;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await?;
    let started = Instant::now();
    // Slowloris: a request line and one header, then silence.
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n").as_bytes())
        .await?;
    let (reply, closed) = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        closed,
        "connection still open after {:?} (read {reply:?})",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // The server is fine for everyone else.
    assert_eq!(app.get("/healthz", None).await?.status.as_u16(), 200);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn every_list_and_search_is_paged_with_a_capped_page_size(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let ann = token("ann");
    let vehicles = app.vehicles("EUW").await?;
    // 25 holds of ann's: more than a default page.
    for i in 0..25usize {
        let v = &vehicles[i % vehicles.len()];
        let hold = app.hold("ann", v, window(2 + i64::try_from(i)?, 1)).await?;
        anyhow::ensure!(hold.status.as_u16() == 201, "{hold:?}");
    }
    for v in ["/v1", "/v2"] {
        let page = app.get(&format!("{v}/bookings"), Some(&ann)).await?;
        assert_eq!(page.status.as_u16(), 200);
        assert_eq!(
            page.body["items"].as_array().map(Vec::len),
            Some(20),
            "default page"
        );
        assert!(page.body["next_cursor"].is_string());
        let all = app
            .get(&format!("{v}/bookings?limit=100"), Some(&ann))
            .await?;
        assert_eq!(all.body["items"].as_array().map(Vec::len), Some(25));
        assert_eq!(all.body["next_cursor"], Value::Null);
        for bad in ["101", "0", "100000", "-1", "99999999999999999999"] {
            app.get(&format!("{v}/bookings?limit={bad}"), Some(&ann))
                .await?
                .assert_problem(400);
        }
        let (s, e) = window(3, 2);
        let q = format!(
            "{v}/vehicles/search?lat=50.11&lon=8.68&start={}&end={}",
            s.format("%Y-%m-%dT%H:%M:%SZ"),
            e.format("%Y-%m-%dT%H:%M:%SZ")
        );
        assert_eq!(app.get(&q, Some(&ann)).await?.status.as_u16(), 200);
        for bad in ["limit=101", "limit=0", "radius_m=50001", "radius_m=0"] {
            app.get(&format!("{q}&{bad}"), Some(&ann))
                .await?
                .assert_problem(400);
        }
        let hits = app
            .get(&format!("{q}&radius_m=50000&limit=5"), Some(&ann))
            .await?;
        assert!(
            hits.body["items"].as_array().map_or(0, Vec::len) <= 5,
            "{}",
            hits.body
        );
    }
    app.stop().await
}
