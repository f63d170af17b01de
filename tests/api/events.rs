//! Events reach Kafka through the transactional outbox: every committed state change once, in
//! order per vehicle, nothing lost while the broker is away, no event twice with two relays.
//!
//! The shared broker (`KAFKA_BROKERS`, started by `scripts/broker.sh`) keeps its topics across
//! tests and runs, so a test reads the topics from the beginning with a group of its own and
//! keeps only the events whose ids are in its own database's outbox. The broker-restart test
//! runs a tansu of its own, on a free port with its own data directory, so it can kill it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use e2e::*;
use futures_util::future::try_join_all;
use origin::events::relay::{run_relay, RelaySettings, LOCK_NAMESPACE};
use origin::events::Topic;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The shared broker; its absence fails the test (CI sets it), it is never skipped.
fn shared_brokers() -> TestResult<String> {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .context(
            "KAFKA_BROKERS is not set: the event tests need a Kafka-protocol broker \
             (run `bash scripts/broker.sh` and `export KAFKA_BROKERS=127.0.0.1:9092`; \
             scripts/test.sh does both)",
        )
}

/// One row of this test's outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: Uuid,
    topic: String,
    partition_key: String,
    sequence: i64,
}

async fn outbox(pool: &PgPool) -> TestResult<Vec<OutboxRow>> {
    Ok(sqlx::query_as(
        "select id, event_id, topic, partition_key, sequence from outbox order by id",
    )
    .fetch_all(pool)
    .await?)
}

