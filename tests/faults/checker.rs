//! The checker must be able to fail: each check of `e2e::history` is shown to fire on a
//! planted violation (and, where that is meaningful, only it), and to stay quiet on a clean
//! history of real operations. Every test records real requests to a real origin on its own
//! database (`#[sqlx::test]`), then plants the violation in the database, the broker or the
//! origin's behaviour, and runs the checker.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use e2e::history::{attempt, check_with, read, Call, History, Kind, Op, Options, Report};
use e2e::{spawn_app_with, uuid_of, window, TestApp, TestResult};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A real origin and a recorded history of requests to it.
struct Bench {
    app: TestApp,
    history: History,
    http: reqwest::Client,
    /// Where the shared broker's partitions ended when the test began.
    since: std::collections::HashMap<(String, i32), i64>,
}

/// One window as a pair.
type Window = (DateTime<Utc>, DateTime<Utc>);

impl Bench {
    /// An origin on `pool`; `relay` turns its outbox relay on (to the shared broker); `events`
    /// marks where the broker's partitions end now, for a test that reads them.
    async fn start(
        pool: PgPool,
        relay: bool,
        events: bool,
        overrides: &[(&str, &str)],
    ) -> TestResult<Bench> {
        let brokers = brokers();
        let mut all: Vec<(&str, &str)> = overrides.to_vec();
        if relay {
            all.push(("KAFKA_BROKERS", brokers.as_str()));
        }
        let app = spawn_app_with(pool, &all).await?;
        let since = if events {
            let brokers = brokers.clone();
            tokio::task::spawn_blocking(move || e2e::broker::end_offsets(&brokers)).await??
        } else {
            Default::default()
        };
        Ok(Bench {
            app,
            history: History::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            since,
        })
    }

    /// An origin (relay off) with one acknowledged hold by Ann: the bench, the vehicle and the
    /// booking id.
    async fn with_hold(pool: PgPool, events: bool) -> TestResult<(Bench, String, String)> {
        let b = Bench::start(pool, false, events, &[]).await?;
        let vehicle = b.app.vehicles("EUW").await?[0].clone();
        let (_, id) = b.hold("ann", &vehicle, window(3, 2)).await?;
        Ok((b, vehicle, id))
    }

    /// A fresh quote's hold request: its body and the detail the history records.
    async fn hold_request(
        &self,
        user: &str,
        vehicle: &str,
        w: Window,
    ) -> TestResult<(Value, Value)> {
        let quote = self.app.quote(user, vehicle, w).await?;
        Ok((
            json!({ "quote_token": quote["quote_token"] }),
            json!({ "start": w.0, "end": w.1, "quote_id": quote["quote_id"] }),
        ))
    }

    /// Sends a hold request with `key`, recorded.
    async fn send_hold(&self, user: &str, vehicle: &str, req: &(Value, Value), key: &str) -> Op {
        let call = Call {
            kind: Kind::Hold,
            user,
            path: "/v1/bookings",
            body: &req.0,
            target: vehicle,
            detail: req.1.clone(),
        };
        attempt(&self.http, &self.history, &self.app.base, 0, &call, key).await
    }

    /// Quote, then hold with `key`, recorded.
    async fn hold_keyed(&self, user: &str, vehicle: &str, w: Window, key: &str) -> TestResult<Op> {
        let req = self.hold_request(user, vehicle, w).await?;
        Ok(self.send_hold(user, vehicle, &req, key).await)
    }

    /// Quote, then hold, recorded; the answer must be 201.
    async fn hold(&self, user: &str, vehicle: &str, w: Window) -> TestResult<(Op, String)> {
        let op = self
            .hold_keyed(user, vehicle, w, &Uuid::new_v4().to_string())
            .await?;
        anyhow::ensure!(op.status == Some(201), "hold: {op:?}");
        let id = op.body["id"].as_str().context("booking id")?.to_owned();
        Ok((op, id))
    }

