//! A consumer handler for the consumer framework's tests: records each event about one
//! vehicle in the table `consumed`, inside the processing transaction (so a row exists exactly
//! when the framework counted the event as processed), after a delay that makes a stream take
//! a while. Used in process (`tests/api/consumer.rs`) and by the `consumer-probe` binary, which
//! a test kills with SIGKILL.

use std::time::Duration;

use origin::events::consumer::{Handler, Incoming};
use sqlx::{PgConnection, PgPool};

/// The table the recorder writes (created by the test).
pub const CONSUMED_DDL: &str = "create table if not exists consumed (
    event_id uuid not null, sequence bigint not null, at timestamptz not null default clock_timestamp())";

#[derive(Debug, Clone)]
pub struct Recorder {
    /// The public id of the vehicle whose events are recorded; the rest are passed over.
    pub vehicle: String,
    pub delay: Duration,
}

impl Handler for Recorder {
    fn wants(&self, event: &Incoming) -> bool {
        event.vehicle.to_string() == self.vehicle
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Incoming) -> anyhow::Result<()> {
        tokio::time::sleep(self.delay).await;
        sqlx::query("insert into consumed (event_id, sequence) values ($1, $2)")
            .bind(event.event_id)
            .bind(event.sequence)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// (rows, distinct event ids) of `consumed`.
pub async fn consumed(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(
        sqlx::query_as("select count(*), count(distinct event_id) from consumed")
            .fetch_one(pool)
            .await?,
    )
}
