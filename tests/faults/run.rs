//! The fault run: clients and the seeded nemesis together, then the history checker over what
//! the clients saw, the database and the broker.
//!
//! It passes only if it could have failed: every fault showed its effect, operations were
//! acknowledged both while faults lasted and outside every fault, and the checker is clean.
//! A failure prints the seed (rerun with `FAULTS_SEED=<seed>`) and a short excerpt of the
//! history around what went wrong.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::history::{check_with, History, Kind, Op, Options};
use e2e::TestResult;
use serde_json::json;

use crate::cluster::start_cluster;
use crate::nemesis::{attribute, during, plan, Record};
use crate::workload::client;
use crate::{knob, CLIENTS, SWEEPER_MS};

/// The nemesis's span in a bounded run (faults start within it; the last may end later).
const SPAN: Duration = Duration::from_secs(75);
/// Extra random picks on top of every kind once.
const EXTRA: usize = 3;

/// The seed: `FAULTS_SEED`, or a fresh random one (printed either way).
fn seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

/// Distinct hold attempts (idempotency keys) so far.
fn holds_attempted(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|o| o.kind == Kind::Hold)
        .map(|o| o.key.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// Up to `n` operations that mention any of `ids` (booking or vehicle ids, idempotency keys),
/// one line each: the minimal history excerpt of a failure.
fn excerpt(ops: &[Op], t0: Instant, ids: &BTreeSet<String>, n: usize) -> Vec<String> {
    ops.iter()
        .filter(|o| {
            ids.iter().any(|id| {
                o.target.contains(id.as_str())
                    || o.key == *id
                    || o.body.to_string().contains(id.as_str())
            })
        })
        .take(n)
        .map(|o| {
            format!(
                "{:>7} ms..{:>7} ms origin {} {:?} {} key {} -> {:?} {}",
                o.started.saturating_duration_since(t0).as_millis(),
                o.ended.saturating_duration_since(t0).as_millis(),
                o.origin,
                o.kind,
                o.target,
                o.key,
                o.status,
                o.body.to_string().chars().take(160).collect::<String>()
            )
        })
        .collect()
}

/// Ids (`bk_…`, `veh_…`, bare UUIDs) mentioned in the checker's problems.
fn ids_in(problems: &[String]) -> BTreeSet<String> {
    problems
        .iter()
        .flat_map(|p| {
            p.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .filter(|w| {
                    w.starts_with("bk_")
                        || w.starts_with("veh_")
                        || uuid::Uuid::parse_str(w).is_ok()
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Restarts an origin that ended while no fault held it, as Kubernetes would restart a pod,
/// and records how it ended (exit code or signal) and the last lines of its log: an origin
/// that dies by itself is a finding to read, and without a restart every later fault would
/// find nothing to act on. A fault that stops or kills an origin holds that origin's lock
/// meanwhile, so its restarts are its own.
async fn supervise(
    c: Arc<crate::cluster::Cluster>,
    exits: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) {
    while !stop.load(Ordering::Relaxed) {
        for (i, origin) in c.origins.iter().enumerate() {
            let Ok(mut o) = origin.try_lock() else {
                continue;
            };
            let Some(status) = o.exited() else {
                continue;
            };
            let log = std::fs::read_to_string(o.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let line = format!(
                "origin {i} exited by itself at {} ms ({status}); restarted; its log ended with: {:?}",
                t0.elapsed().as_millis(),
                tail.into_iter().rev().collect::<Vec<_>>()
            );
            eprintln!("[faults] {line}");
            if let Err(e) = o.up().await {
                eprintln!("[faults] origin {i} did not come back: {e:#}");
            }
            if let Ok(mut v) = exits.lock() {
                v.push(line);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "about three minutes and the origin binary: run by scripts/faults.sh"]
async fn under_seeded_faults_every_fault_has_an_effect_and_no_double_booking_lost_write_or_event(
) -> TestResult {
    let seed = seed();
    let holds_target = knob("FAULTS_HOLDS", 0);
    let clients = knob("FAULTS_CLIENTS", CLIENTS);
    eprintln!("[faults] FAULTS_SEED={seed} (rerun with FAULTS_SEED={seed})");
    let dir = std::env::temp_dir().join(format!("faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = Arc::new(start_cluster(&dir).await?);
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..clients {
        tasks.push(tokio::spawn(client(
            id,
            c.vehicles.clone(),
            history.clone(),
            stop.clone(),
        )));
    }
    let t0 = Instant::now();
    let exits = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let supervisor = tokio::spawn(supervise(c.clone(), exits.clone(), stop.clone(), t0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut records: Vec<Record> = Vec::new();
    let mut schedule = Vec::new();
    let mut round = 0u64;
    loop {
        // Round 0 is the seed's schedule; a contended-holds run keeps drawing rounds (seed + i)
        // until enough holds were attempted.
        let p = plan(seed.wrapping_add(round), SPAN, EXTRA, c.broker_on_tmpfs);
        let base = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        schedule.extend(
            p.iter()
                .map(|x| json!({"round": round, "at_ms": base + x.at_ms, "fault": x.fault})),
        );
        let round_t0 = Instant::now();
        let mut got = crate::nemesis::run(c.clone(), p, round_t0).await;
        let shift = u64::try_from(round_t0.duration_since(t0).as_millis()).unwrap_or(0);
        for r in &mut got {
            r.start_ms += shift;
            r.end_ms += shift;
            r.planned_ms += shift;
        }
        records.extend(got);
        round += 1;
        if holds_attempted(&history.ops()) >= holds_target {
            break;
        }
        eprintln!(
            "[faults] round {round}: {} of {holds_target} holds attempted",
            holds_attempted(&history.ops())
        );
    }
    // A quiet stretch after the last fault: acknowledgements outside every fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    supervisor.await?;
    let exits = exits
        .lock()
        .map_or_else(|p| p.into_inner().clone(), |e| e.clone());
    // Healed: let the relays drain the outbox and the sweepers end every hold (the clients have
    // stopped; a hold lives HOLD_TTL_SECS, 4 s, and nobody confirms it any more), until both
    // are done, for as long as either makes progress (a contended run commits tens of thousands
    // of events; its relays need minutes, not a fixed minute), at most 10 minutes. The checker
    // reads the database once: a sweep after that read would publish a "phantom" release.
    let started_draining = Instant::now();
    let mut last = (i64::MAX, i64::MAX);
    let mut last_progress = Instant::now();
    loop {
        let (pending, expired): (i64, i64) = sqlx::query_as(
            "select (select count(*) from outbox where published_at is null),
                    (select count(*) from bookings where status = 'RESERVING')",
        )
        .fetch_one(&c.pool)
        .await?;
        if pending == 0 && expired == 0 {
            break;
        }
        if pending < last.0 || expired < last.1 {
            last_progress = Instant::now();
        }
        last = (pending.min(last.0), expired.min(last.1));
        if last_progress.elapsed() > Duration::from_secs(30)
            || started_draining.elapsed() > Duration::from_secs(600)
        {
            eprintln!("[faults] not quiescent: {pending} unpublished outbox rows, {expired} holds");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("[faults] drained in {:?}", started_draining.elapsed());
    // The sweeper's next period, so nothing it does lands after the checker's read.
    tokio::time::sleep(Duration::from_millis(2 * SWEEPER_MS) + Duration::from_secs(1)).await;
    let ops = history.ops();
    attribute(&mut records, &ops, t0);
    let acked_in_faults = ops
        .iter()
        .filter(|o| o.acknowledged())
        .filter(|o| records.iter().any(|r| during(o, t0, r.start_ms, r.end_ms)))
        .count();
    let acked_outside = ops
        .iter()
        .filter(|o| o.acknowledged())
        .filter(|o| !records.iter().any(|r| during(o, t0, r.start_ms, r.end_ms)))
        .count();
    // Operations per 10 s of the run (all attempts, acknowledged): where the work went.
    let mut per_10s: Vec<(usize, usize)> = Vec::new();
    for o in &ops {
        let slot = usize::try_from(o.started.saturating_duration_since(t0).as_secs() / 10)
            .unwrap_or(usize::MAX);
        if per_10s.len() <= slot {
            per_10s.resize(slot + 1, (0, 0));
        }
        per_10s[slot].0 += 1;
        per_10s[slot].1 += usize::from(o.acknowledged());
    }
    // The nemesis skews an origin's clock by up to 5 min: a hold that origin made carries an
    // expiry off by as much, so the checks that compare instants allow that much disagreement.
    // The read ends as soon as every committed event was seen (and 2 s more for duplicates).
    // Its deadline is generous, 90 s plus 1 s per 100 committed events: a read of tansu's
    // SQLite was once quadratic (no index on its header table; the harness now adds one,
    // `e2e::cluster::index_tansu_headers`), and a slow read must not be taken for lost events.
    let committed: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&c.pool)
        .await?;
    let event_wait = Duration::from_secs(90 + u64::try_from(committed / 100).unwrap_or(0));
    let options = Options {
        clock_slack: Duration::from_secs(301),
        ..Options::new(&c.brokers, Duration::from_millis(SWEEPER_MS), event_wait)
    };
    let report = check_with(&ops, &c.pool, &options).await?;
    let no_effect: Vec<&Record> = records.iter().filter(|r| !r.effect_seen).collect();
    let summary = json!({
        "seed": seed,
        "duration_s": t0.elapsed().as_secs(),
        "holds_attempted": holds_attempted(&ops),
        "vehicles": c.vehicles.len(),
        "clients": clients,
        "faults_injected": records.len(),
        "faults_without_effect": no_effect.len(),
        "acked_during_faults": acked_in_faults,
        "acked_outside_faults": acked_outside,
        "ops_and_acks_per_10s": per_10s,
        "schedule": schedule,
        "faults": records,
        "origin_exits_unplanned": exits,
        "report": report,
        "proxy": {
            "postgres": c.pg_proxy.lock().await.counts(),
            "redis": c.redis_proxy.lock().await.counts(),
        },
    });
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/faults");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join(format!("report-{seed}.json")),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    eprintln!("{}", serde_json::to_string_pretty(&summary["report"])?);
    eprintln!("[faults] operations, acknowledged per 10 s: {per_10s:?}");
    eprintln!("[faults] seed {seed}: per fault (injected / effect / acked / failed / unanswered):");
    for r in &records {
        eprintln!(
            "  {:>6}-{:>6} ms {:<32} effect {:<5} acked {:>4} failed {:>4} unanswered {:>4}  {}",
            r.start_ms, r.end_ms, r.kind, r.effect_seen, r.acked, r.failed, r.indeterminate, r.note
        );
    }
    let mut failures = Vec::new();
    for r in &no_effect {
        failures.push(format!(
            "fault without effect: {} ({:?}): {}",
            r.kind, r.fault, r.note
        ));
    }
    for e in &exits {
        eprintln!("[faults] {e}");
    }
    if acked_in_faults == 0 {
        failures.push("no operation was acknowledged while a fault lasted".into());
    }
    if acked_outside == 0 {
        failures.push("no operation was acknowledged outside every fault".into());
    }
    if holds_target > 0 && holds_attempted(&ops) < holds_target {
        failures.push(format!(
            "only {} of {holds_target} holds attempted",
            holds_attempted(&ops)
        ));
    }
    if report.reads == 0 {
        failures.push("no booking was read back (the read checks saw nothing)".into());
    }
    if !report.clean() {
        failures.push(format!(
            "the history checker found violations {:?}: {:#?}",
            report.fired(),
            report.problems
        ));
        for line in excerpt(&ops, t0, &ids_in(&report.problems), 30) {
            eprintln!("  history: {line}");
        }
    }
    for r in &no_effect {
        // The operations in flight while the ineffective fault lasted (the first few).
        for o in ops
            .iter()
            .filter(|o| during(o, t0, r.start_ms, r.end_ms))
            .take(5)
        {
            eprintln!(
                "  during {}: origin {} {:?} {} -> {:?}",
                r.kind, o.origin, o.kind, o.target, o.status
            );
        }
    }
    // The failure's one-paragraph summary, for scripts/faults.sh to print last (a CI log is
    // read from its tail).
    let failure_file = out.join("failure.txt");
    if failures.is_empty() {
        let _ = std::fs::remove_file(&failure_file);
    } else {
        std::fs::write(
            &failure_file,
            format!("FAULTS_SEED={seed}:\n{}\n", failures.join("\n")),
        )?;
    }
    anyhow::ensure!(
        failures.is_empty(),
        "FAULTS_SEED={seed} failed (rerun with FAULTS_SEED={seed}; report in target/faults/report-{seed}.json):\n{}",
        failures.join("\n")
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The supervisor sees what it exists to see: an origin that dies while no fault holds it
/// (here SIGKILLed behind the harness's back) is reported with how it ended, and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts the private cluster and the origin binary: run by scripts/faults.sh"]
async fn supervisor_reports_and_restarts_an_origin_that_died_outside_every_fault() -> TestResult {
    use anyhow::Context;
    let dir = std::env::temp_dir().join(format!("faults-supervisor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = Arc::new(start_cluster(&dir).await?);
    let exits = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let supervisor = tokio::spawn(supervise(
        c.clone(),
        exits.clone(),
        stop.clone(),
        Instant::now(),
    ));
    let killed = c.origins[1].lock().await.pid().context("origin 1 runs")?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -KILL {killed}: {status}");
    // The line is recorded after the restart was attempted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = exits.lock().map(|v| v.clone()).unwrap_or_default();
        if !seen.is_empty() {
            break seen;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the supervisor did not report origin 1's death within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    supervisor.await?;
    anyhow::ensure!(
        seen.len() == 1
            && seen[0].starts_with("origin 1 exited by itself")
            && seen[0].contains("signal: 9"),
        "one report (origin 1, killed by signal 9; origin 0 left alone) expected, got {seen:?}"
    );
    let (pid, base) = {
        let o = c.origins[1].lock().await;
        (o.pid(), o.base())
    };
    anyhow::ensure!(
        pid.is_some_and(|p| p != killed),
        "origin 1 was not restarted (pid {pid:?}, killed {killed})"
    );
    let health = reqwest::get(format!("{base}/healthz")).await?;
    anyhow::ensure!(
        health.status().is_success(),
        "the restarted origin answers /healthz {}",
        health.status()
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
