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
//! - A background probe (the `redis_probe` job, [`crate::jobs::redis_probe`]) asks Redis every
//!   second, whatever the state. An answer marks Redis **up** again (logged once) and bumps a
//!   generation that the availability job watches: a Redis that comes back may have come back
//!   *empty*, so the index is rebuilt at once.
//!
//! The connection is created lazily so the origin starts, degraded, when Redis is not there.
//!
//! A connection whose peer went silent (a dead host, a blackholed link: no RST, no FIN) fails
//! nothing: every command just times out, forever, and Redis would stay down for good (the
//! fault suite's dead-peer fault found it). So after [`REPLACE_AFTER`] failed probes in a
//! row the probe replaces the connection with a fresh one.
//!
//! # Topologies (`REDIS_MODE`)
//!
//! - `single`: one server at `REDIS_URL`, through a `ConnectionManager` (a multiplexed
//!   connection that reconnects by itself).
//! - `sentinel`: `REDIS_URL` lists the sentinels; the link asks them for the master of
//!   `REDIS_SENTINEL_MASTER` and keeps a `ConnectionManager` to it. When the master stops
//!   answering, or answers as a replica (`READONLY` to a write, `role:slave` to the probe),
//!   every failed probe asks the sentinels again and connects to the master they name.
//! - `cluster`: `REDIS_URL` lists seed nodes; one `cluster_async::ClusterConnection` routes
//!   every command by slot and follows `MOVED` and failovers itself. Keys that one script or
//!   `MULTI` touches together share a hash tag (the availability keys `{avail}`, a user's
//!   front-door keys `{<user hash>}`), so they live in one slot; a cross-slot `MGET` is split
//!   by the client.
//!
//! # Failovers: a new master may be empty *or stale*
//!
//! A promoted replica holds what it had replicated: possibly an older GEO index than
//! PostgreSQL's truth, or one a stray write changed. So the probe does not just PING: it reads
//! the identity of the master(s) (`run_id` in `INFO server`; in a cluster, every master's) and
//! whether they are masters. When the identity changes — a restart, a sentinel or a cluster
//! failover — the link counts it (`redis_topology_changes_total`) and bumps the same
//! generation as a recovery, so the availability job rebuilds from PostgreSQL at once, even if
//! no command failed in between.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::sentinel::{SentinelClient, SentinelServerType};
use tokio::sync::watch;

use crate::config::{RedisConfig, RedisMode};

/// How often the probe asks Redis.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Failed probes in a row after which the connection is replaced by a new one (a sentinel
/// deployment asks the sentinels after every failed probe).
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

