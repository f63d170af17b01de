//! The harness runs each origin on a multi-thread runtime of its own (issue 16): its handlers
//! run in parallel, as in production, not interleaved on the test's one thread.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::origin_runtime::WORKERS;
use e2e::*;
use sqlx::PgPool;
use tokio::runtime::{Handle, RuntimeFlavor};

#[sqlx::test(migrations = "../migrations")]
async fn the_origin_runs_on_a_multi_thread_runtime_of_its_own(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    // The test itself is on `#[sqlx::test]`'s current-thread runtime...
    assert_eq!(
        Handle::current().runtime_flavor(),
        RuntimeFlavor::CurrentThread
    );
    // ...the origin is not.
    let origin = app.origin_runtime()?.clone();
    assert_eq!(origin.runtime_flavor(), RuntimeFlavor::MultiThread);
    assert_eq!(origin.metrics().num_workers(), WORKERS);

    // Two tasks on the origin's runtime are at the same point at the same moment, on two
    // threads: each blocks its worker until both have arrived (with one worker, or on the
    // test's thread, the first would wait alone until the deadline).
    let arrived = Arc::new(AtomicUsize::new(0));
    let rendezvous = |arrived: Arc<AtomicUsize>| async move {
        arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while arrived.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        (arrived.load(Ordering::SeqCst), std::thread::current().id())
    };
    let a = origin.spawn(rendezvous(arrived.clone()));
    let b = origin.spawn(rendezvous(arrived.clone()));
    let ((seen_a, thread_a), (seen_b, thread_b)) = (a.await?, b.await?);
    assert_eq!((seen_a, seen_b), (2, 2), "the two tasks never ran at once");
    assert_ne!(thread_a, thread_b);
    assert_ne!(thread_a, std::thread::current().id());

    // The origin answers — a readiness check that goes to its database — while the test's
    // thread is blocked in a plain socket read: it needs nothing from the test's runtime.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /readyz HTTP/1.1\r\nhost: origin\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("the origin did not answer while the test's thread was blocked")?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"postgres\":\"ok\""), "{answer}");
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stopped_origin_ends_its_runtime_threads(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let origin = app.origin_runtime()?.clone();
    assert!(app.get("/healthz", None).await?.status.is_success());
    app.stop().await?;
    // After the stop the runtime is shut down: nothing can be spawned on it any more.
    let late = origin.spawn(async {});
    assert!(late.await.is_err_and(|e| e.is_cancelled()));
    Ok(())
}
