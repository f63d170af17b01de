//! Configuration from environment variables (12-factor), parsed once at start.
//!
//! Every variable is read through [`Env`], which remembers the variable's name so a bad or
//! missing value fails start-up with a message that names it (`JWT_ISSUER is missing`), instead
//! of a panic deep inside a handler. Secrets are kept in [`Secret`], whose `Debug` prints
//! nothing, so logging the config cannot leak them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use domain::region::Region;

/// A configuration error naming the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How JWTs are verified: at least one key must be configured.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    /// HS256 shared secret (local/dev use), at least 32 bytes.
    pub hs256_secret: Option<Secret>,
    /// Key id expected in the header for the HS256 key (optional).
    pub hs256_kid: Option<String>,
    /// RS256 public keys (PEM), by key id.
    pub rs256_public_keys: BTreeMap<String, Vec<u8>>,
    /// EdDSA (Ed25519) public keys (PEM), by key id.
    pub eddsa_public_keys: BTreeMap<String, Vec<u8>>,
}

/// Redis: reservation locks and the GEO availability index (see `locks.rs`, `availability.rs`).
/// Redis is never required: when it is unreachable the origin books and searches through
/// PostgreSQL alone.
///
/// `REDIS_MODE` names the topology (see `redis/link.rs`): `single` (one server at `REDIS_URL`),
/// `sentinel` (`REDIS_URL` lists the sentinels, comma-separated, and `REDIS_SENTINEL_MASTER`
/// names the master set) or `cluster` (`REDIS_URL` lists seed nodes, comma-separated).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// May hold a password: never printed. Several comma-separated URLs for `sentinel` (the
    /// sentinels) and `cluster` (seed nodes).
    pub url: Secret,
    /// The topology behind `url`.
    pub mode: RedisMode,
    /// Prepended to every key, so several deployments (or tests) can share one server.
    pub key_prefix: String,
    /// Bound on every Redis command (and connect): a dead Redis costs at most this much.
    pub command_timeout: Duration,
    /// How long a vehicle lock lives if its owner never releases it.
    pub lock_ttl: Duration,
    /// How long a contender waits for a held vehicle lock before a 409 (0 = one try).
    pub lock_wait: Duration,
    /// Whether holds take the per-vehicle lock at all (`VEHICLE_LOCK`).
    pub vehicle_lock: VehicleLockMode,
    /// How often the GEO availability index is rebuilt from PostgreSQL.
    pub availability_rebuild: Duration,
}

/// `VEHICLE_LOCK`: `postgres` (the default: PostgreSQL's advisory lock, which a hold takes
/// inside its one statement, so it costs no round trip; measured fastest, see README
/// "Benchmarks"), `on` (Redis, or PostgreSQL's advisory lock while Redis is down) or `off`. The lock only spares contenders a wasted
/// transaction; the exclusion constraint alone decides who gets a vehicle (see
/// `redis/locks.rs`). `off` lets contenders race straight into the constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VehicleLockMode {
    On,
    Postgres,
    Off,
}

impl std::str::FromStr for VehicleLockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(VehicleLockMode::On),
            "postgres" => Ok(VehicleLockMode::Postgres),
            "off" => Ok(VehicleLockMode::Off),
            other => Err(format!("expected on, postgres or off, got {other:?}")),
        }
    }
}

/// How the topics the origin creates are laid out (`KAFKA_TOPIC_PARTITIONS`,
/// `KAFKA_TOPIC_REPLICATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    pub partitions: i32,
    /// Replicas of each partition: 1 on the single-node broker of development and tests, 3 on
    /// a production Kafka cluster.
    pub replication: i32,
}

impl TopicLayout {
    /// The topic-level settings that go with the replication: `min.insync.replicas` is a
    /// majority of the replicas, so the relay's `acks=all` means "on a majority" and a topic
    /// keeps accepting writes with one broker of three down (and refuses them, rather than
    /// risk losing acknowledged records, with two down).
    pub fn topic_config(&self) -> Vec<(&'static str, String)> {
        if self.replication <= 1 {
            return Vec::new();
        }
        vec![(
            "min.insync.replicas",
            (self.replication / 2 + 1).to_string(),
        )]
    }
}

fn topic_replication(env: &dyn Env) -> Result<i32, ConfigError> {
    let replication: i32 = parsed(env, "KAFKA_TOPIC_REPLICATION", 1)?;
    if !(1..=7).contains(&replication) {
        return Err(ConfigError::Invalid {
            name: "KAFKA_TOPIC_REPLICATION",
            reason: format!("1 to 7 replicas (got {replication})"),
        });
    }
    Ok(replication)
}

/// `REDIS_MODE`: the Redis topology the origin talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    /// The master set the sentinels are asked about (`REDIS_SENTINEL_MASTER`).
    Sentinel {
        master: String,
    },
    Cluster,
}

impl RedisConfig {
    /// The Redis URL as a string (it may hold a password: never log it).
    pub fn url(&self) -> String {
        String::from_utf8_lossy(&self.url.0).into_owned()
    }

