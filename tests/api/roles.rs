//! Roles (`origin serve --role …`, `ORIGIN_ROLE`; `origin/src/role.rs`): each role serves only
//! its routes, every role serves health, readiness and metrics, a booking replica takes a quote
//! signed by a pricing replica, and two `jobs` replicas elect one sweeper.

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::key_rotation::hold;

/// One request of a route group, and whether the group answers it (anything but 404).
struct Probe {
    group: &'static str,
    method: &'static str,
    path: String,
}

fn probes() -> Vec<Probe> {
    let (s, e) = window(1, 2);
    let (s, e) = (s.to_rfc3339(), e.to_rfc3339());
    let search = format!(
        "/v1/vehicles/search?lat=50.1109&lon=8.6821&radius_m=30000&limit=5&start={}&end={}",
        urlencode(&s),
        urlencode(&e)
    );
    vec![
        Probe {
            group: "pricing",
            method: "GET",
            path: search,
        },
        Probe {
            group: "pricing",
            method: "POST",
            path: "/v1/quotes".into(),
        },
        Probe {
            group: "pricing",
            method: "GET",
            path: "/v1/surge?lat=50.1109&lon=8.6821".into(),
        },
        Probe {
            group: "pricing",
            method: "GET",
            path: "/v1/admin/pricing/EUW".into(),
        },
        Probe {
            group: "booking",
            method: "GET",
            path: "/v1/bookings".into(),
        },
        Probe {
            group: "booking",
            method: "POST",
            path: "/v2/bookings".into(),
        },
    ]
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// The database URL of `pool` (for a replica's own connections, such as the leader session).
fn url_of(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

async fn send(app: &TestApp, probe: &Probe) -> TestResult<Reply> {
    let token = ops_token("role-prober");
    match probe.method {
        "GET" => app.get(&probe.path, Some(&token)).await,
        _ => app.post(&probe.path, Some(&token), &json!({}), None).await,
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn each_role_serves_only_its_routes_and_every_role_serves_health_readiness_and_metrics(
    pool: PgPool,
) -> TestResult {
    for (role, groups) in [
        ("pricing", &["pricing"][..]),
        ("booking", &["booking"][..]),
        ("relay", &[][..]),
        ("jobs", &[][..]),
        ("api", &["pricing", "booking"][..]),
    ] {
        let app = spawn_app_with(pool.clone(), &[("ORIGIN_ROLE", role)]).await?;
        for path in ["/healthz", "/metrics"] {
            let reply = app.get(path, None).await?;
            assert_eq!(reply.status.as_u16(), 200, "{role} {path}: {reply:?}");
        }
        let ready = app.get("/readyz", None).await?;
        assert_eq!(ready.status.as_u16(), 200, "{role} /readyz: {ready:?}");
        assert_eq!(ready.body["role"], role, "{ready:?}");
        for probe in probes() {
            let reply = send(&app, &probe).await?;
            if groups.contains(&probe.group) {
                assert_ne!(
                    reply.status.as_u16(),
                    404,
                    "{role} must serve {} {}: {reply:?}",
                    probe.method,
                    probe.path
                );
            } else {
                reply.assert_problem(404);
            }
        }
        app.stop().await?;
    }
    Ok(())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_booking_replica_holds_with_a_quote_signed_by_a_pricing_replica(
    pool: PgPool,
) -> TestResult {
    let pricing = spawn_app_with(pool.clone(), &[("ORIGIN_ROLE", "pricing")]).await?;
    let booking = spawn_app_with(pool.clone(), &[("ORIGIN_ROLE", "booking")]).await?;
    let vehicle = pricing.vehicles("EUW").await?[0].clone();
    let quote = pricing.quote("alice", &vehicle, window(1, 2)).await?;
    // The booking replica cannot quote…
    let refused = booking
        .post(
            "/v1/quotes",
            Some(&token("alice")),
            &json!({ "vehicle_id": vehicle, "start": window(1, 2).0, "end": window(1, 2).1 }),
            None,
        )
        .await?;
    refused.assert_problem(404);
    // …and needs not: the signed quote is enough to hold.
    let quote_token = quote["quote_token"].as_str().unwrap_or_default();
    let hold = hold(&booking, &token("alice"), quote_token).await?;
    assert_eq!(hold.status.as_u16(), 201, "{hold:?}");
    booking.stop().await?;
    pricing.stop().await
}

/// A jobs replica's election state from its `/readyz`: (leader, sweeps).
async fn jobs_state(app: &TestApp) -> TestResult<(bool, u64)> {
    let ready = app.get("/readyz", None).await?;
    let jobs: &Value = &ready.body["jobs"];
    anyhow::ensure!(
        jobs["elected"] == true,
        "a jobs replica is elected: {ready:?}"
    );
    Ok((
        jobs["leader"].as_bool().unwrap_or(false),
        jobs["sweeps"].as_u64().unwrap_or(0),
    ))
}

/// Advisory locks of the jobs leader held in this test's database (0x4a4f424c = "JOBL").
async fn leader_locks(pool: &PgPool) -> TestResult<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from pg_locks where locktype = 'advisory' and granted
            and classid = x'4a4f424c'::int::oid and objsubid = 2
            and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(pool)
    .await?)
}

/// A hold that expires in a second, made through a booking replica (which never sweeps).
async fn short_hold(booking: &TestApp, pricing: &TestApp, vehicle: &str) -> TestResult<uuid::Uuid> {
    let quote = pricing.quote("carol", vehicle, window(3, 2)).await?;
    let quote_token = quote["quote_token"].as_str().unwrap_or_default();
    let hold = hold(booking, &token("carol"), quote_token).await?;
    anyhow::ensure!(hold.status.as_u16() == 201, "hold: {hold:?}");
    uuid_of(hold.body["id"].as_str().unwrap_or_default())
}

/// Waits until the sweeper ended `hold` (status FAILED, reason hold_expired).
async fn swept(pool: &PgPool, hold: uuid::Uuid, within: Duration) -> TestResult<bool> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from booking_history
              where booking_id = $1 and to_status = 'FAILED' and reason = 'hold_expired'",
        )
        .bind(hold)
        .fetch_one(pool)
        .await?;
        if n == 1 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

#[sqlx::test(migrations = "../migrations")]
async fn two_jobs_replicas_never_both_sweep_and_the_follower_takes_over_when_the_leader_stops(
    pool: PgPool,
) -> TestResult {
    let url = url_of(&pool);
    let jobs_env = [
        ("ORIGIN_ROLE", "jobs"),
        ("DATABASE_URL", url.as_str()),
        ("SWEEPER_INTERVAL_MS", "100"),
    ];
    let a = spawn_app_with(pool.clone(), &jobs_env).await?;
    let b = spawn_app_with(pool.clone(), &jobs_env).await?;
    // Holds live one second and only the jobs leader sweeps them.
    let short = [("ORIGIN_ROLE", "booking"), ("HOLD_TTL_SECS", "1")];
    let booking = spawn_app_with(pool.clone(), &short).await?;
    let pricing = spawn_app_with(pool.clone(), &[("ORIGIN_ROLE", "pricing")]).await?;
    let vehicles = pricing.vehicles("EUW").await?;

    // One leader within a few polls.
    let until = Instant::now() + Duration::from_secs(10);
    let (leader_is_a, _) = loop {
        let (sa, sb) = (jobs_state(&a).await?, jobs_state(&b).await?);
        assert!(!(sa.0 && sb.0), "both replicas lead: {sa:?} {sb:?}");
        if sa.0 != sb.0 && (sa.1 > 0 || sb.1 > 0) {
            break (sa.0, ());
        }
        anyhow::ensure!(Instant::now() < until, "no leader elected: {sa:?} {sb:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (leader, follower) = if leader_is_a { (a, b) } else { (b, a) };
    assert_eq!(
        leader_locks(&pool).await?,
        1,
        "one session holds the leader lock"
    );

    // The leader sweeps a hold that expired; the follower, polled all along, never sweeps.
    let first = short_hold(&booking, &pricing, &vehicles[0]).await?;
    assert!(
        swept(&pool, first, Duration::from_secs(10)).await?,
        "the leader swept the hold"
    );
    for _ in 0..10 {
        let (leads, sweeps) = jobs_state(&follower).await?;
        assert!(
            !leads && sweeps == 0,
            "the follower swept or led: {leads} {sweeps}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, leader_sweeps) = jobs_state(&leader).await?;
    assert!(
        leader_sweeps > 1,
        "the leader kept sweeping: {leader_sweeps}"
    );

    // The leader stops (its session closes): the follower takes the lock and sweeps.
    leader.stop().await?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (leads, sweeps) = jobs_state(&follower).await?;
        if leads && sweeps > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the follower did not take over: {leads} {sweeps}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        leader_locks(&pool).await?,
        1,
        "the new leader holds the lock"
    );
    let second = short_hold(&booking, &pricing, &vehicles[1]).await?;
    assert!(
        swept(&pool, second, Duration::from_secs(10)).await?,
        "the new leader swept"
    );

    booking.stop().await?;
    pricing.stop().await?;
    follower.stop().await
}
