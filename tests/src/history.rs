//! The history checker (in the spirit of Jepsen's Elle, for this system's promises).
//!
//! Every client operation of a fault run is recorded — what was asked, of which origin, with
//! which Idempotency-Key, when it started and ended, and what came back (or that nothing did).
//! After the run, with the faults healed, [`check`] compares that history with the system of
//! record and the broker:
//!
//! 1. **No double booking**: no two occupying bookings of a vehicle overlap.
//! 2. **No lost acknowledged write**: every acknowledged hold exists with its vehicle, user and
//!    window; every acknowledged confirm, cancel and extend is in the booking's history (and a
//!    cancelled booking is CANCELLED).
//! 3. **Idempotency**: once a key got a definitive answer, every later attempt with that key
//!    got the same status and body.
//! 4. **Events exactly once by id, in per-vehicle order**: every committed state change has its
//!    outbox events (by the transition's kind); every outbox event reached the broker, nothing
//!    else did, duplicates (at-least-once redelivery) share an event id, and within one topic
//!    a vehicle's events appear in commit (outbox sequence) order.
//! 5. **Holds end**: no hold is still RESERVING past its expiry plus the sweeper's period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::TestResult;

/// What an operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hold,
    Confirm,
    Cancel,
    Extend,
}

/// One attempt of one client operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: Kind,
    pub key: String,
    pub user: String,
    pub origin: usize,
    /// Hold: the vehicle; others: the booking id.
    pub target: String,
    /// Hold: the window; extend: the new end.
    pub detail: Value,
    pub started: Instant,
    pub ended: Instant,
    /// None when no answer came (connection refused or reset, timeout).
    pub status: Option<u16>,
    pub body: Value,
    pub replayed: bool,
}

impl Op {
    /// An answer that settles the key: not a transport failure, not a 5xx, not "in progress".
    pub fn definitive(&self) -> bool {
        match self.status {
            Some(s) if s >= 500 => false,
            Some(409) => self.body["type"] != "/problems/idempotency-in-progress",
            Some(_) => true,
            None => false,
        }
    }

    pub fn acknowledged(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The recorded history of a run (shared by the client tasks).
#[derive(Debug, Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// What the checker found; every count but `checked_*`, `duplicates_delivered` and
/// `events_*` must be zero.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub checked_ops: usize,
    pub acknowledged_ops: usize,
    pub unanswered_ops: usize,
    pub overlaps: i64,
    pub lost_acknowledged_writes: usize,
    pub idempotency_violations: usize,
    pub missing_outbox_events: usize,
    pub events_committed: usize,
    pub events_lost: usize,
    pub events_phantom: usize,
    pub events_out_of_order: usize,
    pub duplicates_delivered: usize,
    pub stale_holds: i64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.overlaps == 0
            && self.lost_acknowledged_writes == 0
            && self.idempotency_violations == 0
            && self.missing_outbox_events == 0
            && self.events_lost == 0
            && self.events_phantom == 0
            && self.events_out_of_order == 0
            && self.stale_holds == 0
    }
}

fn uuid_of(public: &str) -> Option<Uuid> {
    public
        .rsplit('_')
        .next()
        .and_then(|h| Uuid::try_parse(h).ok())
}