    /// Each URL of a comma-separated list (the sentinels, a cluster's seed nodes).
    pub fn urls(&self) -> Vec<String> {
        self.url()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn redis_config(env: &dyn Env) -> Result<RedisConfig, ConfigError> {
    let url = env
        .var("REDIS_URL")
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let mode = match env.var("REDIS_MODE").as_deref().map(str::trim) {
        None | Some("single") => RedisMode::Single,
        Some("cluster") => RedisMode::Cluster,
        Some("sentinel") => RedisMode::Sentinel {
            master: env
                .var("REDIS_SENTINEL_MASTER")
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .ok_or(ConfigError::Invalid {
                    name: "REDIS_SENTINEL_MASTER",
                    reason: "required with REDIS_MODE=sentinel: the master set's name".into(),
                })?,
        },
        Some(other) => {
            return Err(ConfigError::Invalid {
                name: "REDIS_MODE",
                reason: format!("{other:?} (expected single, cluster or sentinel)"),
            })
        }
    };
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(ConfigError::Invalid {
            name: "REDIS_URL",
            reason: "empty".into(),
        });
    }
    if mode == RedisMode::Single && urls.len() > 1 {
        return Err(ConfigError::Invalid {
            name: "REDIS_URL",
            reason: "one URL with REDIS_MODE=single (a list is for sentinel or cluster)".into(),
        });
    }
    if let Some(bad) = urls
        .iter()
        .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
    {
        return Err(ConfigError::Invalid {
            name: "REDIS_URL",
            reason: format!(
                "expected redis://host:port[/db]{} (rediss:// needs TLS support, not built in); \
                 got an entry of {} characters",
                if mode == RedisMode::Single {
                    ""
                } else {
                    ", comma-separated"
                },
                bad.len()
            ),
        });
    }
    let lock_wait_ms: u64 = parsed(env, "LOCK_WAIT_MS", 50)?;
    if lock_wait_ms > 1_000 {
        return Err(ConfigError::Invalid {
            name: "LOCK_WAIT_MS",
            reason: "at most 1000: contenders should fail fast, not queue".into(),
        });
    }
    Ok(RedisConfig {
        url: Secret(url.into_bytes()),
        mode,
        key_prefix: env.var("REDIS_KEY_PREFIX").unwrap_or_else(|| "bp:".into()),
        command_timeout: millis(env, "REDIS_COMMAND_TIMEOUT_MS", 150)?,
        lock_ttl: millis(env, "LOCK_TTL_MS", 5_000)?,
        lock_wait: Duration::from_millis(lock_wait_ms),
        vehicle_lock: parsed(env, "VEHICLE_LOCK", VehicleLockMode::Postgres)?,
        availability_rebuild: secs(env, "AVAILABILITY_REBUILD_SECS", 60)?,
    })
}

/// The pricing orchestrator: the AI inference API, the deadline budget, circuit breakers,
/// the surge grid and price validation (see `pricing/fetch.rs`, `inference.rs`, `surge.rs`).
#[derive(Debug, Clone)]
pub struct PricingConfig {
    /// Base URL of the AI inference API (`INFERENCE_URL`, `http://host:port`). `None`: risk is
    /// neutral (×1.0) and demand comes from live holds only (no prediction); quotes are then
    /// not marked degraded, because nothing failed.
    pub inference_url: Option<String>,
    /// One deadline for all of a quote's sources together (`PRICING_BUDGET_MS`, default 150).
    pub budget: Duration,
    /// Per-call timeout of an inference request (`INFERENCE_TIMEOUT_MS`, default 100).
    pub inference_timeout: Duration,
    /// Extra attempts after a failed idempotent inference call (`INFERENCE_RETRIES`, 0–3, default 1).
    pub inference_retries: u32,
    /// Consecutive failures that open a breaker (`BREAKER_FAILURES`, default 5).
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe (`BREAKER_COOLDOWN_MS`, default 5000).
    pub breaker_cooldown: Duration,
    /// H3 resolution of the surge grid (`SURGE_H3_RESOLUTION`, 5–10, default 8: cells of about
    /// 0.74 km², a few streets).
    pub surge_resolution: u8,
    /// How often the surge grid is recomputed (`SURGE_RECOMPUTE_SECS`, default 60).
    pub surge_recompute: Duration,
    /// Largest change of a quote's total against the previous quote of the same vehicle and
    /// window, in basis points of the previous total (`PRICE_MAX_JUMP_BP`, default 40000: at
    /// most ×5 or ÷5). The dynamic inputs alone may legitimately move a total by up to the
    /// surge cap (×3) times the risk range (×1.45 / ×0.95), about ×4.6, so the default sits
    /// above that: the check is for glitches no model input can explain, and a tighter limit
    /// would refuse every quote of a cell whose surge climbed to its cap.
    pub max_jump_bp: u32,
}

fn pricing_config(env: &dyn Env) -> Result<PricingConfig, ConfigError> {
    let inference_url = match env.var("INFERENCE_URL") {
        None => None,
        Some(url) => {
            let url = url.trim().trim_end_matches('/').to_owned();
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                return Err(ConfigError::Invalid {
                    name: "INFERENCE_URL",
                    reason: "expected http://host:port (TLS to the inference API is terminated \
                             by the sidecar or mesh)"
                        .into(),
                });
            }
            Some(url)
        }
    };
    let inference_retries: u32 = parsed(env, "INFERENCE_RETRIES", 1)?;
    if inference_retries > 3 {
        return Err(ConfigError::Invalid {
            name: "INFERENCE_RETRIES",
            reason: "at most 3: retries must fit in the quote's budget".into(),
        });
    }
    let surge_resolution: u8 = parsed(env, "SURGE_H3_RESOLUTION", 8)?;
    if !(5..=10).contains(&surge_resolution) {
        return Err(ConfigError::Invalid {
            name: "SURGE_H3_RESOLUTION",
            reason: "between 5 (city districts) and 10 (a block)".into(),
        });
    }
    let max_jump_bp: u32 = at_least_one(env, "PRICE_MAX_JUMP_BP", 40_000)?;
    Ok(PricingConfig {
        inference_url,
        budget: millis(env, "PRICING_BUDGET_MS", 150)?,
        inference_timeout: millis(env, "INFERENCE_TIMEOUT_MS", 100)?,
        inference_retries,
        breaker_failures: at_least_one(env, "BREAKER_FAILURES", 5)?,
        breaker_cooldown: millis(env, "BREAKER_COOLDOWN_MS", 5_000)?,
        surge_resolution,
        surge_recompute: secs(env, "SURGE_RECOMPUTE_SECS", 60)?,
        max_jump_bp,
    })
}

/// Who may call the public routes, and how often one user may.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    /// `EDGE_SIGNING_KEYS` (`kid=secret,…`, secrets of at least 32 bytes): the keys edges sign
    /// their requests with (`domain::edge_auth`); every one verifies (rotation).
    pub edge_keys: Vec<(String, Secret)>,
    /// `ORIGIN_ALLOW_DIRECT=1`: a request without an edge signature is let in (development,
    /// tests of the origin alone). A signature that is present is still checked.
    pub allow_direct: bool,
    /// `ORIGIN_USER_LIMIT_PER_MIN` (default 1000, 10× the edges' 100; 0 turns it off): the
    /// origin's own sliding-minute limit per user, in Redis, behind the edges' limits.
    pub user_limit_per_min: u32,
}

