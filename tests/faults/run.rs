//! The fault run: clients and faults together, then the history checker over what the clients
//! saw, the database and the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::history::{check, History};
use e2e::TestResult;
use serde_json::json;

use crate::cluster::start_cluster;
use crate::faults::inject_all;
use crate::workload::client;
use crate::{CLIENTS, SWEEPER_MS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "about 75 s and the origin binary: run by scripts/faults.sh"]
async fn under_every_fault_no_double_booking_no_lost_write_or_event_and_idempotency_holds(
) -> TestResult {
    let rounds: usize = std::env::var("FAULTS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = start_cluster(&dir).await?;
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        clients.push(tokio::spawn(client(
            id,
            c.vehicles.clone(),
            history.clone(),
            stop.clone(),
        )));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut log = Vec::new();
    for _ in 0..rounds {
        inject_all(&mut c, t0, &mut log).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        cl.await??;
    }
    // Healed: let the relays drain the outbox and the sweepers end expired holds.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&c.pool)
                .await?;
        if pending == 0 || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ops = history.ops();
    let report = check(
        &ops,
        &c.pool,
        &c.broker.brokers(),
        Duration::from_millis(SWEEPER_MS),
        Duration::from_secs(90),
    )
    .await?;
    let summary = json!({
        "duration_s": t0.elapsed().as_secs(),
        "faults_injected": log.len(),
        "faults": log,
        "report": report,
        "proxy_connections": { "postgres": c.pg_proxy.connections(), "redis": c.redis_proxy.connections() },
    });
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/faults");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    eprintln!("{}", serde_json::to_string_pretty(&summary)?);
    anyhow::ensure!(
        report.acknowledged_ops > 50 && report.reads > 0,
        "too little work got through: {report:?}"
    );
    anyhow::ensure!(
        report.clean(),
        "the history checker found violations {:?}: {:#?}",
        report.fired(),
        report.problems
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