async fn unpublished(pool: &PgPool) -> TestResult<i64> {
    Ok(
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits (bounded) until every outbox row has `published_at`.
async fn wait_until_published(pool: &PgPool, within: Duration) -> TestResult {
    let deadline = Instant::now() + within;
    loop {
        let left = unpublished(pool).await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} outbox rows still unpublished after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One record read from the broker.
#[derive(Debug, Clone)]
struct Received {
    event_id: Uuid,
    topic: String,
    key: String,
    partition: i32,
    offset: i64,
    sequence: i64,
    /// The `region` header: the vehicle's home region.
    region: Option<String>,
    payload: Value,
}

fn header<'a>(message: &'a impl Message, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Reads every topic (a consumer of its own) from `from` (else from the beginning) until
/// each `wanted` event was seen, then for `quiet` more to catch late duplicates. Bounded by
/// `within`.
async fn consume(
    brokers: &str,
    from: Option<&HashMap<(String, i32), i64>>,
    wanted: &HashSet<Uuid>,
    within: Duration,
    quiet: Duration,
) -> TestResult<Vec<Received>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-events-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The relay does not use transactions: nothing to hide from this consumer.
        .set("isolation.level", "read_uncommitted")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .context("create the test consumer")?;
    // Every partition of every topic, from `from` or the beginning. Assigned, not subscribed: the
    // group protocol's join and rebalance would only add seconds to each test.
    let mut partitions = TopicPartitionList::new();
    for topic in Topic::ALL {
        let metadata = consumer
            .fetch_metadata(Some(topic.as_str()), Duration::from_secs(10))
            .with_context(|| format!("metadata of {}", topic.as_str()))?;
        for t in metadata.topics() {
            anyhow::ensure!(
                !t.partitions().is_empty(),
                "topic {} has no partitions",
                t.name()
            );
            for p in t.partitions() {
                let offset = from
                    .and_then(|f| f.get(&(t.name().to_owned(), p.id())))
                    .map_or(Offset::Beginning, |high| Offset::Offset(*high));
                partitions
                    .add_partition_offset(t.name(), p.id(), offset)
                    .context("add a partition")?;
            }
        }
    }
    consumer.assign(&partitions).context("assign partitions")?;

    let deadline = Instant::now() + within;
    let mut quiet_until: Option<Instant> = None;
    let mut seen = HashSet::new();
    let mut received = Vec::new();
    let mut last_error = None;
    loop {
        let now = Instant::now();
        let until = quiet_until.unwrap_or(deadline).min(deadline);
        if now >= until {
            break;
        }
        let message = match tokio::time::timeout(until - now, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                last_error = Some(e.to_string());
                continue;
            }
            Ok(Ok(m)) => m,
        };
        let Some(event_id) = header(&message, "event_id").and_then(|v| Uuid::try_parse(v).ok())
        else {
            continue;
        };
        if !wanted.contains(&event_id) {
            continue;
        }
        let payload: Value = message
            .payload()
            .map(serde_json::from_slice)
            .transpose()
            .context("payload is JSON")?
            .unwrap_or(Value::Null);
        received.push(Received {
            event_id,
            topic: message.topic().to_owned(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            partition: message.partition(),
            offset: message.offset(),
            sequence: header(&message, "sequence")
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1),
            region: header(&message, "region").map(str::to_owned),
            payload,
        });
        seen.insert(event_id);
        if quiet_until.is_none() && seen.len() == wanted.len() {
            quiet_until = Some(Instant::now() + quiet);
        }
    }
    anyhow::ensure!(
        seen.len() == wanted.len(),
        "read {} of {} events within {within:?} (last consumer error: {last_error:?})",
        seen.len(),
        wanted.len()
    );
    Ok(received)
}

/// Checks the outbox and the records: each vehicle's events numbered 1, 2, … without holes;
/// each event delivered with its topic, key, payload and sequence; exactly once (or, with
/// `duplicates_allowed`, at least once); and per topic and vehicle in sequence order (the
/// first copy of each event, in partition offset order).
fn assert_delivered(outbox: &[OutboxRow], received: &[Received], duplicates_allowed: bool) {
    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    for r in received {
        *copies.entry(r.event_id).or_default() += 1;
    }
    let by_id: HashMap<Uuid, &OutboxRow> = outbox.iter().map(|o| (o.event_id, o)).collect();
    let mut numbers: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in outbox {
        numbers
            .entry(&row.partition_key)
            .or_default()
            .push(row.sequence);
    }
    for (key, mut seqs) in numbers {
        seqs.sort_unstable();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "sequence numbers of {key}");
    }
    for row in outbox {
        let n = copies.get(&row.event_id).copied().unwrap_or(0);
        assert!(
            n >= 1,
            "event {} ({}) never arrived",
            row.event_id,
            row.topic
        );
        if !duplicates_allowed {
            assert_eq!(
                n, 1,
                "event {} ({}) arrived {n} times",
                row.event_id, row.topic
            );
        }
    }
    for r in received {
        let row = by_id[&r.event_id];
        assert_eq!(r.topic, row.topic, "topic of {}", r.event_id);
        assert_eq!(r.key, row.partition_key, "key of {}", r.event_id);
        assert_eq!(
            r.sequence, row.sequence,
            "sequence header of {}",
            r.event_id
        );
        assert_eq!(r.payload["event_id"], row.event_id.to_string());
        assert_eq!(r.payload["type"], row.topic.as_str());
        // The region header names the vehicle's home region, as the payload does.
        let home = row
            .partition_key
            .parse::<domain::VehicleId>()
            .map(|v| v.region.code().to_owned())
            .ok();
        assert!(home.is_some(), "key {} is a vehicle id", row.partition_key);
        assert_eq!(r.region, home, "region header of {}", r.event_id);
        assert_eq!(
            r.payload["region"].as_str(),
            home.as_deref(),
            "payload region of {}",
            r.event_id
        );
        // The subject, a booking, a maintenance block or a waitlist entry, is of the keyed
        // vehicle.
        let subject = if r.topic.starts_with("vehicle.") && r.payload["block"].is_object() {
            "block"
        } else if r.topic == "waitlist.available" {
            "waitlist"
        } else {
            "booking"
        };
        assert_eq!(
            r.payload[subject]["vehicle_id"],
            row.partition_key.as_str(),
            "{subject} of {}",
            r.event_id
        );
    }

    // Per (topic, vehicle): one partition, and the offsets follow the sequence.
    let mut streams: BTreeMap<(&str, &str), Vec<&Received>> = BTreeMap::new();
    for r in received {
        streams.entry((&r.topic, &r.key)).or_default().push(r);
    }
    for ((topic, key), mut records) in streams {
        let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
        assert_eq!(
            partitions.len(),
            1,
            "{topic}/{key} spread over {partitions:?}"
        );
        records.sort_by_key(|r| r.offset);
        let mut firsts = HashSet::new();
        let order: Vec<i64> = records
            .iter()
            .filter(|r| firsts.insert(r.event_id))
            .map(|r| r.sequence)
            .collect();
        let mut expected: Vec<i64> = outbox
            .iter()
            .filter(|o| o.topic == topic && o.partition_key == key)
            .map(|o| o.sequence)
            .collect();
        expected.sort_unstable();
        assert_eq!(order, expected, "order of {topic} for {key}");
    }
}

