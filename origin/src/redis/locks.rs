//! Per-vehicle reservation locks: Redis when it answers, a PostgreSQL advisory lock when not.
//!
//! # What the lock is for — and what it is not
//!
//! "No double booking" is the exclusion constraint `bookings_no_overlap`, full stop. The lock
//! only *serialises contenders on one vehicle* so that, when 200 people tap the same car, one
//! runs its transaction and the others get a clean 409 within `LOCK_WAIT_MS` instead of
//! queueing on the constraint's index and each burning a connection to learn the same thing.
//! Whatever happens to the lock — it expires mid-write, Redis restarts and forgets it, two
//! origins disagree about whether Redis is up — the constraint still holds, so every failure
//! mode of the lock costs a wasted transaction, never a double booking.
//!
//! The lock is per *vehicle*, not per window: two holds on one car for different days also
//! wait for each other. That is deliberate (a booking transaction is milliseconds, and a
//! window-aware lock would be the constraint again); the second one waits up to
//! `LOCK_WAIT_MS` and normally gets through.
//!
//! # Redis: `SET key token NX PX ttl`, released by compare-and-delete
//!
//! - `NX` makes taking the lock one atomic step: exactly one contender's SET succeeds.
//! - `PX ttl` (`LOCK_TTL_MS`) bounds the damage of an owner that dies or hangs: the lock goes
//!   away by itself.
//! - The value is a fresh random token (UUIDv4) per attempt. Without it, an owner whose lock
//!   already *expired* (slow transaction) would `DEL` the next owner's lock on its way out and
//!   let a third contender in. So release is a Lua script — `if GET key == token then DEL` —
//!   which Redis runs atomically: nobody can slip a SET between the check and the delete.
//! - A contender that finds the key set retries every few milliseconds until `LOCK_WAIT_MS`
//!   (0 = a single try), then gets a 409 `/problems/conflict`.
//! - Release is explicit after commit/rollback; a lock dropped without release (handler
//!   cancelled by the request deadline) is released by a spawned task, and failing that, by
//!   its TTL.
//!
//! # Where in the request
//!
//! The lock is taken *inside* the booking transaction, right after the idempotency check
//! ([`Locks::lock_in`] on the pending request's connection), not before it: a retry whose first
//! attempt already committed must get its stored answer even while someone else holds the
//! vehicle, and a duplicate racing its first attempt must get `idempotency-in-progress`, not
//! "vehicle busy". The price is a pooled connection held for at most `LOCK_WAIT_MS` by a
//! contender. The handler keeps the [`VehicleLock`] in its own scope and releases it after the
//! commit or rollback.
//!
//! # A hold's lock: one try, or none at all
//!
//! A hold is one SQL statement (`store::bookings::at_once`), so there is no transaction to
//! take the lock "in" before it runs. [`Locks::for_hold`] makes ONE `SET NX` before the
//! statement: taken, the statement runs under it and the handler releases it after; held by
//! someone else, the hold goes the multi-statement way (the idempotency transaction, then
//! [`Locks::lock_in`] with its wait), so the ordering above still holds for every request
//! that meets a busy lock. `VEHICLE_LOCK=postgres` takes no Redis lock at all: the statement
//! itself takes the advisory lock below (waiting `LOCK_WAIT_MS`) after the idempotency
//! check — the same serialisation for no round trip, which is why it exists; the fallback
//! while Redis is down does the same.
//!
//! # Fallback: `pg_advisory_xact_lock` inside the booking transaction
//!
//! When Redis is down (see `redis_link.rs`: a dead Redis is detected once and then skipped, so
//! it costs nothing per request), [`Locks::acquire`] returns a PostgreSQL lock, taken in the
//! booking transaction before any booking row is touched ([`PgFence::enter`]) with
//! `lock_timeout = LOCK_WAIT_MS`, so contenders fail just as fast (55P03 becomes the same 409).
//! We chose the transaction-scoped advisory lock over a lease row in `reservation_locks`:
//! the critical section is exactly one transaction, and an xact lock ends with it — it cannot
//! leak, needs no expiry, sweeping or token, and writes nothing (no WAL, no dead tuples on the
//! hot path). A lease row would only pay for itself if the lock had to outlive the
//! transaction, which it does not. The key is the two-`int4` form
//! `(LOCK_NAMESPACE, hashtext(vehicle id))`, a key space PostgreSQL keeps apart from the
//! single-`bigint` keys the idempotency module uses; a hash collision between two vehicles only
//! serialises them, harmlessly.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use domain::ids::VehicleId;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::VehicleLockMode;
use crate::redis::link::{RedisLink, Unavailable};

