//! Consumers of the outbox topics: one loop for every consumer group the origin runs.
//!
//! A consumer is a Kafka consumer group (librdkafka through `rdkafka`: joins, rebalances and
//! offset storage are the broker's group protocol, not ours) and a [`Handler`]. For each record:
//!
//! 1. **Decode** it into an [`Incoming`]: the key is a vehicle's public id, the headers carry
//!    `event_id` and `sequence` (see [`super::relay`]), the payload is a JSON object whose
//!    `event_id` and `type` agree with the headers and the topic. A record that fails any of
//!    these is **poison**: it goes to the dead-letter topic ([`DEAD_LETTER_TOPIC`], same key,
//!    value and headers, plus `dead_letter_reason`, `dead_letter_group` and the original
//!    topic, partition and offset) and the partition moves on. Retrying it could never succeed
//!    and would stop every later event of that partition.
//! 2. **Process** it in one PostgreSQL transaction: insert `(group, event_id)` into
//!    `processed_events`, and only if that row is new run the handler on the same transaction
//!    and commit both. A repeat (the relay delivers at least once; a consumer that died before
//!    committing its offsets is sent its tail again) finds the row and is skipped and counted
//!    (`events_consumer_duplicates_total`). A handler error rolls everything back and the same
//!    record is tried again with exponential backoff: a failure there is the database or Redis
//!    being away, and skipping would lose the event.
//! 3. **Commit** the offset *after* processing: the record's offset is stored once it is
//!    processed, and stored offsets are committed every [`ConsumerSettings::commit_interval`],
//!    at a rebalance and at a stop. A crash loses at most that interval of commits, which the
//!    dedupe table absorbs: every event's effects happen once.
//!
//! Order: a vehicle's events share a partition within a topic (the key), so they arrive in
//! order per topic; across topics the handler gets `sequence` and may rely on it. The
//! availability handler does not need to: it re-reads the vehicle's state from PostgreSQL.
//!
//! A new group (no committed offsets) starts at the topics' ends as they are when it first
//! starts: it commits those offsets before joining, so nothing published after its start is
//! skipped, and the history (which the periodic rebuild already reflects) is not replayed.
//!
//! Membership: a consumer that dies without leaving the group keeps its partitions until its
//! session times out ([`ConsumerSettings::session_timeout`], 10 s) — or, with static membership
//! ([`ConsumerSettings::instance_id`], `CONSUMER_INSTANCE_ID`, KIP-345), until its replacement
//! with the same id starts and takes them at once, as a restarted pod of a StatefulSet does.
//! (The test broker, tansu 0.6.0, did not hand a SIGKILLed dynamic member's partitions to a
//! new member within a minute; with static membership the restart resumes at once, and the
//! crash test runs so.)
//!
//! Lag: librdkafka's statistics (every [`ConsumerSettings::stats_interval`]) give each assigned
//! partition's lag, exported as `events_consumer_lag{group,topic,partition}`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domain::VehicleId;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Topic;
use crate::backoff::{Backoff, Jitter};

/// Where undecodable records go, with the reason in the `dead_letter_reason` header.
pub const DEAD_LETTER_TOPIC: &str = "events.dead-letter";

/// One decoded event.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub event_id: Uuid,
    /// The event's number among its vehicle's events (1, 2, … in commit order).
    pub sequence: i64,
    /// The vehicle the event is about (the record's key).
    pub vehicle: VehicleId,
    /// The payload, a JSON object (its `type` is `topic`).
    pub payload: serde_json::Value,
}

/// What a consumer does with its events.
pub trait Handler: Send + Sync + 'static {
    /// Whether this consumer acts on `event` at all; the rest are passed over (their offsets
    /// committed, nothing recorded). E.g. a region's consumer and the other region's events.
    fn wants(&self, event: &Incoming) -> bool;

    /// Acts on `event` inside `tx`, the transaction that records it as processed: PostgreSQL
    /// writes here happen exactly once; other effects (Redis, HTTP) at least once, so they must
    /// be idempotent. An error rolls back and the event is tried again.
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Incoming,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'a;
}

