//! (f), broker side: what a consumer reading every topic sees, against the outbox.
//!
//! The consumer's view is the records' `sequence` header (the event's number among its
//! vehicle's events, in commit order, no holes): within a topic a vehicle's first deliveries
//! must come in increasing sequence, each header must be the number the outbox gave the event,
//! and a number the consumer never received while it holds a higher one of that vehicle is a
//! lost event, as a committed event never received is.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

use super::db::{Db, Outbox};
use super::{uuid_of, Options, Report};
use crate::TestResult;

/// One record as the checker reads it.
#[derive(Debug, Clone)]
struct Record {
    topic: String,
    key: String,
    event_id: Uuid,
    /// The booking the payload is about.
    booking: Option<Uuid>,
    /// The `sequence` header, when it is a number.
    sequence: Option<i64>,
}

/// Reads the broker and counts lost, phantom, duplicate, misnumbered and out-of-order events.
pub(crate) async fn consumed(
    db: &Db,
    pool: &sqlx::PgPool,
    options: &Options,
    r: &mut Report,
) -> TestResult {
    let committed: HashMap<Uuid, &Outbox> = db.outbox.iter().map(|o| (o.event_id, o)).collect();
    let wanted: HashSet<Uuid> = committed.keys().copied().collect();
    let received = consume_all(options, wanted.clone()).await?;
    // Events the database read did not know: a change committed after that read (a sweep
    // that ended late) is in the outbox now; only what is still not there is a phantom.
    let unknown: Vec<Uuid> = received
        .iter()
        .map(|rec| rec.event_id)
        .filter(|id| !committed.contains_key(id))
        .collect();
    let late: HashSet<Uuid> = if unknown.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar::<_, Uuid>("select event_id from outbox where event_id = any($1)")
            .bind(&unknown)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect()
    };
    let mut seen: HashSet<Uuid> = HashSet::new();
    // Per (topic, vehicle): the last sequence delivered, for the order within a partition.
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    // Per vehicle: every sequence delivered, across topics, for the gaps.
    let mut numbers: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for rec in received {
        let known = rec.booking.is_some_and(|b| db.bookings.contains_key(&b));
        if options.only_known_bookings && !known && !committed.contains_key(&rec.event_id) {
            continue;
        }
        r.events_consumed += 1;
        if !seen.insert(rec.event_id) {
            r.duplicates_delivered += 1;
            continue;
        }
        let Some(row) = committed.get(&rec.event_id) else {
            if late.contains(&rec.event_id) {
                r.events_committed_late += 1;
                continue;
            }
            r.events_phantom += 1;
            r.problems.push(format!(
                "event {} on {} was never committed",
                rec.event_id, rec.topic
            ));
            continue;
        };
        if rec.sequence != Some(row.sequence) || rec.key != row.key {
            r.events_misnumbered += 1;
            r.problems.push(format!(
                "event {} on {}: key {} sequence header {:?}, the outbox numbered it {} of {}",
                rec.event_id, rec.topic, rec.key, rec.sequence, row.sequence, row.key
            ));
        }
        let Some(seq) = rec.sequence else {
            continue;
        };
        numbers.entry(rec.key.clone()).or_default().insert(seq);
        if let Some(prev) = last.insert((rec.topic.clone(), rec.key.clone()), seq) {
            if prev > seq {
                r.events_out_of_order += 1;
                r.problems.push(format!(
                    "{}/{}: sequence {seq} consumed after {prev}",
                    rec.topic, rec.key
                ));
            }
        }
    }
    if !wanted.is_empty() && r.events_consumed == 0 {
        r.consumer_saw_nothing = true;
        r.problems.push(format!(
            "consumer saw nothing while {} events were committed (topics {:?} on {})",
            wanted.len(),
            options.topics,
            options.brokers
        ));
        return Ok(());
    }
    let lost: Vec<_> = wanted.difference(&seen).collect();
    if !lost.is_empty() {
        r.problems.push(format!(
            "{} committed events never consumed (e.g. {:?})",
            lost.len(),
            lost.iter().take(3).collect::<Vec<_>>()
        ));
    }
    // Numbers a consumer waits for in vain: below a number it holds, never delivered, and not
    // already counted as a committed event never consumed (the outbox does not have them).
    let mut lost_numbers: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for row in lost.iter().filter_map(|id| committed.get(*id)) {
        lost_numbers
            .entry(row.key.as_str())
            .or_default()
            .insert(row.sequence);
    }
    let mut holes = 0usize;
    for (key, seqs) in &numbers {
        let counted = lost_numbers.get(key.as_str());
        for (low, high) in seqs.iter().zip(seqs.iter().skip(1)) {
            let missing = high - low - 1;
            let already = counted.map_or(0, |c| c.range(low + 1..*high).count());
            let n = usize::try_from(missing)
                .unwrap_or(0)
                .saturating_sub(already);
            if n > 0 {
                holes += n;
                r.problems.push(format!(
                    "{key}: {n} sequence numbers between {low} and {high} never consumed"
                ));
            }
        }
    }
    r.events_lost = lost.len() + holes;
    Ok(())
}