/// First half of the advisory-lock key: "lock" in ASCII, so `pg_locks` shows whose it is.
pub const LOCK_NAMESPACE: i32 = 0x6c6f_636b;

/// Compare-and-delete: only the holder of `token` may release.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
    )
});

/// How often a waiting contender retries the SET.
const RETRY_EVERY: Duration = Duration::from_millis(5);

/// Why a vehicle's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else held the lock for longer than `LOCK_WAIT_MS`.
    #[error("vehicle {0} is being booked by someone else right now; try again in a moment")]
    Busy(VehicleId),
    /// The PostgreSQL fallback lock failed for another reason than a timeout.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The lock service: one per origin, cheap to clone.
#[derive(Debug, Clone)]
pub struct Locks {
    redis: RedisLink,
    ttl: Duration,
    wait: Duration,
    mode: VehicleLockMode,
}

impl Locks {
    pub fn new(redis: RedisLink, ttl: Duration, wait: Duration) -> Self {
        Locks {
            redis,
            ttl,
            wait,
            mode: VehicleLockMode::On,
        }
    }

    /// With `VEHICLE_LOCK=off` no lock is taken: contenders meet at the exclusion constraint.
    pub fn with_mode(self, mode: VehicleLockMode) -> Self {
        Locks { mode, ..self }
    }