/// Counters of one consumer (also exported as metrics labelled by group).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Events handled (first deliveries).
    pub processed: AtomicU64,
    /// Repeats skipped because `processed_events` had them.
    pub duplicates: AtomicU64,
    /// Poison records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Handler or database failures (each retried).
    pub failures: AtomicU64,
    /// Records passed over by [`Handler::wants`].
    pub skipped: AtomicU64,
}

impl ConsumerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub brokers: String,
    /// The consumer group (`CONSUMER_GROUP`).
    pub group: String,
    pub topics: Vec<String>,
    pub dead_letter_topic: String,
    /// How often processed offsets are committed (`CONSUMER_COMMIT_MS`).
    pub commit_interval: Duration,
    /// How often librdkafka reports lag.
    pub stats_interval: Duration,
    /// Partitions and replicas of the dead-letter topic when the consumer creates it.
    pub topic_layout: crate::config::TopicLayout,
    /// How long the group waits for a silent member before moving its partitions
    /// (`session.timeout.ms`): a crashed consumer's partitions resume elsewhere after this.
    pub session_timeout: Duration,
    /// How long a fetch waits at the broker for new records (`fetch.wait.max.ms`): the
    /// consumer's latency when the topics are quiet (librdkafka's default is 500 ms; an
    /// availability mirror wants well under a second, for a few more idle fetches).
    pub fetch_wait: Duration,
    /// Static membership (`group.instance.id`, KIP-345; `CONSUMER_INSTANCE_ID`): a restarted
    /// consumer with the same id takes its partitions back at once, without a rebalance or
    /// waiting out the dead member's session. Give each replica a stable one (a StatefulSet's
    /// pod name); `None`: dynamic membership.
    pub instance_id: Option<String>,
}

impl ConsumerSettings {
    /// Settings for `group` on every outbox topic, with the documented defaults.
    pub fn new(brokers: impl Into<String>, group: impl Into<String>) -> Self {
        ConsumerSettings {
            brokers: brokers.into(),
            group: group.into(),
            topics: Topic::ALL.iter().map(|t| t.as_str().to_owned()).collect(),
            dead_letter_topic: DEAD_LETTER_TOPIC.to_owned(),
            commit_interval: Duration::from_millis(500),
            stats_interval: Duration::from_secs(5),
            topic_layout: crate::config::TopicLayout {
                partitions: 3,
                replication: 1,
            },
            session_timeout: Duration::from_secs(10),
            instance_id: None,
            fetch_wait: Duration::from_millis(100),
        }
    }
}

/// librdkafka callbacks: lag metrics from statistics, assignment for readiness.
struct Callbacks {
    group: String,
    assigned: watch::Sender<bool>,
}

impl ClientContext for Callbacks {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 is unknown.
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "events_consumer_lag",
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string(),
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            // What was processed stays processed: commit it before the partitions move.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, group = %self.group, "commit at revoke");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(group = %self.group, partitions = partitions.count(), "consumer assigned");
            self.assigned.send_replace(partitions.count() > 0);
        }
    }
}

/// A consumer that can be watched: `ready` turns true once the group assigned it partitions.
#[derive(Debug)]
pub struct Running {
    pub stats: Arc<ConsumerStats>,
    pub ready: watch::Receiver<bool>,
}

/// Starts the consumer loop on a task; it ends when `stop` fires (committing what it
/// processed). Returns once the group's start offsets are settled and the loop runs.
pub async fn start<H: Handler>(
    db: PgPool,
    settings: ConsumerSettings,
    handler: H,
    stop: CancellationToken,
) -> anyhow::Result<(Running, tokio::task::JoinHandle<()>)> {
    super::relay::create_named_topics(
        &settings.brokers,
        std::iter::once(settings.dead_letter_topic.as_str()),
        settings.topic_layout,
    )
    .await
    .context("create the dead-letter topic")?;
    start_at_end_if_new(&settings).await?;
    let (assigned, ready) = watch::channel(false);
    let mut config = ClientConfig::new();
    if let Some(instance) = &settings.instance_id {
        config.set("group.instance.id", instance);
    }
    let consumer: StreamConsumer<Callbacks> = config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group)
        .set("client.id", format!("booking-origin-{}", settings.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .set(
            "statistics.interval.ms",
            settings.stats_interval.as_millis().to_string(),
        )
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout.as_millis() / 5).to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait.as_millis().to_string(),
        )
        .create_with_context(Callbacks {
            group: settings.group.clone(),
            assigned,
        })
        .context("create the Kafka consumer")?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribe to the topics")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set(
            "client.id",
            format!("booking-origin-{}-dlq", settings.group),
        )
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .context("create the dead-letter producer")?;
    let stats = Arc::new(ConsumerStats::default());
    let loop_stats = stats.clone();
    let task = tokio::spawn(async move {
        run(db, settings, consumer, producer, handler, loop_stats, stop).await;
    });
    Ok((Running { stats, ready }, task))
}

