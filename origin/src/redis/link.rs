//! The origin's one Redis connection, and whether Redis is usable right now.
//!
//! Redis is an accelerator here, never a dependency: the vehicle locks (`locks.rs`) and the
//! GEO availability index (`availability.rs`) both have a PostgreSQL fallback. This module's
//! job is to make a dead Redis *cheap*:
//!
//! - Every command, connecting included, is bounded by `REDIS_COMMAND_TIMEOUT_MS`.
//! - The first connection-class failure (refused, dropped, timed out) marks Redis **down**:
//!   logged once, counted (`redis_degradations_total`, gauge `redis_up`). While it is down
//!   callers do not even try it — [`RedisLink::run`] answers [`Unavailable::Down`] at once —
//!   so a booking never pays a timeout per request.
//! - A background probe (the `redis_probe` job, [`crate::jobs::redis_probe`]) PINGs every
//!   second, whatever the state. An answer marks Redis **up** again (logged once) and bumps a
//!   generation that the availability job watches: a Redis that comes back may have come back
//!   *empty*, so the index is rebuilt at once.
//!
//! The connection is one `ConnectionManager` (a multiplexed connection that reconnects by
//! itself), created lazily so the origin starts, degraded, when Redis is not there.
//!
//! The manager reconnects only when its connection *fails* (refused, reset, closed). A
//! connection whose peer went silent (a dead host, a blackholed link: no RST, no FIN) fails
//! nothing: every command just times out, forever, and Redis would stay down for good (the
//! fault suite's dead-peer fault found it). So after [`REPLACE_AFTER`] failed probes in a
//! row the probe replaces the manager with a fresh one, which opens a new connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::config::RedisConfig;

/// How often the probe PINGs Redis.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Failed probes in a row after which the connection is replaced by a new one.
pub(crate) const REPLACE_AFTER: u32 = 3;

/// Why a Redis call did not produce an answer. Callers fall back to PostgreSQL on any of them.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Redis was already known to be down; nothing was sent.
    #[error("Redis is down (degraded mode)")]
    Down,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Command(#[from] redis::RedisError),
}

/// A cloneable handle to Redis with its health.
#[derive(Clone)]
pub struct RedisLink(Arc<Inner>);

struct Inner {
    /// Replaced (not repaired) when the connection went silent: see the module doc.
    conn: std::sync::RwLock<ConnectionManager>,
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    failed_probes: std::sync::atomic::AtomicU32,
    replacements: AtomicU64,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    degradations: AtomicU64,
    /// Bumped each time Redis comes back after being down.
    recoveries: watch::Sender<u64>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("prefix", &self.0.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Creates the (lazy) connection and PINGs once, so the state is known before serving.
    /// Fails only on a malformed URL: an unreachable Redis gives a link marked down.
    pub async fn connect(config: &RedisConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.url()).context("parse REDIS_URL")?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // One quick retry per reconnection; the probe drives recovery, not the manager.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            .context("create the Redis connection manager")?;
        let (recoveries, _) = watch::channel(0);
        let link = RedisLink(Arc::new(Inner {
            conn: std::sync::RwLock::new(conn),
            client,
            manager_config,
            failed_probes: std::sync::atomic::AtomicU32::new(0),
            replacements: AtomicU64::new(0),
            prefix: config.key_prefix.clone(),
            timeout: config.command_timeout,
            up: AtomicBool::new(true),
            degradations: AtomicU64::new(0),
            recoveries,
        }));
        metrics::gauge!("redis_up").set(1.0);
        link.probe().await;
        Ok(link)
    }

    /// The full key for `rest`: the configured prefix, then `rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.0.prefix)
    }

    /// The configured key prefix.
    pub fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// Whether Redis answered last time we asked.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::SeqCst)
    }

    /// How many times Redis went down since start.
    pub(crate) fn degradations(&self) -> u64 {
        self.0.degradations.load(Ordering::SeqCst)
    }

    /// A receiver that changes each time Redis comes back after being down.
    pub(crate) fn recoveries(&self) -> watch::Receiver<u64> {
        self.0.recoveries.subscribe()
    }

    /// Runs `f` on the connection, bounded by the command timeout. Skips Redis entirely
    /// while it is down; a connection-class failure marks it down.
    pub async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(Unavailable::Down);
        }
        self.run_even_if_down(what, f).await
    }

    async fn run_even_if_down<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        // A span per command (DEBUG: exported with traces, free otherwise: `telemetry.rs`).
        let span = tracing::debug_span!("redis", command = what, otel.kind = "client");
        let bounded = tokio::time::timeout(self.0.timeout, f(self.conn()));
        match tracing::Instrument::instrument(bounded, span).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    self.mark_down(what, &e.to_string());
                } else {
                    tracing::warn!(error = %e, what, "Redis command failed");
                }
                Err(Unavailable::Command(e))
            }
            Err(_) => {
                self.mark_down(what, "timeout");
                Err(Unavailable::Timeout(self.0.timeout))
            }
        }
    }

    fn mark_down(&self, what: &'static str, error: &str) {
        if self.0.up.swap(false, Ordering::SeqCst) {
            self.0.degradations.fetch_add(1, Ordering::SeqCst);
            metrics::gauge!("redis_up").set(0.0);
            metrics::counter!("redis_degradations_total").increment(1);
            tracing::warn!(
                error,
                what,
                "Redis unreachable: vehicle locks fall back to PostgreSQL advisory locks and \
                 search to the PostgreSQL bounding box until it answers again"
            );
        }
    }

    fn mark_up(&self) {
        if !self.0.up.swap(true, Ordering::SeqCst) {
            metrics::gauge!("redis_up").set(1.0);
            self.0.recoveries.send_modify(|n| *n += 1);
            tracing::info!("Redis is back: vehicle locks and the GEO index use it again");
        }
    }

    /// One PING, whatever the current state; updates the state. True when Redis answered.
    /// The `redis_probe` job calls it every [`PROBE_INTERVAL`].
    pub async fn probe(&self) -> bool {
        let pong = self
            .run_even_if_down("ping", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await;
        match pong {
            Ok(_) => {
                self.0.failed_probes.store(0, Ordering::SeqCst);
                self.mark_up();
                true
            }
            Err(e) => {
                // A non-connection error to PING still means we cannot use it.
                self.mark_down("ping", &e.to_string());
                if self.0.failed_probes.fetch_add(1, Ordering::SeqCst) + 1 >= REPLACE_AFTER {
                    self.0.failed_probes.store(0, Ordering::SeqCst);
                    self.replace_connection();
                }
                false
            }
        }
    }

    /// The current connection (a cheap clone of the manager).
    fn conn(&self) -> ConnectionManager {
        self.0
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Drops the current connection for a fresh, lazily connecting one.
    fn replace_connection(&self) {
        match ConnectionManager::new_lazy_with_config(
            self.0.client.clone(),
            self.0.manager_config.clone(),
        ) {
            Ok(fresh) => {
                *self
                    .0
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                self.0.replacements.fetch_add(1, Ordering::SeqCst);
                metrics::counter!("redis_connection_replacements_total").increment(1);
                tracing::warn!("Redis: replaced a connection that stopped answering");
            }
            Err(e) => tracing::warn!(error = %e, "Redis: could not create a fresh connection"),
        }
    }

    /// How many times the connection was replaced after it stopped answering.
    pub fn replacements(&self) -> u64 {
        self.0.replacements.load(Ordering::SeqCst)
    }
}
