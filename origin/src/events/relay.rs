//! The outbox relay: publishes committed `outbox` rows to Kafka, in order per vehicle.
//!
//! Every state change already wrote its events into `outbox` in the same transaction as the
//! booking (see [`crate::events`]), so nothing uncommitted can reach the broker. The relay's
//! job is the other half of the promise: nothing committed is lost, and one vehicle's events
//! reach consumers in the order they were written, even with several origin instances running
//! a relay at once.
//!
//! # Delivery
//!
//! Each row becomes one record on its topic, keyed by `partition_key` (the vehicle's public id,
//! so within a topic a vehicle's events share a partition and keep their order), with the
//! payload JSON as value and three headers: `event_id`; `sequence`, the event's number among
//! its vehicle's events (1, 2, … in commit order, no holes, across every topic: see "Per-vehicle
//! order" below); and `region`, the vehicle's home region (`EUW`/`EUN`, also the
//! payload's `region` field). Both regions' relays publish to one set of topics: a consumer
//! tells them apart by that header without parsing the payload. The producer sends with
//! `acks=all` and **one request in flight per connection**, so a retried request can never
//! overtake a later one and records of one
//! partition keep their order. It is deliberately *not* librdkafka's idempotent producer: the
//! broker we test against (tansu 0.6.0, SQLite engine) panics in its idempotent-producer
//! sequence check when many producers start at once (`lite.rs:503`, "more or less than one
//! row") and then fails every request until restarted; and the idempotent producer's only extra
//! guarantee, dropping a retry's duplicate, is one consumers already need (see below). A row
//! gets `published_at` only after the broker acknowledged it, in the same transaction that
//! selected it. If an acknowledgement is lost, or that commit fails after it, the row is sent
//! again: delivery is at-least-once, and consumers drop repeats by `event_id`.
//!
//! # Ordering across relays: lanes
//!
//! Rows are split into `lanes` by `abs(hashtext(partition_key)) % lanes`, so all events of
//! one vehicle fall into one lane. An instance works on a lane only while it holds the
//! session-level advisory lock `(LOCK_NAMESPACE, lane)` on a dedicated connection (outside
//! the pool, so the lock lives exactly as long as that session: if the instance dies, the
//! server ends the session and another instance takes the lane over). Within a lane, a batch
//! is the next unpublished rows of some vehicles, each vehicle's in `sequence` order
//! (`outbox::lock_batch`, `for update`); it is sent in that order, every delivery is
//! awaited, and the acknowledged rows are marked in one `update` before the transaction
//! commits. So at most one relay publishes a vehicle's events at any time, in `sequence`
//! order, and the next batch starts only after the previous one is settled.
//!
//! Deviation from the usual `for update skip locked`: skipping a locked row would let a later
//! row of the same vehicle overtake it if two relays ever overlapped on a lane (say, a lock
//! session dropped by the network while its batch was in flight). A plain `for update` makes
//! the newcomer wait for that batch to commit and then re-read the rows, which are by then
//! published. Each batch also checks, in its own transaction, that its instance still holds
//! the lane's lock.
//!
//! A lane is held for a lease ([`RelaySettings::lane_lease`]) and then released between batches, so that
//! lanes spread over the instances that are running instead of staying with whichever
//! started first.
//!
//! # Per-vehicle order: the sequence, not the id
//!
//! The outbox `id` is drawn when a row is inserted, not when it commits: two independent
//! transactions on one vehicle (the sweeper ending a hold, a new hold on another window) could
//! commit in the opposite order of their ids, and a relay ordering by id published the one
//! that committed later first whenever both were in one batch (the fault suite's contended run
//! saw it). So each row carries its vehicle's `sequence`, numbered by a trigger under a row
//! lock (`outbox_sequences`) that its transaction holds until it ends: the next transaction
//! writing that vehicle's events waits for the commit and takes the next number, a rollback
//! gives its numbers back. Per vehicle, sequence order is commit order, without holes.
//!
//! The relay can then never publish number n + 1 of a vehicle before n:
//! - a batch sees n + 1 only if its transaction committed, which happened after n's committed,
//!   so the batch sees n too (or n is already published);
//! - a batch takes a vehicle's waiting rows from its lowest number up, in order, and the row
//!   limit only cuts the tail (`outbox::lock_batch`);
//! - only a per-vehicle prefix of a batch is marked published: a row acknowledged after an
//!   earlier row of its vehicle failed stays unpublished and is sent again after it
//!   (`published_prefixes`), so the published rows of a vehicle are always 1..=k.
//!
//! Within one topic a vehicle's records are therefore in sequence order (first deliveries; a
//! resend repeats an `event_id`); across topics a consumer orders them by `sequence`, and a
//! number it has not seen while it holds a higher one is an event still on its way (or lost,
//! which the fault suite's checker counts).
//!
//! # When the broker is away
//!
//! librdkafka keeps retrying a batch for up to [`RelaySettings::delivery_timeout`]; past it
//! the unacknowledged rows stay unpublished and the relay backs off exponentially (from the
//! poll interval up to [`MAX_BACKOFF`], with equal jitter: [`crate::backoff`]) and tries again
//! from the oldest row. The outbox simply grows meanwhile and drains once the broker is back.
//! Topics are created at start through the admin API (the broker may not auto-create them);
//! "already exists" is fine.
//!
//! # Stopping
//!
//! The relay runs as a job ([`crate::jobs::relay`]) until its cancellation token fires. A batch
//! in flight then gets [`RelaySettings::stop_grace`] to be acknowledged and marked (so a clean
//! stop does not leave it to be sent twice); then the producer is flushed and the lock session
//! closed, which frees the relay's lanes for other instances at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Jitter};
use crate::config::{Config, TopicLayout};
use crate::events::{outbox, Topic};

