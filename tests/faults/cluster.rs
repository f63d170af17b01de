//! The fault run's private cluster: PostgreSQL, Redis and a tansu broker of its own (its data
//! directory on a small tmpfs, so its disk can be filled), a fault proxy in front of
//! PostgreSQL and of Redis, and two origin processes.
//!
//! Every part sits behind its own lock: the nemesis runs faults concurrently, and a fault
//! holds its target's lock while it lasts, so two faults never fight over one process.

use e2e::cluster::{
    ensure_origin_bin_is_current, OriginProcess, PrivateBroker, PrivatePg, PrivateRedis,
};
use e2e::fault_proxy::FaultProxy;
use e2e::{TestResult, AUDIENCE, ISSUER, JWT_SECRET};
use tokio::sync::Mutex;

use crate::{
    knob, BROKER_PORT, LOCK_TTL_MS, ORIGIN_PORTS, PG_PORT, PG_PROXY, REDIS_PORT, REDIS_PROXY,
    SWEEPER_MS, VEHICLES,
};

/// The broker's tmpfs: room for a long run's events, small enough to fill in a moment.
const BROKER_TMPFS_MB: u32 = 256;

/// The private dependencies, the two origins and the vehicles the clients book.
pub(crate) struct Cluster {
    pub pg: Mutex<PrivatePg>,
    pub redis: Mutex<PrivateRedis>,
    pub broker: Mutex<PrivateBroker>,
    /// Whether the broker's data directory is a tmpfs (the disk-full fault needs it).
    pub broker_on_tmpfs: bool,
    pub brokers: String,
    pub pg_proxy: Mutex<FaultProxy>,
    pub redis_proxy: Mutex<FaultProxy>,
    pub origins: Vec<Mutex<OriginProcess>>,
    pub pool: sqlx::PgPool,
    pub vehicles: Vec<String>,
}

/// Starts PostgreSQL, Redis, the broker, the fault proxies and two origins, with the demo fleet.
pub(crate) async fn start_cluster(dir: &std::path::Path) -> TestResult<Cluster> {
    ensure_origin_bin_is_current()?;
    let vehicles_wanted = knob("FAULTS_VEHICLES", VEHICLES);
    let pg = PrivatePg::start(&dir.join("pg"), PG_PORT).await?;
    let redis = PrivateRedis::start(REDIS_PORT).await?;
    // `FAULTS_DISK_FULL=0` leaves the disk-full fault out (CI's bounded seed: one seed saw the
    // broker keep accepting writes on a full tmpfs — its SQLite reused free pages — so that
    // fault's effect is not certain in a single short run; the long modes keep it).
    let disk_full = knob("FAULTS_DISK_FULL", 1) != 0;
    let tmpfs = if disk_full {
        PrivateBroker::start_on_tmpfs(&dir.join("broker"), BROKER_PORT, BROKER_TMPFS_MB).await
    } else {
        Err(anyhow::anyhow!("FAULTS_DISK_FULL=0"))
    };
    let (broker, broker_on_tmpfs) = match tmpfs {
        Ok(b) => (b, true),
        Err(e) => {
            eprintln!("[faults] no tmpfs for the broker ({e:#}): the disk-full fault is off");
            (
                PrivateBroker::start(&dir.join("broker"), BROKER_PORT).await?,
                false,
            )
        }
    };
    let pg_proxy = FaultProxy::start(PG_PROXY, PG_PORT).await?;
    let redis_proxy = FaultProxy::start(REDIS_PROXY, REDIS_PORT).await?;
    let db_url = pg.url("postgres");
    // Named, so `pg_terminate_backend` of the origins' connections spares the harness's.
    let opts: sqlx::postgres::PgConnectOptions = db_url.parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.application_name("faults-harness"))
        .await?;
    origin::startup::MIGRATOR.run(&pool).await?;
    // The demo seeds per city; a few more than wanted, then the first `vehicles_wanted`.
    demo_fleet::seed_demo(&pool, vehicles_wanted).await?;
    let env: Vec<(String, String)> = [
        (
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{PG_PROXY}/postgres"),
        ),
        ("DB_MAX_CONNECTIONS", "8".into()),
        ("REDIS_URL", format!("redis://127.0.0.1:{REDIS_PROXY}")),
        ("REDIS_KEY_PREFIX", "faults:".into()),
        ("LOCK_TTL_MS", LOCK_TTL_MS.to_string()),
        ("KAFKA_BROKERS", broker.brokers()),
        // The checker judges bookings and their events; the availability consumer is not in
        // this world.
        ("EVENT_CONSUMER", "0".into()),
        ("JWT_ISSUER", ISSUER.into()),
        ("JWT_AUDIENCE", AUDIENCE.into()),
        ("JWT_HS256_SECRET", JWT_SECRET.into()),
        // Above the largest clock skew the nemesis injects (5 min): the skew is there to reach
        // the booking logic (quotes, hold expiry, sweepers) on a skewed origin; with the
        // default 30 s a 5-min-slow origin answers every request 401 "token not valid yet".
        ("JWT_LEEWAY_SECS", "360".into()),
        (
            "QUOTE_SIGNING_KEYS",
            "k1=fault-quote-key-fault-quote-key-fault-quote".into(),
        ),
        ("QUOTE_ACTIVE_KID", "k1".into()),
        // The clients call the origins directly (no edge in this world).
        ("ORIGIN_ALLOW_DIRECT", "1".into()),
        ("HOLD_TTL_SECS", "4".into()),
        ("SWEEPER_INTERVAL_MS", SWEEPER_MS.to_string()),
        ("REQUEST_TIMEOUT_MS", "4000".into()),
        // Small, so the overload fault can push past it with a modest burst.
        ("MAX_IN_FLIGHT", "24".into()),
        ("SHUTDOWN_GRACE_SECS", "5".into()),
        (
            "RUST_LOG",
            // Start-up and shutdown lines too (which signal stopped a process, if one did).
            std::env::var("FAULTS_ORIGIN_LOG")
                .unwrap_or_else(|_| "warn,origin::startup=info".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut origins = Vec::new();
    for (i, port) in ORIGIN_PORTS.into_iter().enumerate() {
        origins.push(Mutex::new(
            OriginProcess::start(port, env.clone(), dir.join(format!("origin{i}.log"))).await?,
        ));
    }
    let rows: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "select id from vehicles where region = 'EUW' and status = 'active' order by id limit $1",
    )
    .bind(i64::try_from(vehicles_wanted)?)
    .fetch_all(&pool)
    .await?;
    let vehicles: Vec<String> = rows
        .into_iter()
        .map(|(id,)| format!("veh_euw_{}", id.simple()))
        .collect();
    anyhow::ensure!(
        vehicles.len() == vehicles_wanted,
        "wanted {vehicles_wanted} EUW vehicles, the demo fleet has {}",
        vehicles.len()
    );
    Ok(Cluster {
        pg: Mutex::new(pg),
        redis: Mutex::new(redis),
        brokers: broker.brokers(),
        broker: Mutex::new(broker),
        broker_on_tmpfs,
        pg_proxy: Mutex::new(pg_proxy),
        redis_proxy: Mutex::new(redis_proxy),
        origins,
        pool,
        vehicles,
    })
}
