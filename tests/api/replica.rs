//! The read replica behind PgBouncer (issue 14, item 1): reads served by the replica,
//! read-your-writes over 200 write-then-read pairs (and the same check failing with it off),
//! the fall-back to the primary when replay stops, and a stopped replica costing no error.
//!
//! Each test starts its own primary, streaming replica and PgBouncer (transaction pooling)
//! with `scripts/replica.sh`, and an origin whose pools both go through PgBouncer.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::replica::Topology;
use e2e::*;
use serde_json::Value;

/// A topology and an origin on it (with `extra` configuration).
async fn start(extra: &[(&str, &str)]) -> TestResult<(Topology, TestApp)> {
    let topology = tokio::task::spawn_blocking(Topology::start).await??;
    let pool = Topology::pool(&topology.primary_url()).await?;
    let mut env: Vec<(String, String)> = topology.origin_env();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with(pool, &overrides).await?;
    Ok((topology, app))
}

async fn readyz(app: &TestApp) -> TestResult<Value> {
    let reply = app.get("/readyz", None).await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "readyz: {reply:?}");
    Ok(reply.body)
}

/// Waits until `/readyz` says reads go to `to` (`replica` or `primary`); how long it took.
async fn wait_reads_to(app: &TestApp, to: &str, within: Duration) -> TestResult<Duration> {
    let started = Instant::now();
    loop {
        let body = readyz(app).await?;
        if body["checks"]["replica"]["reads_to"] == to {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "reads still not to the {to} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(app: &TestApp) -> TestResult<String> {
    let resp = app
        .execute(app.client.get(format!("{}/metrics", app.base)))
        .await?;
    Ok(resp.text().await?)
}

/// The sum of a metric's samples whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Delays the replica's replay of each commit by `ms` (a lagging replica, on purpose).
async fn delay_replay(topology: &Topology, ms: u32) -> TestResult {
    let replica = Topology::pool(&topology.replica_url()).await?;
    sqlx::query(&format!(
        "alter system set recovery_min_apply_delay = '{ms}ms'"
    ))
    .execute(&replica)
    .await?;
    sqlx::query("select pg_reload_conf()")
        .execute(&replica)
        .await?;
    Ok(())
}

/// `n` pairs of a user's new hold and that user's next reads (the booking, then the list):
/// how many reads missed the booking just made.
async fn write_then_read(app: &TestApp, n: usize) -> TestResult<usize> {
    let mut vehicles = app.vehicles("EUW").await?;
    vehicles.extend(app.vehicles("EUN").await?);
    anyhow::ensure!(!vehicles.is_empty(), "no vehicles");
    let mut misses = 0;
    for i in 0..n {
        let user = format!("ryw-{}", i % 10);
        let vehicle = &vehicles[i % vehicles.len()];
        // A distinct day per round over the fleet: no two holds of a vehicle overlap.
        let w = window(1 + (i / vehicles.len()) as i64, 2);
        let hold = app.hold(&user, vehicle, w).await?;
        anyhow::ensure!(hold.status.as_u16() == 201, "hold {i}: {hold:?}");
        let id = hold.body["id"].as_str().context("booking id")?.to_owned();
        let t = token(&user);
        let one = app.get(&format!("/v1/bookings/{id}"), Some(&t)).await?;
        if one.status.as_u16() != 200 {
            anyhow::ensure!(one.status.as_u16() == 404, "read {i}: {one:?}");
            misses += 1;
        }
        let list = app.get("/v1/bookings?limit=100", Some(&t)).await?;
        anyhow::ensure!(list.status.as_u16() == 200, "list {i}: {list:?}");
        let listed = list.body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|b| b["id"] == id.as_str()));
        if !listed {
            misses += 1;
        }
    }
    Ok(misses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_served_by_the_replica_through_pgbouncer() -> TestResult {
    let (topology, app) = start(&[]).await?;
    wait_reads_to(&app, "replica", Duration::from_secs(10)).await?;
    let before = metrics(&app).await?;
    let replica_queries = topology.bouncer_queries("booking_replica").await?;

    let vehicle = app.vehicles("EUW").await?[0].clone();
    let w = window(2, 2);
    let (s, e) = (
        w.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        w.1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let t = token("reader");
    let search = app
        .get(
            &format!("/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&start={s}&end={e}"),
            Some(&t),
        )
        .await?;
    assert_eq!(search.status.as_u16(), 200, "{}", search.body);
    app.quote("reader", &vehicle, w).await?;
    let list = app.get("/v1/bookings", Some(&t)).await?;
    assert_eq!(list.status.as_u16(), 200, "{}", list.body);

    let after = metrics(&app).await?;
    // This origin's reads (the label names its replica: tests may share a process).
    let this = format!(r#"replica="127.0.0.1:{}/"#, topology.bouncer_port);
    let replica_reads = |text: &str| metric(text, "db_reads_total", &[r#"pool="replica""#, &this]);
    let primary_reads = |text: &str| metric(text, "db_reads_total", &[r#"pool="primary""#, &this]);
    // Search (its candidates), the quote (vehicle facts, the availability check) and the
    // list: each at least one read on the replica, none on the primary.
    assert!(
        replica_reads(&after) - replica_reads(&before) >= 3.0,
        "replica reads {} -> {}",
        replica_reads(&before),
        replica_reads(&after)
    );
    assert_eq!(primary_reads(&after), primary_reads(&before), "{after}");
    // And PgBouncer's replica pool carried them.
    assert!(topology.bouncer_queries("booking_replica").await? > replica_queries);
    let ready = readyz(&app).await?;
    assert_eq!(ready["checks"]["replica"]["state"], "in_use", "{ready}");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_their_own_new_booking_on_the_next_read_every_time_over_200_pairs() -> TestResult
{
    let (topology, app) =
        start(&[("REPLICA_WAIT_MS", "500"), ("REPLICA_MAX_LAG_MS", "2000")]).await?;
    // Every commit reaches the replica's readers 40 ms late: without read-your-writes the
    // read right after a write would miss it (the next test shows it does).
    delay_replay(&topology, 40).await?;
    wait_reads_to(&app, "replica", Duration::from_secs(10)).await?;
    let before = metrics(&app).await?;
    let started = Instant::now();
    let misses = write_then_read(&app, 200).await?;
    eprintln!(
        "200 write-then-read pairs in {:?}: {misses} missed",
        started.elapsed()
    );
    assert_eq!(misses, 0, "reads that missed the user's own new booking");
    // The replica served them after catching up (not the primary by default).
    let after = metrics(&app).await?;
    let this = format!(r#"replica="127.0.0.1:{}/"#, topology.bouncer_port);
    let caught_up = |t: &str| metric(t, "db_reads_total", &[r#"reason="caught_up""#, &this]);
    assert!(
        caught_up(&after) - caught_up(&before) >= 100.0,
        "own reads the replica served after replaying the write: {}",
        caught_up(&after) - caught_up(&before)
    );
    app.stop().await
}

/// Plants the violation: the same pairs with read-your-writes off (`REPLICA_RYW=0`) on a
/// lagging replica must show misses, or the test above could not catch a regression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_your_writes_the_same_pairs_catch_stale_reads() -> TestResult {
    let (topology, app) = start(&[("REPLICA_RYW", "0"), ("REPLICA_MAX_LAG_MS", "5000")]).await?;
    delay_replay(&topology, 300).await?;
    wait_reads_to(&app, "replica", Duration::from_secs(10)).await?;
    let misses = write_then_read(&app, 20).await?;
    eprintln!("read-your-writes off: {misses} of 40 reads missed the user's new booking");
    assert!(
        misses > 0,
        "with read-your-writes off and a 300 ms replay delay, a read right after the write \
         should have missed it at least once"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replay_paused_reads_go_to_the_primary_within_the_max_lag_and_a_stopped_replica_costs_no_error(
) -> TestResult {
    const MAX_LAG_MS: u64 = 500;
    let max_lag = MAX_LAG_MS.to_string();
    let (topology, app) = start(&[("REPLICA_MAX_LAG_MS", &max_lag)]).await?;
    wait_reads_to(&app, "replica", Duration::from_secs(10)).await?;
    let replica = Topology::pool(&topology.replica_url()).await?;
    let t = token("paula");
    let w = window(3, 2);
    let (s, e) = (
        w.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        w.1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let search_url =
        format!("/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=20000&start={s}&end={e}");

    let offered = app.get(&search_url, Some(&t)).await?;
    let vehicle = offered.body["items"][0]["vehicle_id"]
        .as_str()
        .with_context(|| format!("no search hit: {}", offered.body))?
        .to_owned();

    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await?;
    // A write the replica will not replay.
    let hold = app.hold("paula", &vehicle, w).await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);
    let id = hold.body["id"].as_str().context("id")?.to_owned();
    let fell_back = wait_reads_to(&app, "primary", Duration::from_secs(10)).await?;
    eprintln!("replay paused: reads on the primary {fell_back:?} after the write");
    // The lag passes REPLICA_MAX_LAG_MS that long after the write, then one probe interval
    // (100 ms) and this loop's polling: allow 1 s of scheduling on a busy machine.
    assert!(
        fell_back <= Duration::from_millis(MAX_LAG_MS + 1_000),
        "reads went to the primary {fell_back:?} after the write (max lag {MAX_LAG_MS} ms)"
    );
    let ready = readyz(&app).await?;
    assert_eq!(ready["checks"]["replica"]["state"], "lagging", "{ready}");
    assert!(
        ready["checks"]["replica"]["lag_ms"].as_u64() >= Some(MAX_LAG_MS),
        "{ready}"
    );
    let text = metrics(&app).await?;
    let this = format!(r#"replica="127.0.0.1:{}/"#, topology.bouncer_port);
    let lag = metric(&text, "replica_lag_seconds", &[&this]);
    assert!(
        lag >= MAX_LAG_MS as f64 / 1_000.0,
        "replica_lag_seconds{{{this}…}}: {lag}"
    );
    // Reads now come from the primary: the hold is in the user's list, the search is fresh.
    let list = app.get("/v1/bookings", Some(&t)).await?;
    assert_eq!(list.status.as_u16(), 200, "{}", list.body);
    assert!(
        list.body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|b| b["id"] == id.as_str())),
        "{}",
        list.body
    );
    let search = app.get(&search_url, Some(&t)).await?;
    assert_eq!(search.status.as_u16(), 200, "{}", search.body);
    assert!(
        !search.body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|v| v["vehicle_id"] == vehicle.as_str())),
        "the held vehicle is still offered (a stale read): {}",
        search.body
    );

    // Replay resumes: the replica is used again.
    sqlx::query("select pg_wal_replay_resume()")
        .execute(&replica)
        .await?;
    replica.close().await;
    wait_reads_to(&app, "replica", Duration::from_secs(10)).await?;

    // The replica stops: search and lists answer at once (a failed replica read is retried
    // on the primary; the probe then marks it down).
    topology.node("replica", "stop")?;
    for _ in 0..3 {
        let search = app.get(&search_url, Some(&t)).await?;
        assert_eq!(search.status.as_u16(), 200, "{}", search.body);
        let list = app.get("/v1/bookings", Some(&t)).await?;
        assert_eq!(list.status.as_u16(), 200, "{}", list.body);
        let one = app.get(&format!("/v1/bookings/{id}"), Some(&t)).await?;
        assert_eq!(one.status.as_u16(), 200, "{}", one.body);
    }
    wait_reads_to(&app, "primary", Duration::from_secs(5)).await?;
    let ready = readyz(&app).await?;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["replica"]["state"], "down", "{ready}");
    let search = app.get(&search_url, Some(&t)).await?;
    assert_eq!(search.status.as_u16(), 200, "{}", search.body);
    app.stop().await
}