/// First key of the relay's advisory locks (`pg_try_advisory_lock(LOCK_NAMESPACE, lane)`);
/// "OBRX", for outbox relay, so it cannot collide with other advisory locks of the schema.
pub const LOCK_NAMESPACE: i32 = 0x4f42_5258;
/// Longest pause between retries while the broker or the database is away.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a batch in flight may still finish once a stop was asked for (default).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);
/// The longest any of the relay's database steps may take (taking or releasing lanes, the
/// backlog count; a batch gets this on top of the delivery timeout). A connection whose peer
/// went silent (no RST, no FIN: a dead host or a blackholed link) never answers, and without
/// a bound the relay would wait on it forever while its lock session kept its lanes from every
/// other instance (the fault suite's dead-peer fault found it). Past the bound the pass fails
/// and [`Relay::recover`] drops a lock session that does not answer.
pub(crate) const DB_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relay needs to know.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Kafka bootstrap servers (`host:port,...`).
    pub brokers: String,
    /// Partitions and replicas of each topic when the relay creates it.
    pub topics: TopicLayout,
    /// Rows per batch (one transaction, one round of deliveries).
    pub batch: i64,
    /// Number of lanes the outbox is split into (the unit of ownership between instances).
    pub lanes: i32,
    /// Pause when there is nothing to publish.
    pub poll: Duration,
    /// How long librdkafka retries one record before the batch gives up (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long an instance keeps a lane before releasing it for others (between batches).
    pub lane_lease: Duration,
    /// How long a batch in flight may still finish once the relay is asked to stop.
    pub stop_grace: Duration,
    /// Where the lanes' lock session connects (`DATABASE_SESSION_URL`): a session-level
    /// advisory lock needs a server session of its own, which a transaction pooler does not
    /// give. `None`: the pool's own options.
    pub lock_session: Option<sqlx::postgres::PgConnectOptions>,
}

