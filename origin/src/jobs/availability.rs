//! Availability rebuild: rebuilds the GEO availability index every
//! `AVAILABILITY_REBUILD_SECS`, and at once when Redis comes back from an outage (it may have
//! come back empty) or has a new master (a failover: it may be stale; see `redis/link.rs`). See
//! [`crate::redis::availability`] for why a rebuild is safe at any time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::jobs::leader::Leadership;
use crate::redis::availability::Availability;
use crate::redis::link::RedisLink;

/// Rebuilds every `every`, and when `redis` recovers, while `leadership` allows, until `stop`
/// fires. Start-up has just
/// rebuilt, so the first rebuild is one interval away.
pub(crate) async fn run(
    index: Availability,
    redis: RedisLink,
    every: Duration,
    leadership: Leadership,
    stop: CancellationToken,
) {
    let mut recoveries = redis.recoveries();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; start-up has just rebuilt.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = recoveries.changed() => {
                if changed.is_err() { break; }
            }
            () = stop.cancelled() => break,
        }
        if !redis.is_up() || !leadership.is_leader() {
            continue;
        }
        // Bounded: a pooled connection whose peer went silent must not stall the job for good.
        match tokio::time::timeout(super::STEP_TIMEOUT, index.rebuild_all()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                error = format!("{e:#}"),
                "availability index rebuild failed"
            ),
            Err(_) => tracing::warn!("availability index rebuild timed out"),
        }
    }
}