fn flag(env: &dyn Env, name: &'static str) -> Result<bool, ConfigError> {
    match env.var(name).as_deref().map(str::trim) {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            name,
            reason: format!("expected 1 or 0, got {other:?}"),
        }),
    }
}

/// Signed webhooks (`crate::webhooks`): the fan-out consumer and the dispatcher.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `WEBHOOKS` (1 or 0, default 1): run them wherever the availability consumer runs.
    pub enabled: bool,
    /// `WEBHOOK_GROUP` (default `webhooks-<regions>`): the fan-out's consumer group.
    pub group: String,
    /// `WEBHOOK_ALLOW_PRIVATE` (default 0): allow loopback, private and link-local receivers
    /// (tests and development only: see `webhooks::guard`).
    pub allow_private: bool,
    /// `WEBHOOK_TIMEOUT_MS` (default 10000): one attempt, connection to last byte.
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_BASE_MS` (default 5000): the first retry's step; doubling from there.
    pub retry_base: Duration,
    /// `WEBHOOK_RETRY_MAX_MS` (default 3600000): the longest step between two attempts.
    pub retry_max: Duration,
    /// `WEBHOOK_RETRY_FOR_SECS` (default 86400): how long after the event it is retried.
    pub retry_for: Duration,
    /// `WEBHOOK_DISABLE_AFTER_SECS` (default 432000, 5 days): an endpoint failing that long
    /// without one success is disabled.
    pub disable_after: Duration,
    /// `WEBHOOK_POLL_MS` (default 200): the dispatcher's pause when nothing is due.
    pub poll: Duration,
    /// `WEBHOOK_CONCURRENCY` (default 16): attempts in flight per dispatcher.
    pub concurrency: usize,
    /// `WEBHOOK_ORDER_WAIT_MS` (default 30000): how long a delivery waits for an earlier event
    /// of its vehicle that has not reached the fan-out (e.g. one dead-lettered).
    pub order_wait: Duration,
}

fn webhook_config(env: &dyn Env, regions: &[Region]) -> Result<WebhookConfig, ConfigError> {
    Ok(WebhookConfig {
        enabled: match env.var("WEBHOOKS") {
            None => true,
            Some(_) => flag(env, "WEBHOOKS")?,
        },
        group: env.var("WEBHOOK_GROUP").unwrap_or_else(|| {
            let codes: Vec<String> = regions.iter().map(|r| r.code().to_lowercase()).collect();
            format!("webhooks-{}", codes.join("-"))
        }),
        allow_private: flag(env, "WEBHOOK_ALLOW_PRIVATE")?,
        timeout: millis(env, "WEBHOOK_TIMEOUT_MS", 10_000)?,
        retry_base: millis(env, "WEBHOOK_RETRY_BASE_MS", 5_000)?,
        retry_max: millis(env, "WEBHOOK_RETRY_MAX_MS", 3_600_000)?,
        retry_for: secs(env, "WEBHOOK_RETRY_FOR_SECS", 86_400)?,
        disable_after: secs(env, "WEBHOOK_DISABLE_AFTER_SECS", 432_000)?,
        poll: millis(env, "WEBHOOK_POLL_MS", 200)?,
        concurrency: at_least_one(env, "WEBHOOK_CONCURRENCY", 16usize)?,
        order_wait: millis(env, "WEBHOOK_ORDER_WAIT_MS", 30_000)?,
    })
}

fn front_door_config(env: &dyn Env) -> Result<FrontDoorConfig, ConfigError> {
    let edge_keys = match env.var("EDGE_SIGNING_KEYS") {
        None => Vec::new(),
        Some(raw) => keyed_list("EDGE_SIGNING_KEYS", &raw)?
            .into_iter()
            .map(|(kid, secret)| (kid, Secret(secret.into_bytes())))
            .collect(),
    };
    // Built once here so a bad key id or a short secret stops the start, naming the variable.
    domain::edge_auth::EdgeVerifier::new(
        edge_keys
            .iter()
            .map(|(kid, secret)| (kid.clone(), secret.0.clone()))
            .collect(),
    )
    .map_err(|e| ConfigError::Invalid {
        name: "EDGE_SIGNING_KEYS",
        reason: format!("{e} (key ids: 1-32 of A-Z a-z 0-9 _ -, each once)"),
    })?;
    let allow_direct = flag(env, "ORIGIN_ALLOW_DIRECT")?;
    if edge_keys.is_empty() && !allow_direct {
        return Err(ConfigError::Missing(
            "EDGE_SIGNING_KEYS (or ORIGIN_ALLOW_DIRECT=1 for an origin reached without edges)",
        ));
    }
    Ok(FrontDoorConfig {
        edge_keys,
        allow_direct,
        user_limit_per_min: parsed(env, "ORIGIN_USER_LIMIT_PER_MIN", 1_000)?,
    })
}

/// The read replica (`DATABASE_READ_URL`) and how reads use it (`store/reads.rs`).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// `DATABASE_READ_URL` (optional; may hold a password: never printed). `None`: every read
    /// goes to the primary, as before replicas.
    pub url: Option<Secret>,
    /// `REPLICA_WAIT_MS` (default 50, 0–1000): how long a user's read of their own bookings
    /// waits for the replica to replay that user's last write before it reads the primary.
    pub wait: Duration,
    /// `REPLICA_MAX_LAG_MS` (default 1000): past this lag (or with the replica down) every read
    /// goes to the primary.
    pub max_lag: Duration,
    /// `REPLICA_RYW` (default 1): read-your-writes. 0 turns it off — a user's reads may then
    /// miss their own write for up to the lag; only for measuring what it costs, and for the
    /// test that shows the RYW test catches its absence.
    pub read_your_writes: bool,
}

fn replica_config(env: &dyn Env) -> Result<ReplicaConfig, ConfigError> {
    let url = match env.var("DATABASE_READ_URL") {
        None => None,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(Secret(url.trim().as_bytes().to_vec()))
        }
        Some(_) => {
            return Err(ConfigError::Invalid {
                name: "DATABASE_READ_URL",
                reason: "expected postgres://user@host:port/db".into(),
            })
        }
    };
    let wait_ms: u64 = parsed(env, "REPLICA_WAIT_MS", 50)?;
    if wait_ms > 1_000 {
        return Err(ConfigError::Invalid {
            name: "REPLICA_WAIT_MS",
            reason: "at most 1000: past that the primary answers sooner".into(),
        });
    }
    let read_your_writes = match env.var("REPLICA_RYW").as_deref().map(str::trim) {
        None | Some("1") | Some("true") => true,
        Some("0") | Some("false") => false,
        Some(other) => {
            return Err(ConfigError::Invalid {
                name: "REPLICA_RYW",
                reason: format!("expected 1 or 0, got {other:?}"),
            })
        }
    };
    let max_lag = millis(env, "REPLICA_MAX_LAG_MS", 1_000)?;
    // A user's last write position is remembered for `store::reads::RYW_TTL` (10 s): past it,
    // a replica still in use must have replayed it, so the lag bound stays well below.
    if max_lag > Duration::from_secs(5) {
        return Err(ConfigError::Invalid {
            name: "REPLICA_MAX_LAG_MS",
            reason: "at most 5000: read-your-writes remembers a write for 10 s".into(),
        });
    }
    Ok(ReplicaConfig {
        url,
        wait: Duration::from_millis(wait_ms),
        max_lag,
        read_your_writes,
    })
}

/// The whole origin configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    /// `DATABASE_SESSION_URL`: a direct URL of the primary for what needs a server session of
    /// its own (session-level advisory locks: jobs leader, relay lanes, the migrations' lock),
    /// for when `DATABASE_URL` goes through a *transaction* pooler. `None`: `DATABASE_URL` (or,
    /// in tests, the pool's own options), right behind a session pooler or none.
    pub database_session_url: Option<Secret>,
    /// The read replica, if any.
    pub replica: ReplicaConfig,
    pub db_max_connections: u32,
    pub bind_addr: SocketAddr,
    /// The regions this origin is the home of; vehicles of other regions are not served here.
    pub regions: Vec<Region>,
    /// Every region's service area (`SERVICE_AREAS`, default [`domain::area::DEFAULT_SERVICE_AREAS`]):
    /// a search or surge point in another region's area is misdirected (421).
    pub areas: domain::area::ServiceAreas,
    pub jwt: JwtConfig,
    /// Quote-signing secrets by key id; `quote_active_kid` signs, all verify (rotation).
    pub quote_keys: Vec<(String, Secret)>,
    pub quote_active_kid: String,
    pub quote_ttl: Duration,
    pub hold_ttl: Duration,
    /// How long a waitlist offer keeps the window for its waiter alone (`WAITLIST_OFFER_SECS`,
    /// 1–3600, default 120).
    pub waitlist_offer_secs: i32,
    pub sweeper_interval: Duration,
    pub request_timeout: Duration,
    /// How long a client may take to send a request's head; then the connection is closed.
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    /// API requests served at once; past it, 503 + Retry-After at once (`http/shed.rs`).
    pub max_in_flight: usize,
    /// How long a request past `max_in_flight` may wait for a permit before its 503 (zero:
    /// refused at once); at most `max_in_flight` wait (`http/shed.rs`).
    pub admission_wait: Duration,
    /// How long this process trusts a vehicle's L1 generation without asking Redis (the
    /// in-process quote cache, `cache/local.rs`); zero turns that layer off.
    pub l1_local_ttl: Duration,
    pub log_json: bool,
    /// OTLP/HTTP collector base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, `http://host:4318`);
    /// spans go to `{it}/v1/traces`. `None`: no tracing layer at all (see `telemetry.rs`).
    pub otel_endpoint: Option<String>,
    /// Kafka bootstrap servers (`KAFKA_BROKERS`); `None` turns the outbox relay off.
    pub kafka_brokers: Option<String>,
    /// Partitions and replicas of each topic the relay or a consumer creates.
    pub kafka_topics: TopicLayout,
    /// Outbox rows per relay batch.
    pub relay_batch: i64,
    /// Lanes the outbox is split into between relay instances (see `relay.rs`).
    pub relay_lanes: i32,
    /// Relay pause when the outbox is empty.
    pub relay_poll: Duration,
    /// The availability consumer (`EVENT_CONSUMER`, 1 or 0; default 1 when `KAFKA_BROKERS`
    /// is set): runs in the `all` and `relay` roles, see `jobs/consumer.rs`.
    pub event_consumer: bool,
    /// Its consumer group (`CONSUMER_GROUP`; default `availability-<regions>`, e.g.
    /// `availability-euw`: one group per region, every replica of the region in it).
    pub consumer_group: String,
    /// How often it commits processed offsets (`CONSUMER_COMMIT_MS`, default 500).
    pub consumer_commit: Duration,
    /// How long its fetches (and the webhook fan-out's) wait at the broker for new records
    /// (`CONSUMER_FETCH_WAIT_MS`, default 100; librdkafka's `fetch.wait.max.ms`): the
    /// consumers' latency on quiet topics. Kafka parks a waiting fetch on the log, so a short
    /// wait costs it little; tansu polls its storage during the wait, so on the bench box the
    /// idle fetches of one origin cost the broker 0.3–0.5 of a core at 100 ms (README,
    /// *Benchmarks*; `scripts/bench.sh` uses 1000).
    pub consumer_fetch_wait: Duration,
    /// Its static group membership (`CONSUMER_INSTANCE_ID`, e.g. a StatefulSet pod's name):
    /// a restarted replica takes its partitions back at once. Unset: dynamic membership.
    pub consumer_instance: Option<String>,
    /// How long a stop (SIGTERM, SIGINT) may take, from the signal to the exit: in-flight
    /// requests drain, then the background jobs stop (`SHUTDOWN_GRACE_SECS`, 1–300, default
    /// 20). Past it the process exits with an error instead of 0, naming what did not stop.
    pub shutdown_grace: Duration,
    /// Signed webhooks (`WEBHOOK_*`).
    pub webhooks: WebhookConfig,
    pub redis: RedisConfig,
    pub pricing: PricingConfig,
    /// The edge cache whose generations the origin bumps (`edge_gen.rs`); None = off.
    pub edge_cache: Option<crate::redis::edge_gen::EdgeCacheConfig>,
    /// Edge → origin authentication and the origin's own per-user limit
    /// (`http/edge_guard.rs`).
    pub front_door: FrontDoorConfig,
    /// What this process serves and runs (`ORIGIN_ROLE`, overridden by `serve --role`;
    /// default `all`): see [`crate::role`].
    pub role: crate::role::Role,
    /// Whether `serve` applies the migrations before serving (`MIGRATE_ON_START`, default
    /// true). Off in Kubernetes, where a `Job` runs `origin migrate` before the rollout and 50
    /// replicas do not race to take the migration lock.
    pub migrate_on_start: bool,
}

