//! Start-up and shutdown: connect, migrate, spawn background work, serve until a signal.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::state::AppState;

/// The migrations, embedded at build time from the top-level `migrations/` folder.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens the pool and waits (bounded) for the database to accept connections.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&config.database_url())
        .await
        .context("connect to PostgreSQL (DATABASE_URL)")
}

/// A running origin: its address and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The outbox relay, when `KAFKA_BROKERS` is set: awaited on stop (it closes its lock
    /// session, so its lanes are free for other instances at once).
    relay: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, stops background tasks.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let served = self.server.await?;
        if let Some(relay) = self.relay {
            // Bounded: a batch in flight gets a short grace, then the relay lets go.
            let _ = tokio::time::timeout(Duration::from_secs(15), relay).await;
        }
        served
    }

    /// Waits until the server ends (after a signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await?
    }
}

/// Binds, migrates and serves. `shutdown_on_signal` makes SIGINT/SIGTERM stop the server.
pub async fn start(
    config: Config,
    pool: PgPool,
    shutdown_on_signal: bool,
) -> anyhow::Result<Running> {
    use anyhow::Context;
    MIGRATOR
        .run(&pool)
        .await
        .context("run database migrations")?;
    let listener = TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("bind {}", config.bind_addr))?;
    let addr = listener.local_addr()?;
    let redis = crate::redis::link::RedisLink::connect(&config.redis).await?;
    let caches = crate::redis::cache::Caches::connect(&config.redis)
        .await?
        .with_local_ttl(config.l1_local_ttl);
    let state = AppState::new(config, pool, redis, caches)?;
    let (shutdown, mut stop_rx) = watch::channel(false);

    // The GEO index is built before serving, so a ready origin has it (unless Redis is down:
    // then search uses PostgreSQL, and the index is built when Redis comes back).
    if state.redis.is_up() {
        if let Err(e) = state.availability.rebuild_all().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "initial availability index build failed"
            );
        }
    }
    state.redis.spawn_probe(shutdown.subscribe());
    state.caches.spawn_probes(&shutdown);
    // Cache warming: the pricing contexts are in L2 before the first quote.
    match state.caches.warm(&state.db, &state.config.regions).await {
        Ok(n) => tracing::info!(contexts = n, "L2 pricing cache warmed"),
        Err(e) => tracing::warn!(error = format!("{e:#}"), "L2 cache warming failed"),
    }
    state.availability.spawn(
        state.config.redis.availability_rebuild,
        shutdown.subscribe(),
    );

    // The surge grid: computed now, then every SURGE_RECOMPUTE_SECS.
    state.surge.spawn(
        state.config.regions.clone(),
        state.config.pricing.surge_recompute,
        shutdown.subscribe(),
    );
    match &state.config.pricing.inference_url {
        Some(url) => tracing::info!(%url, "pricing: AI inference API configured"),
        None => tracing::info!(
            "INFERENCE_URL is not set: risk is neutral and demand comes from live holds only"
        ),
    }

    crate::jobs::sweeper::spawn(state.clone(), shutdown.subscribe());
    let relay = match crate::events::relay::RelaySettings::from_config(&state.config) {
        Some(settings) => Some(crate::events::relay::spawn_relay(
            state.db.clone(),
            settings,
            shutdown.subscribe(),
        )),
        None => {
            tracing::info!(
                "KAFKA_BROKERS is not set: the outbox relay is off (events stay in the outbox)"
            );
            None
        }
    };

    if shutdown_on_signal {
        let tx = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            let _ = tx.send(true);
        });
    }

    let header_read_timeout = state.config.header_read_timeout;
    let app = crate::http::app(state);
    let server = tokio::spawn(async move {
        serve(listener, app, header_read_timeout, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })
        .await
        .context("serve")
    });
    tracing::info!(%addr, "origin listening");
    Ok(Running {
        addr,
        shutdown,
        server,
        relay,
    })
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
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
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