impl RelaySettings {
    /// Settings with the documented defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        RelaySettings {
            brokers: brokers.into(),
            topics: TopicLayout {
                partitions: 3,
                replication: 1,
            },
            batch: 200,
            lanes: 8,
            poll: Duration::from_millis(200),
            delivery_timeout: Duration::from_secs(30),
            lane_lease: Duration::from_secs(15),
            stop_grace: STOP_GRACE,
            lock_session: None,
        }
    }

    /// The relay's settings, or `None` when `KAFKA_BROKERS` is not set (relay disabled).
    ///
    /// A batch in flight at a stop gets at most a quarter of `SHUTDOWN_GRACE_SECS` (and never
    /// more than [`STOP_GRACE`]), so the relay's flush fits in the process's shutdown deadline.
    pub(crate) fn from_config(config: &Config) -> Option<Self> {
        let brokers = config.kafka_brokers.clone()?;
        Some(RelaySettings {
            topics: config.kafka_topics,
            batch: config.relay_batch,
            lanes: config.relay_lanes,
            poll: config.relay_poll,
            stop_grace: STOP_GRACE.min(config.shutdown_grace / 4),
            ..RelaySettings::new(brokers)
        })
    }
}

/// Runs one relay instance until `stop` is cancelled; returns once its batch in flight is
/// settled (or abandoned after [`RelaySettings::stop_grace`]), the producer flushed and its
/// lanes released.
///
/// Several instances, in one process or many, may run against the same database: the lanes'
/// advisory locks keep each vehicle's events with one of them at a time.
pub async fn run_relay(pool: PgPool, settings: RelaySettings, stop: CancellationToken) {
    Relay::new(pool, settings).run(stop).await;
}

/// Creates every outbox topic; topics that already exist are fine.
pub(crate) async fn create_topics(brokers: &str, layout: TopicLayout) -> anyhow::Result<()> {
    create_named_topics(brokers, Topic::ALL.iter().map(|t| t.as_str()), layout).await
}