/// A whole-minute instant.
fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp() / 60 * 60, 0).unwrap_or(at)
}

async fn act(app: &TestApp, user: &str, id: &str, action: &str, body: &Value) -> TestResult {
    let reply = app
        .post(
            &format!("/v1/bookings/{id}/{action}"),
            Some(&token(user)),
            body,
            None,
        )
        .await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "{action} {id}: {reply:?}");
    Ok(())
}

/// On one vehicle, from `day` days ahead: a booking confirmed then extended, a hold
/// cancelled, and a booking confirmed, moved four hours later, then cancelled (each writes events
/// on its vehicle).
async fn bookings_on(app: &TestApp, user: &str, vehicle: &str, day: i64) -> TestResult {
    let (start, end) = window(day, 2);
    let a = app.confirmed(user, vehicle, (start, end)).await?;
    act(
        app,
        user,
        &a,
        "extend",
        &json!({ "end": end + chrono::Duration::hours(1) }),
    )
    .await?;
    let hold = app.hold(user, vehicle, window(day + 1, 2)).await?;
    anyhow::ensure!(hold.status.as_u16() == 201, "hold: {hold:?}");
    let b = hold.body["id"].as_str().context("hold id")?.to_owned();
    act(app, user, &b, "cancel", &Value::Null).await?;
    let (c_start, c_end) = window(day + 2, 2);
    let c = app.confirmed(user, vehicle, (c_start, c_end)).await?;
    let later = chrono::Duration::hours(4);
    act(
        app,
        user,
        &c,
        "reschedule",
        &json!({ "start": c_start + later, "end": c_end + later }),
    )
    .await?;
    act(app, user, &c, "cancel", &Value::Null).await
}

/// [`bookings_on`] on several vehicles at once.
async fn bookings(app: &TestApp, user: &str, vehicles: &[String], day: i64) -> TestResult {
    try_join_all(vehicles.iter().map(|v| bookings_on(app, user, v, day))).await?;
    Ok(())
}