    /// `POST /v1/bookings/{booking}/{verb}` with a fresh key, recorded.
    async fn act(&self, kind: Kind, user: &str, booking: &str, body: Value) -> Op {
        let verb = match kind {
            Kind::Confirm => "confirm",
            Kind::Cancel => "cancel",
            _ => "extend",
        };
        let path = format!("/v1/bookings/{booking}/{verb}");
        let detail = if kind == Kind::Extend {
            body["end"].clone()
        } else {
            Value::Null
        };
        let call = Call {
            kind,
            user,
            path: &path,
            body: &body,
            target: booking,
            detail,
        };
        let key = Uuid::new_v4().to_string();
        attempt(&self.http, &self.history, &self.app.base, 0, &call, &key).await
    }

    async fn read(&self, user: &str, booking: &str) -> Op {
        read(&self.http, &self.history, &self.app.base, 0, user, booking).await
    }

    /// Options for this test: the shared broker from the test's start, only its bookings.
    fn options(&self, read_events: bool) -> Options {
        let mut o = Options::new(
            &brokers(),
            Duration::from_millis(200),
            Duration::from_secs(10),
        );
        o.since = Some(self.since.clone());
        o.only_known_bookings = true;
        o.read_events = read_events;
        o
    }

    async fn check(&self, options: &Options) -> TestResult<Report> {
        check_with(&self.history.ops(), &self.app.pool, options).await
    }

    /// The outbox rows (sequence, event id, topic, partition key, payload), in id order.
    async fn outbox(&self) -> TestResult<Vec<OutboxRow>> {
        Ok(sqlx::query_as(
            "select sequence, event_id, topic, partition_key, payload from outbox order by id",
        )
        .fetch_all(&self.app.pool)
        .await?)
    }

    async fn sql(&self, statement: &str, booking: &str) -> TestResult {
        sqlx::query(statement)
            .bind(uuid_of(booking)?)
            .execute(&self.app.pool)
            .await?;
        Ok(())
    }
}

type OutboxRow = (i64, Uuid, String, String, Value);

/// Publishes rows as the relay would (key, payload, `event_id` and `sequence` headers), in the
/// order given, all to partition 0 so the order given is the order read.
async fn publish(rows: &[OutboxRow]) -> TestResult {
    let brokers = brokers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .context("admin client")?;
    let topics: Vec<NewTopic> = origin::events::Topic::ALL
        .iter()
        .map(|t| NewTopic::new(t.as_str(), 3, TopicReplication::Fixed(1)))
        .collect();
    // Already there is fine: only their existence matters.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .context("producer")?;
    for (sequence, event_id, topic, key, payload) in rows {
        let (event_id, sequence, payload) = (
            event_id.to_string(),
            sequence.to_string(),
            payload.to_string(),
        );
        let record = FutureRecord::to(topic)
            .key(key)
            .partition(0)
            .payload(&payload)
            .headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "event_id",
                        value: Some(event_id.as_str()),
                    })
                    .insert(Header {
                        key: "sequence",
                        value: Some(sequence.as_str()),
                    }),
            );
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .context("publish")?;
    }
    Ok(())
}

/// Exactly these counters fired (each > 0), no other.
fn assert_fired(report: &Report, expected: &[&str]) {
    let mut fired = report.fired();
    fired.sort_unstable();
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(fired, expected, "{:#?}", report.problems);
    assert!(!report.clean());
}

