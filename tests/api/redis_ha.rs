//! Redis Cluster and Sentinel under failure (README "Scaling out"): a master SIGKILLed in the
//! middle of contended holds double-books nothing and answers no 5xx outside the failover;
//! the origin follows the promoted master by itself, its locks return to Redis, and a stale
//! index on the promoted replica is reconciled from PostgreSQL.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::redis_ha::RedisHa;
use e2e::test_redis;
use e2e::*;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use sqlx::PgPool;

async fn readiness(app: &TestApp) -> TestResult<Value> {
    let ready = app.get("/readyz", None).await?;
    anyhow::ensure!(ready.status.as_u16() == 200, "readyz: {}", ready.body);
    Ok(ready.body)
}

/// Polls /readyz until `checks.locks` is `want`.
async fn wait_for_locks(app: &TestApp, want: &str, within: Duration) -> TestResult {
    RedisHa::wait_until(&format!("locks on {want}"), within, || async {
        Ok(readiness(app).await?["checks"]["locks"] == want)
    })
    .await
}

/// A hold on `vehicle` is refused at once while a lock planted on the topology behind `url`
/// holds it, and goes through once the lock is gone: the origin's locks are on that Redis.
async fn locks_are_on_redis(app: &TestApp, url: &str, vehicle: &str, days: i64) -> TestResult {
    let mut conn = test_redis::connect_any(url).await?;
    let key = format!(
        "{}lock:vehicle:{{{}}}",
        app.redis_prefix,
        uuid_of(vehicle)?.simple()
    );
    redis::cmd("SET")
        .arg(&key)
        .arg("someone-else")
        .arg("PX")
        .arg(30_000)
        .query_async::<()>(&mut conn)
        .await?;
    let blocked = app.hold("probe-blocked", vehicle, window(days, 1)).await?;
    blocked.assert_problem(409);
    assert!(
        blocked.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("right now")),
        "{}",
        blocked.body
    );
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut conn)
        .await?;
    let free = app.hold("probe-free", vehicle, window(days, 1)).await?;
    assert_eq!(free.status.as_u16(), 201, "{}", free.body);
    Ok(())
}

/// A quote then a hold: the first status that is not a 201 (a quote's 409: taken already),
/// else the hold's; 599 when the request itself failed.
async fn attempt(app: &TestApp, user: &str, vehicle: &str, (start, end): Window) -> u16 {
    let quote = match app
        .post(
            "/v1/quotes",
            Some(&token(user)),
            &json!({ "vehicle_id": vehicle, "start": start, "end": end }),
            None,
        )
        .await
    {
        Ok(q) if q.status.as_u16() == 201 => q,
        Ok(q) => return q.status.as_u16(),
        Err(_) => return 599,
    };
    match app.hold_with(user, &quote.body).await {
        Ok(r) => r.status.as_u16(),
        Err(_) => 599,
    }
}

type Window = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);

