//! Where a read goes — the primary or the read replica (`DATABASE_READ_URL`) — decided here
//! and nowhere else (README, "Scaling out").
//!
//! Writes, and every read inside a write's transaction, use the primary pool (`AppState::db`)
//! directly; they never come here. The reads that come here are of two kinds:
//!
//! - [`Reads::stale_ok`]: search, availability checks and the quote's pricing reads. They may
//!   be as old as the replica's lag, which is bounded: past `REPLICA_MAX_LAG_MS` (or with the
//!   replica down) the lag probe (`jobs/replica.rs`) marks the replica unusable and these go
//!   to the primary. Nothing they return is trusted for a write: a hold is decided by the
//!   exclusion constraint on the primary.
//! - [`Reads::own`]: a user's reads of their own bookings, with **read-your-writes**. After a
//!   user's committed write, [`Reads::wrote`] reads the primary's WAL insert position
//!   (`pg_current_wal_insert_lsn()`, taken *after* the commit, so at or past the commit
//!   record) and keeps it in Redis for [`RYW_TTL`] under the user (`ryw:{user}`, the larger of
//!   the stored and new positions, by a script). A later own-booking read of that user, on
//!   any origin, waits up to `REPLICA_WAIT_MS` for the replica's `pg_last_wal_replay_lsn()` to
//!   reach it; if it does not, the read goes to the primary. If Redis cannot say (down, or a
//!   command failed), the read goes to the primary: never a stale own read for want of the
//!   position.
//!
//! Why Redis and not a cookie the edge carries: the origin already has Redis for every
//! request (locks, caches, the front door), the position is per user not per device (a
//! booking made on the phone is seen on the laptop), and the edge stays unchanged. Why
//! [`RYW_TTL`] is enough: past it the replica is either caught up or marked unusable by the
//! lag probe (`REPLICA_MAX_LAG_MS` must be below it: checked at start).
//!
//! A read routed to the replica that fails for a connection-class reason (the replica went
//! away between two probes) marks the replica unusable at once and is run again on the
//! primary, so losing the replica costs a retry, not an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::config::ReplicaConfig;
use crate::redis::link::RedisLink;

/// How long a user's last write position is remembered. Longer than any lag the replica may
/// have while still in use (`REPLICA_MAX_LAG_MS` plus a probe interval, checked at start).
pub(crate) const RYW_TTL: Duration = Duration::from_secs(10);

/// Stores a user's write position: the larger of the stored and new ones (two writes of one
/// user may finish in either order), for the TTL in milliseconds. Positions are compared as
/// Lua numbers (doubles): exact below 2^53 bytes of WAL.
static REMEMBER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') \
         if tonumber(ARGV[1]) > cur then \
           redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
         else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         return 1",
    )
});

/// How often a waiting own read asks the replica again whether it has replayed far enough.
const RYW_POLL: Duration = Duration::from_millis(2);

/// The bound on one "has the replica replayed this far" question.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether an error says the database could not be reached (as opposed to a query's own
/// failure): such a failure on the replica sends the read to the primary.
pub(crate) trait ConnectionClass {
    fn is_connection(&self) -> bool;
}