/// A history of real operations — holds, a 409 on a taken window, a quote held twice, a
/// confirm, an extend, a cancel, a replayed key, reads after each — through a real origin whose relay publishes to
/// the broker, is clean: no check fires on a correct system, and events were really read.
#[sqlx::test(migrations = "../migrations")]
async fn a_clean_history_of_real_operations_gives_a_clean_report(pool: PgPool) -> TestResult {
    let b = Bench::start(pool, true, true, &[]).await?;
    let vehicles = b.app.vehicles("EUW").await?;
    let (v1, v2) = (&vehicles[0], &vehicles[1]);
    // Bob's quote comes first: once Ann holds, quoting that window is refused already.
    let bob = b.hold_request("bob", v1, window(3, 1)).await?;
    let req = b.hold_request("ann", v1, window(3, 2)).await?;
    let first = b.send_hold("ann", v1, &req, "k-ann").await;
    anyhow::ensure!(first.status == Some(201), "{first:?}");
    let id1 = first.body["id"].as_str().context("id")?.to_owned();
    // The same key again: a replay, equal to the first answer.
    let replay = b.send_hold("ann", v1, &req, "k-ann").await;
    anyhow::ensure!(replay.replayed && replay.body == first.body, "{replay:?}");
    // The origin hands the same caller the same quote for 60 s: a second key holding it is
    // refused (quote used) — that quote's booking is the first key's, not this key's effect.
    let second = b.send_hold("ann", v1, &req, "k-ann-again").await;
    anyhow::ensure!(second.status == Some(409), "{second:?}");
    b.read("ann", &id1).await;
    // A taken window: a definite 409 that must leave nothing.
    let taken = b.send_hold("bob", v1, &bob, "k-bob").await;
    anyhow::ensure!(taken.status == Some(409), "{taken:?}");
    assert_eq!(
        b.act(Kind::Confirm, "ann", &id1, Value::Null).await.status,
        Some(200)
    );
    let new_end = window(3, 2).1 + chrono::Duration::hours(1);
    let extend = b
        .act(Kind::Extend, "ann", &id1, json!({ "end": new_end }))
        .await;
    anyhow::ensure!(extend.status == Some(200), "{extend:?}");
    b.read("ann", &id1).await;
    let (_, id2) = b.hold("cat", v2, window(4, 1)).await?;
    assert_eq!(
        b.act(Kind::Confirm, "cat", &id2, Value::Null).await.status,
        Some(200)
    );
    assert_eq!(
        b.act(Kind::Cancel, "cat", &id2, Value::Null).await.status,
        Some(200)
    );
    b.read("cat", &id2).await;
    // The window the cancel freed is bookable again.
    b.hold("dan", v2, window(4, 1)).await?;
    // Wait for the relay to publish everything.
    for _ in 0..100 {
        let pending = b.app.count("outbox", "published_at is null").await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = b.check(&b.options(true)).await?;
    assert!(report.clean(), "{:#?}", report.problems);
    assert!(report.acknowledged_ops >= 7, "{report:?}");
    assert!(report.failed_ops >= 1 && report.reads >= 3, "{report:?}");
    assert!(report.events_committed >= 10, "{report:?}");
    assert!(
        report.events_consumed >= report.events_committed,
        "{report:?}"
    );
    b.app.stop().await
}

/// (a): with the exclusion constraint dropped, contended holds of one vehicle and window are
/// all acknowledged; the checker reports the double booking from the acks alone
/// (`overlaps_acked`) and from the history (`overlaps_db`).
#[sqlx::test(migrations = "../migrations")]
async fn contended_holds_without_the_exclusion_constraint_are_reported_as_overlaps(
    pool: PgPool,
) -> TestResult {
    sqlx::query("alter table bookings drop constraint bookings_no_overlap")
        .execute(&pool)
        .await?;
    let b = Bench::start(pool, false, false, &[]).await?;
    let vehicle = b.app.vehicles("EUW").await?[0].clone();
    let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    let keys: Vec<String> = users.iter().map(|_| Uuid::new_v4().to_string()).collect();
    let holds = users
        .iter()
        .zip(&keys)
        .map(|(u, k)| b.hold_keyed(u, &vehicle, window(3, 2), k));
    let mut acked = futures_util::future::join_all(holds)
        .await
        .into_iter()
        .filter(|r| r.as_ref().is_ok_and(|op| op.acknowledged()))
        .count();
    // The vehicle lock may turn some contenders away: more, one at a time, until two got in.
    for i in 0..6 {
        if acked >= 2 {
            break;
        }
        let op = b
            .hold_keyed(
                &format!("late-{i}"),
                &vehicle,
                window(3, 2),
                &Uuid::new_v4().to_string(),
            )
            .await?;
        acked += usize::from(op.acknowledged());
    }
    anyhow::ensure!(acked >= 2, "the origin refused every second hold");
    let report = b.check(&b.options(false)).await?;
    assert!(report.overlaps_acked >= acked - 1, "{report:?}");
    assert_fired(&report, &["overlaps_acked", "overlaps_db"]);
    // From the acks alone: with every acknowledged booking but one gone from the database
    // (history and outbox too), the database shows no overlap any more, the acks still do.
    sqlx::query(
        "with keep as (select id from bookings order by id limit 1),
              o as (delete from outbox where aggregate_id not in (select id from keep)),
              h as (delete from booking_history where booking_id not in (select id from keep))
         select 1",
    )
    .execute(&b.app.pool)
    .await?;
    sqlx::query(
        "delete from bookings where id not in (select id from bookings order by id limit 1)",
    )
    .execute(&b.app.pool)
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert!(report.overlaps_acked >= 1, "{report:?}");
    assert_eq!(report.overlaps_db, 0, "{report:?}");
    assert_fired(&report, &["overlaps_acked", "lost_acknowledged_writes"]);
    b.app.stop().await
}

/// (b): an acknowledged hold and confirm whose booking was deleted are lost writes.
#[sqlx::test(migrations = "../migrations")]
async fn a_deleted_acknowledged_booking_is_reported_as_lost_writes(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    assert_eq!(
        b.act(Kind::Confirm, "ann", &id, Value::Null).await.status,
        Some(200)
    );
    b.sql("delete from outbox where aggregate_id = $1", &id)
        .await?;
    b.sql("delete from booking_history where booking_id = $1", &id)
        .await?;
    b.sql("delete from bookings where id = $1", &id).await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.lost_acknowledged_writes, 2, "{:#?}", report.problems);
    assert_fired(&report, &["lost_acknowledged_writes"]);
    b.app.stop().await
}