/// Every 5xx must fall inside the failover window `[from, to]`.
fn no_5xx_outside(replies: &[(u16, Instant)], from: Instant, to: Instant) -> TestResult<usize> {
    let mut inside = 0;
    for (status, at) in replies {
        if *status >= 500 {
            anyhow::ensure!(
                *at >= from && *at <= to,
                "a {status} outside the failover window ({:?} after the kill)",
                at.saturating_duration_since(from)
            );
            inside += 1;
        }
    }
    Ok(inside)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_cluster_master_killed_during_1000_contended_holds_double_books_nothing_and_locks_return(
    pool: PgPool,
) -> TestResult {
    let ha = RedisHa::cluster()?;
    let url = ha.origin_url();
    let app = spawn_app_with(
        pool,
        &[
            ("REDIS_URL", &url),
            ("REDIS_MODE", "cluster"),
            ("VEHICLE_LOCK", "on"),
            // All 1,000 at once: the shedder must not be what answers them.
            ("MAX_IN_FLIGHT", "4096"),
            ("DB_MAX_CONNECTIONS", "20"),
        ],
    )
    .await?;
    wait_for_locks(&app, "redis", Duration::from_secs(10)).await?;
    let vehicles: Vec<String> = app.vehicles("EUW").await?.into_iter().take(20).collect();
    let probe_vehicle = app.vehicles("EUN").await?[0].clone();
    locks_are_on_redis(&app, &url, &probe_vehicle, 20).await?;

    // 1,000 quotes on 20 vehicles, windows overlapping: 50 contenders per vehicle.
    let base = window(2, 0).0;
    let quotes: Vec<(String, Value)> = stream::iter(0..1000usize)
        .map(|i| {
            let app = &app;
            let vehicle = vehicles[i % vehicles.len()].clone();
            async move {
                let user = format!("c-user-{i}");
                let start = base + chrono::Duration::minutes(30 * (i as i64 % 5));
                let quote = app
                    .quote(&user, &vehicle, (start, start + chrono::Duration::hours(3)))
                    .await?;
                TestResult::Ok((user, quote["quote_token"].clone()))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<TestResult<_>>()?;

    // The master that serves slot 0 dies once the first 100 holds are answered.
    let victim = RedisHa::cluster_masters(ha.ports[0])
        .await?
        .into_iter()
        .find(|(_, slot)| *slot == Some(0))
        .map(|(port, _)| port)
        .ok_or_else(|| anyhow::anyhow!("no master serves slot 0"))?;
    let survivor = *ha.ports.iter().find(|p| **p != victim).unwrap_or(&victim);
    let answered = Arc::new(AtomicUsize::new(0));
    let replies: Arc<Mutex<Vec<(u16, Instant)>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killer = {
        let answered = answered.clone();
        let killed_at = killed_at.clone();
        let dir = ha.dir.clone();
        async move {
            while answered.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let pid = std::fs::read_to_string(dir.join(format!("redis-{victim}.pid")))?;
            std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.trim())
                .status()?;
            *killed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            TestResult::Ok(())
        }
    };
    let holds = futures_util::future::join_all(quotes.iter().map(|(user, quote)| {
        let app = &app;
        let answered = answered.clone();
        let replies = replies.clone();
        async move {
            let reply = app
                .post(
                    "/v1/bookings",
                    Some(&token(user)),
                    &json!({ "quote_token": quote }),
                    Some(&uuid::Uuid::new_v4().to_string()),
                )
                .await;
            answered.fetch_add(1, Ordering::SeqCst);
            let status = match &reply {
                Ok(r) => r.status.as_u16(),
                Err(_) => 599,
            };
            replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((status, Instant::now()));
            if let Ok(r) = &reply {
                if r.status.as_u16() == 409 {
                    r.assert_problem(409);
                }
            }
        }
    }));
    let (_, killed) = tokio::join!(holds, killer);
    killed?;
    let killed_at = killed_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| anyhow::anyhow!("the master was never killed"))?;

    // The replica takes the dead master's slots (about 2 s; the budget is for a loaded box,
    // and the 5xx window below is measured from the promotion itself).
    RedisHa::wait_until("a replica promoted", Duration::from_secs(30), || async {
        let masters = RedisHa::cluster_masters(survivor).await?;
        Ok(masters.len() == 3
            && !masters.iter().any(|(p, _)| *p == victim)
            && masters.iter().any(|(_, s)| *s == Some(0)))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", ha.diagnosis(survivor)))?;
    let promoted_at = Instant::now();

    let replies = replies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(replies.len(), 1000);
    let after_kill = replies.iter().filter(|(_, at)| *at > killed_at).count();
    anyhow::ensure!(
        after_kill > 0,
        "every hold was answered before the kill: the timing made this a no-op"
    );
    let created = replies.iter().filter(|(s, _)| *s == 201).count();
    let refused = replies.iter().filter(|(s, _)| *s == 409).count();
    let inside = no_5xx_outside(&replies, killed_at, promoted_at + Duration::from_secs(2))?;
    assert_eq!(
        created + refused + inside,
        1000,
        "only 201, 409 or 5xx in the window"
    );
    assert!(created >= vehicles.len(), "{created} created");
    let body = readiness(&app).await?;
    assert!(
        body["redis_degradations"].as_u64() >= Some(1),
        "the origin never saw the master die: {body}"
    );
    eprintln!(
        "cluster failover: {created} created, {refused} refused, {inside} 5xx in the window, \
         {after_kill} answered after the kill, promoted {:?} after it",
        promoted_at - killed_at
    );

    // The origin is back on Redis by itself, with its locks there again.
    wait_for_locks(&app, "redis", Duration::from_secs(10)).await?;
    locks_are_on_redis(&app, &url, &probe_vehicle, 21).await?;
    assert_eq!(app.overlapping_pairs().await?, 0, "double bookings");
    app.stop().await
}

/// The index of EUW on the node at `port`, as vehicle uuids.
async fn index_on(port: u16, key: &str) -> TestResult<BTreeSet<String>> {
    let mut conn = test_redis::connect(&RedisHa::node_url(port)).await?;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    Ok(members.into_iter().collect())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_sentinel_failover_is_followed_and_a_stale_promoted_index_is_reconciled(
    pool: PgPool,
) -> TestResult {
    let ha = RedisHa::sentinel()?;
    let (master, replica) = (ha.ports[0], ha.ports[1]);
    let app = spawn_app_with(
        pool,
        &[
            ("REDIS_URL", &ha.origin_url()),
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", e2e::redis_ha::SENTINEL_MASTER),
            ("VEHICLE_LOCK", "on"),
            // Only a failover may rebuild the index in this test.
            ("AVAILABILITY_REBUILD_SECS", "3600"),
            ("DB_MAX_CONNECTIONS", "20"),
        ],
    )
    .await?;
    wait_for_locks(&app, "redis", Duration::from_secs(10)).await?;
    let geo_key = format!("{}{{avail}}:geo:EUW", app.redis_prefix);
    let active: BTreeSet<String> = app
        .vehicles("EUW")
        .await?
        .iter()
        .map(|v| uuid_of(v).map(|u| u.simple().to_string()))
        .collect::<TestResult<_>>()?;
    RedisHa::wait_until("the index replicated", Duration::from_secs(10), || async {
        Ok(index_on(replica, &geo_key).await? == active)
    })
    .await?;
    let vehicles = app.vehicles("EUW").await?;
    // Frankfurt's fleet, all within the search's 20 km: the first one is listed.
    let hidden = vehicles
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no EUW vehicle"))?;
    let search_window = window(30, 2);
    assert!(
        app.search_lists(&hidden, search_window).await?,
        "listed before"
    );

    // The replica drifts: a stray write removes a vehicle from its copy of the index.
    let mut on_replica = test_redis::connect(&RedisHa::node_url(replica)).await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("no")
        .query_async::<()>(&mut on_replica)
        .await?;
    redis::cmd("ZREM")
        .arg(&geo_key)
        .arg(uuid_of(&hidden)?.simple().to_string())
        .query_async::<()>(&mut on_replica)
        .await?;

    // A booking run in the background, through the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let replies: Arc<Mutex<Vec<(u16, Instant)>>> = Arc::default();
    let run = {
        let (stop, replies) = (stop.clone(), replies.clone());
        let app = &app;
        let vehicles = &vehicles;
        futures_util::future::join_all((0..8usize).map(move |w| {
            let (stop, replies) = (stop.clone(), replies.clone());
            async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    // Workers pair up on a vehicle and window: one of each pair gets it.
                    let vehicle = &vehicles[(n + w / 2) % vehicles.len()];
                    let start = window(3, 0).0 + chrono::Duration::hours(3 * n as i64);
                    let status = attempt(
                        app,
                        &format!("s-{w}-{n}"),
                        vehicle,
                        (start, start + chrono::Duration::hours(2)),
                    )
                    .await;
                    replies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((status, Instant::now()));
                    n += 1;
                }
            }
        }))
    };
    let scenario = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The plant is still there at the kill: only the origin can undo it from here on.
        anyhow::ensure!(
            !index_on(replica, &geo_key)
                .await?
                .contains(&uuid_of(&hidden)?.simple().to_string()),
            "the planted drift did not hold on the replica"
        );
        ha.kill(master)?;
        let killed_at = Instant::now();
        RedisHa::wait_until(
            "the origin sees the master gone",
            Duration::from_secs(5),
            || async { Ok(readiness(&app).await?["checks"]["redis"] != "ok") },
        )
        .await?;
        RedisHa::wait_until(
            "the sentinels promote the replica",
            Duration::from_secs(20),
            || async { Ok(ha.sentinel_master_port().await? == replica) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", ha.diagnosis(replica)))?;
        let promoted_at = Instant::now();
        RedisHa::wait_until("the origin follows", Duration::from_secs(4), || async {
            Ok(readiness(&app).await?["checks"]["redis"] == "ok")
        })
        .await?;
        let followed_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        TestResult::Ok((killed_at, promoted_at, followed_at))
    };
    let (_, timeline) = tokio::join!(run, scenario);
    stop.store(true, Ordering::SeqCst);
    let (killed_at, promoted_at, followed_at) = timeline?;
    let follow = followed_at.saturating_duration_since(promoted_at);
    assert!(
        follow <= Duration::from_secs(2),
        "followed {follow:?} after the promotion (bound: 2 s)"
    );

    let replies = replies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let after = replies.iter().filter(|(_, at)| *at > followed_at).count();
    anyhow::ensure!(
        replies.iter().any(|(_, at)| *at < killed_at) && after > 0,
        "the booking run did not span the failover ({} replies, {after} after it)",
        replies.len()
    );
    let inside = no_5xx_outside(&replies, killed_at, promoted_at + Duration::from_secs(2))?;
    for (status, _) in &replies {
        assert!(
            matches!(status, 201 | 409) || *status >= 500,
            "unexpected {status}"
        );
    }
    eprintln!(
        "sentinel failover: promoted {:?} after the kill, followed {follow:?} after that; {} \
         holds, {inside} 5xx in the window",
        promoted_at - killed_at,
        replies.len()
    );

    // The promoted replica's stale index was rebuilt from PostgreSQL: what the origin serves
    // is the database's view again.
    RedisHa::wait_until("the index reconciled", Duration::from_secs(5), || async {
        Ok(index_on(replica, &geo_key).await? == active)
    })
    .await?;
    assert!(
        app.search_lists(&hidden, search_window).await?,
        "a vehicle the stale index lost is listed again"
    );
    let metrics = app.metrics_text().await?;
    assert!(
        metric_sum(&metrics, "redis_topology_changes_total", "") >= 1.0
            || readiness(&app).await?["redis_degradations"].as_u64() >= Some(1),
        "the failover was seen"
    );
    wait_for_locks(&app, "redis", Duration::from_secs(5)).await?;
    let probe_vehicle = app.vehicles("EUN").await?[0].clone();
    locks_are_on_redis(&app, &RedisHa::node_url(replica), &probe_vehicle, 22).await?;
    assert_eq!(app.overlapping_pairs().await?, 0, "double bookings");
    app.stop().await
}

/// A manual `CLUSTER FAILOVER` swaps master and replica without a failed command: only the
/// probe's new-master check can tell the origin that the data it serves may be stale. A drift
/// planted in the index (a vehicle removed) is rebuilt away after the failover although no
/// periodic rebuild is due and Redis never counted as down.
#[sqlx::test(migrations = "../migrations")]
async fn a_graceful_cluster_failover_alone_makes_the_origin_rebuild_its_index(
    pool: PgPool,
) -> TestResult {
    let ha = RedisHa::cluster()?;
    let url = ha.origin_url();
    let app = spawn_app_with(
        pool,
        &[
            ("REDIS_URL", &url),
            ("REDIS_MODE", "cluster"),
            ("AVAILABILITY_REBUILD_SECS", "3600"),
        ],
    )
    .await?;
    let geo_key = format!("{}{{avail}}:geo:EUW", app.redis_prefix);
    let hidden = app.vehicles("EUW").await?[0].clone();
    let member = uuid_of(&hidden)?.simple().to_string();
    let mut conn = test_redis::connect_any(&url).await?;
    RedisHa::wait_until("the index built", Duration::from_secs(10), || async {
        let mut conn = test_redis::connect_any(&url).await?;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&geo_key)
            .arg(&member)
            .query_async(&mut conn)
            .await?;
        Ok(score.is_some())
    })
    .await?;
    // The drift: the master (and so its replica) loses a vehicle the database has.
    redis::cmd("ZREM")
        .arg(&geo_key)
        .arg(&member)
        .query_async::<()>(&mut conn)
        .await?;
    let window = window(30, 2);
    assert!(
        !app.search_lists(&hidden, window).await?,
        "the planted drift shows in search"
    );
    let degradations = readiness(&app).await?["redis_degradations"].as_u64();

    // The replica of the index's master takes over, gracefully.
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&geo_key)
        .query_async(&mut conn)
        .await?;
    let nodes = RedisHa::cluster_nodes(ha.ports[0]).await?;
    let owner = nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)))
        .ok_or_else(|| anyhow::anyhow!("no master serves slot {slot}"))?;
    let replica = nodes
        .iter()
        .find(|n| n.master_id == owner.id)
        .map(|n| n.port)
        .ok_or_else(|| anyhow::anyhow!("the master on {} has no replica", owner.port))?;
    let mut on_replica = test_redis::connect(&RedisHa::node_url(replica)).await?;
    redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async::<()>(&mut on_replica)
        .await?;
    RedisHa::wait_until("the replica promoted", Duration::from_secs(10), || async {
        Ok(RedisHa::cluster_masters(replica)
            .await?
            .iter()
            .any(|(p, _)| *p == replica))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", ha.diagnosis(replica)))?;

    RedisHa::wait_until(
        "the index rebuilt after the failover",
        Duration::from_secs(5),
        || async { app.search_lists(&hidden, window).await },
    )
    .await?;
    let metrics = app.metrics_text().await?;
    assert!(
        metric_sum(&metrics, "redis_topology_changes_total", "") >= 1.0,
        "the new master was noticed"
    );
    eprintln!(
        "graceful failover: redis degradations before {degradations:?}, after {:?}",
        readiness(&app).await?["redis_degradations"].as_u64()
    );
    app.stop().await
}