impl ConnectionClass for sqlx::Error {
    fn is_connection(&self) -> bool {
        matches!(
            self,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ) || matches!(self, sqlx::Error::Database(db)
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08*
            // connection exceptions (PgBouncer answers 08P01 when its server is gone).
            if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    }
}

impl ConnectionClass for crate::store::bookings::StoreError {
    fn is_connection(&self) -> bool {
        use crate::store::bookings::StoreError;
        matches!(self, StoreError::Unavailable(e) | StoreError::Database(e) if e.is_connection())
    }
}

impl ConnectionClass for crate::app::pricing::PricingError {
    fn is_connection(&self) -> bool {
        matches!(self, crate::app::pricing::PricingError::Database(e) if e.is_connection())
    }
}

impl ConnectionClass for crate::app::search::SearchError {
    fn is_connection(&self) -> bool {
        match self {
            crate::app::search::SearchError::Database(e) => e.is_connection(),
            crate::app::search::SearchError::Pricing(e) => e.is_connection(),
        }
    }
}

impl ConnectionClass for crate::app::booking::BookingFailure {
    fn is_connection(&self) -> bool {
        matches!(self, crate::app::booking::BookingFailure::Store(e) if e.is_connection())
    }
}

/// The replica and what the lag probe last learned about it.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) pool: PgPool,
    /// Reachable and within `REPLICA_MAX_LAG_MS`: set by the probe, cleared by a failed read.
    usable: AtomicBool,
    /// Whether the last probe reached it.
    up: AtomicBool,
    /// The lag the last probe measured, in milliseconds.
    lag_ms: AtomicU64,
    /// `host:port/database` of `DATABASE_READ_URL` (no credentials): the `replica` label of
    /// the gauges, so several replicas (or origins in one test process) stay apart. Shared,
    /// so labelling a read's counter clones a pointer, not the string.
    label: metrics::SharedString,
    wait: Duration,
    pub(crate) max_lag: Duration,
    read_your_writes: bool,
}

impl Replica {
    /// What the probe measured: `up` (reached) and the lag.
    pub(crate) fn report(&self, up: bool, lag: Duration) {
        let usable = up && lag <= self.max_lag;
        self.up.store(up, Ordering::SeqCst);
        self.lag_ms.store(lag.as_millis() as u64, Ordering::SeqCst);
        let was = self.usable.swap(usable, Ordering::SeqCst);
        let replica = self.label.clone();
        metrics::gauge!("replica_up", "replica" => replica.clone()).set(if up { 1.0 } else { 0.0 });
        metrics::gauge!("replica_usable", "replica" => replica.clone()).set(if usable {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("replica_lag_seconds", "replica" => replica).set(lag.as_secs_f64());
        if was != usable {
            if usable {
                tracing::info!(lag_ms = lag.as_millis() as u64, "read replica usable again");
            } else {
                tracing::warn!(
                    up,
                    lag_ms = lag.as_millis() as u64,
                    "read replica down or past REPLICA_MAX_LAG_MS: reads go to the primary"
                );
            }
        }
    }

    fn usable(&self) -> bool {
        self.usable.load(Ordering::SeqCst)
    }

    /// A read failed to reach it: unusable until the next good probe.
    fn lost(&self) {
        if self.usable.swap(false, Ordering::SeqCst) {
            metrics::gauge!("replica_usable", "replica" => self.label.clone()).set(0.0);
            tracing::warn!("a read could not reach the replica: reads go to the primary");
        }
    }
}

/// Where reads go. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Reads(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    primary: PgPool,
    replica: Option<Replica>,
    redis: RedisLink,
}

/// Why a read went where it went (the `reason` label of `db_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Replica(&'static str),
    Primary(&'static str),
}

/// Counts a read in `db_reads_total{pool, reason, replica}` (`replica`: the replica's label,
/// `none` without one).
fn count(reads: &Reads, route: Route) {
    let (pool, reason) = match route {
        Route::Replica(r) => ("replica", r),
        Route::Primary(r) => ("primary", r),
    };
    let replica = reads.0.replica.as_ref().map_or_else(
        || metrics::SharedString::const_str("none"),
        |r| r.label.clone(),
    );
    metrics::counter!("db_reads_total", "pool" => pool, "reason" => reason, "replica" => replica)
        .increment(1);
}

/// Where one read goes ([`Reads::stale_ok`], [`Reads::own`]); [`read_on!`](crate::read_on)
/// runs it, and again on the primary if the replica could not be reached.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    reads: &'a Reads,
    pool: &'a PgPool,
    on_replica: bool,
}