/// (b), (d): an acknowledged hold whose window was changed in the database is not the
/// acknowledged write (and no longer the attempted hold).
#[sqlx::test(migrations = "../migrations")]
async fn a_changed_acknowledged_window_is_reported(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    b.sql(
        "update bookings set period = tstzrange(lower(period), upper(period) + interval '1 hour', '[)')
          where id = $1",
        &id,
    )
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.lost_acknowledged_writes, 1, "{:#?}", report.problems);
    assert_fired(&report, &["lost_acknowledged_writes", "phantom_bookings"]);
    b.app.stop().await
}

/// (d): a booking no client attempted (with its history and outbox rows, so nothing else is
/// off) is a phantom.
#[sqlx::test(migrations = "../migrations")]
async fn a_booking_no_client_attempted_is_reported_as_a_phantom(pool: PgPool) -> TestResult {
    let (b, _, _) = Bench::with_hold(pool, false).await?;
    sqlx::query(
        "with v as (select id, region, bay_id from vehicles where region = 'EUW' order by id offset 3 limit 1),
              b as (insert into bookings (id, region, vehicle_id, user_id, bay_id, period, status, currency,
                                          price_minor, breakdown, quote_id, hold_expires_at)
                    select $1, v.region, v.id, 'mallory', v.bay_id,
                           tstzrange(now() + interval '5 days', now() + interval '5 days 2 hours', '[)'),
                           'RESERVING', 'EUR', 100, '[]'::jsonb, $2, now() + interval '1 hour'
                      from v returning id),
              h as (insert into booking_history (booking_id, from_status, to_status, event, actor)
                    select id, 'PRICE_QUOTED', 'RESERVING', 'hold', 'mallory' from b)
         insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
         select x.e, x.t, 'veh', b.id, '{\"booking\": {\"status\": \"RESERVING\"}}'::jsonb
           from b, (values ($3::uuid, 'booking.created'), ($4::uuid, 'vehicle.reserved')) as x(e, t)",
    )
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .execute(&b.app.pool)
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.phantom_bookings, 1, "{:#?}", report.problems);
    assert_fired(&report, &["phantom_bookings"]);
    b.app.stop().await
}

/// (e): a row whose status no longer matches its last history state.
#[sqlx::test(migrations = "../migrations")]
async fn a_status_out_of_step_with_its_history_is_reported(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    assert_eq!(
        b.act(Kind::Confirm, "ann", &id, Value::Null).await.status,
        Some(200)
    );
    b.sql(
        "update bookings set status = 'CANCELLED' where id = $1",
        &id,
    )
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(
        report.status_history_mismatches, 1,
        "{:#?}",
        report.problems
    );
    assert_fired(&report, &["status_history_mismatches"]);
    b.app.stop().await
}

