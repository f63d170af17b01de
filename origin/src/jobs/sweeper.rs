//! The hold sweeper: ends holds that were not confirmed in time and records why.
//!
//! In the `jobs` role only the elected leader sweeps ([`super::leader`]). Several origins may
//! still sweep at once (`all` replicas, or a leader whose lock session was just cut): each hold
//! is ended in its own transaction that locks it with `FOR UPDATE SKIP LOCKED` and re-checks
//! it, so two sweepers never end the same hold twice. A hold is also ended lazily when a new hold
//! wants its window (see `bookings::expire_overlapping_holds`), so the vehicle is free the
//! moment the hold expires, not one sweep later.
//!
//! A stop is heard between batches; a hold is ended in one transaction, so a shutdown never
//! leaves a hold half-ended.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Holds ended per batch (each in a transaction of its own).
const BATCH: i64 = 200;
/// The longest one sweep batch may take. A pooled connection whose peer went silent (a dead
/// host, a blackholed link) never answers; without a bound the sweeper would wait on it
/// forever and no hold would expire again (the fault suite's dead-peer fault found it). Past
/// the bound the batch is dropped (the hold it was ending rolls back with the connection; the
/// ones it had ended stay ended) and the next tick tries again.
pub(crate) const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sweeps every `SWEEPER_INTERVAL_MS` until `stop` fires.
pub(crate) async fn run(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.sweeper_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = std::time::Instant::now();
    // The first tick publishes the deny list and the API keys (`crate::redis::deny_sync`,
    // `crate::redis::key_sync`): an origin that starts heals whatever an earlier one failed to
    // publish.
    let mut last_edge_publish: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        // The `jobs` role sweeps only while it leads (see `leader.rs`); other roles always.
        if !state.leadership.is_leader() {
            continue;
        }
        state.leadership.count_sweep();
        metrics::counter!("sweeper_runs_total").increment(1);
        while !stop.is_cancelled() {
            let batch = tokio::time::timeout(
                BATCH_TIMEOUT,
                crate::store::bookings::sweep_expired_holds(&state.db, Utc::now(), BATCH),
            )
            .await;
            match batch {
                Ok(Ok(freed)) if !freed.is_empty() => {
                    let n = freed.len();
                    metrics::counter!("holds_expired_total").increment(n as u64);
                    tracing::info!(expired = n, "sweeper ended expired holds");
                    // The freed windows reach the caches as a hold's end through the API does:
                    // the vehicle's origin L1 generation and its edge generation move.
                    let mut vehicles = freed;
                    vehicles.sort_by_key(|v| v.uuid);
                    vehicles.dedup_by_key(|v| v.uuid);
                    for vehicle in &vehicles {
                        crate::http::bookings::occupancy_changed(&state, vehicle).await;
                    }
                    if (n as i64) < BATCH {
                        break;
                    }
                }
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "sweeper failed; retrying next tick");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        "sweeper: no answer within {BATCH_TIMEOUT:?}; retrying next tick"
                    );
                    break;
                }
            }
        }
        advance_waitlists(&state).await;
        if last_edge_publish.is_none_or(|t| t.elapsed() >= crate::redis::deny_sync::PERIOD) {
            last_edge_publish = Some(std::time::Instant::now());
            for region in state.config.regions.clone() {
                let publish = tokio::time::timeout(BATCH_TIMEOUT, async {
                    crate::redis::deny_sync::publish_counted(&state, region).await;
                    crate::redis::key_sync::publish_counted(&state, region).await;
                });
                if publish.await.is_err() {
                    tracing::warn!(%region, "deny list or API key publish timed out; retrying next period");
                }
            }
        }
        if last_purge.elapsed() > std::time::Duration::from_secs(3600) {
            last_purge = std::time::Instant::now();
            let purge = tokio::time::timeout(
                BATCH_TIMEOUT,
                crate::store::idempotency::purge_older_than(&state.db, chrono::Duration::hours(24)),
            )
            .await;
            if !matches!(purge, Ok(Ok(_))) {
                tracing::warn!("idempotency key purge failed or timed out");
            }
            // Consumers' dedupe rows: a repeat comes from an uncommitted tail seconds old, so a
            // week is far beyond any redelivery.
            let purge = tokio::time::timeout(
                BATCH_TIMEOUT,
                crate::events::consumer::purge_processed_older_than(
                    &state.db,
                    Utc::now() - chrono::Duration::days(7),
                ),
            )
            .await;
            if !matches!(purge, Ok(Ok(_))) {
                tracing::warn!("processed-event purge failed or timed out");
            }
        }
    }
}

/// Waitlists: offers whose time is up lapse and the line moves to the next waiter; waits whose
/// window has begun expire (`store::waitlist::advance`, one vehicle per transaction, so the
/// sweeper never holds two vehicles' write locks at once). Offers made when a window is freed
/// need no sweep: the freeing transaction makes them.
async fn advance_waitlists(state: &AppState) {
    let expired = tokio::time::timeout(
        BATCH_TIMEOUT,
        crate::store::waitlist::expire_class_waits(&state.db),
    )
    .await;
    if !matches!(expired, Ok(Ok(_))) {
        tracing::warn!("waitlist: expiring class waits failed or timed out; retrying next tick");
    }
    let due =
        tokio::time::timeout(BATCH_TIMEOUT, crate::store::waitlist::due(&state.db, BATCH)).await;
    let vehicles = match due {
        Ok(Ok(vehicles)) => vehicles,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "waitlist sweep failed; retrying next tick");
            return;
        }
        Err(_) => {
            tracing::warn!(
                "waitlist sweep: no answer within {BATCH_TIMEOUT:?}; retrying next tick"
            );
            return;
        }
    };
    for (region, vehicle) in vehicles {
        let advanced = tokio::time::timeout(
            BATCH_TIMEOUT,
            crate::store::waitlist::advance(&state.db, &region, vehicle),
        )
        .await;
        match advanced {
            Ok(Ok(offered)) => {
                metrics::counter!("waitlist_offers_after_lapse_total")
                    .increment(u64::try_from(offered).unwrap_or(0));
                tracing::debug!(%vehicle, offered, "waitlist advanced");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %vehicle, "waitlist advance failed; retrying next tick");
            }
            Err(_) => {
                tracing::warn!(%vehicle, "waitlist advance: no answer within {BATCH_TIMEOUT:?}");
            }
        }
    }
}