impl<'a> Target<'a> {
    /// The pool to read from.
    pub(crate) fn pool(&self) -> &'a PgPool {
        self.pool
    }

    /// The primary (the retry's pool).
    pub(crate) fn primary(&self) -> &'a PgPool {
        &self.reads.0.primary
    }

    /// Whether a read that failed with `error` is run again on the primary: it went to the
    /// replica and could not reach it (which then marks the replica unusable).
    pub(crate) fn retry_on_primary(&self, error: &impl ConnectionClass) -> bool {
        if !(self.on_replica && error.is_connection()) {
            return false;
        }
        if let Some(replica) = &self.reads.0.replica {
            replica.lost();
        }
        count(self.reads, Route::Primary("replica_failed"));
        true
    }
}

/// Runs a read on a [`Target`]: `read_on!(target, |pool| store::x(pool, …).await)`. If the
/// target was the replica and it could not be reached, the same read runs on the primary.
/// A macro rather than a method taking an async closure: the closure's future would have to
/// be `Send` for every lifetime of its pool argument, which rustc cannot prove yet (the
/// handlers' futures must be `Send` for axum).
#[macro_export]
macro_rules! read_on {
    ($target:expr, |$pool:ident| $read:expr) => {{
        let target = $target;
        let first = {
            let $pool = target.pool();
            $read
        };
        match first {
            Err(e) if target.retry_on_primary(&e) => {
                let $pool = target.primary();
                $read
            }
            done => done,
        }
    }};
}

impl Reads {
    /// Reads on `primary` alone (no replica configured), or on `replica` as [`Reads`] decides.
    pub(crate) fn new(
        primary: PgPool,
        replica: Option<PgPool>,
        config: &ReplicaConfig,
        redis: RedisLink,
    ) -> Self {
        let replica = replica.map(|pool| {
            let options = pool.connect_options();
            let label = format!(
                "{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            );
            Replica {
                pool,
                label: metrics::SharedString::from_shared(std::sync::Arc::from(label)),
                // Not before the first probe has seen it.
                usable: AtomicBool::new(false),
                up: AtomicBool::new(false),
                lag_ms: AtomicU64::new(0),
                wait: config.wait,
                max_lag: config.max_lag,
                read_your_writes: config.read_your_writes,
            }
        });
        Reads(Arc::new(Inner {
            primary,
            replica,
            redis,
        }))
    }

    /// The replica, for the lag probe.
    pub(crate) fn replica(&self) -> Option<&Replica> {
        self.0.replica.as_ref()
    }

    /// The primary pool (the lag probe reads its WAL position there).
    pub(crate) fn primary(&self) -> &PgPool {
        &self.0.primary
    }

    /// Where a read that may be as stale as the replica's bounded lag goes: the replica when
    /// it is usable, else the primary. Run it with [`read_on!`](crate::read_on).
    pub(crate) fn stale_ok(&self) -> Target<'_> {
        let route = match &self.0.replica {
            None => Route::Primary("no_replica"),
            Some(r) if r.usable() => Route::Replica("stale_ok"),
            Some(_) => Route::Primary("replica_unusable"),
        };
        self.target(route)
    }