/// (f): two events of one vehicle published in the wrong order are reported out of order.
#[sqlx::test(migrations = "../migrations")]
async fn events_published_out_of_commit_order_are_reported(pool: PgPool) -> TestResult {
    let (b, vehicle, _) = Bench::with_hold(pool, true).await?;
    b.hold("bob", &vehicle, window(4, 2)).await?;
    let mut rows = b.outbox().await?;
    rows.reverse();
    publish(&rows).await?;
    let report = b.check(&b.options(true)).await?;
    // booking.created and vehicle.reserved: each has the vehicle's two events reversed.
    assert_eq!(report.events_out_of_order, 2, "{:#?}", report.problems);
    assert_fired(&report, &["events_out_of_order"]);
    b.app.stop().await
}

/// (f): a sequence number below one the consumer holds that never arrives is a lost event,
/// also when the outbox has no row of that number (a hole in the numbering: a consumer that
/// orders by sequence would wait for it forever).
#[sqlx::test(migrations = "../migrations")]
async fn a_sequence_number_the_consumer_never_receives_is_reported_lost(
    pool: PgPool,
) -> TestResult {
    let (b, vehicle, _) = Bench::with_hold(pool, true).await?;
    b.hold("bob", &vehicle, window(4, 2)).await?;
    // Bob's vehicle.reserved is number 4; renumbered 5, number 4 exists nowhere.
    sqlx::query("update outbox set sequence = 5 where partition_key = $1 and sequence = 4")
        .bind(&vehicle)
        .execute(&b.app.pool)
        .await?;
    publish(&b.outbox().await?).await?;
    let report = b.check(&b.options(true)).await?;
    assert_eq!(report.events_lost, 1, "{:#?}", report.problems);
    assert_fired(&report, &["events_lost"]);
    b.app.stop().await
}

/// (f): a record whose `sequence` header is not the number the outbox gave its event is
/// reported, even when the numbers still look ordered and complete to a consumer.
#[sqlx::test(migrations = "../migrations")]
async fn a_sequence_header_other_than_the_outboxs_number_is_reported(pool: PgPool) -> TestResult {
    let (b, vehicle, _) = Bench::with_hold(pool, true).await?;
    b.hold("bob", &vehicle, window(4, 2)).await?;
    let mut rows = b.outbox().await?;
    // Ann's booking.created (1) and vehicle.reserved (2) swap headers: per topic the order
    // (2, 3 and 1, 4) and the set 1..4 stay plausible.
    anyhow::ensure!(rows.len() == 4, "four events: {rows:?}");
    let (a, c) = (rows[0].0, rows[1].0);
    rows[0].0 = c;
    rows[1].0 = a;
    publish(&rows).await?;
    let report = b.check(&b.options(true)).await?;
    assert_eq!(report.events_misnumbered, 2, "{:#?}", report.problems);
    assert_fired(&report, &["events_misnumbered"]);
    b.app.stop().await
}

/// (f): an event of a change that was rolled back (its outbox row never committed) is a
/// phantom on the broker.
#[sqlx::test(migrations = "../migrations")]
async fn an_event_of_a_rolled_back_change_is_reported_as_phantom(pool: PgPool) -> TestResult {
    let (b, vehicle, id) = Bench::with_hold(pool, true).await?;
    let mut rows = b.outbox().await?;
    // A cancel that wrote its outbox row, then rolled back.
    let event_id = Uuid::now_v7();
    let payload = json!({ "event_id": event_id, "type": "booking.cancelled",
                          "booking": { "id": id, "status": "CANCELLED" } });
    let mut tx = b.app.pool.begin().await?;
    let (seq,): (i64,) = sqlx::query_as(
        "insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
         values ($1, 'booking.cancelled', $2, $3, $4) returning sequence",
    )
    .bind(event_id)
    .bind(&vehicle)
    .bind(uuid_of(&id)?)
    .bind(&payload)
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    rows.push((
        seq,
        event_id,
        "booking.cancelled".into(),
        vehicle.clone(),
        payload,
    ));
    publish(&rows).await?;
    let report = b.check(&b.options(true)).await?;
    assert_eq!(report.events_phantom, 1, "{:#?}", report.problems);
    assert_fired(&report, &["events_phantom"]);
    b.app.stop().await
}