/// A source of variables: the process environment, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.trim().is_empty())
    }
}

fn required(env: &dyn Env, name: &'static str) -> Result<String, ConfigError> {
    env.var(name).ok_or(ConfigError::Missing(name))
}

fn parsed<T: std::str::FromStr>(
    env: &dyn Env,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match env.var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: format!("{e} (got {v:?})"),
        }),
    }
}

fn millis(env: &dyn Env, name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
    let ms: u64 = parsed(env, name, default_ms)?;
    if ms == 0 {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be greater than 0".into(),
        });
    }
    Ok(Duration::from_millis(ms))
}

fn secs(env: &dyn Env, name: &'static str, default_s: u64) -> Result<Duration, ConfigError> {
    let s: u64 = parsed(env, name, default_s)?;
    if s == 0 {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be greater than 0".into(),
        });
    }
    Ok(Duration::from_secs(s))
}

fn waitlist_offer_secs(env: &dyn Env) -> Result<i32, ConfigError> {
    let s: i32 = parsed(env, "WAITLIST_OFFER_SECS", 120)?;
    if !(1..=3600).contains(&s) {
        return Err(ConfigError::Invalid {
            name: "WAITLIST_OFFER_SECS",
            reason: format!("must be between 1 and 3600 (got {s})"),
        });
    }
    Ok(s)
}

