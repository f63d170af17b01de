//! Surge refresh: recomputes every served region's surge grid now, then every
//! `SURGE_RECOMPUTE_SECS`, so quotes read a grid at most one interval old (see
//! [`crate::app::surge`]).
//!
//! A stop is heard between regions; a recompute in progress (one query, one bounded demand
//! call, one L2 write) finishes first.

use std::time::Duration;

use domain::region::Region;
use tokio_util::sync::CancellationToken;

use crate::app::surge::Surge;
use crate::jobs::leader::Leadership;

/// Recomputes the grids of `regions` every `interval`, while `leadership` allows, until
/// `stop` fires.
pub(crate) async fn run(
    surge: Surge,
    regions: Vec<Region>,
    interval: Duration,
    leadership: Leadership,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        if !leadership.is_leader() {
            continue;
        }
        for region in &regions {
            if stop.is_cancelled() {
                break;
            }
            // Bounded: a pooled connection whose peer went silent must not stall the job for good.
            match tokio::time::timeout(super::STEP_TIMEOUT, surge.recompute(*region)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = format!("{e:#}"), %region, "surge recompute failed")
                }
                Err(_) => tracing::warn!(%region, "surge recompute timed out"),
            }
        }
    }
}