/// Creates the `names` topics; topics that already exist are fine.
pub(crate) async fn create_named_topics<'a>(
    brokers: &str,
    names: impl IntoIterator<Item = &'a str>,
    layout: TopicLayout,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("create the Kafka admin client")?;
    let settings = layout.topic_config();
    let topics: Vec<NewTopic<'_>> = names
        .into_iter()
        .map(|name| {
            settings.iter().fold(
                NewTopic::new(
                    name,
                    layout.partitions,
                    TopicReplication::Fixed(layout.replication),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .context("create the topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The producer the relay publishes with: `acks=all`, one request in flight (order kept
/// across retries without the idempotent producer; see the module docs for why).
fn producer(settings: &RelaySettings) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "booking-origin-outbox-relay")
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "1000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set("linger.ms", "5")
        // Java clients' partitioner, so every client maps a vehicle to the same partition.
        .set("partitioner", "murmur2_random")
        .create()
        .context("create the Kafka producer")
}

/// The relay's session holding the lanes' advisory locks.
#[derive(Debug)]
struct LockSession {
    conn: PgConnection,
    pid: i32,
}

/// The batch's instance no longer holds the lane (its lock session ended).
#[derive(Debug, thiserror::Error)]
#[error("the relay no longer holds lane {0}")]
struct LaneLost(i32);

struct Relay {
    pool: PgPool,
    settings: RelaySettings,
    producer: Option<FutureProducer>,
    session: Option<LockSession>,
    /// Lanes held, with when they were taken (for the lease).
    held: BTreeMap<i32, Instant>,
    /// Lanes released by lease, with when: not taken again for a moment, so others can.
    released: BTreeMap<i32, Instant>,
    last_backlog: Option<Instant>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Waits `pause` unless a stop comes first; true when stopping.
async fn sleep_or_stop(pause: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        () = stop.cancelled() => {}
    }
    stop.is_cancelled()
}

impl Relay {
    fn new(pool: PgPool, settings: RelaySettings) -> Self {
        Relay {
            pool,
            settings,
            producer: None,
            session: None,
            held: BTreeMap::new(),
            released: BTreeMap::new(),
            last_backlog: None,
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        tracing::info!(
            brokers = %self.settings.brokers,
            lanes = self.settings.lanes,
            batch = self.settings.batch,
            "outbox relay starting"
        );
        let mut backoff = Backoff::new(self.settings.poll, MAX_BACKOFF, Jitter::Equal);
        loop {
            if stop.is_cancelled() {
                return self.shutdown().await;
            }
            // The admin call may wait out its 10 s timeout on a dead broker: a stop cuts it.
            let created = tokio::select! {
                r = create_topics(&self.settings.brokers, self.settings.topics) => r,
                () = stop.cancelled() => return self.shutdown().await,
            };
            match created {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("outbox_relay_errors_total", "stage" => "topics")
                        .increment(1);
                    let pause = backoff.next_pause();
                    tracing::warn!(
                        error = format!("{e:#}"),
                        ?pause,
                        "outbox relay: topics not created yet; retrying"
                    );
                    if sleep_or_stop(pause, &stop).await {
                        return self.shutdown().await;
                    }
                }
            }
        }
        backoff.reset();
        let mut failing = false;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let pause = match self.pass(&stop).await {
                Ok(more) => {
                    if failing {
                        tracing::info!("outbox relay: publishing again");
                        failing = false;
                    }
                    backoff.reset();
                    if more {
                        Duration::ZERO
                    } else {
                        self.settings.poll
                    }
                }
                Err(e) => {
                    metrics::counter!("outbox_relay_errors_total", "stage" => "publish")
                        .increment(1);
                    let pause = backoff.next_pause();
                    tracing::warn!(
                        error = format!("{e:#}"),
                        ?pause,
                        "outbox relay: pass failed; backing off"
                    );
                    failing = true;
                    self.recover(&e).await;
                    pause
                }
            };
            if !pause.is_zero() && sleep_or_stop(pause, &stop).await {
                break;
            }
        }
        self.shutdown().await;
    }

    /// One round over the lanes: take free lanes, publish one batch in each held lane,
    /// release lanes whose lease ran out. Returns whether a lane may have more rows waiting.
    async fn pass(&mut self, stop: &CancellationToken) -> anyhow::Result<bool> {
        tokio::time::timeout(DB_STEP_TIMEOUT, self.acquire_lanes())
            .await
            .map_err(|_| anyhow::anyhow!("taking lanes took longer than {DB_STEP_TIMEOUT:?}"))??;
        let _ = tokio::time::timeout(DB_STEP_TIMEOUT, self.refresh_backlog()).await;
        if self.producer.is_none() {
            self.producer = Some(producer(&self.settings)?);
        }
        let (Some(producer), Some(session)) = (&self.producer, &self.session) else {
            return Ok(false);
        };
        let pid = session.pid;
        let mut more = false;
        let lanes: Vec<i32> = self.held.keys().copied().collect();
        for lane in lanes {
            if stop.is_cancelled() {
                break;
            }
            let bound = self.settings.delivery_timeout + DB_STEP_TIMEOUT;
            let work = tokio::time::timeout(
                bound,
                publish_batch(&self.pool, producer, &self.settings, pid, lane),
            );
            tokio::pin!(work);
            let sent = tokio::select! {
                r = &mut work => r,
                () = stop.cancelled() => tokio::time::timeout(self.settings.stop_grace, &mut work)
                    .await
                    .context("stopped while a batch was in flight; it will be sent again")?,
            }
            .map_err(|_| anyhow::anyhow!("a batch of lane {lane} took longer than {bound:?}"))?;
            match sent {
                Ok(n) => more |= n as i64 >= self.settings.batch,
                Err(e) => {
                    if let Some(LaneLost(lane)) = e.downcast_ref::<LaneLost>() {
                        self.held.remove(lane);
                    }
                    return Err(e);
                }
            }
        }
        tokio::time::timeout(DB_STEP_TIMEOUT, self.release_leases())
            .await
            .map_err(|_| {
                anyhow::anyhow!("releasing lanes took longer than {DB_STEP_TIMEOUT:?}")
            })??;
        Ok(more)
    }

    /// Opens the lock session if needed and tries to take every lane nobody holds.
    async fn acquire_lanes(&mut self) -> anyhow::Result<()> {
        if self.session.is_none() {
            let options = match &self.settings.lock_session {
                Some(options) => options.clone(),
                None => (*self.pool.connect_options()).clone(),
            };
            let mut conn = PgConnection::connect_with(&options)
                .await
                .context("open the relay's lock session")?;
            let pid = sqlx::query_scalar!(r#"select pg_backend_pid() as "pid!""#)
                .fetch_one(&mut conn)
                .await
                .context("read the lock session's pid")?;
            self.session = Some(LockSession { conn, pid });
            self.held.clear();
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let lanes = self.settings.lanes;
        let start = rand::thread_rng().gen_range(0..lanes);
        let cool_down = self.settings.poll * 3;
        self.released.retain(|_, at| at.elapsed() < cool_down);
        for i in 0..lanes {
            let lane = (start + i) % lanes;
            if self.held.contains_key(&lane) || self.released.contains_key(&lane) {
                continue;
            }
            let taken = sqlx::query_scalar!(
                r#"select pg_try_advisory_lock($1, $2) as "taken!""#,
                LOCK_NAMESPACE,
                lane,
            )
            .fetch_one(&mut session.conn)
            .await
            .context("try a lane's advisory lock")?;
            if taken {
                tracing::debug!(lane, "outbox relay took a lane");
                self.held.insert(lane, Instant::now());
            }
        }
        metrics::gauge!("outbox_relay_lanes_held").set(self.held.len() as f64);
        Ok(())
    }

    /// Releases the lanes held longer than the lease (between batches: nothing in flight).
    async fn release_leases(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let lease = self.settings.lane_lease;
        let expired: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, since)| since.elapsed() >= lease)
            .map(|(lane, _)| *lane)
            .collect();
        for lane in expired {
            sqlx::query_scalar!(
                r#"select pg_advisory_unlock($1, $2) as "released!""#,
                LOCK_NAMESPACE,
                lane,
            )
            .fetch_one(&mut session.conn)
            .await
            .context("release a lane's advisory lock")?;
            self.held.remove(&lane);
            self.released.insert(lane, Instant::now());
        }
        Ok(())
    }

    /// After a failed pass: drop what may be broken, so the next pass starts clean.
    async fn recover(&mut self, error: &anyhow::Error) {
        if let Some(producer) = &self.producer {
            if let Some((code, reason)) = producer.client().fatal_error() {
                tracing::warn!(%code, reason, "outbox relay: producer failed fatally; recreating it");
                self.producer = None;
            }
        }
        let alive = match self.session.as_mut() {
            Some(session) => tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query_scalar!(r#"select 1 as "alive!""#).fetch_one(&mut session.conn),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
            None => true,
        };
        if !alive {
            tracing::warn!(
                error = format!("{error:#}"),
                "outbox relay: lock session lost; its lanes are free for others"
            );
            self.session = None;
            self.held.clear();
        }
    }

    /// Sets the backlog gauges now and then: the count of unpublished rows and the age of the
    /// oldest (the outbox lag the `OutboxLagHigh` alert watches, deploy/prometheus/rules.yml).
    async fn refresh_backlog(&mut self) {
        if self
            .last_backlog
            .is_some_and(|at| at.elapsed() < BACKLOG_EVERY)
        {
            return;
        }
        self.last_backlog = Some(Instant::now());
        let count = outbox::backlog(&self.pool).await;
        if let Ok(count) = count {
            metrics::gauge!("outbox_unpublished_rows").set(count as f64);
        }
        if let Ok(age) = outbox::oldest_unpublished_age(&self.pool).await {
            metrics::gauge!("outbox_oldest_unpublished_age_seconds").set(age);
        }
    }

    /// Flushes the producer, then closes the lock session (the server releases its locks at
    /// once, so other instances take the lanes over without waiting for a lease).
    async fn shutdown(mut self) {
        if let Some(producer) = self.producer.take() {
            let within = self.settings.stop_grace.min(Duration::from_secs(2));
            let _ = tokio::task::spawn_blocking(move || producer.flush(within)).await;
        }
        if let Some(session) = self.session.take() {
            let _ = session.conn.close().await;
        }
        tracing::info!("outbox relay stopped");
    }
}

/// Publishes the oldest unpublished rows of `lane`, in `id` order, and marks those the broker
/// acknowledged. Returns how many rows the batch held.
async fn publish_batch(
    pool: &PgPool,
    producer: &FutureProducer,
    settings: &RelaySettings,
    lock_pid: i32,
    lane: i32,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await.context("begin a relay batch")?;
    // objsubid 2: the lock was taken with two int4 keys (classid = first, objid = second).
    // The same statement lets this transaction idle while it waits for the broker: the pool's
    // sessions are ended by the server past the request deadline (`startup::pool_options`),
    // a batch may wait for its deliveries up to the delivery timeout.
    let idle = settings.delivery_timeout + DB_STEP_TIMEOUT + DB_STEP_TIMEOUT;
    let holds = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_locks
                           where locktype = 'advisory' and pid = $1 and granted and objsubid = 2
                             and classid::int8 = $2 and objid::int8 = $3)
                  and set_config('idle_in_transaction_session_timeout', $4, true) is not null
                  as "held!""#,
        lock_pid,
        i64::from(LOCK_NAMESPACE),
        i64::from(lane),
        format!("{}ms", idle.as_millis()),
    )
    .fetch_one(&mut *tx)
    .await
    .context("check the lane's lock")?;
    if !holds {
        return Err(LaneLost(lane).into());
    }
    let rows = outbox::lock_batch(&mut tx, settings.lanes, lane, settings.batch)
        .await
        .context("select a batch of outbox rows")?;
    if rows.is_empty() {
        return Ok(0);
    }

    // Enqueue in batch order (each vehicle's rows by sequence): with one request in flight the
    // producer keeps that order per partition.
    let mut pending = Vec::with_capacity(rows.len());
    let mut enqueue_error = None;
    for (i, row) in rows.iter().enumerate() {
        let event_id = row.event_id.to_string();
        let sequence = row.sequence.to_string();
        // The key is the vehicle's public id, which names its home region.
        let region = row
            .partition_key
            .parse::<domain::VehicleId>()
            .map(|v| v.region.code())
            .unwrap_or("unknown");
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_id",
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: "sequence",
                value: Some(sequence.as_str()),
            })
            .insert(Header {
                key: "region",
                value: Some(region),
            });
        if let Some(traceparent) = &row.traceparent {
            // The span that wrote the row (W3C trace context): a consumer's span continues it.
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(traceparent.as_str()),
            });
        }
        let mut record = FutureRecord::to(&row.topic)
            .key(&row.partition_key)
            .payload(&row.payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push((i, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    enqueue_error = Some(e);
                    break;
                }
            }
        }
        if enqueue_error.is_some() {
            break;
        }
    }

    let mut delivered = vec![false; rows.len()];
    let mut first_failure = None;
    for (i, delivery) in pending {
        let id = rows.get(i).map_or(0, |r| r.id);
        match delivery.await {
            Ok(Ok(_)) => delivered[i] = true,
            Ok(Err((e, _))) => {
                first_failure.get_or_insert_with(|| format!("row {id}: {e}"));
            }
            Err(_) => {
                first_failure.get_or_insert_with(|| format!("row {id}: delivery dropped"));
            }
        }
    }
    let acked = published_prefixes(&rows, &delivered);
    if !acked.is_empty() {
        outbox::mark_published(&mut tx, &acked)
            .await
            .context("mark outbox rows published")?;
    }
    tx.commit().await.context("commit a relay batch")?;
    metrics::counter!("outbox_relay_published_total").increment(acked.len() as u64);
    tracing::debug!(lane, published = acked.len(), "outbox relay batch");

    if let Some(e) = enqueue_error {
        return Err(e).context("enqueue an outbox record");
    }
    if let Some(failure) = first_failure {
        anyhow::bail!(
            "{} of {} records not marked published (first failure: {failure})",
            rows.len() - acked.len(),
            rows.len()
        );
    }
    Ok(rows.len())
}

