//! Start-up and shutdown: connect, migrate, spawn the background jobs, serve until a stop.
//!
//! # Stopping
//!
//! A stop — SIGTERM or SIGINT when serving from `main`, [`Running::stop`] in tests: the same
//! path — runs in this order, all within `SHUTDOWN_GRACE_SECS` of the signal:
//!
//! 1. **Stop accepting.** Connections already waiting in the listen backlog are accepted and
//!    served (their requests were sent before the stop), then the listener closes: a new
//!    connection is refused.
//! 2. **Drain.** Requests in flight run to completion (hyper's graceful shutdown; idle
//!    keep-alive connections are closed, busy ones after their response). A request is never
//!    cut in the middle of its transaction; each is bounded by `REQUEST_TIMEOUT_MS` anyway.
//! 3. **Stop the jobs** ([`crate::jobs`]): one cancellation token tells every job; the relay
//!    settles its batch in flight and flushes its producer; edge-cache bumps started by the
//!    last requests finish. The job tracker must be empty before the deadline.
//!
//! Then `shutdown complete` is logged and the process exits 0. If the deadline passes first
//! — requests still running, or a job that did not stop — the stop returns an error naming
//! what was left, and the process exits non-zero instead of pretending it stopped cleanly.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::jobs::Jobs;
use crate::state::AppState;

/// The migrations, embedded at build time from the top-level `migrations/` folder.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long a connection handed back to the pool may take to answer the release check.
pub const RELEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long past the request deadline a pooled session may sit idle inside a transaction
/// before PostgreSQL ends it ([`idle_in_transaction_timeout`]).
const IDLE_IN_TRANSACTION_MARGIN: Duration = Duration::from_secs(5);

/// `idle_in_transaction_session_timeout` for the pool's sessions: the request deadline
/// (`REQUEST_TIMEOUT_MS`, which bounds every request's transaction) plus a margin.
///
/// Why: a client that vanishes mid-transaction (a dead host, a blackholed link: no RST, no
/// FIN) leaves its server session idle in its transaction, holding its locks, until TCP
/// keepalive notices hours later. Among those locks is the vehicle's event-sequence row
/// (migration `20261202071500_outbox_vehicle_sequence.sql`), which every write of that vehicle
/// needs: the fault suite's dead-peer test saw the sweeper wait on it. No live transaction of
/// ours idles that long (the relay's batch, which waits for the broker inside its
/// transaction, sets its own bound: `events::relay`), so past it the session is dead and the
/// server ends it, freeing the vehicle.
pub fn idle_in_transaction_timeout(config: &Config) -> Duration {
    config.request_timeout + IDLE_IN_TRANSACTION_MARGIN
}

/// Opens the pool and waits (bounded) for the database to accept connections.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    pool_options(config)
        .connect(&config.database_url())
        .await
        .context("connect to PostgreSQL (DATABASE_URL)")
}

/// The read replica's pool (`DATABASE_READ_URL`), opened lazily: a replica that is down at
/// start does not stop the origin (reads go to the primary until the lag probe reaches it).
/// Acquiring is bounded tighter than on the primary: a read that cannot reach the replica
/// soon is better run on the primary (`store/reads.rs`).
pub fn connect_replica(config: &Config) -> anyhow::Result<Option<PgPool>> {
    let Some(url) = config.read_url() else {
        return Ok(None);
    };
    let options = url
        .parse::<PgConnectOptions>()
        .context("DATABASE_READ_URL is not a PostgreSQL URL")?;
    Ok(Some(
        pool_options(config)
            .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options),
    ))
}