/// A connection to whichever topology `REDIS_MODE` names: callers send commands, scripts and
/// pipelines through it as through any `redis::aio::ConnectionLike`.
#[derive(Clone)]
pub enum Conn {
    /// `single`, and `sentinel` (a manager connected to the current master).
    Node(ConnectionManager),
    /// `cluster`: routes by slot, follows `MOVED` and failovers.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Node(_) => "Conn::Node",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What one probe found.
enum Probe {
    Answered,
    Failed,
    /// Failed, and the connection was replaced by a fresh one (worth one more try).
    Replaced,
}

/// How the link (re)connects: see the module doc.
enum Connector {
    Single(redis::Client),
    /// The sentinels, asked for the master on every (re)connection.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

/// A cloneable handle to Redis with its health.
#[derive(Clone)]
pub struct RedisLink(Arc<Inner>);

struct Inner {
    /// Replaced (not repaired) when the connection went silent: see the module doc.
    conn: std::sync::RwLock<Conn>,
    connector: Connector,
    manager_config: ConnectionManagerConfig,
    /// The master(s) the probe saw last (`run_id`s): a change is a failover or a restart.
    identity: std::sync::Mutex<Option<String>>,
    failed_probes: std::sync::atomic::AtomicU32,
    replacements: AtomicU64,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    degradations: AtomicU64,
    /// Bumped each time Redis comes back after being down, or its master changed.
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
    /// Creates the (lazy) connection and probes once, so the state is known before serving.
    /// Fails only on a malformed configuration: an unreachable Redis gives a link marked down.
    pub async fn connect(config: &RedisConfig) -> anyhow::Result<Self> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // One quick retry per reconnection; the probe drives recovery, not the manager.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let (connector, conn) = match &config.mode {
            RedisMode::Single => {
                let client = redis::Client::open(config.url()).context("parse REDIS_URL")?;
                let conn =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
                        .context("create the Redis connection manager")?;
                (Connector::Single(client), Conn::Node(conn))
            }
            RedisMode::Sentinel { master } => {
                let mut sentinels = SentinelClient::build(
                    config.urls(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )
                .context("parse REDIS_URL (the sentinels)")?;
                // No master named yet: start degraded on an address that refuses at once; the
                // first failed probe asks the sentinels again.
                let client = match resolve_master(&mut sentinels, config.command_timeout).await {
                    Ok(client) => client,
                    Err(e) => {
                        tracing::warn!(error = %e, "the sentinels named no master yet");
                        redis::Client::open("redis://127.0.0.1:1/")?
                    }
                };
                let conn = ConnectionManager::new_lazy_with_config(client, manager_config.clone())
                    .context("create the Redis connection manager")?;
                (
                    Connector::Sentinel(tokio::sync::Mutex::new(sentinels)),
                    Conn::Node(conn),
                )
            }
            RedisMode::Cluster => {
                let client = redis::cluster::ClusterClient::builder(config.urls())
                    .connection_timeout(config.command_timeout)
                    .response_timeout(config.command_timeout)
                    // Redirections (MOVED, ASK) and a failover's brief refusals are retried
                    // within the command timeout; the probe drives recovery beyond it.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(50)
                    .build()
                    .context("parse REDIS_URL (the cluster's seed nodes)")?;
                let conn = Conn::Cluster(cluster_connection(&client, config.command_timeout));
                (Connector::Cluster(client), conn)
            }
        };
        let (recoveries, _) = watch::channel(0);
        let link = RedisLink(Arc::new(Inner {
            conn: std::sync::RwLock::new(conn),
            connector,
            manager_config,
            identity: std::sync::Mutex::new(None),
            failed_probes: std::sync::atomic::AtomicU32::new(0),
            replacements: AtomicU64::new(0),
            prefix: config.key_prefix.clone(),
            timeout: config.command_timeout,
            up: AtomicBool::new(true),
            degradations: AtomicU64::new(0),
            recoveries,
        }));
        metrics::gauge!("redis_up").set(1.0);
        if !link.probe().await && matches!(link.0.connector, Connector::Cluster(_)) {
            // A cluster connection learns the slots when it first connects; one more try
            // once the pending connection is up.
            tokio::time::sleep(Duration::from_millis(50)).await;
            link.probe().await;
        }
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

    /// A receiver that changes each time Redis comes back after being down, or its master
    /// changed (see the module doc).
    pub(crate) fn recoveries(&self) -> watch::Receiver<u64> {
        self.0.recoveries.subscribe()
    }

    /// Runs `f` on the connection, bounded by the command timeout. Skips Redis entirely
    /// while it is down; a connection-class failure marks it down.
    pub async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(Unavailable::Down);
        }
        self.run_even_if_down(what, f).await
    }

    async fn run_even_if_down<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
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
                    || e.is_cluster_error()
                    // A demoted master (sentinel): the probe asks the sentinels again.
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
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

    /// One probe, whatever the current state; updates the state. True when Redis answered.
    /// The `redis_probe` job calls it every [`PROBE_INTERVAL`].
    ///
    /// It reads the master(s)' identity rather than PINGing: a node that answers as a replica
    /// counts as not answering, a cluster answers only when every master does, and a changed
    /// identity (a failover, a restart) triggers the rebuild a recovery does. A probe that
    /// replaced the connection tries the fresh one at once (a sentinel failover is followed
    /// as soon as the sentinels name the new master, not a probe interval later).
    pub async fn probe(&self) -> bool {
        match self.probe_once().await {
            Probe::Replaced => matches!(self.probe_once().await, Probe::Answered),
            probe => matches!(probe, Probe::Answered),
        }
    }

    async fn probe_once(&self) -> Probe {
        let identity = self
            .run_even_if_down("probe", |mut conn| async move { identity(&mut conn).await })
            .await;
        match identity {
            Ok(identity) => {
                self.0.failed_probes.store(0, Ordering::SeqCst);
                let changed = {
                    let mut last = self
                        .0
                        .identity
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let changed = last.as_ref().is_some_and(|l| *l != identity);
                    *last = Some(identity);
                    changed
                };
                if changed {
                    metrics::counter!("redis_topology_changes_total").increment(1);
                    tracing::warn!(
                        "Redis master changed (a failover or a restart): its data may be empty \
                         or stale, the availability index is rebuilt from PostgreSQL"
                    );
                }
                if self.is_up() {
                    if changed {
                        self.0.recoveries.send_modify(|n| *n += 1);
                    }
                } else {
                    // Coming back bumps the generation anyway.
                    self.mark_up();
                }
                Probe::Answered
            }
            Err(e) => {
                // A non-connection error to the probe still means we cannot use it.
                self.mark_down("probe", &e.to_string());
                let failed = self.0.failed_probes.fetch_add(1, Ordering::SeqCst) + 1;
                // The sentinels are asked again after every failed probe (a failover must be
                // followed fast); a single node or a cluster is reconnected after a few.
                let replace_after = match self.0.connector {
                    Connector::Sentinel(_) => 1,
                    _ => REPLACE_AFTER,
                };
                if failed >= replace_after {
                    self.0.failed_probes.store(0, Ordering::SeqCst);
                    if self.replace_connection().await {
                        return Probe::Replaced;
                    }
                }
                Probe::Failed
            }
        }
    }

