//! Reading the shared Kafka-protocol broker from tests.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use origin::events::Topic;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use uuid::Uuid;

use crate::TestResult;

/// Where every partition of every topic ends now. The shared broker keeps the history of all
/// earlier runs (benchmarks included); a test reads only what comes after these offsets, so
/// its time does not grow with that history. A topic a fresh broker does not know yet is left out:
/// everything in it is new, so a reader takes it from the beginning.
pub fn end_offsets(brokers: &str) -> TestResult<HashMap<(String, i32), i64>> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-marks-{}", Uuid::new_v4()))
        .create()
        .context("create the offsets consumer")?;
    let mut ends = HashMap::new();
    for topic in Topic::ALL {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic.as_str()), Duration::from_secs(10))
        else {
            continue;
        };
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                    .with_context(|| format!("watermarks of {}/{}", t.name(), p.id()))?;
                ends.insert((t.name().to_owned(), p.id()), high);
            }
        }
    }
    Ok(ends)
}