/// How long a read waits for a replica connection before it is run on the primary.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The pool's settings (the e2e harness opens its origins' pools with these too, on a
/// database of its own). Acquiring (the pool's own liveness ping included) is bounded by
/// `acquire_timeout`. Releasing is bounded here: sqlx 0.8 PINGs a returned connection
/// without any timeout, so a connection whose peer went silent (a dead host, a blackholed
/// link: no RST, no FIN) and whose query was cut by the request timeout would wait on that
/// PING forever and keep its pool slot; a few of them and every later request waits out
/// `acquire_timeout` for good (the fault suite's dead-peer fault found it). So each released
/// connection first answers a PING within [`RELEASE_CHECK_TIMEOUT`], or is closed. The price
/// is one more round trip per release, after the answer has gone out. Each new session gets
/// [`idle_in_transaction_timeout`] (one statement when it is opened).
pub fn pool_options(config: &Config) -> PgPoolOptions {
    let idle = format!("{}ms", idle_in_transaction_timeout(config).as_millis());
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _meta| {
            let idle = idle.clone();
            Box::pin(async move {
                sqlx::query!(
                    "select set_config('idle_in_transaction_session_timeout', $1, false)",
                    idle
                )
                .fetch_one(conn)
                .await?;
                Ok(())
            })
        })
        .after_release(|conn, _meta| {
            Box::pin(async move {
                use sqlx::Connection;
                match tokio::time::timeout(RELEASE_CHECK_TIMEOUT, conn.ping()).await {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(e)) => Err(e),
                    Err(_) => {
                        tracing::warn!(
                            "a pooled PostgreSQL connection did not answer within {RELEASE_CHECK_TIMEOUT:?}; closing it"
                        );
                        Err(sqlx::Error::PoolTimedOut)
                    }
                }
            })
        })
}

/// A running origin: its address and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    /// Cancelled to ask for a stop (by a signal, or by [`Running::stop`]).
    shutdown: CancellationToken,
    /// Ends when the stop is complete: requests drained, jobs stopped (or the deadline passed).
    done: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the way SIGTERM does: stops accepting, drains in-flight requests, stops every
    /// background job; an error if that did not finish within `SHUTDOWN_GRACE_SECS`.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the origin has stopped (after a signal, or [`Running::stop`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("the shutdown task failed")?
    }
}

/// Binds, migrates and serves. `shutdown_on_signal` makes SIGINT/SIGTERM stop the origin.
pub async fn start(
    config: Config,
    pool: PgPool,
    shutdown_on_signal: bool,
) -> anyhow::Result<Running> {
    // Registered first: a signal that arrives during start-up is then a stop, not a kill.
    let signals = if shutdown_on_signal {
        Some(Signals::register().context("listen for SIGTERM/SIGINT")?)
    } else {
        None
    };
    if config.migrate_on_start {
        migrate(&config, &pool).await?;
    } else {
        tracing::info!("MIGRATE_ON_START=false: not migrating (a migration Job does it)");
    }
    let role = config.role;
    let listener = TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("bind {}", config.bind_addr))?;
    let addr = listener.local_addr()?;
    let redis = crate::redis::link::RedisLink::connect(&config.redis).await?;
    let caches = crate::redis::cache::Caches::connect(&config.redis, config.l1_local_ttl).await?;
    let jobs = Jobs::new();
    let leadership = if role.elects() {
        let (leadership, tx) = crate::jobs::leader::elect();
        // A session of its own, on the primary itself (not through a transaction pooler).
        let url = config.session_url();
        jobs.spawn("leader", move |stop| {
            crate::jobs::leader::campaign(url, tx, stop)
        });
        leadership
    } else {
        crate::jobs::leader::Leadership::unelected()
    };
    let replica = connect_replica(&config)?;
    let state = AppState::new(
        config,
        pool,
        replica,
        redis,
        caches,
        jobs.tracker().clone(),
        leadership,
    )?;
    tracing::info!(%role, "origin role");

    // The GEO index is built before serving, so a ready origin has it (unless Redis is down:
    // then search uses PostgreSQL, and the index is built when Redis comes back).
    if role.runs_singletons() && state.redis.is_up() {
        if let Err(e) = state.availability.rebuild_all().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "initial availability index build failed"
            );
        }
    }
    // Cache warming: the pricing contexts are in L2 before the first quote.
    if role.prices() {
        match state.caches.warm(&state.db, &state.config.regions).await {
            Ok(n) => tracing::info!(contexts = n, "L2 pricing cache warmed"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "L2 cache warming failed"),
        }
    }
    match &state.config.pricing.inference_url {
        Some(url) => tracing::info!(%url, "pricing: AI inference API configured"),
        None => tracing::info!(
            "INFERENCE_URL is not set: risk is neutral and demand comes from live holds only"
        ),
    }
    spawn_jobs(&state, &jobs);

    let shutdown = CancellationToken::new();
    let grace = state.config.shutdown_grace;
    let header_read_timeout = state.config.header_read_timeout;
    let app = crate::http::app(state);
    let server = tokio::spawn(serve(
        listener,
        app,
        header_read_timeout,
        shutdown.clone().cancelled_owned(),
    ));
    tracing::info!(%addr, "origin listening");
    let done = tokio::spawn(supervise(shutdown.clone(), signals, server, jobs, grace));
    Ok(Running {
        addr,
        shutdown,
        done,
    })
}