    /// The current connection (a cheap clone).
    fn conn(&self) -> Conn {
        self.0
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Drops the current connection for a fresh, lazily connecting one: to the master the
    /// sentinels name now, in sentinel mode.
    async fn replace_connection(&self) -> bool {
        let fresh = match &self.0.connector {
            Connector::Single(client) => ConnectionManager::new_lazy_with_config(
                client.clone(),
                self.0.manager_config.clone(),
            )
            .map(Conn::Node),
            Connector::Sentinel(sentinels) => {
                let mut sentinels = sentinels.lock().await;
                match resolve_master(&mut sentinels, self.0.timeout).await {
                    Ok(client) => ConnectionManager::new_lazy_with_config(
                        client,
                        self.0.manager_config.clone(),
                    )
                    .map(Conn::Node),
                    Err(e) => Err(e),
                }
            }
            Connector::Cluster(client) => {
                Ok(Conn::Cluster(cluster_connection(client, self.0.timeout)))
            }
        };
        match fresh {
            Ok(fresh) => {
                *self
                    .0
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                self.0.replacements.fetch_add(1, Ordering::SeqCst);
                metrics::counter!("redis_connection_replacements_total").increment(1);
                tracing::warn!("Redis: replaced a connection that stopped answering");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis: could not create a fresh connection");
                false
            }
        }
    }

    /// How many times the connection was replaced after it stopped answering.
    pub fn replacements(&self) -> u64 {
        self.0.replacements.load(Ordering::SeqCst)
    }
}

/// A cluster connection that connects in the background, so the origin starts (degraded)
/// while no node answers.
fn cluster_connection(
    client: &redis::cluster::ClusterClient,
    timeout: Duration,
) -> ClusterConnection {
    client.get_pending_async_connection_with_config(
        redis::cluster::ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout),
    )
}

/// Asks the sentinels for the current master, bounded by twice `timeout` (a sentinel, then
/// the master's `ROLE`).
async fn resolve_master(
    sentinels: &mut SentinelClient,
    timeout: Duration,
) -> redis::RedisResult<redis::Client> {
    match tokio::time::timeout(timeout * 2, sentinels.async_get_client()).await {
        Ok(client) => client,
        Err(_) => Err(probe_error("the sentinels did not name a master in time")),
    }
}

/// The identity of the master(s) behind `conn`: the `run_id`s in `INFO server`, sorted (a
/// cluster's every master). An error when a node answers as a replica (a demoted master, which
/// a sentinel deployment must leave) or a cluster master does not answer.
async fn identity(conn: &mut Conn) -> redis::RedisResult<String> {
    let mut info = redis::cmd("INFO");
    info.arg("server").arg("replication");
    let replies: Vec<String> = match conn {
        Conn::Node(c) => vec![info.query_async::<String>(c).await?],
        Conn::Cluster(c) => {
            let routed = c
                .route_command(
                    info,
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await?;
            let redis::Value::Map(by_node) = routed else {
                return Err(probe_error(
                    "an INFO reply from the cluster of an unknown shape",
                ));
            };
            by_node
                .into_iter()
                .map(|(_, reply)| redis::from_redis_value::<String>(reply))
                .collect::<Result<_, _>>()
                .map_err(|_| probe_error("a cluster master did not answer INFO"))?
        }
    };
    let mut ids = Vec::with_capacity(replies.len());
    for reply in &replies {
        let field = |name: &str| {
            reply
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if field("role:").as_deref() != Some("master") {
            return Err(probe_error(
                "the node answers as a replica, not as the master",
            ));
        }
        ids.push(field("run_id:").unwrap_or_default());
    }
    ids.sort();
    Ok(ids.join(","))
}

fn probe_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what))
}
