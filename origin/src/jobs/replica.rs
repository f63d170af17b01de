//! The read replica's lag probe: every [`PROBE_EVERY`] it reads the primary's WAL position
//! and the replica's replay position, and tells [`Replica::report`] whether the replica is up
//! and how far behind it is (gauge `replica_lag_seconds{replica}`, set by the report).
//!
//! **Lag** is measured in time, against the primary's own positions: each probe remembers when
//! the primary was at which position; the lag is how long ago the primary was at the oldest
//! position the replica has not replayed yet (0 when it has replayed everything the probe
//! saw). Unlike `now() - pg_last_xact_replay_timestamp()`, this does not grow while the primary
//! is idle, and unlike a byte count it compares with `REPLICA_MAX_LAG_MS` directly. It can
//! underestimate by one probe interval (a write is seen at the next probe, not when it
//! committed).
//!
//! A replica that does not answer within [`PROBE_TIMEOUT`] is down: reads go to the primary
//! until a probe reaches it again (see `store/reads.rs`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::reads::{parse_lsn, Reads};

/// How often the replica is probed: a fraction of any sensible `REPLICA_MAX_LAG_MS`.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The bound on one probe's query.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most primary positions remembered (at [`PROBE_EVERY`], minutes of lag): past it new
/// positions are not added, so the lag of a replica that far behind only keeps growing.
const MAX_SAMPLES: usize = 4_096;

/// The primary's positions not yet replayed by the replica, oldest first.
#[derive(Debug, Default)]
pub(crate) struct LagClock {
    samples: VecDeque<(Instant, u64)>,
}

impl LagClock {
    /// The primary was at `lsn` at `at`.
    pub(crate) fn primary_at(&mut self, at: Instant, lsn: u64) {
        let newer = self.samples.back().is_none_or(|&(_, last)| lsn > last);
        if newer && self.samples.len() < MAX_SAMPLES {
            self.samples.push_back((at, lsn));
        }
    }

    /// The replica has replayed up to `replayed`: its lag at `now`.
    pub(crate) fn replica_at(&mut self, now: Instant, replayed: u64) -> Duration {
        while self
            .samples
            .front()
            .is_some_and(|&(_, lsn)| lsn <= replayed)
        {
            self.samples.pop_front();
        }
        self.samples
            .front()
            .map_or(Duration::ZERO, |&(at, _)| now.saturating_duration_since(at))
    }
}

/// Probes until `stop`. Does nothing without a replica.
pub(crate) async fn run(reads: Reads, stop: CancellationToken) {
    let Some(replica) = reads.replica() else {
        return;
    };
    let mut clock = LagClock::default();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let primary = tokio::time::timeout(
            PROBE_TIMEOUT,
            sqlx::query_scalar!(r#"select pg_current_wal_lsn()::text as "lsn!""#)
                .fetch_one(reads.primary()),
        )
        .await;
        if let Ok(Ok(lsn)) = primary {
            if let Some(lsn) = parse_lsn(&lsn) {
                clock.primary_at(Instant::now(), lsn);
            }
        }
        let replayed = tokio::time::timeout(
            PROBE_TIMEOUT,
            sqlx::query_scalar!(r#"select pg_last_wal_replay_lsn()::text as "lsn""#)
                .fetch_one(&replica.pool),
        )
        .await;
        match replayed {
            Ok(Ok(Some(lsn))) => match parse_lsn(&lsn) {
                Some(lsn) => {
                    let lag = clock.replica_at(Instant::now(), lsn);
                    replica.report(true, lag);
                }
                None => replica.report(false, Duration::ZERO),
            },
            // NULL: the "replica" is not in recovery (a primary, or promoted): not a replica.
            Ok(Ok(None)) => {
                tracing::warn!("DATABASE_READ_URL is not a replica in recovery: not used");
                replica.report(false, Duration::ZERO);
            }
            Ok(Err(_)) | Err(_) => {
                // Down: the lag is unknown; the gauge says how long since the oldest
                // position it has not replayed, which keeps growing while it is away.
                let lag = clock.replica_at(Instant::now(), 0);
                replica.report(false, lag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_position_not_replayed() {
        let t0 = Instant::now();
        let mut clock = LagClock::default();
        clock.primary_at(t0, 100);
        // Replayed up to the primary: no lag, however long ago that was.
        assert_eq!(
            clock.replica_at(t0 + Duration::from_secs(5), 100),
            Duration::ZERO
        );
        // The primary moves on while the replica stays: the lag grows from that moment.
        clock.primary_at(t0 + Duration::from_secs(6), 200);
        clock.primary_at(t0 + Duration::from_secs(7), 300);
        assert_eq!(
            clock.replica_at(t0 + Duration::from_secs(8), 100),
            Duration::from_secs(2)
        );
        // Part way: the lag is the age of the next unreplayed position.
        assert_eq!(
            clock.replica_at(t0 + Duration::from_secs(9), 250),
            Duration::from_secs(2)
        );
        assert_eq!(
            clock.replica_at(t0 + Duration::from_secs(9), 300),
            Duration::ZERO
        );
        // An idle primary (the same position again) adds nothing.
        clock.primary_at(t0 + Duration::from_secs(10), 300);
        assert_eq!(
            clock.replica_at(t0 + Duration::from_secs(20), 300),
            Duration::ZERO
        );
    }
}