/// A group without committed offsets commits the topics' current ends, so it starts there.
async fn start_at_end_if_new(settings: &ConsumerSettings) -> anyhow::Result<()> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let admin: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .create()
            .context("create the offsets client")?;
        let timeout = Duration::from_secs(10);
        let mut all = TopicPartitionList::new();
        for topic in &settings.topics {
            let metadata = admin
                .fetch_metadata(Some(topic), timeout)
                .with_context(|| format!("metadata of {topic}"))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    all.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = admin
            .committed_offsets(all, timeout)
            .context("read the group's committed offsets")?;
        if committed
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(_)))
        {
            return Ok(());
        }
        let mut ends = TopicPartitionList::new();
        for e in committed.elements() {
            let (_, high) = admin
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .with_context(|| format!("end of {}/{}", e.topic(), e.partition()))?;
            ends.add_partition_offset(e.topic(), e.partition(), Offset::Offset(high))
                .context("add a partition")?;
        }
        admin
            .commit(&ends, CommitMode::Sync)
            .context("commit the start offsets")?;
        tracing::info!(group = %settings.group, partitions = ends.count(), "new consumer group starts at the topics' ends");
        Ok(())
    })
    .await
    .context("the start-offsets task")?
}

/// Why a record is poison.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Poison {
    #[error("no key, or a key that is not a vehicle id")]
    Key,
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    #[error("unknown topic {0:?}")]
    Topic(String),
    #[error("payload is not a JSON object: {0}")]
    Payload(String),
    #[error("payload {0} does not match the record")]
    Mismatch(&'static str),
}

fn header<'m>(message: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Decodes a record (see the module docs for what makes one poison).
pub fn decode(message: &BorrowedMessage<'_>) -> Result<Incoming, Poison> {
    let topic = Topic::ALL
        .into_iter()
        .find(|t| t.as_str() == message.topic())
        .ok_or_else(|| Poison::Topic(message.topic().to_owned()))?;
    let vehicle = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.parse::<VehicleId>().ok())
        .ok_or(Poison::Key)?;
    let event_id = header(message, "event_id")
        .and_then(|v| Uuid::try_parse(v).ok())
        .ok_or(Poison::Header("event_id"))?;
    let sequence = header(message, "sequence")
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or(Poison::Header("sequence"))?;
    let payload: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default())
        .map_err(|e| Poison::Payload(e.to_string()))?;
    if !payload.is_object() {
        return Err(Poison::Payload("not an object".into()));
    }
    if payload.get("event_id").and_then(|v| v.as_str()) != Some(event_id.to_string().as_str()) {
        return Err(Poison::Mismatch("event_id"));
    }
    if payload.get("type").and_then(|v| v.as_str()) != Some(topic.as_str()) {
        return Err(Poison::Mismatch("type"));
    }
    Ok(Incoming {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        event_id,
        sequence,
        vehicle,
        payload,
    })
}

/// What processing one event came to.
enum Outcome {
    Processed,
    Duplicate,
}