/// Runs the migrations. sqlx's migrator holds a session-level advisory lock from start to end,
/// which a transaction pooler would leave on whichever server session took it: with
/// `DATABASE_SESSION_URL` set they run on a session of their own there.
pub async fn migrate(config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    if config.database_session_url.is_none() {
        return MIGRATOR.run(pool).await.context("run database migrations");
    }
    // A pool of one session (rather than a bare connection, whose `Acquire` bound keeps the
    // start-up future from being provably `Send`).
    let session = PgPoolOptions::new()
        .max_connections(1)
        .connect(&config.session_url())
        .await
        .context("connect to PostgreSQL for the migrations (DATABASE_SESSION_URL)")?;
    let ran = MIGRATOR
        .run(&session)
        .await
        .context("run database migrations");
    session.close().await;
    ran
}

/// Starts the background jobs of this process's role on `jobs` (see [`crate::jobs`] and the
/// table in [`crate::role`]).
fn spawn_jobs(state: &AppState, jobs: &Jobs) {
    let role = state.config.role;
    if state.reads.replica().is_some() {
        let reads = state.reads.clone();
        jobs.spawn("replica-probe", move |stop| {
            crate::jobs::replica::run(reads, stop)
        });
    }
    let links = [
        ("redis-probe", &state.redis),
        ("redis-probe-l1", state.caches.links()[0]),
        ("redis-probe-l2", state.caches.links()[1]),
    ];
    for (name, link) in links {
        let link = link.clone();
        jobs.spawn(name, move |stop| crate::jobs::redis_probe::run(link, stop));
    }
    if role.runs_singletons() {
        let (index, redis) = (state.availability.clone(), state.redis.clone());
        let every = state.config.redis.availability_rebuild;
        let leadership = state.leadership.clone();
        jobs.spawn("availability", move |stop| {
            crate::jobs::availability::run(index, redis, every, leadership, stop)
        });
        let sweeper_state = state.clone();
        jobs.spawn("sweeper", move |stop| {
            crate::jobs::sweeper::run(sweeper_state, stop)
        });
        if state
            .edge_gen
            .rest()
            .is_some_and(|(config, _)| !config.peers.is_empty())
        {
            let sync_state = state.clone();
            jobs.spawn("limit-sync", move |stop| {
                crate::jobs::limit_sync::run(sync_state, stop)
            });
        }
    }
    if role.prices() || role.runs_singletons() {
        // The surge grid: computed now, then every SURGE_RECOMPUTE_SECS (by the jobs leader,
        // and by every pricing replica for its own in-process grid).
        let (surge, regions) = (state.surge.clone(), state.config.regions.clone());
        let interval = state.config.pricing.surge_recompute;
        let leadership = if role.prices() {
            crate::jobs::leader::Leadership::unelected()
        } else {
            state.leadership.clone()
        };
        jobs.spawn("surge", move |stop| {
            crate::jobs::surge::run(surge, regions, interval, leadership, stop)
        });
    }
    if state.config.consumes() {
        if let Some(brokers) = state.config.kafka_brokers.clone() {
            let consumer_state = state.clone();
            jobs.spawn("consumer", move |stop| {
                crate::jobs::consumer::run(consumer_state, brokers, stop)
            });
        }
    }
    if state.config.dispatches_webhooks() {
        if let Some(brokers) = state.config.kafka_brokers.clone() {
            let webhook_state = state.clone();
            jobs.spawn("webhooks", move |stop| {
                crate::jobs::consumer::run_webhooks(webhook_state, brokers, stop)
            });
        }
    }
    if !role.relays() {
        return;
    }
    match crate::events::relay::RelaySettings::from_config(&state.config) {
        Some(mut settings) => {
            if state.config.database_session_url.is_some() {
                match state.config.session_url().parse::<PgConnectOptions>() {
                    Ok(options) => settings.lock_session = Some(options),
                    Err(e) => {
                        tracing::error!(error = %e, "DATABASE_SESSION_URL is not a PostgreSQL URL: the relay's lanes use DATABASE_URL")
                    }
                }
            }
            let pool = state.db.clone();
            jobs.spawn("relay", move |stop| {
                crate::jobs::relay::run(pool, settings, stop)
            });
        }
        None => tracing::info!(
            "KAFKA_BROKERS is not set: the outbox relay is off (events stay in the outbox)"
        ),
    }
}

