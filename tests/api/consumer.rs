//! The event consumers: the framework (dedupe across a crash, poison records to the dead-letter
//! topic) and the availability consumer (bookings reach the GEO index's occupancy within a
//! second, with the periodic rebuild off).
//!
//! The broker is the shared one (`KAFKA_BROKERS`), whose topics carry every other test's events
//! too: each consumer here has a group of its own (a new group starts at the topics' ends) and
//! its handler acts only on the events this test made.

use std::time::{Duration, Instant};

use anyhow::Context;
use domain::region::Region;
use domain::search::GeoPoint;
use domain::window::TimeWindow;
use domain::VehicleId;
use e2e::recorder::{consumed, Recorder, CONSUMED_DDL};
use e2e::*;
use origin::config::{RedisConfig, Secret, VehicleLockMode};
use origin::events::consumer::{self, ConsumerSettings, ConsumerStats, DEAD_LETTER_TOPIC};
use origin::redis::availability::Availability;
use origin::redis::link::RedisLink;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn brokers() -> TestResult<String> {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .context("KAFKA_BROKERS is not set: run `bash scripts/broker.sh` (scripts/test.sh does)")
}

fn producer(brokers: &str) -> TestResult<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()?)
}

/// Publishes a well-formed `vehicle.reserved` event about `vehicle`, as the relay would.
async fn publish(
    producer: &FutureProducer,
    vehicle: &str,
    event_id: Uuid,
    sequence: i64,
) -> TestResult {
    let payload =
        json!({ "event_id": event_id, "type": "vehicle.reserved", "region": "EUW" }).to_string();
    send(
        producer,
        vehicle,
        &payload,
        &[
            ("event_id", &event_id.to_string()),
            ("sequence", &sequence.to_string()),
        ],
    )
    .await
}

async fn send(
    producer: &FutureProducer,
    key: &str,
    payload: &str,
    headers: &[(&str, &str)],
) -> TestResult {
    let mut h = OwnedHeaders::new();
    for (key, value) in headers {
        h = h.insert(Header {
            key,
            value: Some(*value),
        });
    }
    producer
        .send(
            FutureRecord::to("vehicle.reserved")
                .key(key)
                .payload(payload)
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("publish: {e}"))?;
    Ok(())
}

async fn wait_ready(running: &mut consumer::Running) -> TestResult {
    tokio::time::timeout(Duration::from_secs(60), running.ready.wait_for(|r| *r))
        .await
        .context("the consumer was not assigned partitions within 60 s")??;
    Ok(())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_consumer_killed_mid_stream_and_restarted_processes_every_event_once(
    pool: PgPool,
) -> TestResult {
    const EVENTS: usize = 60;
    let brokers = brokers()?;
    sqlx::query(CONSUMED_DDL).execute(&pool).await?;
    let group = format!("e2e-dedupe-{}", Uuid::new_v4().simple());
    let vehicle = format!("veh_euw_{}", Uuid::new_v4().simple());
    // Static membership: the restarted consumer is the same member, as a restarted pod is.
    let instance = format!("e2e-instance-{}", Uuid::new_v4().simple());
    let options = pool.connect_options();
    let database_url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    );

    // The first consumer is a process of its own, killed with SIGKILL mid-stream: it never
    // commits (commit interval of an hour) and never leaves the group.
    let mut probe = tokio::process::Command::new(env!("CARGO_BIN_EXE_consumer-probe"))
        .env("PROBE_BROKERS", &brokers)
        .env("PROBE_DATABASE_URL", &database_url)
        .env("PROBE_GROUP", &group)
        .env("PROBE_VEHICLE", &vehicle)
        .env("PROBE_DELAY_MS", "25")
        .env("PROBE_COMMIT_MS", "3600000")
        .env("PROBE_INSTANCE", &instance)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the consumer probe")?;
    let stdout = probe.stdout.take().context("probe stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the probe was not assigned partitions within 60 s")??;
    anyhow::ensure!(ready.as_deref() == Some("ready"), "probe said {ready:?}");

    let producer = producer(&brokers)?;
    for n in 0..EVENTS {
        publish(&producer, &vehicle, Uuid::now_v7(), n as i64 + 1).await?;
    }
    // Kill it after a third, long before the end (25 ms per event).
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed(&pool).await?.0 < (EVENTS / 3) as i64 {
        anyhow::ensure!(Instant::now() < deadline, "the probe processed too little");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    probe.start_kill()?;
    probe.wait().await?;
    let before_kill = consumed(&pool).await?.0;
    anyhow::ensure!(
        (before_kill as usize) < EVENTS,
        "the kill came after the whole stream ({before_kill} processed): the scenario is void"
    );

    // Restarted (same group): once the group gives up on the dead member (its session
    // timeout), the uncommitted tail comes again and is recognised.
    let stop = CancellationToken::new();
    let handler = Recorder {
        vehicle: vehicle.clone(),
        delay: Duration::ZERO,
    };
    let mut settings = ConsumerSettings::new(&brokers, &group);
    settings.commit_interval = Duration::from_millis(200);
    settings.instance_id = Some(instance);
    let (mut second, task) = consumer::start(pool.clone(), settings, handler, stop.clone()).await?;
    wait_ready(&mut second).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while consumed(&pool).await?.1 < EVENTS as i64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {:?} of {EVENTS} events processed after the restart",
            consumed(&pool).await?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rows, distinct) = consumed(&pool).await?;
    assert_eq!(
        (rows, distinct),
        (EVENTS as i64, EVENTS as i64),
        "every event processed exactly once"
    );
    let duplicates = ConsumerStats::get(&second.stats.duplicates);
    let processed = ConsumerStats::get(&second.stats.processed);
    eprintln!("killed after {before_kill}; after the restart: {processed} processed, {duplicates} redeliveries skipped");
    assert_eq!(
        duplicates, before_kill as u64,
        "the redelivered tail (what the killed consumer processed but never committed) is counted as duplicates"
    );
    assert_eq!(
        before_kill as u64 + processed,
        EVENTS as u64,
        "the two runs split the stream"
    );
    let recorded: i64 =
        sqlx::query_scalar("select count(*) from processed_events where consumer = $1")
            .bind(&group)
            .fetch_one(&pool)
            .await?;
    assert_eq!(recorded, EVENTS as i64);
    stop.cancel();
    task.await?;
    Ok(())
}