fn header(msg: &impl Message, name: &str) -> Option<String> {
    msg.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    })
}

/// Every record of the topics from `options.since` (or the beginning), in partition order;
/// reads until every `wanted` id was seen (then 2 s more for late duplicates) or
/// `options.event_wait` passes.
async fn consume_all(options: &Options, wanted: HashSet<Uuid>) -> TestResult<Vec<Record>> {
    let options = options.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &options.brokers)
            .set("group.id", format!("checker-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .context("create the checker's consumer")?;
        let deadline = Instant::now() + options.event_wait;
        let mut partitions = TopicPartitionList::new();
        for topic in &options.topics {
            // A broker just restarted (the nemesis kills it) may take a while to describe a
            // topic again: ask until the read's deadline, not once. A topic it still cannot
            // describe then is read as empty, and a consumer that reads nothing fails as
            // "consumer saw nothing", which is what it is.
            // A topic the broker does not know (no event of its kind was ever published) is
            // an answer, not a reason to wait.
            let settled = |m: &rdkafka::metadata::Metadata| {
                m.topics().iter().all(|t| {
                    matches!(
                        t.error(),
                        None | Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                    )
                })
            };
            let metadata = loop {
                match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                    Ok(m) if settled(&m) => break Some(m),
                    Ok(_) | Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Ok(_) | Err(_) => break None,
                }
            };
            let Some(metadata) = metadata else {
                eprintln!("[checker] the broker never described topic {topic}");
                continue;
            };
            for t in metadata.topics() {
                for p in t.partitions() {
                    let from = options
                        .since
                        .as_ref()
                        .and_then(|s| s.get(&(t.name().to_owned(), p.id())))
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    partitions
                        .add_partition_offset(t.name(), p.id(), from)
                        .context("add a partition")?;
                }
            }
        }
        consumer.assign(&partitions).context("assign")?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut complete_at: Option<Instant> = None;
        let mut errors = 0usize;
        while Instant::now() < deadline {
            if complete_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                break;
            }
            let msg = match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    // Fetch errors are retried by librdkafka; the last few are shown, so a read
                    // that ends empty says why.
                    errors += 1;
                    if errors <= 3 {
                        eprintln!("[checker] broker read error: {e}");
                    }
                    continue;
                }
                None => continue,
            };
            let payload = msg
                .payload()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                .unwrap_or(Value::Null);
            let id = header(&msg, "event_id")
                .or_else(|| payload["event_id"].as_str().map(str::to_owned))
                .and_then(|s| Uuid::try_parse(&s).ok());
            if let Some(event_id) = id {
                seen.insert(event_id);
                out.push(Record {
                    topic: msg.topic().to_owned(),
                    key: msg
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    event_id,
                    booking: payload["booking"]["id"].as_str().and_then(uuid_of),
                    sequence: header(&msg, "sequence").and_then(|s| s.parse().ok()),
                });
            }
            if complete_at.is_none() && wanted.is_subset(&seen) {
                complete_at = Some(Instant::now());
            }
        }
        Ok(out)
    })
    .await?
}
