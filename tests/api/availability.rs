//! The GEO availability index: rebuilt from PostgreSQL, used by search, never required.

use std::time::Duration;

use domain::ids::VehicleId;
use domain::region::Region;
use e2e::test_redis;
use e2e::*;
use origin::config::{RedisConfig, Secret, VehicleLockMode};
use origin::redis::availability::Availability;
use origin::redis::link::RedisLink;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// An index handle on the same Redis and prefix as `app`.
async fn index_of(app: &TestApp) -> TestResult<Availability> {
    let config = RedisConfig {
        url: Secret(app.redis_url.clone().into_bytes()),
        mode: app.redis_mode.clone(),
        key_prefix: app.redis_prefix.clone(),
        command_timeout: Duration::from_millis(500),
        lock_ttl: Duration::from_secs(5),
        lock_wait: Duration::from_millis(50),
        vehicle_lock: VehicleLockMode::On,
        availability_rebuild: Duration::from_secs(60),
    };
    let link = RedisLink::connect(&config).await?;
    anyhow::ensure!(link.is_up(), "this test needs Redis at {}", app.redis_url);
    Ok(Availability::new(
        link,
        app.pool.clone(),
        &[Region::Euw, Region::Eun],
    ))
}

/// Puts a vehicle into the live index at (lon, lat), or moves it there, as a fleet-change
/// consumer would (the origin has none yet: its index changes only by rebuilds).
async fn put_in_index(
    app: &TestApp,
    index: &Availability,
    vehicle: VehicleId,
    lon: f64,
    lat: f64,
) -> TestResult {
    let mut conn = test_redis::connect_any(&app.redis_url).await?;
    redis::cmd("GEOADD")
        .arg(index.geo_key(vehicle.region))
        .arg(lon)
        .arg(lat)
        .arg(vehicle.uuid.simple().to_string())
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(())
}

/// Takes a vehicle out of the live index, as a fleet-change consumer would.
async fn remove_from_index(app: &TestApp, index: &Availability, vehicle: VehicleId) -> TestResult {
    let mut conn = test_redis::connect_any(&app.redis_url).await?;
    redis::cmd("ZREM")
        .arg(index.geo_key(vehicle.region))
        .arg(vehicle.uuid.simple().to_string())
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(())
}

/// PostgreSQL's view: active vehicles of `region` at their bay, by id.
async fn active_in_db(pool: &PgPool, region: Region) -> TestResult<Vec<(Uuid, f64, f64)>> {
    Ok(sqlx::query_as(
        "select v.id, b.lon, b.lat from vehicles v join parking_bays b on b.id = v.bay_id
          where v.region = $1 and v.status = 'active' order by v.id",
    )
    .bind(region.code())
    .fetch_all(pool)
    .await?)
}

/// Asserts the index holds exactly the database's active vehicles, at their bays (Redis
/// stores positions as 52-bit geohashes: within ~1e-5 degrees).
async fn assert_index_matches_db(
    index: &Availability,
    pool: &PgPool,
    region: Region,
) -> TestResult {
    let members = index.index_members(region).await?;
    let expected = active_in_db(pool, region).await?;
    let ids: Vec<Uuid> = members.iter().map(|m| m.0.uuid).collect();
    let expected_ids: Vec<Uuid> = expected.iter().map(|e| e.0).collect();
    assert_eq!(
        ids, expected_ids,
        "{region}: members are the active vehicles"
    );
    for ((id, lon, lat), (_, elon, elat)) in members.iter().zip(&expected) {
        assert!(
            (lon - elon).abs() < 1e-4 && (lat - elat).abs() < 1e-4,
            "{id}: index ({lon}, {lat}) vs bay ({elon}, {elat})"
        );
    }
    Ok(())
}