/// The records of the dead-letter topic from `from` on, read for `within`.
fn dead_letters(
    brokers: &str,
    from: &[(i32, i64)],
    marker: &str,
    want: usize,
    within: Duration,
) -> TestResult<Vec<(String, String)>> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-dlq-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut partitions = TopicPartitionList::new();
    for (p, offset) in from {
        partitions.add_partition_offset(DEAD_LETTER_TOPIC, *p, Offset::Offset(*offset))?;
    }
    reader.assign(&partitions)?;
    let deadline = Instant::now() + within;
    let mut found = Vec::new();
    while Instant::now() < deadline && found.len() < want {
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let payload = message
            .payload()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        if !payload.contains(marker) {
            continue;
        }
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "dead_letter_reason"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        found.push((payload, reason));
    }
    Ok(found)
}

fn dead_letter_ends(brokers: &str) -> TestResult<Vec<(i32, i64)>> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-dlq-ends-{}", Uuid::new_v4()))
        .create()?;
    let metadata = reader.fetch_metadata(Some(DEAD_LETTER_TOPIC), Duration::from_secs(10))?;
    let mut ends = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = reader.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?;
            ends.push((p.id(), high));
        }
    }
    anyhow::ensure!(!ends.is_empty(), "the dead-letter topic has no partitions");
    Ok(ends)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_poison_record_lands_in_the_dead_letter_topic_and_the_partition_keeps_flowing(
    pool: PgPool,
) -> TestResult {
    let brokers = brokers()?;
    sqlx::query(CONSUMED_DDL).execute(&pool).await?;
    let vehicle = format!("veh_euw_{}", Uuid::new_v4().simple());
    let handler = Recorder {
        vehicle: vehicle.clone(),
        delay: Duration::ZERO,
    };
    let settings = ConsumerSettings::new(&brokers, format!("e2e-dlq-{}", Uuid::new_v4().simple()));
    let stop = CancellationToken::new();
    // Starting creates the dead-letter topic.
    let (mut running, task) =
        consumer::start(pool.clone(), settings, handler, stop.clone()).await?;
    wait_ready(&mut running).await?;
    let from = dead_letter_ends(&brokers)?;

    // One key, so one partition and one order: good, three kinds of poison, good.
    let marker = Uuid::new_v4().simple().to_string();
    let (before, after) = (Uuid::now_v7(), Uuid::now_v7());
    let (mismatch, bad_header) = (Uuid::now_v7(), Uuid::now_v7());
    let producer = producer(&brokers)?;
    publish(&producer, &vehicle, before, 1).await?;
    let not_json = format!("{{not json {marker}");
    send(
        &producer,
        &vehicle,
        &not_json,
        &[("event_id", &Uuid::now_v7().to_string()), ("sequence", "2")],
    )
    .await?;
    let wrong_type =
        json!({ "event_id": mismatch, "type": "vehicle.teleported", "marker": marker }).to_string();
    send(
        &producer,
        &vehicle,
        &wrong_type,
        &[("event_id", &mismatch.to_string()), ("sequence", "3")],
    )
    .await?;
    let no_sequence =
        json!({ "event_id": bad_header, "type": "vehicle.reserved", "marker": marker }).to_string();
    send(
        &producer,
        &vehicle,
        &no_sequence,
        &[("event_id", &bad_header.to_string())],
    )
    .await?;
    publish(&producer, &vehicle, after, 5).await?;

    // The partition kept flowing: the event after the poison was processed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<Uuid> = sqlx::query_scalar("select event_id from consumed")
            .fetch_all(&pool)
            .await?;
        if seen.contains(&after) {
            assert!(seen.contains(&before));
            assert!(
                !seen.contains(&mismatch) && !seen.contains(&bad_header),
                "poison was never handled"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the event after the poison was never processed: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let brokers_for_read = brokers.clone();
    let marker_for_read = marker.clone();
    let letters = tokio::task::spawn_blocking(move || {
        dead_letters(
            &brokers_for_read,
            &from,
            &marker_for_read,
            3,
            Duration::from_secs(20),
        )
    })
    .await??;
    let reasons: Vec<&str> = letters.iter().map(|(_, r)| r.as_str()).collect();
    eprintln!("dead letters: {reasons:?}");
    assert_eq!(
        letters.len(),
        3,
        "all three poison records are in the dead-letter topic: {letters:?}"
    );
    assert!(reasons
        .iter()
        .any(|r| r.starts_with("payload is not a JSON object")));
    assert!(reasons.iter().any(|r| r.contains("type")));
    assert!(reasons.iter().any(|r| r.contains("sequence header")));
    assert!(ConsumerStats::get(&running.stats.dead_lettered) >= 3);
    stop.cancel();
    task.await?;
    Ok(())
}

/// The availability index of an app (its Redis, its prefix, its database).
async fn index_of(app: &TestApp) -> TestResult<Availability> {
    let config = RedisConfig {
        url: Secret(app.redis_url.clone().into_bytes()),
        mode: app.redis_mode.clone(),
        key_prefix: app.redis_prefix.clone(),
        command_timeout: Duration::from_millis(500),
        lock_ttl: Duration::from_secs(5),
        lock_wait: Duration::from_millis(50),
        vehicle_lock: VehicleLockMode::On,
        availability_rebuild: Duration::from_secs(3600),
    };
    let link = RedisLink::connect(&config).await?;
    anyhow::ensure!(link.is_up(), "this test needs Redis at {}", app.redis_url);
    Ok(Availability::new(
        link,
        app.pool.clone(),
        &[Region::Euw, Region::Eun],
    ))
}

/// Whether the index offers `vehicle` for `window` (a 1 km search around its bay).
async fn indexed_free(
    index: &Availability,
    pool: &PgPool,
    vehicle: &VehicleId,
    (start, end): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> TestResult<bool> {
    let (lat, lon): (f64, f64) = sqlx::query_as(
        "select b.lat, b.lon from vehicles v join parking_bays b on b.id = v.bay_id where v.id = $1",
    )
    .bind(vehicle.uuid)
    .fetch_one(pool)
    .await?;
    let window = TimeWindow::new(start, end)?;
    let found = index
        .candidates(
            GeoPoint::new(lat, lon)?,
            1_000,
            5_000,
            &window,
            chrono::Utc::now(),
        )
        .await
        .context("the index could not answer")?;
    Ok(found.contains(&vehicle.uuid))
}

/// Waits until `indexed_free` is `want`; returns how long it took.
async fn until_indexed(
    index: &Availability,
    pool: &PgPool,
    vehicle: &VehicleId,
    window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    want: bool,
    within: Duration,
) -> TestResult<Option<Duration>> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if indexed_free(index, pool, vehicle, window).await? == want {
            return Ok(Some(t0.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

async fn consumer_state(app: &TestApp) -> TestResult<serde_json::Value> {
    let ready = app.get("/readyz", None).await?;
    Ok(ready.body["consumer"].clone())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_booking_leaves_the_index_for_its_window_within_a_second_through_the_consumer(
    pool: PgPool,
) -> TestResult {
    let brokers = brokers()?;
    let app = spawn_app_with(
        pool,
        &[
            ("KAFKA_BROKERS", &brokers),
            ("EVENT_CONSUMER", "1"),
            ("RELAY_POLL_MS", "20"),
            // No reconciliation during the test: only the consumer can change the index.
            ("AVAILABILITY_REBUILD_SECS", "3600"),
        ],
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer_state(&app).await?["state"] != "assigned" {
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumer never assigned: {}",
            consumer_state(&app).await?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let index = index_of(&app).await?;
    let vehicle_public = app.vehicles("EUW").await?[0].clone();
    let vehicle: VehicleId = vehicle_public.parse()?;
    let booked = window(3, 2);
    let other = window(6, 2);
    assert!(
        indexed_free(&index, &app.pool, &vehicle, booked).await?,
        "free before the booking"
    );

    let hold = app.hold("ann", &vehicle_public, booked).await?;
    assert_eq!(hold.status.as_u16(), 201, "{:?}", hold.body);
    let gone = until_indexed(
        &index,
        &app.pool,
        &vehicle,
        booked,
        false,
        Duration::from_secs(5),
    )
    .await?;
    eprintln!("hold → out of the index for its window after {gone:?}");
    let gone = gone.context("the held vehicle stayed in the index for its window")?;
    assert!(gone <= Duration::from_secs(1), "took {gone:?}");
    assert!(
        indexed_free(&index, &app.pool, &vehicle, other).await?,
        "a window the booking does not touch still offers the vehicle"
    );

    let id = hold.body["id"].as_str().context("booking id")?;
    let cancel = app
        .post(
            &format!("/v2/bookings/{id}/cancel"),
            Some(&token("ann")),
            &serde_json::Value::Null,
            Some(&Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(cancel.status.as_u16(), 200, "{:?}", cancel.body);
    let back = until_indexed(
        &index,
        &app.pool,
        &vehicle,
        booked,
        true,
        Duration::from_secs(5),
    )
    .await?;
    eprintln!("cancel → back in the index after {back:?}");
    let back = back.context("the cancelled booking's window stayed taken in the index")?;
    assert!(back <= Duration::from_secs(1), "took {back:?}");
    // The hold's and the cancellation's events (booking.created, vehicle.reserved,
    // booking.cancelled, vehicle.released) all processed, none twice. (The index can show a
    // change before the counter does: the counter moves when the event's transaction commits.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = consumer_state(&app).await?;
    while status["processed"].as_u64().unwrap_or(0) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = consumer_state(&app).await?;
    }
    assert!(
        status["processed"].as_u64().is_some_and(|n| n >= 4),
        "{status}"
    );
    assert_eq!(status["dead_lettered"], 0, "{status}");
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn without_the_consumer_a_booking_stays_in_the_index_until_a_rebuild(
    pool: PgPool,
) -> TestResult {
    // The same booking with the consumer off: the index does not move by itself, so the test
    // above measures the consumer, not something else.
    let app = spawn_app_with(pool, &[("AVAILABILITY_REBUILD_SECS", "3600")]).await?;
    assert_eq!(consumer_state(&app).await?["state"], "off");
    let index = index_of(&app).await?.with_occupancy(true);
    let vehicle_public = app.vehicles("EUW").await?[0].clone();
    let vehicle: VehicleId = vehicle_public.parse()?;
    let booked = window(3, 2);
    let hold = app.hold("ann", &vehicle_public, booked).await?;
    assert_eq!(hold.status.as_u16(), 201, "{:?}", hold.body);
    let gone = until_indexed(
        &index,
        &app.pool,
        &vehicle,
        booked,
        false,
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(
        gone, None,
        "nothing but the consumer (or a rebuild) updates the occupancy"
    );
    // A rebuild that mirrors occupancy reconciles, and reports the entry it had to fix.
    let report = index.rebuild(Region::Euw).await?;
    assert_eq!(report.drift, 1, "{report:?}");
    assert!(!indexed_free(&index, &app.pool, &vehicle, booked).await?);
    assert_eq!(
        index.rebuild(Region::Euw).await?.drift,
        0,
        "nothing left to fix"
    );
    app.stop().await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_candidate_step_answers_with_thousands_of_vehicles_in_the_radius(
    pool: PgPool,
) -> TestResult {
    // The script reads the occupancy of every vehicle it looks at (twice the budget, 10 000):
    // more values than one Lua `unpack` takes, so it reads them in chunks.
    let app = spawn_app_with(pool, &[("AVAILABILITY_REBUILD_SECS", "3600")]).await?;
    let index = index_of(&app).await?;
    let mut conn = test_redis::connect(&app.redis_url).await?;
    let mut add = redis::cmd("GEOADD");
    add.arg(index.geo_key(Region::Euw));
    for n in 0..9_000u32 {
        let (lon, lat) = (
            8.68 + f64::from(n % 100) * 1e-4,
            50.11 + f64::from(n / 100) * 1e-4,
        );
        add.arg(lon)
            .arg(lat)
            .arg(Uuid::new_v4().simple().to_string());
    }
    add.query_async::<()>(&mut conn).await?;
    let w = window(2, 2);
    let found = index
        .candidates(
            GeoPoint::new(50.11, 8.68)?,
            5_000,
            5_000,
            &TimeWindow::new(w.0, w.1)?,
            chrono::Utc::now(),
        )
        .await
        .context("the index answered nothing (the script failed?)")?;
    assert_eq!(found.len(), 5_000, "the budget, filled with free vehicles");
    app.stop().await
}
