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
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, stops background tasks.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.server.await?
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
    let state = AppState::new(config, pool)?;
    let (shutdown, mut stop_rx) = watch::channel(false);

    crate::sweeper::spawn(state.clone(), shutdown.subscribe());

    if shutdown_on_signal {
        let tx = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            let _ = tx.send(true);
        });
    }

    let app = crate::http::app(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
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