/// (f): a committed event that never reached the broker is lost.
#[sqlx::test(migrations = "../migrations")]
async fn an_event_that_never_reached_the_broker_is_reported_lost(pool: PgPool) -> TestResult {
    let (b, _, _) = Bench::with_hold(pool, true).await?;
    let rows = b.outbox().await?;
    publish(&rows[..1]).await?;
    let mut options = b.options(true);
    options.event_wait = Duration::from_secs(4);
    let report = b.check(&options).await?;
    assert_eq!(report.events_lost, 1, "{:#?}", report.problems);
    assert_fired(&report, &["events_lost"]);
    b.app.stop().await
}

/// (f): a consumer that reads nothing (here: the wrong topic) fails as "consumer saw
/// nothing", not as a run without lost events.
#[sqlx::test(migrations = "../migrations")]
async fn a_consumer_that_reads_nothing_fails_as_consumer_saw_nothing(pool: PgPool) -> TestResult {
    let (b, _, _) = Bench::with_hold(pool, true).await?;
    publish(&b.outbox().await?).await?;
    let mut options = b.options(true);
    options.topics = vec![format!("checker-nothing-{}", Uuid::new_v4().simple())];
    options.event_wait = Duration::from_secs(3);
    let report = b.check(&options).await?;
    assert!(report.consumer_saw_nothing, "{report:?}");
    assert_eq!(report.events_lost, 0, "{report:?}");
    assert_fired(&report, &["consumer_saw_nothing"]);
    b.app.stop().await
}

/// (f), outbox side: a history row without its outbox row, and an outbox row of a booking that
/// does not exist.
#[sqlx::test(migrations = "../migrations")]
async fn outbox_rows_missing_or_without_a_change_are_reported(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    b.sql(
        "delete from outbox where aggregate_id = $1 and topic = 'vehicle.reserved'",
        &id,
    )
    .await?;
    sqlx::query(
        "insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
         values ($1, 'booking.created', 'veh', $2, '{\"booking\": {\"status\": \"RESERVING\"}}')",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::new_v4())
    .execute(&b.app.pool)
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.missing_outbox_events, 1, "{:#?}", report.problems);
    assert_eq!(report.outbox_without_change, 1, "{:#?}", report.problems);
    assert_fired(&report, &["missing_outbox_events", "outbox_without_change"]);
    b.app.stop().await
}

/// (i): a client that read a state the booking's history never had (the row briefly said
/// CONFIRMED without a committed confirm, as a torn or reverted write would show).
#[sqlx::test(migrations = "../migrations")]
async fn a_read_of_a_state_that_never_existed_is_reported(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    assert_eq!(b.read("ann", &id).await.status, Some(200));
    b.sql(
        "update bookings set status = 'CONFIRMED' where id = $1",
        &id,
    )
    .await?;
    let seen = b.read("ann", &id).await;
    assert_eq!(seen.body["status"], "CONFIRMED", "{seen:?}");
    b.sql(
        "update bookings set status = 'RESERVING' where id = $1",
        &id,
    )
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.impossible_reads, 1, "{:#?}", report.problems);
    assert_fired(&report, &["impossible_reads"]);
    b.app.stop().await
}

/// (g): a key whose only attempt got no answer, never retried, is unresolved.
#[sqlx::test(migrations = "../migrations")]
async fn an_unanswered_key_never_retried_is_reported_unresolved(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    // Nothing listens on port 1: the confirm gets no answer.
    let path = format!("/v1/bookings/{id}/confirm");
    let call = Call {
        kind: Kind::Confirm,
        user: "ann",
        path: &path,
        body: &Value::Null,
        target: &id,
        detail: Value::Null,
    };
    let lost = attempt(
        &b.http,
        &b.history,
        "http://127.0.0.1:1",
        1,
        &call,
        "k-lost",
    )
    .await;
    assert_eq!(lost.status, None);
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.unresolved_keys, 1, "{:#?}", report.problems);
    assert_fired(&report, &["unresolved_keys"]);
    b.app.stop().await
}

