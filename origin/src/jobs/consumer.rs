//! The availability consumer: keeps the GEO index's occupancy and the edge cache in step with
//! every committed change, whoever made it.
//!
//! It consumes every outbox topic ([`crate::events::consumer`]: a consumer group, dedupe by
//! event id, poison records to the dead-letter topic) and, for each event about a vehicle of a
//! region this origin serves, (1) recomputes that vehicle's occupancy in the index from
//! PostgreSQL ([`Availability::refresh_vehicle`]) and (2) bumps the vehicle's and its region's
//! edge cache generations ([`crate::redis::edge_gen`]). So a hold ended by the sweeper, a
//! cancellation made through the other region's edge, or a maintenance block reaches the edge
//! cache within the consumer's lag, instead of living out the cached entries' TTL.
//!
//! Runs in the `all` and `relay` roles when `KAFKA_BROKERS` is set (`EVENT_CONSUMER=0` turns it
//! off): one group per region (`CONSUMER_GROUP`), so the region's relay replicas share its
//! partitions. The periodic rebuild stays, as reconciliation ([`crate::jobs::availability`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use domain::region::Region;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Jitter};
use crate::events::consumer::{self, ConsumerSettings, ConsumerStats, Handler, Incoming};
use crate::redis::availability::Availability;
use crate::redis::edge_gen::EdgeGen;
use crate::state::AppState;

/// What `/readyz` says about the consumer.
#[derive(Debug, Default)]
pub(crate) struct ConsumerStatus {
    /// 0 off, 1 joining, 2 assigned.
    state: AtomicU8,
    stats: OnceLock<Arc<ConsumerStats>>,
}

impl ConsumerStatus {
    pub(crate) fn json(&self) -> serde_json::Value {
        let state = match self.state.load(Ordering::Relaxed) {
            0 => "off",
            1 => "joining",
            _ => "assigned",
        };
        match self.stats.get() {
            None => serde_json::json!({ "state": state }),
            Some(s) => serde_json::json!({
                "state": state,
                "processed": ConsumerStats::get(&s.processed),
                "duplicates": ConsumerStats::get(&s.duplicates),
                "dead_lettered": ConsumerStats::get(&s.dead_lettered),
                "failures": ConsumerStats::get(&s.failures),
            }),
        }
    }
}

/// The handler: occupancy, then the edge cache.
pub(crate) struct AvailabilityHandler {
    availability: Availability,
    edge: EdgeGen,
    regions: Vec<Region>,
}

impl Handler for AvailabilityHandler {
    fn wants(&self, event: &Incoming) -> bool {
        self.regions.contains(&event.vehicle.region)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Incoming) -> anyhow::Result<()> {
        self.availability
            .refresh_vehicle(tx, &event.vehicle, Utc::now())
            .await?;
        // After the occupancy: an edge that refills its entry at once reads the new state.
        self.edge.bump(&event.vehicle);
        Ok(())
    }
}

/// Runs the availability consumer until `stop`; (re)starts it with backoff while the broker
/// cannot be reached.
pub(crate) async fn run(state: AppState, brokers: String, stop: CancellationToken) {
    let mut settings = ConsumerSettings::new(brokers, state.config.consumer_group.clone());
    settings.commit_interval = state.config.consumer_commit;
    settings.fetch_wait = state.config.consumer_fetch_wait;
    settings.topic_layout = state.config.kafka_topics;
    settings.instance_id = state.config.consumer_instance.clone();
    let (availability, edge, regions) = (
        state.availability.clone(),
        state.edge_gen.clone(),
        state.config.regions.clone(),
    );
    let make = move || AvailabilityHandler {
        availability: availability.clone(),
        edge: edge.clone(),
        regions: regions.clone(),
    };
    run_group(
        state.db.clone(),
        settings,
        make,
        state.consumer.clone(),
        "availability",
        stop,
    )
    .await;
}

/// Runs the webhook fan-out (`crate::webhooks::FanOut`) in its own group, and the dispatcher,
/// until `stop`.
pub(crate) async fn run_webhooks(state: AppState, brokers: String, stop: CancellationToken) {
    let config = state.config.webhooks.clone();
    let mut settings = ConsumerSettings::new(brokers, config.group.clone());
    settings.commit_interval = state.config.consumer_commit;
    settings.fetch_wait = state.config.consumer_fetch_wait;
    settings.topic_layout = state.config.kafka_topics;
    // Static membership per group: the same instance id would collide with the availability
    // consumer's in the broker only if the groups were the same, and they are not.
    settings.instance_id = state.config.consumer_instance.clone();
    let (regions, retry_for) = (state.config.regions.clone(), config.retry_for);
    let make = move || crate::webhooks::FanOut {
        regions: regions.clone(),
        retry_for,
    };
    tokio::join!(
        run_group(
            state.db.clone(),
            settings,
            make,
            state.webhooks.clone(),
            "webhook fan-out",
            stop.clone(),
        ),
        crate::webhooks::dispatch(state.db.clone(), config, stop.clone()),
    );
}

/// Runs one consumer group until `stop`, restarting it with backoff while the broker cannot be
/// reached; `status` follows it for `/readyz`.
async fn run_group<H: Handler>(
    db: sqlx::PgPool,
    settings: ConsumerSettings,
    make: impl Fn() -> H,
    status: Arc<ConsumerStatus>,
    name: &'static str,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(30),
        Jitter::Equal,
    );
    while !stop.is_cancelled() {
        status.state.store(1, Ordering::Relaxed);
        match consumer::start(db.clone(), settings.clone(), make(), stop.clone()).await {
            Ok((mut running, task)) => {
                let _ = status.stats.set(running.stats.clone());
                let watch_status = status.clone();
                let watcher = tokio::spawn(async move {
                    loop {
                        let assigned = *running.ready.borrow_and_update();
                        watch_status
                            .state
                            .store(if assigned { 2 } else { 1 }, Ordering::Relaxed);
                        if running.ready.changed().await.is_err() {
                            break;
                        }
                    }
                });
                if let Err(e) = task.await {
                    tracing::error!(error = %e, consumer = name, "a consumer's task failed");
                }
                watcher.abort();
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    consumer = name,
                    "consumer could not start; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_pause()) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    status.state.store(0, Ordering::Relaxed);
}
