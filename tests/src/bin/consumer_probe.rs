//! A consumer of the framework (`origin::events::consumer`) with the test recorder, in a
//! process of its own so a test can kill it for real (SIGKILL: no offset commit, no leaving the
//! group). Prints `ready` once the group assigned it partitions, then runs until killed.
//!
//! Environment: PROBE_BROKERS, PROBE_DATABASE_URL, PROBE_GROUP, PROBE_VEHICLE,
//! PROBE_DELAY_MS (default 25), PROBE_COMMIT_MS (default 500), PROBE_INSTANCE (static
//! membership, optional).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use e2e::recorder::Recorder;
use origin::events::consumer::{self, ConsumerSettings};
use tokio_util::sync::CancellationToken;

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}: {v:?}"))?,
        Err(_) => default,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&var("PROBE_DATABASE_URL")?).await?;
    let mut settings = ConsumerSettings::new(var("PROBE_BROKERS")?, var("PROBE_GROUP")?);
    settings.commit_interval = millis("PROBE_COMMIT_MS", 500)?;
    settings.instance_id = std::env::var("PROBE_INSTANCE").ok();
    let handler = Recorder {
        vehicle: var("PROBE_VEHICLE")?,
        delay: millis("PROBE_DELAY_MS", 25)?,
    };
    let (mut running, task) =
        consumer::start(pool, settings, handler, CancellationToken::new()).await?;
    running.ready.wait_for(|r| *r).await?;
    println!("ready");
    std::io::stdout().flush()?;
    task.await?;
    Ok(())
}