#[sqlx::test(migrations = "../migrations")]
async fn every_committed_state_change_is_published_once_in_order_per_vehicle(
    pool: PgPool,
) -> TestResult {
    let brokers = shared_brokers()?;
    let start = e2e::broker::end_offsets(&brokers)?;
    let app = spawn_app_with(
        pool,
        &[("KAFKA_BROKERS", brokers.as_str()), ("RELAY_POLL_MS", "50")],
    )
    .await?;
    let vehicles = app.vehicles("EUW").await?;
    bookings(&app, "eve", &vehicles[0..3], 3).await?;
    // Two more bookings on the first vehicle, so one vehicle has a long history.
    bookings_on(&app, "eve", &vehicles[0], 8).await?;

    // Started and completed: a booking starting in ten minutes.
    let soon = minute(Utc::now()) + chrono::Duration::minutes(10);
    let trip = app
        .confirmed(
            "eve",
            &vehicles[3],
            (soon, soon + chrono::Duration::hours(1)),
        )
        .await?;
    act(&app, "eve", &trip, "start", &Value::Null).await?;
    act(&app, "eve", &trip, "complete", &Value::Null).await?;

    // Blocked, moved and unblocked: a maintenance block of another vehicle.
    let blocks = format!("/v1/admin/vehicles/{}/blocks", vehicles[5]);
    let (b_start, b_end) = window(9, 3);
    let made = app
        .post(
            &blocks,
            Some(&ops_token("ops-eve")),
            &json!({ "start": b_start, "end": b_end, "reason": "service" }),
            None,
        )
        .await?;
    anyhow::ensure!(made.status.as_u16() == 201, "block: {made:?}");
    let block = format!(
        "{blocks}/{}",
        made.body["block"]["id"].as_str().unwrap_or_default()
    );
    let moved = app
        .put(
            &block,
            Some(&ops_token("ops-eve")),
            &json!({ "start": b_start, "end": b_end + chrono::Duration::hours(1), "reason": "service" }),
            None,
        )
        .await?;
    anyhow::ensure!(moved.status.as_u16() == 200, "move block: {moved:?}");
    let ended = app
        .delete(&block, Some(&ops_token("ops-eve")), None)
        .await?;
    anyhow::ensure!(ended.status.as_u16() == 200, "end block: {ended:?}");

    // Offered to a waiter: a booking with someone in line for its window is cancelled.
    let (w_start, w_end) = window(10, 2);
    let waited = app.confirmed("eve", &vehicles[6], (w_start, w_end)).await?;
    let joined = app
        .post(
            "/v1/waitlist",
            Some(&token("wes")),
            &json!({ "vehicle_id": vehicles[6], "start": w_start, "end": w_end }),
            None,
        )
        .await?;
    anyhow::ensure!(joined.status.as_u16() == 201, "waitlist: {joined:?}");
    act(&app, "eve", &waited, "cancel", &Value::Null).await?;

    // Failed: a hold whose expiry is moved into the past, ended by the sweeper.
    let hold = app.hold("eve", &vehicles[4], window(5, 1)).await?;
    anyhow::ensure!(hold.status.as_u16() == 201, "hold: {hold:?}");
    let lapsed = uuid_of(hold.body["id"].as_str().context("hold id")?)?;
    sqlx::query("update bookings set hold_expires_at = now() - interval '1 second' where id = $1")
        .bind(lapsed)
        .execute(&app.pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app
        .count(
            "outbox",
            &format!("aggregate_id = '{lapsed}' and topic = 'booking.failed'"),
        )
        .await?
        == 0
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sweeper did not end the hold"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    wait_until_published(&app.pool, Duration::from_secs(60)).await?;
    let rows = outbox(&app.pool).await?;
    let topics: HashSet<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(
        topics.len(),
        Topic::ALL.len(),
        "every topic has events: {topics:?}"
    );
    let wanted: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let received = consume(
        &brokers,
        Some(&start),
        &wanted,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await?;
    assert_delivered(&rows, &received, false);
    app.stop().await
}

/// A tansu of the test's own: its port, its data directory; killed on drop.
#[derive(Debug)]
struct OwnBroker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl OwnBroker {
    fn new() -> TestResult<Self> {
        let bin = match std::env::var_os("TANSU_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .context("neither CARGO_HOME nor HOME is set")?
                .join("bin/tansu"),
        };
        anyhow::ensure!(
            bin.is_file(),
            "tansu not found at {} (run scripts/broker.sh, which installs it, or set TANSU_BIN)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("find a free port")?
            .port();
        let dir = std::env::temp_dir().join(format!("e2e-tansu-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(OwnBroker {
            bin,
            dir,
            port,
            child: None,
        })
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (SQLite storage in its directory) and waits until it listens.
    async fn start(&mut self) -> TestResult {
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .context("open the broker log")?;
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.address())
            .await
            .is_err()
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "tansu did not listen on {} (log in {})",
                self.address(),
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILL: the broker gets no chance to finish anything (tansu 0.6.0 must not get
    /// SIGTERM with an idempotent producer connected; SIGKILL and SIGINT are safe).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn events_committed_while_the_broker_is_down_arrive_once_it_is_back(
    pool: PgPool,
) -> TestResult {
    let mut broker = OwnBroker::new()?;
    broker.start().await?;
    let address = broker.address();
    let app = spawn_app_with(
        pool,
        &[("KAFKA_BROKERS", address.as_str()), ("RELAY_POLL_MS", "50")],
    )
    .await?;
    let vehicles = app.vehicles("EUN").await?;
    bookings(&app, "bo", &vehicles[0..2], 3).await?;
    wait_until_published(&app.pool, Duration::from_secs(60)).await?;

    // Kill the broker in the middle of a run, while the relay is publishing it...
    let published_before = outbox(&app.pool).await?.len() as i64;
    let killer = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let published: i64 =
                sqlx::query_scalar("select count(*) from outbox where published_at is not null")
                    .fetch_one(&app.pool)
                    .await?;
            if published >= published_before + 4 || Instant::now() >= deadline {
                broker.kill();
                return TestResult::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::try_join!(bookings(&app, "bo", &vehicles[1..4], 10), killer)?;
    // ...and make more bookings while it is down: they wait in the outbox.
    bookings(&app, "bo", &vehicles[4..6], 3).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = unpublished(&app.pool).await?;
    assert!(
        waiting > 0,
        "rows stay unpublished while the broker is down"
    );

    broker.start().await?;
    wait_until_published(&app.pool, Duration::from_secs(120)).await?;
    let rows = outbox(&app.pool).await?;
    let wanted: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let received = consume(
        &address,
        None,
        &wanted,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await?;
    assert_delivered(&rows, &received, false);
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn two_relays_at_once_publish_each_event_once_in_order_per_vehicle(
    pool: PgPool,
) -> TestResult {
    let brokers = shared_brokers()?;
    let start = e2e::broker::end_offsets(&brokers)?;
    // The origin's own relay is off (no KAFKA_BROKERS): the two below are the only ones.
    let app = spawn_app(pool).await?;
    let stop = CancellationToken::new();
    // Small batches and a short lease: lanes change hands many times during the run.
    let settings = RelaySettings {
        batch: 3,
        poll: Duration::from_millis(20),
        lane_lease: Duration::from_millis(300),
        ..RelaySettings::new(brokers.clone())
    };
    let relays = [
        tokio::spawn(run_relay(app.pool.clone(), settings.clone(), stop.clone())),
        tokio::spawn(run_relay(app.pool.clone(), settings, stop.clone())),
    ];

    // Which sessions hold relay lanes, sampled while the relays work.
    let sampler = {
        let pool = app.pool.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut holders = HashSet::new();
            loop {
                let pids: Vec<i32> = sqlx::query_scalar(
                    "select distinct pid from pg_locks
                      where locktype = 'advisory' and classid::int8 = $1
                        and database = (select oid from pg_database where datname = current_database())",
                )
                .bind(i64::from(LOCK_NAMESPACE))
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                holders.extend(pids);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    () = stopped.cancelled() => break,
                }
            }
            holders
        })
    };

    let vehicles = app.vehicles("EUW").await?;
    bookings(&app, "tia", &vehicles[0..6], 3).await?;
    wait_until_published(&app.pool, Duration::from_secs(60)).await?;
    stop.cancel();
    for relay in relays {
        tokio::time::timeout(Duration::from_secs(20), relay)
            .await
            .context("a relay did not stop")??;
    }
    let holders = tokio::time::timeout(Duration::from_secs(5), sampler)
        .await
        .context("the lock sampler did not stop")??;
    assert!(
        holders.len() >= 2,
        "both relays held lanes at some point: {holders:?}"
    );

    let rows = outbox(&app.pool).await?;
    let wanted: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let received = consume(
        &brokers,
        Some(&start),
        &wanted,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await?;
    assert_delivered(&rows, &received, false);
    app.stop().await
}

/// Waits (bounded) until a session of this database waits on a lock (a row lock: the vehicle's
/// event-sequence row); fails if none does, so a test that needs a blocked writer cannot pass
/// with one that was never blocked.
async fn until_a_session_waits_on_a_lock(pool: &PgPool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await?;
        if waiting > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no session of this database waited on a lock within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An outbox row about `vehicle` (an event of no booking: the trigger numbers any row).
async fn insert_event(
    conn: &mut sqlx::PgConnection,
    id: Option<i64>,
    vehicle: &str,
) -> TestResult<(Uuid, i64)> {
    let event_id = Uuid::now_v7();
    let payload = json!({
        "event_id": event_id, "type": "vehicle.released", "region": "EUW",
        "booking": { "vehicle_id": vehicle },
    });
    let sequence: i64 = sqlx::query_scalar(
        "insert into outbox (id, event_id, topic, partition_key, aggregate_id, payload)
         values (coalesce($1, nextval('outbox_id_seq')), $2, 'vehicle.released', $3, $4, $5)
         returning sequence",
    )
    .bind(id)
    .bind(event_id)
    .bind(vehicle)
    .bind(Uuid::now_v7())
    .bind(&payload)
    .fetch_one(&mut *conn)
    .await?;
    Ok((event_id, sequence))
}

/// The old failure mode, forced: a transaction whose row has the *lower* outbox id commits
/// *after* another one of the same vehicle (ids are drawn at insert, not at commit). The
/// second writer waits for the first's commit to get its number, so the sequence follows the
/// commits, and the relay publishes by sequence: a relay ordering by id would send the later
/// commit first and fail this test.
#[sqlx::test(migrations = "../migrations")]
async fn a_later_commit_with_a_lower_outbox_id_gets_the_next_number_and_is_published_after(
    pool: PgPool,
) -> TestResult {
    let brokers = shared_brokers()?;
    let start = e2e::broker::end_offsets(&brokers)?;
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[0].clone();

    let mut first = app.pool.begin().await?;
    let (_, first_seq) = insert_event(&mut first, Some(2_000_001), &vehicle).await?;
    let second = {
        let (pool, vehicle) = (app.pool.clone(), vehicle.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await?;
            let numbered = insert_event(&mut tx, Some(2_000_000), &vehicle).await?;
            tx.commit().await?;
            anyhow::Ok(numbered)
        })
    };
    until_a_session_waits_on_a_lock(&app.pool).await?;
    assert!(!second.is_finished(), "the second writer did not wait");
    first.commit().await?;
    let (_, second_seq) = second.await??;
    assert_eq!((first_seq, second_seq), (1, 2));

    // A rolled-back transaction gives its number back: no hole for consumers to wait on.
    let mut rolled_back = app.pool.begin().await?;
    assert_eq!(insert_event(&mut rolled_back, None, &vehicle).await?.1, 3);
    rolled_back.rollback().await?;
    let mut conn = app.pool.acquire().await?;
    assert_eq!(insert_event(&mut conn, None, &vehicle).await?.1, 3);
    // Another vehicle counts on its own.
    let other = app.vehicles("EUW").await?[1].clone();
    assert_eq!(insert_event(&mut conn, None, &other).await?.1, 1);
    drop(conn);

    let stop = CancellationToken::new();
    let settings = RelaySettings {
        poll: Duration::from_millis(20),
        ..RelaySettings::new(brokers.clone())
    };
    let relay = tokio::spawn(run_relay(app.pool.clone(), settings, stop.clone()));
    wait_until_published(&app.pool, Duration::from_secs(60)).await?;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), relay)
        .await
        .context("the relay did not stop")??;
    let rows = outbox(&app.pool).await?;
    let wanted: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let received = consume(
        &brokers,
        Some(&start),
        &wanted,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await?;
    // Sequence order on the topic: id 2_000_001 (committed first) before 2_000_000.
    let ids: Vec<i64> = received
        .iter()
        .filter(|r| r.key == vehicle)
        .filter_map(|r| rows.iter().find(|o| o.event_id == r.event_id).map(|o| o.id))
        .take(2)
        .collect();
    assert_eq!(ids, vec![2_000_001, 2_000_000]);
    assert_delivered(&rows, &received, false);
    app.stop().await
}

/// Lock order: a vehicle's sequence row is locked before any of its bookings changes, so a
/// transaction that already wrote the vehicle's events never waits on the exclusion
/// constraint for a change that itself waits for the sequence row. Here the test's
/// transaction does what a hold's lazy expiry does (changes a booking of the vehicle and
/// writes its event) while a cancel of another booking of that vehicle waits; its insert
/// overlapping that booking is then refused at once (23P01) and the cancel goes through after
/// it. Were the row locked only by the outbox insert (checked by dropping the bookings
/// trigger: this test then fails), the cancel would already have changed its booking and wait
/// for the row while the insert waits for the cancel: a deadlock, and PostgreSQL aborts one
/// of them (40P01).
#[sqlx::test(migrations = "../migrations")]
async fn a_transaction_holding_a_vehicles_events_does_not_deadlock_with_a_change_waiting_on_it(
    pool: PgPool,
) -> TestResult {
    let app = spawn_app(pool).await?;
    let vehicle = app.vehicles("EUW").await?[0].clone();
    let first = app.hold("ann", &vehicle, window(3, 2)).await?;
    let second = app.hold("bob", &vehicle, window(5, 2)).await?;
    anyhow::ensure!(
        first.status.as_u16() == 201 && second.status.as_u16() == 201,
        "holds: {first:?} {second:?}"
    );
    let (first, second) = (
        first.body["id"].as_str().context("id")?.to_owned(),
        second.body["id"].as_str().context("id")?.to_owned(),
    );

    let mut holder = app.pool.begin().await?;
    // What a hold's lazy expiry does first: change a booking of the vehicle, write its event.
    sqlx::query("update bookings set updated_at = updated_at where id = $1")
        .bind(uuid_of(&first)?)
        .execute(&mut *holder)
        .await?;
    insert_event(&mut holder, None, &vehicle).await?;
    let cancel = {
        let (base, id) = (app.base.clone(), second.clone());
        tokio::spawn(async move {
            let reply = reqwest::Client::new()
                .post(format!("{base}/v1/bookings/{id}/cancel"))
                .bearer_auth(token("bob"))
                .header("idempotency-key", Uuid::new_v4().to_string())
                .send()
                .await?;
            anyhow::Ok(reply.status().as_u16())
        })
    };
    until_a_session_waits_on_a_lock(&app.pool).await?;
    let overlapping = sqlx::query(
        "insert into bookings (id, region, vehicle_id, user_id, bay_id, period, status, currency,
                               price_minor, breakdown, quote_id, created_at, updated_at)
         select $2, region, vehicle_id, 'rex', bay_id, period, 'CONFIRMED', currency,
                price_minor, breakdown, $2, now(), now()
           from bookings where id = $1",
    )
    .bind(uuid_of(&second)?)
    .bind(Uuid::now_v7())
    .execute(&mut *holder)
    .await;
    let code = match &overlapping {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(
        code.as_deref(),
        Some("23P01"),
        "the overlapping insert: {overlapping:?}"
    );
    holder.rollback().await?;
    assert_eq!(cancel.await??, 200, "the waiting cancel");
    app.stop().await
}