    /// Where locks are taken right now: `redis`, `postgres-fallback`, `postgres` or `off`.
    pub fn backend(&self) -> &'static str {
        match self.mode {
            VehicleLockMode::Off => "off",
            VehicleLockMode::Postgres => "postgres",
            VehicleLockMode::On if self.redis.is_up() => "redis",
            VehicleLockMode::On => "postgres-fallback",
        }
    }

    /// How long a contender waits for a held lock (`LOCK_WAIT_MS`).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The lock a hold runs its one statement under (`store::bookings::at_once`): with
    /// `VEHICLE_LOCK=on` and Redis answering, ONE `SET NX` — taken, or [`HoldLock::Busy`] at
    /// once (the caller then goes the multi-statement way, where the idempotency key is
    /// looked at before the vehicle lock is waited for, as the module docs require); the
    /// advisory lock inside the statement with `postgres`, or while Redis is down; none with
    /// `off`.
    pub(crate) async fn for_hold(&self, vehicle: &VehicleId) -> HoldLock {
        match self.mode {
            VehicleLockMode::Off => return HoldLock::None,
            VehicleLockMode::Postgres => return HoldLock::InStatement,
            VehicleLockMode::On => {}
        }
        let key = self.key(vehicle);
        let token = Uuid::new_v4().to_string();
        match self.set_nx(&key, &token).await {
            Ok(true) => {
                metrics::counter!("vehicle_locks_total", "backend" => "redis", "outcome" => "acquired").increment(1);
                HoldLock::Redis(VehicleLock {
                    vehicle: *vehicle,
                    held: Held::Redis {
                        link: self.redis.clone(),
                        key,
                        token,
                    },
                    wait: self.wait,
                })
            }
            Ok(false) => HoldLock::Busy,
            Err(_) => HoldLock::InStatement,
        }
    }

    /// One `SET key token NX PX ttl`: true when it took the lock.
    async fn set_nx(&self, key: &str, token: &str) -> Result<bool, Unavailable> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let set = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .clone();
        self.redis
            .run("lock", |mut conn| async move {
                set.query_async::<Option<String>>(&mut conn).await
            })
            .await
            .map(|taken| taken.is_some())
    }

    /// The Redis key of a vehicle's lock.
    pub fn key(&self, vehicle: &VehicleId) -> String {
        self.redis
            .key(&format!("lock:vehicle:{{{}}}", vehicle.uuid.simple()))
    }

    /// Inside the booking transaction, after the idempotency check: takes the vehicle's lock
    /// (Redis, or PostgreSQL's advisory lock on `conn` right here when Redis is unavailable).
    /// The caller keeps the lock and releases it after the commit or rollback.
    pub(crate) async fn lock_in(
        &self,
        conn: &mut PgConnection,
        vehicle: &VehicleId,
    ) -> Result<VehicleLock, LockError> {
        let lock = self.acquire(vehicle).await?;
        lock.fence().enter(conn).await?;
        Ok(lock)
    }

    /// Takes the vehicle's lock: a Redis lock, or — when Redis does not answer — a
    /// [`VehicleLock`] whose [`PgFence`] the booking transaction must enter
    /// ([`Locks::lock_in`] does both).
    /// A lock held by someone else for longer than `LOCK_WAIT_MS` is [`LockError::Busy`].
    pub async fn acquire(&self, vehicle: &VehicleId) -> Result<VehicleLock, LockError> {
        let held = match self.mode {
            VehicleLockMode::Off => Some(Held::Off),
            VehicleLockMode::Postgres => Some(Held::Postgres),
            VehicleLockMode::On => None,
        };
        if let Some(held) = held {
            return Ok(VehicleLock {
                vehicle: *vehicle,
                held,
                wait: self.wait,
            });
        }
        let key = self.key(vehicle);
        let token = Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.wait;
        loop {
            match self.set_nx(&key, &token).await {
                Ok(true) => {
                    metrics::counter!("vehicle_locks_total", "backend" => "redis", "outcome" => "acquired").increment(1);
                    return Ok(VehicleLock {
                        vehicle: *vehicle,
                        held: Held::Redis {
                            link: self.redis.clone(),
                            key,
                            token,
                        },
                        wait: self.wait,
                    });
                }
                Ok(false) => {
                    let now = Instant::now();
                    if now >= deadline {
                        metrics::counter!("vehicle_locks_total", "backend" => "redis", "outcome" => "busy").increment(1);
                        return Err(LockError::Busy(*vehicle));
                    }
                    tokio::time::sleep(RETRY_EVERY.min(deadline - now)).await;
                }
                Err(e) => {
                    if !matches!(e, Unavailable::Down) {
                        tracing::debug!(error = %e, %vehicle, "Redis lock failed; using PostgreSQL");
                    }
                    return Ok(VehicleLock {
                        vehicle: *vehicle,
                        held: Held::Postgres,
                        wait: self.wait,
                    });
                }
            }
        }
    }

    /// Releases the lock on `vehicle` if `token` still holds it. True when it did.
    pub async fn release_token(
        &self,
        vehicle: &VehicleId,
        token: &str,
    ) -> Result<bool, Unavailable> {
        release(&self.redis, &self.key(vehicle), token).await
    }
}

