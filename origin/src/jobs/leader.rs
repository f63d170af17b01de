//! Leader election for the singleton jobs (sweeper, surge refresh, index rebuild) of the `jobs`
//! role: N replicas run, one works.
//!
//! The leader is the replica holding the session-level advisory lock `(LOCK_NAMESPACE, 0)` on
//! a dedicated connection (outside the pool, so the lock lives exactly as long as that session,
//! as the relay's lanes do: see [`crate::events::relay`]). A follower tries the lock every
//! [`POLL`]; the leader checks its session every [`POLL`] too. If the session is lost (the
//! database restarted, the network cut it) the replica stops leading at once and tries again
//! with a new session; if the leader's process dies or stops, PostgreSQL ends its session, and
//! a follower takes the lock within one poll. A stop closes the session, releasing the lock.
//!
//! Overlap is bounded, not impossible: a leader whose session was cut notices within one poll,
//! while another replica may have taken the lock in between. The jobs are written for that
//! anyway (the sweeper locks its rows `for update skip locked`; a surge or index rebuild is
//! idempotent), so election is about not doing the work N times, not about correctness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// First key of the leader lock: "JOBL" (jobs leader), apart from the relay's "OBRX".
pub(crate) const LOCK_NAMESPACE: i32 = 0x4a4f_424c;
/// Second key: one lock for every singleton job (one leader runs them all).
const LOCK_KEY: i32 = 0;
/// How often a follower tries the lock and a leader checks its session.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// Bound on one session check or lock attempt.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this replica may run the singleton jobs now, and how many sweeps it ran (for
/// `/readyz`, so an operator and the tests see which replica works). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Leadership {
    /// `None`: not elected (the `all` role runs its jobs unconditionally).
    leader: Option<watch::Receiver<bool>>,
    sweeps: Arc<AtomicU64>,
}

impl Leadership {
    /// Always the leader: for a role that runs its jobs without election.
    pub(crate) fn unelected() -> Self {
        Leadership {
            leader: None,
            sweeps: Arc::default(),
        }
    }

    /// Whether leadership is decided by election.
    pub(crate) fn is_elected(&self) -> bool {
        self.leader.is_some()
    }

    /// Whether this replica may run the singleton jobs now.
    pub(crate) fn is_leader(&self) -> bool {
        self.leader.as_ref().is_none_or(|rx| *rx.borrow())
    }

    /// One sweep ran here.
    pub(crate) fn count_sweep(&self) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }

    /// Sweeps this replica ran.
    pub(crate) fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::Relaxed)
    }
}

/// A new election: the [`Leadership`] the jobs read, and the sender [`campaign`] drives.
pub(crate) fn elect() -> (Leadership, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let leadership = Leadership {
        leader: Some(rx),
        sweeps: Arc::default(),
    };
    (leadership, tx)
}

/// Holds the lock while it can, retries while it cannot, until `stop`.
pub(crate) async fn campaign(
    database_url: String,
    tx: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut session: Option<PgConnection> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let leading = *tx.borrow();
        if leading {
            let alive = match session.as_mut() {
                Some(conn) => tokio::time::timeout(
                    CHECK_TIMEOUT,
                    sqlx::query_scalar!(r#"select 1 as "alive!""#).fetch_one(conn),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
                None => false,
            };
            if !alive {
                tracing::warn!(
                    "jobs leader: lock session lost; stopped leading, will campaign again"
                );
                metrics::counter!("jobs_leader_changes_total", "change" => "lost").increment(1);
                session = None;
                tx.send_replace(false);
                metrics::gauge!("jobs_leader").set(0.0);
            }
            continue;
        }
        match try_lock(&database_url, &mut session).await {
            Ok(true) => {
                tracing::info!("jobs leader: lock taken; running the singleton jobs");
                metrics::counter!("jobs_leader_changes_total", "change" => "acquired").increment(1);
                metrics::gauge!("jobs_leader").set(1.0);
                tx.send_replace(true);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "jobs leader: campaign failed; retrying"
                );
                session = None;
            }
        }
    }
    tx.send_replace(false);
    if let Some(conn) = session.take() {
        // Closing the session releases the lock at once: a follower takes over within a poll.
        let _ = conn.close().await;
    }
}

/// Opens the session if needed and tries the lock once.
async fn try_lock(database_url: &str, session: &mut Option<PgConnection>) -> anyhow::Result<bool> {
    use anyhow::Context;
    if session.is_none() {
        let conn = tokio::time::timeout(CHECK_TIMEOUT, PgConnection::connect(database_url))
            .await
            .context("open the leader lock session: timed out")?
            .context("open the leader lock session")?;
        *session = Some(conn);
    }
    let Some(conn) = session.as_mut() else {
        return Ok(false);
    };
    let taken = tokio::time::timeout(
        CHECK_TIMEOUT,
        sqlx::query_scalar!(
            r#"select pg_try_advisory_lock($1, $2) as "taken!""#,
            LOCK_NAMESPACE,
            LOCK_KEY
        )
        .fetch_one(conn),
    )
    .await
    .context("try the leader lock: timed out")?
    .context("try the leader lock")?;
    Ok(taken)
}
