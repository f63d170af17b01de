//! Traces from the client through the edge into the origin's spans and the Kafka record
//! (issue 15): the origin exports over OTLP/HTTP to a receiver in this process
//! (`e2e::otlp`), the edge forwards `traceparent` with its own span as the parent and names
//! that span in `traceresponse`.

use std::collections::HashMap;

use anyhow::Context;
use domain::trace::TraceParent;
use e2e::otlp::{ReceivedSpan, KIND_SERVER};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::*;

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>() | 1))
        .collect()
}

/// The edge's span as `traceresponse` names it: the trace, and the span the origin's server
/// span must have as its parent.
fn edge_span(reply: &Reply) -> TestResult<TraceParent> {
    let value = header(reply, "traceresponse").context("no traceresponse header")?;
    TraceParent::parse(value).with_context(|| format!("traceresponse {value:?} is not valid"))
}

/// The origin's server span of a trace.
fn server_span<'s>(spans: &'s [ReceivedSpan], name: &str) -> Option<&'s ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.kind == KIND_SERVER && s.service == "origin" && s.name == name)
}

/// Fails unless every span but `root` reaches `root` by its parents, within the trace.
fn assert_chain_to(spans: &[ReceivedSpan], root: &ReceivedSpan) {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for span in spans.iter().filter(|s| s.span_id != root.span_id) {
        let mut at = span;
        let mut hops = 0;
        while at.span_id != root.span_id {
            let parent = by_id.get(at.parent_span_id.as_str());
            assert!(
                parent.is_some() && hops < 32,
                "span {} ({}) does not chain to the server span {}: its ancestor {} has parent {:?}",
                span.name,
                span.span_id,
                root.span_id,
                at.name,
                at.parent_span_id
            );
            if let Some(parent) = parent {
                at = parent;
            }
            hops += 1;
        }
    }
}

/// The Kafka record of `event_id` (read from `marks` on), with its `traceparent` header.
async fn record_traceparent(
    brokers: &str,
    topic: &str,
    marks: &HashMap<(String, i32), i64>,
    event_id: &uuid::Uuid,
) -> TestResult<Option<String>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-trace-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .context("create the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("topic metadata")?;
    let mut partitions = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let offset = marks
                .get(&(t.name().to_owned(), p.id()))
                .map_or(Offset::Beginning, |high| Offset::Offset(*high));
            partitions.add_partition_offset(t.name(), p.id(), offset)?;
        }
    }
    consumer.assign(&partitions)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let wanted = event_id.to_string();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "event {event_id} was not on {topic} within 30 s"
        );
        let Ok(Ok(message)) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let Some(headers) = message.headers() else {
            continue;
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        };
        if header("event_id").as_deref() == Some(wanted.as_str()) {
            return Ok(header("traceparent"));
        }
    }
}

async fn a_clients_trace_runs_through_the_edge_into_the_origins_spans_and_the_kafka_record(
    pool: PgPool,
    runtime: Runtime,
) -> TestResult {
    let tracing = e2e::otlp::tracing()?;
    let brokers = std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .context("KAFKA_BROKERS is not set (bash scripts/broker.sh; export KAFKA_BROKERS=127.0.0.1:9092)")?;
    let marks = e2e::broker::end_offsets(&brokers)?;
    let stack = EdgeStack::start_full(
        pool.clone(),
        runtime,
        &[],
        &[("KAFKA_BROKERS", &brokers), ("RELAY_POLL_MS", "50")],
    )
    .await?;
    let t = token("tina");
    let vehicle = stack.origin()?.vehicles("EUW").await?[0].clone();
    let w = window(3, 2);

    // 1. A quote with an invalid traceparent: the edge replaces it by a trace of its own.
    let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let quote = stack
        .send(
            reqwest::Method::POST,
            "/v1/quotes",
            Some(&t),
            Some(&json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 })),
            &[("traceparent", invalid)],
        )
        .await?;
    assert_eq!(quote.status, 201, "{}", quote.body);
    let quote_edge = edge_span(&quote)?;
    assert_ne!(
        quote_edge.trace_id, [0; 16],
        "the invalid trace id was kept"
    );

    // 2. A hold with the client's trace.
    let trace_id = random_hex(16);
    let client_span = random_hex(8);
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let hold = stack
        .send(
            reqwest::Method::POST,
            "/v1/bookings",
            Some(&t),
            Some(&json!({ "quote_token": quote.body["quote_token"] })),
            &[
                ("idempotency-key", "trace-hold-1"),
                ("traceparent", &traceparent),
            ],
        )
        .await?;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold_edge = edge_span(&hold)?;
    assert_eq!(
        hold_edge.trace_id_hex(),
        trace_id,
        "the edge did not continue the trace"
    );
    assert_ne!(
        hold_edge.parent_id_hex(),
        client_span,
        "the edge made no span of its own"
    );

    // 3. The origin's spans arrive with the trace id and the expected parents.
    tracing.flush().await?;
    let wanted = ["db.bookings.hold_at_once", "redis"];
    let spans = tracing
        .receiver
        .wait_for_trace(&trace_id, Duration::from_secs(30), |spans| {
            server_span(spans, "POST /v1/bookings").is_some()
                && wanted
                    .iter()
                    .all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await?;
    let server = server_span(&spans, "POST /v1/bookings").context("no server span")?;
    assert_eq!(
        server.parent_span_id,
        hold_edge.parent_id_hex(),
        "the origin's server span is not a child of the edge's span"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "redis" && s.attributes.contains_key("command")),
        "no Redis command span: {spans:#?}"
    );
    assert!(
        spans.iter().all(|s| s.span_id != hold_edge.parent_id_hex()),
        "the edge exported a span (it is not meant to)"
    );
    assert_chain_to(&spans, server);

    let quote_spans = tracing
        .receiver
        .wait_for_trace(
            &quote_edge.trace_id_hex(),
            Duration::from_secs(30),
            |spans| server_span(spans, "POST /v1/quotes").is_some(),
        )
        .await?;
    let quote_server = server_span(&quote_spans, "POST /v1/quotes").context("no server span")?;
    assert_eq!(quote_server.parent_span_id, quote_edge.parent_id_hex());
    assert_chain_to(&quote_spans, quote_server);

    // 4. The outbox row carries the trace (the span that wrote it), and so does its record.
    let rows: Vec<(uuid::Uuid, String, Option<String>)> =
        sqlx::query_as("select event_id, topic, traceparent from outbox order by id")
            .fetch_all(&pool)
            .await?;
    anyhow::ensure!(!rows.is_empty(), "the hold wrote no outbox row");
    let insert = spans
        .iter()
        .find(|s| s.name == "db.bookings.hold_at_once")
        .context("no insert span")?;
    for (event_id, topic, row_traceparent) in &rows {
        let row_tp = row_traceparent
            .as_deref()
            .and_then(TraceParent::parse)
            .with_context(|| {
                format!("outbox row {event_id} has traceparent {row_traceparent:?}")
            })?;
        assert_eq!(row_tp.trace_id_hex(), trace_id);
        assert_eq!(
            row_tp.parent_id_hex(),
            insert.span_id,
            "the outbox row's parent is not the span of the statement that wrote it"
        );
        let header = record_traceparent(&brokers, topic, &marks, event_id).await?;
        assert_eq!(
            header.as_deref(),
            row_traceparent.as_deref(),
            "the Kafka record of {event_id} lacks the row's traceparent"
        );
    }
    stack.stop().await
}

on_both_runtimes!(
    a_clients_trace_runs_through_the_edge_into_the_origins_spans_and_the_kafka_record
);