/// (c), (g): a definite 4xx whose request nevertheless changed the booking (its request id on
/// a history row, with its outbox row so nothing else is off).
#[sqlx::test(migrations = "../migrations")]
async fn a_definite_failure_that_left_a_change_is_reported(pool: PgPool) -> TestResult {
    let (b, _, id) = Bench::with_hold(pool, false).await?;
    // A hold cannot be extended: a definite 4xx.
    let refused = b
        .act(Kind::Extend, "ann", &id, json!({ "end": window(3, 3).1 }))
        .await;
    anyhow::ensure!(
        refused.status.is_some_and(|s| (400..500).contains(&s)),
        "{refused:?}"
    );
    sqlx::query(
        "with u as (update bookings set status = 'CONFIRMED', hold_expires_at = null
                     where id = $1 returning id),
              h as (insert into booking_history (booking_id, from_status, to_status, event, actor, request_id)
                    select id, 'RESERVING', 'CONFIRMED', 'confirm', 'ann', $2 from u)
         insert into outbox (event_id, topic, partition_key, aggregate_id, payload)
         select $3, 'booking.confirmed', 'veh', id, '{\"booking\": {\"status\": \"CONFIRMED\"}}' from u",
    )
    .bind(uuid_of(&id)?)
    .bind(&refused.request_id)
    .bind(Uuid::now_v7())
    .execute(&b.app.pool)
    .await?;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.failed_ops_with_effects, 1, "{:#?}", report.problems);
    assert_eq!(report.inconsistent_resolutions, 1, "{:#?}", report.problems);
    assert_fired(
        &report,
        &["failed_ops_with_effects", "inconsistent_resolutions"],
    );
    b.app.stop().await
}

/// Idempotency: when the stored answer of a 2xx key is lost, the retry is processed afresh
/// and refused (the quote is used): a 4xx after a 2xx of one key is reported, and so is the
/// key ending in a 4xx although it took effect.
#[sqlx::test(migrations = "../migrations")]
async fn a_key_that_forgets_its_2xx_is_reported_as_an_idempotency_violation(
    pool: PgPool,
) -> TestResult {
    let b = Bench::start(pool, false, false, &[]).await?;
    let vehicle = b.app.vehicles("EUW").await?[0].clone();
    let req = b.hold_request("ann", &vehicle, window(3, 2)).await?;
    let first = b.send_hold("ann", &vehicle, &req, "k-forgot").await;
    assert_eq!(first.status, Some(201), "{first:?}");
    let replay = b.send_hold("ann", &vehicle, &req, "k-forgot").await;
    assert!(replay.replayed && replay.body == first.body, "{replay:?}");
    sqlx::query("delete from idempotency_keys")
        .execute(&b.app.pool)
        .await?;
    let again = b.send_hold("ann", &vehicle, &req, "k-forgot").await;
    assert_eq!(again.outcome(), e2e::history::Outcome::Failed, "{again:?}");
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.idempotency_violations, 1, "{:#?}", report.problems);
    assert_fired(
        &report,
        &["idempotency_violations", "inconsistent_resolutions"],
    );
    b.app.stop().await
}

/// (h): a hold nobody swept (sweeper period one hour) is still RESERVING past its expiry.
#[sqlx::test(migrations = "../migrations")]
async fn a_hold_past_expiry_and_sweeper_period_is_reported_stale(pool: PgPool) -> TestResult {
    let b = Bench::start(
        pool,
        false,
        false,
        &[("HOLD_TTL_SECS", "1"), ("SWEEPER_INTERVAL_MS", "3600000")],
    )
    .await?;
    let vehicle = b.app.vehicles("EUW").await?[0].clone();
    b.hold("ann", &vehicle, window(3, 2)).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let report = b.check(&b.options(false)).await?;
    assert_eq!(report.stale_holds, 1, "{:#?}", report.problems);
    assert_fired(&report, &["stale_holds"]);
    b.app.stop().await
}
