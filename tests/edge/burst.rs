//! A burst past the runtime's capacity: 1,100 concurrent quote requests from one client. Every
//! answer is a 2xx, a 429 or a 503 problem+json with `Retry-After` — no host error page, no
//! dropped connection.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const BURST: usize = 1_100;

async fn a_burst_of_1100_concurrent_quotes_gets_only_answers_the_client_can_act_on(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    // Limits raised, so every request takes the whole path (JWT, script, cache read).
    let stack = EdgeStack::start_with(
        pool,
        runtime,
        &[
            ("EDGE_USER_LIMIT_PER_MIN", "1000000"),
            ("EDGE_IP_LIMIT_PER_MIN", "1000000"),
        ],
    )
    .await?;
    let t = token("bursty");
    let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
    let w = window(4, 2);
    let body = json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 });
    let warm = stack.post("/v1/quotes", Some(&t), &body, None).await?;
    assert_eq!(warm.status, 201, "{}", warm.body);

    // One client, one connection per request (no pool reuse can serialise the burst).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("{}/v1/quotes", stack.base);
    let in_flight = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let start = tokio::sync::Barrier::new(BURST);
    let replies = futures_util::future::join_all((0..BURST).map(|_| async {
        start.wait().await;
        in_flight.fetch_add(1, Ordering::SeqCst);
        let sent = client.post(&url).bearer_auth(&t).json(&body).send().await;
        // How many requests were still open when this one was answered.
        most.fetch_max(in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        let reply = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let ct = header_of(&resp, "content-type");
                let retry = header_of(&resp, "retry-after");
                let text = resp.text().await;
                text.map(|t| (status, ct, retry, t))
            }
            Err(e) => Err(e),
        };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        reply
    }))
    .await;
    // A burst that never overlapped would prove nothing: most requests must still have been
    // open when an answer came back.
    let most = most.load(Ordering::SeqCst);
    assert!(
        most >= BURST * 9 / 10,
        "at most {most} requests were open at once"
    );

    let mut tally = std::collections::BTreeMap::<u16, usize>::new();
    for reply in replies {
        let (status, ct, retry, text) =
            reply.map_err(|e| anyhow::anyhow!("a request of the burst got no answer: {e:?}"))?;
        *tally.entry(status).or_default() += 1;
        match status {
            200..=299 => {}
            429 | 503 => {
                assert!(
                    ct.starts_with("application/problem+json"),
                    "{status} with content type {ct}: {text}"
                );
                let problem: Value = serde_json::from_str(&text)?;
                assert_eq!(
                    problem["status"].as_u64(),
                    Some(u64::from(status)),
                    "{text}"
                );
                let retry: u64 = retry.parse().unwrap_or(0);
                assert!(retry >= 1, "{status} without Retry-After: {text}");
            }
            other => panic!("HTTP {other} ({ct}) in the burst: {text}"),
        }
    }
    println!("{} burst of {BURST}: {tally:?}", runtime.name());
    assert!(
        tally.range(200..300).map(|(_, n)| n).sum::<usize>() > 0,
        "nothing in the burst was served: {tally:?}"
    );
    stack.stop().await
}
on_both_runtimes!(a_burst_of_1100_concurrent_quotes_gets_only_answers_the_client_can_act_on);

fn header_of(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