/// Records `event` as processed by `group` and runs the handler, in one transaction.
async fn process<H: Handler>(
    db: &PgPool,
    group: &str,
    handler: &H,
    event: &Incoming,
) -> anyhow::Result<Outcome> {
    let mut tx = db.begin().await.context("begin")?;
    let fresh = sqlx::query_scalar!(
        r#"insert into processed_events (consumer, event_id, topic) values ($1, $2, $3)
           on conflict do nothing returning 1 as "one!""#,
        group,
        event.event_id,
        event.topic.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await
    .context("record the event")?
    .is_some();
    if !fresh {
        tx.rollback().await.context("rollback")?;
        return Ok(Outcome::Duplicate);
    }
    handler.handle(&mut tx, event).await?;
    tx.commit().await.context("commit")?;
    Ok(Outcome::Processed)
}

/// Deletes consumers' dedupe rows older than `before` (the sweeper, hourly).
pub(crate) async fn purge_processed_older_than(
    db: &PgPool,
    before: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from processed_events where processed_at < $1",
        before
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Sends a poison record to the dead-letter topic, retrying until the broker takes it or
/// `stop` fires (then it is left uncommitted, to be dead-lettered after a restart).
async fn dead_letter(
    producer: &FutureProducer,
    settings: &ConsumerSettings,
    message: &BorrowedMessage<'_>,
    reason: &Poison,
    stop: &CancellationToken,
) -> bool {
    let reason = reason.to_string();
    let (partition, offset) = (
        message.partition().to_string(),
        message.offset().to_string(),
    );
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let extra = [
        ("dead_letter_reason", reason.as_str()),
        ("dead_letter_group", settings.group.as_str()),
        ("dead_letter_topic", message.topic()),
        ("dead_letter_partition", partition.as_str()),
        ("dead_letter_offset", offset.as_str()),
    ];
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
        Jitter::Equal,
    );
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&settings.dead_letter_topic).headers(headers.clone());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => return true,
            Err((e, _)) => {
                tracing::warn!(error = %e, "dead-letter publish failed; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause()) => {}
            () = stop.cancelled() => return false,
        }
    }
}

async fn run<H: Handler>(
    db: PgPool,
    settings: ConsumerSettings,
    consumer: StreamConsumer<Callbacks>,
    producer: FutureProducer,
    handler: H,
    stats: Arc<ConsumerStats>,
    stop: CancellationToken,
) {
    let group = settings.group.clone();
    let counter = |name: &'static str| metrics::counter!(name, "group" => group.clone());
    let mut commit = tokio::time::interval(settings.commit_interval);
    commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    'records: loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = commit.tick() => {
                if std::mem::take(&mut dirty) {
                    if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                        tracing::debug!(error = %e, group = %settings.group, "offset commit");
                    }
                }
                continue;
            }
            () = stop.cancelled() => break,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, group = %settings.group, "consumer error");
                continue;
            }
        };
        match decode(&message) {
            Err(reason) => {
                tracing::warn!(
                    %reason, topic = message.topic(), partition = message.partition(),
                    offset = message.offset(), group = %settings.group,
                    "poison record: sent to the dead-letter topic"
                );
                if !dead_letter(&producer, &settings, &message, &reason, &stop).await {
                    break;
                }
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                counter("events_consumer_dead_lettered_total").increment(1);
            }
            Ok(event) if !handler.wants(&event) => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(event) => {
                let mut backoff = Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_secs(10),
                    Jitter::Equal,
                );
                loop {
                    match process(&db, &settings.group, &handler, &event).await {
                        Ok(Outcome::Processed) => {
                            stats.processed.fetch_add(1, Ordering::Relaxed);
                            counter("events_consumer_processed_total").increment(1);
                            break;
                        }
                        Ok(Outcome::Duplicate) => {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            counter("events_consumer_duplicates_total").increment(1);
                            break;
                        }
                        Err(e) => {
                            stats.failures.fetch_add(1, Ordering::Relaxed);
                            counter("events_consumer_failures_total").increment(1);
                            tracing::warn!(
                                error = format!("{e:#}"), event_id = %event.event_id,
                                group = %settings.group, "event processing failed; retrying"
                            );
                            tokio::select! {
                                () = tokio::time::sleep(backoff.next_pause()) => {}
                                () = stop.cancelled() => break 'records,
                            }
                        }
                    }
                }
            }
        }
        if let Err(e) = consumer.store_offset_from_message(&message) {
            tracing::warn!(error = %e, group = %settings.group, "store offset");
        }
        dirty = true;
    }
    if dirty {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, group = %settings.group, "final offset commit");
        }
    }
}
