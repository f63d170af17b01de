//! The outbox relay as a job: publishes committed outbox rows to Kafka until the stop, then
//! settles its batch in flight, flushes the producer and releases its lanes (the relay itself,
//! lanes, ordering and backoff, is [`crate::events::relay`]).

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::events::relay::{run_relay, RelaySettings};

/// Runs the relay until `stop` fires and it has shut down cleanly.
pub(crate) async fn run(pool: PgPool, settings: RelaySettings, stop: CancellationToken) {
    run_relay(pool, settings, stop).await;
}