/// Runs every check; `sweeper` is the origins' sweeper period, `event_wait` how long to read
/// the broker for events not seen yet.
pub async fn check(
    ops: &[Op],
    pool: &PgPool,
    brokers: &str,
    sweeper: Duration,
    event_wait: Duration,
) -> TestResult<Report> {
    let mut r = Report {
        checked_ops: ops.len(),
        acknowledged_ops: ops.iter().filter(|o| o.acknowledged()).count(),
        unanswered_ops: ops.iter().filter(|o| o.status.is_none()).count(),
        ..Report::default()
    };

    // 1. Overlaps.
    r.overlaps = sqlx::query_scalar(
        "select count(*) from bookings a join bookings b
            on a.vehicle_id = b.vehicle_id and a.id < b.id and a.period && b.period
         where a.status in ('RESERVING','CONFIRMED','IN_PROGRESS')
           and b.status in ('RESERVING','CONFIRMED','IN_PROGRESS')",
    )
    .fetch_one(pool)
    .await?;

    // 2. Acknowledged writes.
    for op in ops.iter().filter(|o| o.acknowledged()) {
        let id = match op.kind {
            Kind::Hold => op.body["id"].as_str().and_then(uuid_of),
            _ => uuid_of(&op.target),
        };
        let Some(id) = id else {
            r.lost_acknowledged_writes += 1;
            r.problems.push(format!(
                "acknowledged {:?} without an id: {}",
                op.kind, op.body
            ));
            continue;
        };
        let row: Option<(String, String)> =
            sqlx::query_as("select status, user_id from bookings where id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        let events: Vec<String> =
            sqlx::query_scalar("select event from booking_history where booking_id = $1")
                .bind(id)
                .fetch_all(pool)
                .await?;
        let ok = match (op.kind, &row) {
            (_, None) => false,
            (Kind::Hold, Some((_, user))) => *user == op.user,
            (Kind::Confirm, Some(_)) => events.iter().any(|e| e == "confirm"),
            (Kind::Cancel, Some((status, _))) => {
                status == "CANCELLED" && events.iter().any(|e| e == "cancel")
            }
            (Kind::Extend, Some(_)) => events.iter().any(|e| e == "extend"),
        };
        if !ok {
            r.lost_acknowledged_writes += 1;
            r.problems.push(format!(
                "acknowledged {:?} of {} not in the database (row {row:?}, history {events:?})",
                op.kind, op.target
            ));
        }
    }

    // 3. Idempotency: per key, every definitive answer after the first equals it.
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, mut attempts) in by_key {
        attempts.sort_by_key(|o| o.started);
        let mut first: Option<&Op> = None;
        for a in attempts.into_iter().filter(|o| o.definitive()) {
            match first {
                None => first = Some(a),
                Some(f) if f.status != a.status || f.body != a.body => {
                    r.idempotency_violations += 1;
                    r.problems.push(format!(
                        "key {key}: first {:?} {}, later {:?} {}",
                        f.status, f.body, a.status, a.body
                    ));
                }
                Some(_) => {}
            }
        }
    }

    // 4a. Every committed state change has its outbox events.
    let history: Vec<(Uuid, String, String)> =
        sqlx::query_as("select booking_id, event, to_status from booking_history")
            .fetch_all(pool)
            .await?;
    let mut expected: HashMap<Uuid, Vec<&'static str>> = HashMap::new();
    for (booking, event, to) in &history {
        let topics: &[&'static str] = match (event.as_str(), to.as_str()) {
            ("extend", _) => &["booking.extended"],
            (_, "RESERVING") => &["booking.created", "vehicle.reserved"],
            (_, "CONFIRMED") => &["booking.confirmed"],
            (_, "IN_PROGRESS") => &["booking.started"],
            (_, "COMPLETED") => &["booking.completed", "vehicle.released"],
            (_, "CANCELLED") => &["booking.cancelled", "vehicle.released"],
            (_, "FAILED") => &["booking.failed", "vehicle.released"],
            _ => &[],
        };
        expected.entry(*booking).or_default().extend(topics);
    }
    let outbox: Vec<(i64, Uuid, String, String, Uuid)> = sqlx::query_as(
        "select id, event_id, topic, partition_key, aggregate_id from outbox order by id",
    )
    .fetch_all(pool)
    .await?;
    let mut actual: HashMap<Uuid, Vec<&str>> = HashMap::new();
    for (_, _, topic, _, booking) in &outbox {
        actual.entry(*booking).or_default().push(topic.as_str());
    }
    for (booking, mut want) in expected {
        let mut got = actual.remove(&booking).unwrap_or_default();
        want.sort_unstable();
        got.sort_unstable();
        if want != got {
            r.missing_outbox_events += want.len().abs_diff(got.len()).max(1);
            r.problems.push(format!(
                "booking {booking}: history wants {want:?}, outbox has {got:?}"
            ));
        }
    }
    r.events_committed = outbox.len();

    // 4b. The broker has every outbox event, nothing else, in per-vehicle order per topic.
    let sequence: HashMap<Uuid, i64> = outbox.iter().map(|(id, e, ..)| (*e, *id)).collect();
    let wanted: HashSet<Uuid> = sequence.keys().copied().collect();
    let received = consume_all(brokers, &wanted, event_wait).await?;
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (topic, key, event_id) in &received {
        if !seen.insert(*event_id) {
            r.duplicates_delivered += 1;
            continue;
        }
        match sequence.get(event_id) {
            None => {
                r.events_phantom += 1;
                r.problems
                    .push(format!("event {event_id} on {topic} was never committed"));
            }
            Some(seq) => {
                let prev = last.insert((topic.clone(), key.clone()), *seq);
                if prev.is_some_and(|p| p > *seq) {
                    r.events_out_of_order += 1;
                    r.problems.push(format!(
                        "{topic}/{key}: sequence {seq} after {}",
                        prev.unwrap_or_default()
                    ));
                }
            }
        }
    }
    let lost: Vec<_> = wanted.difference(&seen).collect();
    r.events_lost = lost.len();
    if !lost.is_empty() {
        r.problems.push(format!(
            "{} committed events never reached the broker (e.g. {:?})",
            lost.len(),
            lost.iter().take(3).collect::<Vec<_>>()
        ));
    }

    // 5. Holds past expiry + sweeper period (+1 s of clock slack).
    r.stale_holds = sqlx::query_scalar(
        "select count(*) from bookings where status = 'RESERVING'
           and hold_expires_at < now() - make_interval(secs => $1)",
    )
    .bind(sweeper.as_secs_f64() + 1.0)
    .fetch_one(pool)
    .await?;
    Ok(r)
}

/// Every record of every topic from the beginning, as (topic, key, event id), in partition
/// order; reads until every `wanted` id was seen (then 2 s more for late duplicates) or
/// `within` passes.
async fn consume_all(
    brokers: &str,
    wanted: &HashSet<Uuid>,
    within: Duration,
) -> TestResult<Vec<(String, String, Uuid)>> {
    let brokers = brokers.to_owned();
    let wanted = wanted.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("faults-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .context("create the checker's consumer")?;
        let mut partitions = TopicPartitionList::new();
        for topic in crate::cluster::TOPICS {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| format!("metadata of {topic}"))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    partitions
                        .add_partition_offset(t.name(), p.id(), Offset::Beginning)
                        .context("add a partition")?;
                }
            }
        }
        consumer.assign(&partitions).context("assign")?;
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut complete_at: Option<Instant> = None;
        while Instant::now() < deadline {
            if complete_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                break;
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Ok(msg) = msg else { continue };
            let key = msg
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let id = msg.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == "event_id")
                    .and_then(|x| x.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|s| Uuid::try_parse(s).ok())
            });
            let id = id.or_else(|| {
                msg.payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                    .and_then(|v| v["event_id"].as_str().and_then(|s| Uuid::try_parse(s).ok()))
            });
            if let Some(id) = id {
                seen.insert(id);
                out.push((msg.topic().to_owned(), key, id));
            }
            if complete_at.is_none() && wanted.is_subset(&seen) {
                complete_at = Some(Instant::now());
            }
        }
        Ok(out)
    })
    .await?
}
