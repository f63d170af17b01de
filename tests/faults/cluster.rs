//! The fault run's private cluster: PostgreSQL, Redis and a tansu broker of its own, a fault
//! proxy in front of PostgreSQL and of Redis, and two origin processes.

use e2e::cluster::{
    ensure_origin_bin_is_current, OriginProcess, PrivateBroker, PrivatePg, PrivateRedis,
};
use e2e::fault_proxy::FaultProxy;
use e2e::{TestResult, AUDIENCE, ISSUER, JWT_SECRET};

use crate::{
    BROKER_PORT, ORIGIN_PORTS, PG_PORT, PG_PROXY, REDIS_PORT, REDIS_PROXY, SWEEPER_MS, VEHICLES,
};

/// The private dependencies, the two origins and the vehicles the clients book.
pub(crate) struct Cluster {
    pub pg: PrivatePg,
    pub redis: PrivateRedis,
    pub broker: PrivateBroker,
    pub pg_proxy: FaultProxy,
    pub redis_proxy: FaultProxy,
    pub origins: Vec<tokio::sync::Mutex<OriginProcess>>,
    pub pool: sqlx::PgPool,
    pub vehicles: Vec<String>,
}

/// Starts PostgreSQL, Redis, the broker, the fault proxies and two origins, with the demo fleet.
pub(crate) async fn start_cluster(dir: &std::path::Path) -> TestResult<Cluster> {
    ensure_origin_bin_is_current()?;
    let pg = PrivatePg::start(&dir.join("pg"), PG_PORT).await?;
    let redis = PrivateRedis::start(REDIS_PORT).await?;
    let broker = PrivateBroker::start(&dir.join("broker"), BROKER_PORT).await?;
    let pg_proxy = FaultProxy::start(PG_PROXY, PG_PORT).await?;
    let redis_proxy = FaultProxy::start(REDIS_PROXY, REDIS_PORT).await?;
    let db_url = pg.url("postgres");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await?;
    origin::startup::MIGRATOR.run(&pool).await?;
    demo_fleet::seed_demo(&pool, VEHICLES).await?;
    let env: Vec<(String, String)> = [
        (
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{PG_PROXY}/postgres"),
        ),
        ("DB_MAX_CONNECTIONS", "8".into()),
        ("REDIS_URL", format!("redis://127.0.0.1:{REDIS_PROXY}")),
        ("REDIS_KEY_PREFIX", "faults:".into()),
        ("KAFKA_BROKERS", broker.brokers()),
        ("JWT_ISSUER", ISSUER.into()),
        ("JWT_AUDIENCE", AUDIENCE.into()),
        ("JWT_HS256_SECRET", JWT_SECRET.into()),
        (
            "QUOTE_SIGNING_KEYS",
            "k1=fault-quote-key-fault-quote-key-fault-quote".into(),
        ),
        ("QUOTE_ACTIVE_KID", "k1".into()),
        ("HOLD_TTL_SECS", "4".into()),
        ("SWEEPER_INTERVAL_MS", SWEEPER_MS.to_string()),
        ("REQUEST_TIMEOUT_MS", "4000".into()),
        // Small, so the overload fault can push past it with a modest burst.
        ("MAX_IN_FLIGHT", "24".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut origins = Vec::new();
    for (i, port) in ORIGIN_PORTS.into_iter().enumerate() {
        origins.push(tokio::sync::Mutex::new(
            OriginProcess::start(port, env.clone(), dir.join(format!("origin{i}.log"))).await?,
        ));
    }
    let rows: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "select id from vehicles where region = 'EUW' and status = 'active' order by id limit $1",
    )
    .bind(i64::try_from(VEHICLES)?)
    .fetch_all(&pool)
    .await?;
    let vehicles = rows
        .into_iter()
        .map(|(id,)| format!("veh_euw_{}", id.simple()))
        .collect();
    Ok(Cluster {
        pg,
        redis,
        broker,
        pg_proxy,
        redis_proxy,
        origins,
        pool,
        vehicles,
    })
}