    /// Where a read of `user`'s own bookings goes so that it sees every write `user`
    /// committed (see the module doc): the replica once it has replayed `user`'s last write,
    /// else the primary. Run it with [`read_on!`](crate::read_on).
    pub(crate) async fn own(&self, user: &str) -> Target<'_> {
        let route = self.own_route(user).await;
        self.target(route)
    }

    fn target(&self, route: Route) -> Target<'_> {
        count(self, route);
        let pool = match (route, &self.0.replica) {
            (Route::Replica(_), Some(replica)) => &replica.pool,
            _ => &self.0.primary,
        };
        Target {
            reads: self,
            pool,
            on_replica: matches!(route, Route::Replica(_)),
        }
    }

    async fn own_route(&self, user: &str) -> Route {
        let Some(replica) = &self.0.replica else {
            return Route::Primary("no_replica");
        };
        if !replica.usable() {
            return Route::Primary("replica_unusable");
        }
        if !replica.read_your_writes {
            return Route::Replica("ryw_off");
        }
        let key = self.ryw_key(user);
        let stored = self
            .0
            .redis
            .run("ryw get", |mut c| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<u64>>(&mut c)
                    .await
            })
            .await;
        let lsn = match stored {
            Ok(None) => return Route::Replica("no_recent_write"),
            Ok(Some(lsn)) => lsn,
            Err(_) => return Route::Primary("ryw_unknown"),
        };
        let target = lsn_text(lsn);
        let deadline = tokio::time::Instant::now() + replica.wait;
        loop {
            let caught_up = tokio::time::timeout(
                CHECK_TIMEOUT,
                sqlx::query_scalar!(
                    r#"select coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false) as "caught_up!""#,
                    target
                )
                .fetch_one(&replica.pool),
            )
            .await;
            match caught_up {
                Ok(Ok(true)) => return Route::Replica("caught_up"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) if e.is_connection() => {
                    replica.lost();
                    return Route::Primary("replica_unreachable");
                }
                Ok(Err(_)) | Err(_) => return Route::Primary("ryw_check_failed"),
            }
            if tokio::time::Instant::now() + RYW_POLL > deadline {
                return Route::Primary("ryw_wait_expired");
            }
            tokio::time::sleep(RYW_POLL).await;
        }
    }

    /// After `user`'s committed write: remembers the primary's WAL position for
    /// [`RYW_TTL`], so `user`'s next own reads wait for the replica to pass it. Best effort:
    /// if it cannot be recorded, a read that finds no position in Redis could be stale, so a
    /// failure is logged and counted (and Redis being down sends own reads to the primary).
    pub(crate) async fn wrote(&self, user: &str) {
        let Some(replica) = &self.0.replica else {
            return;
        };
        if !replica.read_your_writes {
            return;
        }
        let lsn = sqlx::query_scalar!(r#"select pg_current_wal_insert_lsn()::text as "lsn!""#)
            .fetch_one(&self.0.primary)
            .await;
        let Some(lsn) = lsn.ok().as_deref().and_then(parse_lsn) else {
            metrics::counter!("ryw_record_failures_total").increment(1);
            tracing::warn!(
                user,
                "read-your-writes: could not read the primary's WAL position"
            );
            return;
        };
        let mut invocation = REMEMBER.prepare_invoke();
        invocation
            .key(self.ryw_key(user))
            .arg(lsn)
            .arg(RYW_TTL.as_millis() as u64);
        let stored: Result<i64, _> = self
            .0
            .redis
            .run("ryw set", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await;
        if stored.is_err() {
            metrics::counter!("ryw_record_failures_total").increment(1);
        }
    }

    fn ryw_key(&self, user: &str) -> String {
        self.0.redis.key(&format!("ryw:{user}"))
    }

    /// For `/readyz`: whether reads use the replica, and why not.
    pub(crate) fn status(&self) -> serde_json::Value {
        match &self.0.replica {
            None => serde_json::json!("not_configured"),
            Some(r) => serde_json::json!({
                "state": if r.usable() { "in_use" } else if r.up.load(Ordering::SeqCst) { "lagging" } else { "down" },
                "reads_to": if r.usable() { "replica" } else { "primary" },
                "lag_ms": r.lag_ms.load(Ordering::SeqCst),
                "max_lag_ms": r.max_lag.as_millis() as u64,
                "read_your_writes": r.read_your_writes,
            }),
        }
    }
}

/// `X/Y` (PostgreSQL's text form of a WAL position) as a number.
pub(crate) fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return None;
    }
    Some(hi << 32 | lo)
}

/// A WAL position in PostgreSQL's text form.
pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions_round_trip_through_their_text_form() {
        for text in ["0/0", "0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn = parse_lsn(text);
            assert!(lsn.is_some(), "{text}");
            assert_eq!(lsn.map(lsn_text).as_deref(), Some(text));
        }
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        for bad in ["", "0", "x/1", "1/", "100000000/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }
}
