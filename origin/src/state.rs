//! The one cloneable application state shared by every handler.

use std::sync::Arc;

use domain::auth::JwtVerifier;
use domain::cancellation::CancellationPolicy;
use domain::quote_token::QuoteSigner;
use domain::window::BookingPolicy;
use sqlx::PgPool;

use crate::app::surge::Surge;
use crate::config::Config;
use crate::inference::InferenceClient;
use crate::redis::availability::Availability;
use crate::redis::cache::Caches;
use crate::redis::link::RedisLink;
use crate::redis::locks::Locks;

/// The state every handler shares: one `Arc`, so the clone axum makes for each extractor of
/// each request is one reference count, not one per field (the profile of a cached quote had
/// ~20 of them, about 5 % of its CPU). Fields are reached through `Deref`.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub(crate) struct Shared {
    /// The primary: every write, and every read inside a write's transaction.
    pub db: PgPool,
    /// Where the other reads go: the replica when it can serve them (`store/reads.rs`).
    pub reads: crate::store::reads::Reads,
    pub config: Arc<Config>,
    pub jwt: Arc<JwtVerifier>,
    pub quotes: Arc<QuoteSigner>,
    pub policy: Arc<BookingPolicy>,
    pub cancellation: Arc<CancellationPolicy>,
    /// Redis and whether it answers (locks and the GEO index degrade to PostgreSQL without it).
    pub redis: RedisLink,
    pub locks: Locks,
    pub availability: Availability,
    /// L1 (responses) and L2 (pricing intermediates), each on its own connection.
    pub caches: Caches,
    /// The AI inference API client (risk, demand) with its circuit breakers.
    pub inference: InferenceClient,
    /// The surge grids of the served regions.
    pub surge: Surge,
    /// Bumps the edge cache generations after committed booking changes.
    pub edge_gen: crate::redis::edge_gen::EdgeGen,
    /// Whether this replica runs the singleton jobs now (the `jobs` role's election).
    pub leadership: crate::jobs::leader::Leadership,
    /// The edges' signing keys (`EDGE_SIGNING_KEYS`): see `http/edge_guard.rs`.
    pub edge_verifier: domain::edge_auth::EdgeVerifier,
    /// Replay memory and the per-user limit, in Redis (`redis/front_door.rs`).
    pub front_door: crate::redis::front_door::FrontDoor,
    /// The availability consumer's state, for `/readyz` (`jobs/consumer.rs`).
    pub consumer: Arc<crate::jobs::consumer::ConsumerStatus>,
    /// The webhook fan-out consumer's state, for `/readyz` (`crate::webhooks`).
    pub webhooks: Arc<crate::jobs::consumer::ConsumerStatus>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("regions", &self.config.regions)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from configuration, an open pool and a Redis link
    /// ([`RedisLink::connect`]); short background tasks (edge-cache bumps) run on `tasks`, the
    /// job tracker that shutdown awaits ([`crate::jobs::Jobs::tracker`]).
    pub(crate) fn new(
        config: Config,
        db: PgPool,
        replica: Option<PgPool>,
        redis: RedisLink,
        caches: Caches,
        tasks: tokio_util::task::TaskTracker,
        leadership: crate::jobs::leader::Leadership,
    ) -> anyhow::Result<Self> {
        let jwt = crate::http::auth::verifier(&config.jwt)?;
        let keys = config
            .quote_keys
            .iter()
            .map(|(kid, secret)| (kid.clone(), secret.0.clone()))
            .collect();
        let quotes = QuoteSigner::new(&config.quote_active_kid, keys)
            .map_err(|e| anyhow::anyhow!("quote signing keys: {e}"))?;
        let locks = Locks::new(redis.clone(), config.redis.lock_ttl, config.redis.lock_wait)
            .with_mode(config.redis.vehicle_lock);
        let availability = Availability::new(redis.clone(), db.clone(), &config.regions)
            .with_occupancy(config.consumes());
        let inference = InferenceClient::new(&config.pricing)?;
        let surge = Surge::new(
            db.clone(),
            caches.clone(),
            inference.clone(),
            config.pricing.surge_resolution,
            config.pricing.budget,
        );
        let edge_gen = crate::redis::edge_gen::EdgeGen::new(config.edge_cache.as_ref(), tasks)?;
        let edge_verifier = domain::edge_auth::EdgeVerifier::new(
            config
                .front_door
                .edge_keys
                .iter()
                .map(|(kid, secret)| (kid.clone(), secret.0.clone()))
                .collect(),
        )
        .map_err(|e| anyhow::anyhow!("EDGE_SIGNING_KEYS: {e}"))?;
        let front_door = crate::redis::front_door::FrontDoor::new(
            redis.clone(),
            config.front_door.user_limit_per_min,
        );
        let reads =
            crate::store::reads::Reads::new(db.clone(), replica, &config.replica, redis.clone());
        Ok(AppState(Arc::new(Shared {
            reads,
            edge_verifier,
            front_door,
            leadership,
            edge_gen,
            inference,
            surge,
            db,
            redis,
            locks,
            availability,
            caches,
            config: Arc::new(config),
            jwt: Arc::new(jwt),
            quotes: Arc::new(quotes),
            policy: Arc::new(BookingPolicy::default()),
            cancellation: Arc::new(CancellationPolicy::default()),
            consumer: Arc::default(),
            webhooks: Arc::default(),
        })))
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