/// Waits for a stop (a signal, [`Running::stop`], or the server ending by itself), then drains
/// the server and stops the jobs, all before `grace` has passed.
async fn supervise(
    shutdown: CancellationToken,
    signals: Option<Signals>,
    mut server: JoinHandle<anyhow::Result<()>>,
    jobs: Jobs,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut served = None;
    tokio::select! {
        () = shutdown.cancelled() => {}
        signal = wait_for(signals) => {
            tracing::info!(signal, "shutdown signal received: draining requests, then stopping jobs");
        }
        result = &mut server => served = Some(result),
    }
    shutdown.cancel();
    let started = Instant::now();
    let deadline = started + grace;
    let served = match served {
        Some(result) => result.context("the server task failed")?,
        None => match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(result) => result.context("the server task failed")?,
            Err(_) => {
                server.abort();
                Err(anyhow::anyhow!(
                    "requests still in flight after SHUTDOWN_GRACE_SECS ({}s): cut",
                    grace.as_secs()
                ))
            }
        },
    };
    if served.is_ok() {
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "requests drained; stopping jobs"
        );
    }
    let stopped = jobs.stop(deadline).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match (&served, &stopped) {
        (Ok(()), Ok(())) => {
            tracing::info!(
                elapsed_ms,
                "shutdown complete: requests drained, every job stopped"
            );
        }
        _ => tracing::error!(
            elapsed_ms,
            server = served.as_ref().err().map(|e| format!("{e:#}")),
            jobs = stopped.as_ref().err().map(ToString::to_string),
            "shutdown incomplete"
        ),
    }
    served?;
    stopped?;
    Ok(())
}

/// SIGTERM and SIGINT, registered at start.
#[derive(Debug)]
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

/// The next signal, or never when not listening for them.
async fn wait_for(signals: Option<Signals>) -> &'static str {
    match signals {
        Some(mut s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves `app` until `stop` completes, then lets in-flight requests finish.
///
/// Hand-written instead of `axum::serve`, which gives hyper no timer and so no header read
/// timeout: a client that sends half a request head (slowloris) would hold its connection and
/// task forever. Here hyper's HTTP/1 builder gets a timer and `HEADER_READ_TIMEOUT_MS` for the
/// request head; the body and the handler are bounded by the request deadline middleware.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_read_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let serve_one = |stream: tokio::net::TcpStream| {
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().map_request(
            |req: axum::http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
        ));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        serve_one(stream);
    }
    // Connections the kernel already completed are in the backlog with their requests on the
    // way: serve them rather than reset them by closing the listener. Straight from the
    // socket (not the reactor, which may not have reported them yet) until it has none left.
    let listener = listener.into_std().context("take the listener back")?;
    let mut backlog = 0usize;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream));
                match stream {
                    Ok(stream) => {
                        backlog += 1;
                        serve_one(stream);
                    }
                    Err(e) => tracing::warn!(error = %e, "backlog connection dropped"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        from_backlog = backlog,
        "stopped accepting; draining in-flight requests"
    );
    graceful.shutdown().await;
    Ok(())
}