#[sqlx::test(migrations = "../migrations")]
async fn the_geo_index_rebuilt_from_scratch_equals_the_databases_view_of_available_vehicles(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let index = index_of(&app).await?;
    let in_maintenance: Vec<(Uuid, String)> =
        sqlx::query_as("select id, region from vehicles where status <> 'active'")
            .fetch_all(&app.pool)
            .await?;

    // Built at start, before the origin served.
    for region in [Region::Euw, Region::Eun] {
        assert_index_matches_db(&index, &app.pool, region).await?;
    }

    // From scratch: drop the index, rebuild, compare.
    let mut conn = test_redis::connect_any(&app.redis_url).await?;
    for region in [Region::Euw, Region::Eun] {
        redis::cmd("DEL")
            .arg(index.geo_key(region))
            .query_async::<()>(&mut conn)
            .await?;
        assert!(index.index_members(region).await?.is_empty());
        let report = index.rebuild(region).await?;
        assert_eq!(report.removed, 0);
        assert_eq!(report.added, report.members);
        assert_index_matches_db(&index, &app.pool, region).await?;
    }
    let all: Vec<Uuid> = [
        index.index_members(Region::Euw).await?,
        index.index_members(Region::Eun).await?,
    ]
    .concat()
    .into_iter()
    .map(|m| m.0.uuid)
    .collect();
    for (id, _) in &in_maintenance {
        assert!(!all.contains(id), "vehicle {id} is not active: not indexed");
    }

    // A vehicle goes to maintenance: after a rebuild it is gone.
    let gone = active_in_db(&app.pool, Region::Euw).await?[0].0;
    sqlx::query("update vehicles set status = 'maintenance' where id = $1")
        .bind(gone)
        .execute(&app.pool)
        .await?;
    let report = index.rebuild(Region::Euw).await?;
    assert_eq!((report.added, report.removed), (0, 1));
    assert_index_matches_db(&index, &app.pool, Region::Euw).await?;

    // Changes between rebuilds act on the live index.
    let (moved, lon, lat) = active_in_db(&app.pool, Region::Eun).await?[0];
    let moved = VehicleId::new(Region::Eun, moved);
    remove_from_index(&app, &index, moved).await?;
    assert!(!index
        .index_members(Region::Eun)
        .await?
        .iter()
        .any(|m| m.0 == moved));
    put_in_index(&app, &index, moved, lon, lat).await?;
    assert_index_matches_db(&index, &app.pool, Region::Eun).await?;
    app.stop().await
}

fn search_urls() -> Vec<String> {
    let (start, end) = window(2, 3);
    let s = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let e = end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    [
        (50.1109, 8.6821, 20_000),
        (50.1109, 8.6821, 1_500),
        (59.3293, 18.0686, 5_000),
        (59.3293, 18.0686, 50_000),
        // Munich: inside EUW's service area, far from every bay (an empty answer).
        (48.1372, 11.5756, 10_000),
    ]
    .iter()
    .map(|(lat, lon, r)| {
        format!("/v2/vehicles/search?lat={lat}&lon={lon}&radius_m={r}&start={s}&end={e}&limit=100")
    })
    .collect()
}

async fn results(app: &TestApp, urls: &[String]) -> TestResult<Vec<Value>> {
    let t = token("searcher");
    let mut pages = Vec::new();
    for url in urls {
        let page = app.get(url, Some(&t)).await?;
        anyhow::ensure!(page.status.as_u16() == 200, "{url}: {}", page.body);
        pages.push(page.body["items"].clone());
    }
    Ok(pages)
}

#[sqlx::test(migrations = "../migrations")]
async fn search_answers_the_same_with_redis_down_from_the_postgres_bounding_box(
    pool: PgPool,
) -> TestResult {
    let with_redis = spawn_app(pool.clone()).await?;
    let closed = format!("redis://127.0.0.1:{}", test_redis::free_port()?);
    let without_redis = spawn_app_with(pool, &[("REDIS_URL", &closed)]).await?;
    let ready = without_redis.get("/readyz", None).await?;
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.body);
    assert_eq!(ready.body["checks"]["availability"], "postgres-bbox");
    let ready = with_redis.get("/readyz", None).await?;
    assert_eq!(ready.body["checks"]["availability"], "redis-geo");

    // One booking, so the time-window check matters too.
    let vehicle = with_redis.vehicles("EUW").await?[0].clone();
    let hold = with_redis.hold("booker", &vehicle, window(2, 3)).await?;
    assert_eq!(hold.status.as_u16(), 201, "{}", hold.body);

    let urls = search_urls();
    let geo = results(&with_redis, &urls).await?;
    let bbox = results(&without_redis, &urls).await?;
    assert!(geo
        .iter()
        .any(|p| p.as_array().is_some_and(|a| !a.is_empty())));
    assert_eq!(geo, bbox, "the same pages with and without Redis");

    // And the Redis path really uses the index: a vehicle taken out of it is not a candidate.
    let index = index_of(&with_redis).await?;
    let victim = with_redis.vehicles("EUW").await?[1].clone();
    remove_from_index(&with_redis, &index, victim.parse()?).await?;
    let geo = results(&with_redis, &urls[..1]).await?;
    let bbox = results(&without_redis, &urls[..1]).await?;
    let listed = |pages: &[Value]| {
        pages[0]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["vehicle_id"] == victim.as_str()))
    };
    assert!(!listed(&geo) && listed(&bbox));
    index.rebuild(Region::Euw).await?;
    assert_eq!(
        results(&with_redis, &urls).await?,
        results(&without_redis, &urls).await?
    );

    without_redis.stop().await?;
    with_redis.stop().await
}