async fn release(link: &RedisLink, key: &str, token: &str) -> Result<bool, Unavailable> {
    let mut invocation = RELEASE.prepare_invoke();
    invocation.key(key).arg(token);
    let deleted: i64 = link
        .run("unlock", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    Ok(deleted == 1)
}

/// The lock a hold's one statement runs under ([`Locks::for_hold`]).
#[derive(Debug)]
pub(crate) enum HoldLock {
    /// The Redis lock, held: release it after the statement.
    Redis(VehicleLock),
    /// Redis said the vehicle is locked (one try).
    Busy,
    /// The statement takes the vehicle's advisory lock itself.
    InStatement,
    /// No lock (`VEHICLE_LOCK=off`).
    None,
}

#[derive(Debug)]
enum Held {
    Redis {
        link: RedisLink,
        key: String,
        token: String,
    },
    /// Redis was unavailable: the transaction takes an advisory lock instead.
    Postgres,
    /// `VEHICLE_LOCK=off`: nothing taken, nothing to release.
    Off,
    Released,
}

/// A vehicle's lock for the duration of one booking transaction.
#[derive(Debug)]
pub struct VehicleLock {
    vehicle: VehicleId,
    held: Held,
    wait: Duration,
}

impl VehicleLock {
    /// `redis`, `postgres-fallback` or `off`.
    pub fn backend(&self) -> &'static str {
        match self.held {
            Held::Postgres => "postgres-fallback",
            Held::Off => "off",
            _ => "redis",
        }
    }

    /// The Redis token of this lock (None for the PostgreSQL fallback).
    pub fn token(&self) -> Option<&str> {
        match &self.held {
            Held::Redis { token, .. } => Some(token),
            _ => None,
        }
    }

    /// What the booking transaction must do first: enter a PostgreSQL advisory lock when Redis
    /// was unavailable, nothing otherwise.
    pub(crate) fn fence(&self) -> PgFence {
        PgFence {
            vehicle: matches!(self.held, Held::Postgres).then_some(self.vehicle),
            wait: self.wait,
        }
    }

    /// Releases a Redis lock (compare-and-delete). True when this owner still held it; false
    /// when it had expired (or Redis lost it) — harmless, the database decided anyway.
    pub async fn release(mut self) -> bool {
        match std::mem::replace(&mut self.held, Held::Released) {
            Held::Redis { link, key, token } => match release(&link, &key, &token).await {
                Ok(released) => released,
                Err(e) => {
                    tracing::debug!(error = %e, "release vehicle lock; its TTL will");
                    false
                }
            },
            // The advisory lock ended with the transaction; `off` held nothing.
            Held::Postgres | Held::Off | Held::Released => true,
        }
    }
}

impl Drop for VehicleLock {
    /// A lock dropped without [`VehicleLock::release`] (the handler was cancelled) is released
    /// in the background rather than left to its TTL.
    fn drop(&mut self) {
        if let Held::Redis { link, key, token } = std::mem::replace(&mut self.held, Held::Released)
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = release(&link, &key, &token).await;
                });
            }
        }
    }
}

/// The PostgreSQL side of a [`VehicleLock`]: empty when the lock is in Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgFence {
    vehicle: Option<VehicleId>,
    wait: Duration,
}

impl PgFence {
    /// Takes the vehicle's transaction-scoped advisory lock when Redis was unavailable, waiting
    /// at most `LOCK_WAIT_MS`; a no-op when the Redis lock is held. Call it before the
    /// transaction touches a booking; the lock ends with the commit or rollback.
    pub(crate) async fn enter(self, conn: &mut PgConnection) -> Result<(), LockError> {
        let Some(vehicle) = self.vehicle else {
            return Ok(());
        };
        let id = vehicle.uuid.to_string();
        let taken = if self.wait.is_zero() {
            sqlx::query_scalar!(
                r#"select pg_try_advisory_xact_lock($1, hashtext($2)) as "taken!""#,
                LOCK_NAMESPACE,
                id
            )
            .fetch_one(&mut *conn)
            .await?
        } else {
            // lock_timeout bounds the wait (0 would mean forever); it is restored right after,
            // so the rest of the transaction (the constraint check) waits as usual.
            // `set_config(…, true)` is `set local` with the value as a parameter.
            let timeout = format!("{}ms", self.wait.as_millis());
            sqlx::query_scalar!("select set_config('lock_timeout', $1, true)", timeout)
                .fetch_one(&mut *conn)
                .await?;
            let locked = sqlx::query!(
                r#"select 1 as "locked!" from pg_advisory_xact_lock($1, hashtext($2))"#,
                LOCK_NAMESPACE,
                id
            )
            .fetch_one(&mut *conn)
            .await;
            match locked {
                Ok(_) => {
                    sqlx::query!("set local lock_timeout to default")
                        .execute(&mut *conn)
                        .await?;
                    true
                }
                // lock_not_available: someone else holds it past our wait.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => false,
                Err(e) => return Err(e.into()),
            }
        };
        metrics::counter!("vehicle_locks_total", "backend" => "postgres", "outcome" => if taken { "acquired" } else { "busy" })
            .increment(1);
        if taken {
            Ok(())
        } else {
            Err(LockError::Busy(vehicle))
        }
    }
}