/// The ids of the rows to mark published: per vehicle, the delivered rows up to (not
/// including) its first row that was not delivered. `rows` are in batch order (by vehicle,
/// then sequence), `delivered` says which the broker acknowledged.
///
/// A later row of a vehicle may be acknowledged while an earlier one failed (another topic's
/// partition, or a record-level error); marking it would leave the vehicle's published rows
/// with a hole, and the next batch would publish the earlier row after the later one. Left
/// unmarked, it is sent again after the failed one: consumers drop the repeat by `event_id`.
fn published_prefixes(rows: &[outbox::OutboxRow], delivered: &[bool]) -> Vec<i64> {
    let mut stopped: Option<&str> = None;
    let mut ids = Vec::with_capacity(rows.len());
    for (row, ok) in rows.iter().zip(delivered) {
        if stopped == Some(row.partition_key.as_str()) {
            continue;
        }
        if *ok {
            ids.push(row.id);
        } else {
            stopped = Some(&row.partition_key);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn row(id: i64, vehicle: &str, sequence: i64) -> outbox::OutboxRow {
        outbox::OutboxRow {
            id,
            event_id: uuid::Uuid::now_v7(),
            topic: "vehicle.reserved".into(),
            partition_key: vehicle.into(),
            sequence,
            payload: "{}".into(),
            traceparent: None,
        }
    }

    #[test]
    fn a_failed_delivery_keeps_its_vehicles_later_rows_unmarked_and_no_other_vehicles() {
        // Batch order: vehicle a's 1, 2, 3, then vehicle b's 7, 8; a's 2 failed, b's 7 failed.
        let rows = [
            row(10, "a", 1),
            row(12, "a", 2),
            row(11, "a", 3),
            row(20, "b", 7),
            row(21, "b", 8),
        ];
        let marked = published_prefixes(&rows, &[true, false, true, false, true]);
        assert_eq!(marked, vec![10]);
        let marked = published_prefixes(&rows, &[true, true, true, true, true]);
        assert_eq!(marked, vec![10, 12, 11, 20, 21]);
        let marked = published_prefixes(&rows, &[false, true, true, true, false]);
        assert_eq!(marked, vec![20]);
    }

    fn config(shutdown_grace_secs: &str) -> anyhow::Result<Config> {
        let env: BTreeMap<String, String> = [
            ("DATABASE_URL", "postgres://postgres@127.0.0.1/unused"),
            ("JWT_ISSUER", "iss"),
            ("JWT_AUDIENCE", "aud"),
            ("JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef"),
            ("QUOTE_SIGNING_KEYS", "k1=0123456789abcdef0123456789abcdef"),
            ("ORIGIN_ALLOW_DIRECT", "1"),
            ("KAFKA_BROKERS", "127.0.0.1:9"),
            ("SHUTDOWN_GRACE_SECS", shutdown_grace_secs),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Ok(Config::from(&env)?)
    }

    #[test]
    fn a_batch_in_flight_at_a_stop_gets_a_quarter_of_the_shutdown_grace_at_most_5_s(
    ) -> anyhow::Result<()> {
        let grace = |secs| -> anyhow::Result<Duration> {
            RelaySettings::from_config(&config(secs)?)
                .map(|s| s.stop_grace)
                .context("relay settings")
        };
        assert_eq!(grace("20")?, Duration::from_secs(5));
        assert_eq!(grace("300")?, Duration::from_secs(5));
        assert_eq!(grace("8")?, Duration::from_secs(2));
        assert_eq!(grace("1")?, Duration::from_millis(250));
        Ok(())
    }

    #[tokio::test]
    async fn a_relay_stops_at_once_while_the_broker_does_not_answer() -> anyhow::Result<()> {
        // Nothing listens on port 9 (discard): creating the topics waits out its 10 s timeout
        // unless the stop cuts it. The pool is lazy: the relay never reaches the database.
        let pool = PgPool::connect_lazy("postgres://postgres@127.0.0.1:9/unused")?;
        let stop = CancellationToken::new();
        let relay = tokio::spawn(run_relay(
            pool,
            RelaySettings::new("127.0.0.1:9"),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(3), relay)
            .await
            .context("the relay did not stop within 3 s")??;
        Ok(())
    }
}
