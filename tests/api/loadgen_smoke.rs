//! CI's smoke run of the load generator: a few seconds of the mixed workload at a low rate
//! against a real origin, then the report files `scripts/bench.sh` writes. It checks that the
//! tool works end to end (no 5xx, every request answered), not how fast anything is.

use std::time::Duration;

use e2e::*;
use loadgen::{JwtSettings, Load, RunOptions, WorkloadKind};
use sqlx::PgPool;

fn options(app: &TestApp, workload: WorkloadKind, load: Load) -> RunOptions {
    let mut options = RunOptions::new(&app.base, workload, load);
    options.jwt = JwtSettings {
        secret: JWT_SECRET.into(),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        kid: None,
    };
    options.users = 50;
    options.origin_pid = Some(std::process::id());
    options
}

#[sqlx::test(migrations = "../migrations")]
async fn a_short_open_loop_mixed_run_reports_every_request_without_a_5xx(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let report = loadgen::run(&options(
        &app,
        WorkloadKind::Mixed,
        Load::constant(40.0, 3.0),
    ))
    .await?;

    assert!(report.ops_started >= 100, "started {}", report.ops_started);
    assert_eq!(report.ops_started, report.ops_finished);
    assert_eq!(report.errors.server_5xx, 0, "{report:#?}");
    assert_eq!(report.errors.shed_503, 0, "{report:#?}");
    assert_eq!(report.errors.transport + report.errors.timeout, 0);
    let endpoint = |name: &str| report.endpoints.iter().find(|e| e.name == name);
    for name in ["search", "quote"] {
        let e = endpoint(name).ok_or_else(|| anyhow::anyhow!("no {name} requests"))?;
        let ok: u64 = e
            .statuses
            .iter()
            .filter(|(s, _)| s.starts_with('2'))
            .map(|(_, n)| n)
            .sum();
        assert!(ok > 0 && e.latency.p99_ms > 0.0, "{name}: {e:?}");
    }
    assert!(
        report.caches.contains_key("l1"),
        "cache ratios read from /metrics"
    );
    assert!(report.origin_rss.as_ref().is_some_and(|r| r.max_mib > 1.0));

    // The files the bench command writes: run JSON and markdown, the plot, the summary.
    let dir = std::env::temp_dir().join(format!("loadgen-smoke-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let run = dir.join("mixed.json");
    std::fs::write(&run, serde_json::to_vec(&report)?)?;
    std::fs::write(dir.join("mixed.md"), report.markdown())?;
    loadgen::plot::latency_svg(&report, &dir.join("mixed.svg"))?;
    let md = loadgen::summary::write(&[run], None, &dir, "smoke")?;
    assert!(md.contains("seed mix at 80 % of its max"), "{md}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json"))?)?;
    assert_eq!(json["runs"]["mixed"]["workload"], "mixed");
    assert!(std::fs::read_to_string(dir.join("mixed.svg"))?.contains("<svg"));
    std::fs::remove_dir_all(&dir)?;
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_closed_loop_holds_run_commits_every_prepared_hold(pool: PgPool) -> TestResult {
    let app = spawn_app(pool).await?;
    let mut options = options(
        &app,
        WorkloadKind::Holds,
        Load::Closed {
            concurrency: 4,
            duration: Duration::from_secs(20),
        },
    );
    options.prepared_holds = 40;
    let report = loadgen::run(&options).await?;
    assert!(
        report.exhausted,
        "the run ends when the prepared quotes are used"
    );
    let holds = report
        .endpoints
        .iter()
        .find(|e| e.name == "hold")
        .ok_or_else(|| anyhow::anyhow!("no holds"))?;
    assert_eq!(holds.statuses.get("201"), Some(&40), "{holds:?}");
    assert_eq!(app.count("bookings", "status = 'RESERVING'").await?, 40);
    assert_eq!(app.overlapping_pairs().await?, 0);
    app.stop().await
}