fn at_least_one<T>(env: &dyn Env, name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: fmt::Display,
{
    let value = parsed(env, name, default)?;
    if value < T::from(1) {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

/// `SHUTDOWN_GRACE_SECS`: long enough for a request deadline and a relay batch to settle, short
/// enough to end before an orchestrator's own kill timeout (Kubernetes: 30 s by default).
fn shutdown_grace(env: &dyn Env) -> Result<Duration, ConfigError> {
    let grace = secs(env, "SHUTDOWN_GRACE_SECS", 20)?;
    if grace > Duration::from_secs(300) {
        return Err(ConfigError::Invalid {
            name: "SHUTDOWN_GRACE_SECS",
            reason: "at most 300: a stop that takes longer is a hang".into(),
        });
    }
    Ok(grace)
}

/// Parses `kid=value,kid2=value2`.
fn keyed_list(name: &'static str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (kid, value) = item.split_once('=').ok_or_else(|| ConfigError::Invalid {
                name,
                reason: "expected comma-separated kid=value pairs".into(),
            })?;
            if kid.trim().is_empty() || value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "empty key id or value".into(),
                });
            }
            Ok((kid.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn pem_files(env: &dyn Env, name: &'static str) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let Some(raw) = env.var(name) else {
        return Ok(BTreeMap::new());
    };
    keyed_list(name, &raw)?
        .into_iter()
        .map(|(kid, path)| {
            std::fs::read(&path)
                .map(|pem| (kid, pem))
                .map_err(|e| ConfigError::Invalid {
                    name,
                    reason: format!("cannot read {path}: {e}"),
                })
        })
        .collect()
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&ProcessEnv)
    }

    /// Reads the configuration from any [`Env`].
    pub fn from(env: &dyn Env) -> Result<Self, ConfigError> {
        let regions_raw = env
            .var("ORIGIN_REGIONS")
            .unwrap_or_else(|| "EUW,EUN".into());
        let mut regions = Vec::new();
        for part in regions_raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let region: Region = part.parse().map_err(|_| ConfigError::Invalid {
                name: "ORIGIN_REGIONS",
                reason: format!("unknown region {part:?} (expected EUW, EUN)"),
            })?;
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
        if regions.is_empty() {
            return Err(ConfigError::Invalid {
                name: "ORIGIN_REGIONS",
                reason: "name at least one region".into(),
            });
        }

        let areas = match env.var("SERVICE_AREAS") {
            Some(text) => {
                domain::area::ServiceAreas::parse(&text).map_err(|e| ConfigError::Invalid {
                    name: "SERVICE_AREAS",
                    reason: e.to_string(),
                })?
            }
            None => domain::area::ServiceAreas::default(),
        };

        let hs256_secret = match env.var("JWT_HS256_SECRET") {
            Some(s) if s.len() < 32 => {
                return Err(ConfigError::Invalid {
                    name: "JWT_HS256_SECRET",
                    reason: "must be at least 32 bytes".into(),
                })
            }
            other => other.map(|s| Secret(s.into_bytes())),
        };
        let jwt = JwtConfig {
            issuer: required(env, "JWT_ISSUER")?,
            audience: required(env, "JWT_AUDIENCE")?,
            leeway_secs: parsed(env, "JWT_LEEWAY_SECS", 30)?,
            hs256_secret,
            hs256_kid: env.var("JWT_HS256_KID"),
            rs256_public_keys: pem_files(env, "JWT_RS256_PUBLIC_KEYS")?,
            eddsa_public_keys: pem_files(env, "JWT_EDDSA_PUBLIC_KEYS")?,
        };
        if jwt.hs256_secret.is_none()
            && jwt.rs256_public_keys.is_empty()
            && jwt.eddsa_public_keys.is_empty()
        {
            return Err(ConfigError::Missing(
                "JWT_HS256_SECRET (or JWT_RS256_PUBLIC_KEYS / JWT_EDDSA_PUBLIC_KEYS)",
            ));
        }

        let quote_keys = keyed_list("QUOTE_SIGNING_KEYS", &required(env, "QUOTE_SIGNING_KEYS")?)?
            .into_iter()
            .map(|(kid, secret)| {
                if secret.len() < 32 {
                    return Err(ConfigError::Invalid {
                        name: "QUOTE_SIGNING_KEYS",
                        reason: format!("secret of key {kid:?} must be at least 32 bytes"),
                    });
                }
                Ok((kid, Secret(secret.into_bytes())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let quote_active_kid = match env.var("QUOTE_ACTIVE_KID") {
            Some(kid) => kid,
            None => quote_keys
                .first()
                .map(|(kid, _)| kid.clone())
                .ok_or(ConfigError::Missing("QUOTE_SIGNING_KEYS"))?,
        };
        if !quote_keys.iter().any(|(kid, _)| *kid == quote_active_kid) {
            return Err(ConfigError::Invalid {
                name: "QUOTE_ACTIVE_KID",
                reason: format!("{quote_active_kid:?} is not a key id in QUOTE_SIGNING_KEYS"),
            });
        }

        let log_format = env.var("LOG_FORMAT").unwrap_or_else(|| "pretty".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "pretty" | "text" => false,
            other => {
                return Err(ConfigError::Invalid {
                    name: "LOG_FORMAT",
                    reason: format!("{other:?} (expected json or pretty)"),
                })
            }
        };

        let otel_endpoint = match env.var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            None => None,
            Some(url) if url.trim().is_empty() => None,
            Some(url) => {
                let url = url.trim().to_owned();
                let host = url.strip_prefix("http://").unwrap_or_default();
                if host.is_empty() || host.contains(char::is_whitespace) {
                    return Err(ConfigError::Invalid {
                        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
                        reason: "expected http://host:port of an OTLP/HTTP collector (plain \
                                 HTTP: run the collector next to the origin, it forwards with TLS)"
                            .into(),
                    });
                }
                Some(url)
            }
        };

        let database_session_url = match env.var("DATABASE_SESSION_URL") {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(Secret(url.trim().as_bytes().to_vec()))
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "DATABASE_SESSION_URL",
                    reason: "expected postgres://user@host:port/db (the primary, not a pooler)"
                        .into(),
                })
            }
        };

        let consumer_group = env.var("CONSUMER_GROUP").unwrap_or_else(|| {
            let codes: Vec<String> = regions.iter().map(|r| r.code().to_lowercase()).collect();
            format!("availability-{}", codes.join("-"))
        });
        let webhooks = webhook_config(env, &regions)?;
        Ok(Config {
            database_url: Secret(required(env, "DATABASE_URL")?.into_bytes()),
            database_session_url,
            replica: replica_config(env)?,
            db_max_connections: parsed(env, "DB_MAX_CONNECTIONS", 16)?,
            bind_addr: parsed(env, "BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            regions,
            areas,
            jwt,
            quote_keys,
            quote_active_kid,
            quote_ttl: secs(env, "QUOTE_TTL_SECS", 300)?,
            hold_ttl: secs(env, "HOLD_TTL_SECS", 600)?,
            waitlist_offer_secs: waitlist_offer_secs(env)?,
            sweeper_interval: millis(env, "SWEEPER_INTERVAL_MS", 5_000)?,
            request_timeout: millis(env, "REQUEST_TIMEOUT_MS", 10_000)?,
            header_read_timeout: millis(env, "HEADER_READ_TIMEOUT_MS", 10_000)?,
            max_body_bytes: parsed(env, "MAX_BODY_BYTES", 64 * 1024)?,
            max_in_flight: at_least_one(env, "MAX_IN_FLIGHT", 512)?,
            admission_wait: Duration::from_millis(parsed(env, "ADMISSION_WAIT_MS", 25)?),
            l1_local_ttl: Duration::from_millis(parsed(env, "L1_LOCAL_TTL_MS", 1_000)?),
            log_json,
            otel_endpoint,
            kafka_brokers: env.var("KAFKA_BROKERS").map(|b| b.trim().to_owned()),
            kafka_topics: TopicLayout {
                partitions: at_least_one(env, "KAFKA_TOPIC_PARTITIONS", 3)?,
                replication: topic_replication(env)?,
            },
            relay_batch: at_least_one(env, "RELAY_BATCH", 200)?,
            relay_lanes: at_least_one(env, "RELAY_LANES", 8)?,
            relay_poll: millis(env, "RELAY_POLL_MS", 200)?,
            event_consumer: match env.var("EVENT_CONSUMER") {
                None => env.var("KAFKA_BROKERS").is_some(),
                Some(_) => flag(env, "EVENT_CONSUMER")?,
            },
            consumer_group,
            consumer_commit: millis(env, "CONSUMER_COMMIT_MS", 500)?,
            consumer_fetch_wait: match millis(env, "CONSUMER_FETCH_WAIT_MS", 100)? {
                // Past a few seconds, a consumer on quiet topics would fall behind its own
                // readiness and lag checks; librdkafka refuses more than 300 s anyway.
                wait if wait > Duration::from_secs(5) => {
                    return Err(ConfigError::Invalid {
                        name: "CONSUMER_FETCH_WAIT_MS",
                        reason: "must be at most 5000".into(),
                    })
                }
                wait => wait,
            },
            consumer_instance: env
                .var("CONSUMER_INSTANCE_ID")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            shutdown_grace: shutdown_grace(env)?,
            webhooks,
            redis: redis_config(env)?,
            pricing: pricing_config(env)?,
            edge_cache: crate::redis::edge_gen::config(env)?,
            front_door: front_door_config(env)?,
            role: parsed(env, "ORIGIN_ROLE", crate::role::Role::All)?,
            migrate_on_start: parsed(env, "MIGRATE_ON_START", true)?,
        })
    }

    /// Whether this process runs the availability consumer: `KAFKA_BROKERS` set, not turned
    /// off by `EVENT_CONSUMER=0`, in a role that consumes.
    pub fn consumes(&self) -> bool {
        self.event_consumer && self.kafka_brokers.is_some() && self.role.consumes()
    }

    /// Whether this process runs the webhook fan-out and dispatcher: with the consumer, unless
    /// `WEBHOOKS=0`.
    pub fn dispatches_webhooks(&self) -> bool {
        self.consumes() && self.webhooks.enabled
    }

    /// The database URL as a string (it may hold a password: never log it).
    pub fn database_url(&self) -> String {
        String::from_utf8_lossy(&self.database_url.0).into_owned()
    }

    /// The URL for a session of its own on the primary (session-level advisory locks):
    /// `DATABASE_SESSION_URL`, else `DATABASE_URL`. Never log it.
    pub fn session_url(&self) -> String {
        match &self.database_session_url {
            Some(url) => String::from_utf8_lossy(&url.0).into_owned(),
            None => self.database_url(),
        }
    }

    /// The read replica's URL, if configured. Never log it.
    pub fn read_url(&self) -> Option<String> {
        self.replica
            .url
            .as_ref()
            .map(|u| String::from_utf8_lossy(&u.0).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeMap<String, String> {
        [
            ("DATABASE_URL", "postgres://postgres@127.0.0.1/test"),
            ("JWT_ISSUER", "iss"),
            ("JWT_AUDIENCE", "aud"),
            ("JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef"),
            ("QUOTE_SIGNING_KEYS", "k1=0123456789abcdef0123456789abcdef"),
            ("ORIGIN_ALLOW_DIRECT", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn a_complete_environment_parses_with_defaults() -> Result<(), ConfigError> {
        let config = Config::from(&base())?;
        assert_eq!(config.regions, vec![Region::Euw, Region::Eun]);
        assert_eq!(config.hold_ttl, Duration::from_secs(600));
        assert_eq!(config.waitlist_offer_secs, 120);
        assert_eq!(config.quote_active_kid, "k1");
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert_eq!(config.redis.key_prefix, "bp:");
        assert_eq!(config.redis.lock_ttl, Duration::from_millis(5_000));
        assert_eq!(config.redis.vehicle_lock, VehicleLockMode::Postgres);
        Ok(())
    }

    #[test]
    fn tracing_is_off_unless_an_otlp_endpoint_is_set() -> Result<(), ConfigError> {
        let mut env = base();
        assert_eq!(Config::from(&env)?.otel_endpoint, None);
        env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "".into());
        assert_eq!(Config::from(&env)?.otel_endpoint, None);
        env.insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://otel-collector:4318".into(),
        );
        assert_eq!(
            Config::from(&env)?.otel_endpoint.as_deref(),
            Some("http://otel-collector:4318")
        );
        Ok(())
    }

    #[test]
    fn vehicle_lock_can_be_switched_off() -> Result<(), ConfigError> {
        for (value, mode) in [
            ("on", VehicleLockMode::On),
            ("postgres", VehicleLockMode::Postgres),
            ("off", VehicleLockMode::Off),
        ] {
            let mut env = base();
            env.insert("VEHICLE_LOCK".into(), value.into());
            assert_eq!(Config::from(&env)?.redis.vehicle_lock, mode, "{value}");
        }
        Ok(())
    }

    #[test]
    fn replicas_are_off_by_default_and_the_session_url_defaults_to_the_database_url(
    ) -> Result<(), ConfigError> {
        let mut env = base();
        let plain = Config::from(&env)?;
        assert!(plain.read_url().is_none());
        assert_eq!(plain.session_url(), plain.database_url());
        assert!(plain.replica.read_your_writes);
        env.insert(
            "DATABASE_SESSION_URL".into(),
            "postgres://postgres@primary:5432/booking".into(),
        );
        env.insert(
            "DATABASE_READ_URL".into(),
            "postgres://postgres@bouncer:6432/booking_replica".into(),
        );
        env.insert("REPLICA_RYW".into(), "0".into());
        let scaled = Config::from(&env)?;
        assert_eq!(
            scaled.session_url(),
            "postgres://postgres@primary:5432/booking"
        );
        assert!(scaled.read_url().is_some());
        assert!(!scaled.replica.read_your_writes);
        Ok(())
    }

    #[test]
    fn a_missing_variable_is_named() {
        let mut env = base();
        env.remove("JWT_ISSUER");
        let err = Config::from(&env).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("JWT_ISSUER is missing"));
    }

    #[test]
    fn a_bad_variable_is_named() {
        for (name, value) in [
            ("HOLD_TTL_SECS", "ten"),
            ("HOLD_TTL_SECS", "0"),
            ("ORIGIN_REGIONS", "USE"),
            ("ORIGIN_REGIONS", " , "),
            ("SERVICE_AREAS", "EUW=1 1, 2 2, 1 2"),
            ("SERVICE_AREAS", "EUW=1 1, 2 2, 1 2; EUN=1 1, 2 2, 1 2"),
            ("BIND_ADDR", "localhost"),
            ("JWT_HS256_SECRET", "short"),
            ("QUOTE_ACTIVE_KID", "nope"),
            ("LOG_FORMAT", "xml"),
            ("RELAY_LANES", "0"),
            ("RELAY_BATCH", "many"),
            ("REDIS_URL", "http://localhost"),
            ("REDIS_URL", "redis://a:6379,redis://b:6379"),
            ("REDIS_MODE", "galaxy"),
            ("KAFKA_TOPIC_REPLICATION", "0"),
            ("KAFKA_TOPIC_REPLICATION", "three"),
            ("CONSUMER_FETCH_WAIT_MS", "0"),
            ("CONSUMER_FETCH_WAIT_MS", "5001"),
            ("SHUTDOWN_GRACE_SECS", "0"),
            ("SHUTDOWN_GRACE_SECS", "301"),
            ("SHUTDOWN_GRACE_SECS", "soon"),
            ("LOCK_TTL_MS", "0"),
            ("LOCK_WAIT_MS", "5000"),
            ("VEHICLE_LOCK", "maybe"),
            ("INFERENCE_URL", "ftp://models"),
            ("INFERENCE_RETRIES", "9"),
            ("PRICING_BUDGET_MS", "0"),
            ("SURGE_H3_RESOLUTION", "15"),
            ("BREAKER_FAILURES", "0"),
            ("PRICE_MAX_JUMP_BP", "-1"),
            ("ORIGIN_ROLE", "frontend"),
            ("MIGRATE_ON_START", "sometimes"),
            ("DATABASE_READ_URL", "mysql://replica/db"),
            ("REPLICA_WAIT_MS", "5000"),
            ("REPLICA_MAX_LAG_MS", "0"),
            ("REPLICA_MAX_LAG_MS", "60000"),
            ("DATABASE_SESSION_URL", "pgbouncer:6432"),
            ("REPLICA_RYW", "maybe"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
            ("ORIGIN_ALLOW_DIRECT", "yes"),
            ("ORIGIN_USER_LIMIT_PER_MIN", "-1"),
            ("EDGE_SIGNING_KEYS", "e1"),
            ("EDGE_SIGNING_KEYS", "e1=short"),
            (
                "EDGE_SIGNING_KEYS",
                "e.1=edge-key-edge-key-edge-key-edge-key",
            ),
            (
                "EDGE_SIGNING_KEYS",
                "e1=edge-key-edge-key-edge-key-edge-key,e1=edge-key-edge-key-edge-key-edge-kez",
            ),
        ] {
            let mut env = base();
            env.insert(name.into(), value.into());
            let err = Config::from(&env).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with(name)),
                "{name}={value} gave {err:?}"
            );
        }
    }

    #[test]
    fn the_role_defaults_to_all_and_start_up_migration_to_on_and_both_switch(
    ) -> Result<(), ConfigError> {
        use crate::role::Role;
        let mut env = base();
        let default = Config::from(&env)?;
        assert_eq!(default.role, Role::All);
        assert!(default.migrate_on_start);
        env.insert("ORIGIN_ROLE".into(), "booking".into());
        env.insert("MIGRATE_ON_START".into(), "false".into());
        let switched = Config::from(&env)?;
        assert_eq!(switched.role, Role::Booking);
        assert!(!switched.migrate_on_start);
        Ok(())
    }

    #[test]
    fn a_replicated_topic_requires_a_majority_in_sync() -> Result<(), ConfigError> {
        let mut env = base();
        let single = Config::from(&env)?.kafka_topics;
        assert_eq!(single.replication, 1);
        assert!(single.topic_config().is_empty());
        for (replicas, in_sync) in [("2", "2"), ("3", "2"), ("5", "3")] {
            env.insert("KAFKA_TOPIC_REPLICATION".into(), replicas.into());
            let layout = Config::from(&env)?.kafka_topics;
            assert_eq!(
                layout.topic_config(),
                [("min.insync.replicas", in_sync.to_owned())],
                "{replicas} replicas"
            );
        }
        Ok(())
    }

    #[test]
    fn redis_mode_single_is_accepted_and_is_the_default() -> Result<(), ConfigError> {
        let mut env = base();
        let default = Config::from(&env)?;
        env.insert("REDIS_MODE".into(), "single".into());
        let single = Config::from(&env)?;
        assert_eq!(default.redis.url(), single.redis.url());
        assert_eq!(default.redis.mode, RedisMode::Single);
        Ok(())
    }

    #[test]
    fn redis_sentinel_and_cluster_take_url_lists_and_sentinel_needs_its_master(
    ) -> Result<(), ConfigError> {
        let mut env = base();
        env.insert("REDIS_MODE".into(), "cluster".into());
        env.insert(
            "REDIS_URL".into(),
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000,".into(),
        );
        let cluster = Config::from(&env)?;
        assert_eq!(cluster.redis.mode, RedisMode::Cluster);
        assert_eq!(
            cluster.redis.urls(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        env.insert("REDIS_MODE".into(), "sentinel".into());
        let missing = Config::from(&env).err().map(|e| e.to_string());
        assert!(
            missing
                .as_deref()
                .is_some_and(|e| e.starts_with("REDIS_SENTINEL_MASTER")),
            "{missing:?}"
        );
        env.insert("REDIS_SENTINEL_MASTER".into(), "euw".into());
        let sentinel = Config::from(&env)?;
        assert_eq!(
            sentinel.redis.mode,
            RedisMode::Sentinel {
                master: "euw".into()
            }
        );
        env.insert("REDIS_URL".into(), "redis://10.0.0.1:26379,http://x".into());
        assert!(Config::from(&env).is_err());
        Ok(())
    }

    #[test]
    fn an_origin_needs_edge_keys_unless_direct_calls_are_allowed() -> Result<(), ConfigError> {
        let mut env = base();
        env.remove("ORIGIN_ALLOW_DIRECT");
        let err = Config::from(&env).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("EDGE_SIGNING_KEYS (or ORIGIN_ALLOW_DIRECT=1")),
            "{err:?}"
        );
        env.insert(
            "EDGE_SIGNING_KEYS".into(),
            "e0=old-edge-key-old-edge-key-old-edge-key, e1=new-edge-key-new-edge-key-new-edge-key"
                .into(),
        );
        let keyed = Config::from(&env)?;
        assert!(!keyed.front_door.allow_direct);
        let kids: Vec<&str> = keyed
            .front_door
            .edge_keys
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(kids, ["e0", "e1"]);
        assert_eq!(keyed.front_door.user_limit_per_min, 1_000);
        assert!(!format!("{keyed:?}").contains("edge-key"));
        Ok(())
    }

    #[test]
    fn secrets_are_not_printed() -> Result<(), ConfigError> {
        let config = Config::from(&base())?;
        let printed = format!("{config:?}");
        assert!(!printed.contains("0123456789abcdef"));
        assert!(!printed.contains("postgres://"));
        Ok(())
    }
}
