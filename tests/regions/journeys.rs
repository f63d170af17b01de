//! A user who crosses regions: searches, books and lists through the other region's edge and
//! gets what the home region has, stored and published at home; and what that costs in time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use origin::events::Topic;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::*;

async fn searches_through_either_edge_equal_the_home_origins_pages(
    world: &TwoRegions,
    t: &str,
) -> TestResult {
    let w = window(3, 2);
    for (region, point, other_edge) in [
        ("EUW", FRANKFURT, &world.edge_eun),
        ("EUN", STOCKHOLM, &world.edge_euw),
    ] {
        for version in ["v1", "v2"] {
            // Small pages, so the cursor is exercised too.
            let path = search_path(version, point, 20_000, w, 5);
            let home = pages(&world.site(region).direct()?, &path, t).await?;
            let via_other = pages(other_edge, &path, t).await?;
            let via_own = pages(world.edge(region), &path, t).await?;
            let count: usize = home.iter().map(Vec::len).sum();
            assert!(
                count >= 10 && home.len() >= 2,
                "{region}: the home origin found {count} vehicles in {} pages",
                home.len()
            );
            assert_eq!(
                via_other, home,
                "{region} {version} through the other region's edge"
            );
            assert_eq!(via_own, home, "{region} {version} through its own edge");
        }
    }
    Ok(())
}

/// One booking's public id, region and user, as created.
#[derive(Debug, Clone)]
struct Booked {
    id: String,
    region: String,
}

async fn confirm(http: &Http, user: &str, id: &str) -> TestResult {
    let reply = http
        .post(
            &format!("/v1/bookings/{id}/confirm"),
            Some(&token(user)),
            &Value::Null,
            None,
        )
        .await?;
    anyhow::ensure!(reply.status == 200, "confirm {id}: {reply:?}");
    Ok(())
}

/// Median of durations (sorts in place).
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Reads every topic from `from` (a partition it does not know: from the beginning) until
/// every `wanted` event id was seen (bounded); the payload of each wanted event.
async fn consume(
    brokers: &str,
    from: &HashMap<(String, i32), i64>,
    wanted: &HashSet<uuid::Uuid>,
) -> TestResult<HashMap<uuid::Uuid, Value>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("regions-events-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("create the consumer")?;
    // The topics exist now: the wanted events were published before this is called.
    let mut partitions = TopicPartitionList::new();
    for topic in Topic::ALL {
        let metadata = consumer
            .fetch_metadata(Some(topic.as_str()), Duration::from_secs(10))
            .with_context(|| format!("metadata of {}", topic.as_str()))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let offset = from
                    .get(&(t.name().to_owned(), p.id()))
                    .map_or(Offset::Beginning, |high| Offset::Offset(*high));
                partitions
                    .add_partition_offset(t.name(), p.id(), offset)
                    .context("add a partition")?;
            }
        }
    }
    consumer.assign(&partitions).context("assign partitions")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = HashMap::new();
    while seen.len() < wanted.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "only {} of {} events reached the broker",
            seen.len(),
            wanted.len()
        );
        let Ok(Ok(message)) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let id = message
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "event_id")
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| uuid::Uuid::try_parse(v).ok())
            })
            .filter(|id| wanted.contains(id));
        if let Some(id) = id {
            let payload: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
            seen.insert(id, payload);
        }
    }
    Ok(seen)
}

async fn a_user_searches_books_and_lists_across_regions_through_both_edges(
    runtime: Runtime,
) -> TestResult {
    let brokers = std::env::var("KAFKA_BROKERS").context(
        "KAFKA_BROKERS is not set: run scripts/broker.sh and export KAFKA_BROKERS=127.0.0.1:9092",
    )?;
    let marks = e2e::broker::end_offsets(&brokers)?;
    let world = TwoRegions::start(runtime, WorldOptions::default()).await?;
    println!(
        "{}: inter-region latency {:?} RTT by {LATENCY_MECHANISM}",
        runtime.name(),
        world.rtt
    );
    let user = "ulla";
    let t = token(user);

    searches_through_either_edge_equal_the_home_origins_pages(&world, &t).await?;

    // Book a Stockholm vehicle through the Frankfurt edge and a Frankfurt vehicle through the
    // Sweden edge, three each, confirmed; and one of each through its own edge.
    let mut booked: Vec<Booked> = Vec::new();
    for i in 0..4usize {
        for (region, edge) in [("EUN", &world.edge_euw), ("EUW", &world.edge_eun)] {
            let edge = if i == 3 { world.edge(region) } else { edge };
            let vehicle = &world.site(region).vehicles[i];
            let (hold, _) = quote_and_hold(edge, user, vehicle, window(5, 2)).await?;
            assert_eq!(
                hold.status, 201,
                "{region} hold via {}: {hold:?}",
                edge.base
            );
            let id = hold.body["id"].as_str().context("booking id")?.to_owned();
            assert_eq!(region_of(&id), region, "{id}");
            confirm(edge, user, &id).await?;
            booked.push(Booked {
                id,
                region: region.to_owned(),
            });
        }
    }
    // Each booking is in its home cluster, and only there.
    for b in &booked {
        let uuid = uuid_of(&b.id)?;
        let cond = format!("id = '{uuid}' and user_id = '{user}' and status = 'CONFIRMED'");
        assert_eq!(world.site(&b.region).count("bookings", &cond).await?, 1);
        let away = if b.region == "EUW" { "EUN" } else { "EUW" };
        assert_eq!(
            world
                .site(away)
                .count("bookings", &format!("id = '{uuid}'"))
                .await?,
            0
        );
    }

    // The user's list through either edge: both regions merged by (created_at, id) newest
    // first, the same as both clusters say, across pages of 3 with the composite cursor.
    let mut expected: Vec<(chrono::DateTime<Utc>, uuid::Uuid, String)> = Vec::new();
    for region in e2e::regions::REGIONS {
        let rows: Vec<(uuid::Uuid, chrono::DateTime<Utc>)> =
            sqlx::query_as("select id, created_at from bookings where user_id = $1")
                .bind(user)
                .fetch_all(&world.site(region).pool)
                .await?;
        expected.extend(rows.into_iter().map(|(id, at)| {
            (
                at,
                id,
                format!("bkg_{}_{}", region.to_lowercase(), id.simple()),
            )
        }));
    }
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(expected.len(), booked.len());
    for edge in [&world.edge_euw, &world.edge_eun] {
        for version in ["v1", "v2"] {
            let listed = pages(edge, &format!("/{version}/bookings?limit=3"), &t).await?;
            assert!(listed.len() >= 3, "{} pages", listed.len());
            let ids: Vec<String> = listed
                .iter()
                .flatten()
                .filter_map(|b| b["id"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(ids, expected, "{version} list via {}", edge.base);
        }
    }

    // Every event of these bookings was published by its home region's relay (it is in that
    // cluster's outbox, marked published) and carries the region.
    let mut wanted = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for b in &booked {
        let site = world.site(&b.region);
        let uuid = uuid_of(&b.id)?;
        loop {
            let rows: Vec<(uuid::Uuid, bool)> = sqlx::query_as(
                "select event_id, published_at is not null from outbox where aggregate_id = $1",
            )
            .bind(uuid)
            .fetch_all(&site.pool)
            .await?;
            assert!(rows.len() >= 2, "{}: {} outbox rows", b.id, rows.len());
            if rows.iter().all(|(_, published)| *published) {
                for (event, _) in rows {
                    wanted.insert(event, b.clone());
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {b:?} events not published by its relay",
                b.region
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ids: HashSet<uuid::Uuid> = wanted.keys().copied().collect();
    let received = consume(&brokers, &marks, &ids).await?;
    for (event, payload) in &received {
        let b = &wanted[event];
        assert_eq!(payload["region"], b.region.as_str(), "{payload}");
        assert_eq!(payload["booking"]["id"], b.id.as_str(), "{payload}");
    }

    // Straight to an origin, the other region's vehicle, quote and admin path are 421.
    let euw = world.euw.direct()?;
    let eun_vehicle = &world.eun.vehicles[8];
    let w = window(6, 1);
    let misdirected = euw
        .post(
            "/v1/quotes",
            Some(&t),
            &json!({ "vehicle_id": eun_vehicle, "start": w.0, "end": w.1 }),
            None,
        )
        .await?;
    misdirected.assert_problem(421);
    let eun_booking = booked
        .iter()
        .find(|b| b.region == "EUN")
        .context("an EUN booking")?;
    euw.get(&format!("/v1/bookings/{}", eun_booking.id), Some(&t))
        .await?
        .assert_problem(421);
    euw.get("/v1/admin/pricing/EUN", Some(&ops_token("olaf")))
        .await?
        .assert_problem(421);

    // A maintenance block of a Stockholm vehicle through the Frankfurt edge lands in its home
    // cluster only; sent straight to the Frankfurt origin, it is 421 there.
    let blocked = &world.eun.vehicles[7];
    let bw = window(7, 2);
    let block_body = json!({ "start": bw.0, "end": bw.1, "reason": "tyres" });
    let blocks = format!("/v1/admin/vehicles/{blocked}/blocks");
    let made = world
        .edge_euw
        .post(
            &blocks,
            Some(&ops_token("olaf")),
            &block_body,
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(made.status, 201, "{made:?}");
    let block_id = made.body["block"]["id"].as_str().context("block id")?;
    let here = format!("id = '{block_id}'");
    assert_eq!(world.site("EUN").count("vehicle_blocks", &here).await?, 1);
    assert_eq!(world.site("EUW").count("vehicle_blocks", "true").await?, 0);
    euw.post(&blocks, Some(&ops_token("olaf")), &block_body, None)
        .await?
        .assert_problem(421);

    // A webhook for Stockholm's events, registered through the Frankfurt edge, lands in the EUN
    // cluster only and is read back by its id through that edge; straight to the Frankfurt
    // origin, both are 421. (A public address literal: nothing is sent, no consumer runs.)
    let hook_body = json!({ "url": "https://1.1.1.1/hook", "event_types": ["booking.created"] });
    let hook = world
        .edge_euw
        .post(
            "/v1/admin/webhooks?region=EUN",
            Some(&ops_token("olaf")),
            &hook_body,
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(hook.status, 201, "{hook:?}");
    let hook_id = hook.body["webhook"]["id"].as_str().context("webhook id")?;
    assert!(hook_id.starts_with("whk_eun_"), "{hook_id}");
    assert_eq!(
        world.site("EUN").count("webhook_endpoints", "true").await?,
        1
    );
    assert_eq!(
        world.site("EUW").count("webhook_endpoints", "true").await?,
        0
    );
    let read = world
        .edge_euw
        .get(
            &format!("/v1/admin/webhooks/{hook_id}"),
            Some(&ops_token("olaf")),
        )
        .await?;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["region"], "EUN");
    euw.post(
        "/v1/admin/webhooks?region=EUN",
        Some(&ops_token("olaf")),
        &hook_body,
        None,
    )
    .await?
    .assert_problem(421);
    euw.get(
        &format!("/v1/admin/webhooks/{hook_id}"),
        Some(&ops_token("olaf")),
    )
    .await?
    .assert_problem(421);

    // A deny-list entry kept by Stockholm's origin, added through the Frankfurt edge, is
    // enforced by both edges within 5 s (they read every region's hash; this world's edges
    // share one Upstash, as with Upstash's global database), and lifted on both.
    let mallory = format!("mallory-{}", uuid::Uuid::new_v4().simple());
    let entry = world
        .edge_euw
        .post(
            "/v1/admin/deny-list?region=EUN",
            Some(&ops_token("olaf")),
            &json!({ "kind": "user", "value": mallory, "reason": "regions journey" }),
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await?;
    assert_eq!(entry.status, 201, "{entry:?}");
    let entry_id = entry.body["id"].as_str().context("entry id")?.to_owned();
    assert!(entry_id.starts_with("dny_eun_"), "{entry_id}");
    assert_eq!(world.site("EUN").count("deny_list", "true").await?, 1);
    assert_eq!(world.site("EUW").count("deny_list", "true").await?, 0);
    let status_at = |edge: &'static str, status: u16| {
        let (world, mallory) = (&world, &mallory);
        async move {
            let start = std::time::Instant::now();
            loop {
                let reply = world
                    .edge(edge)
                    .get("/v1/bookings", Some(&token(mallory)))
                    .await?;
                if reply.status.as_u16() == status {
                    return TestResult::Ok(reply);
                }
                anyhow::ensure!(
                    start.elapsed() < std::time::Duration::from_secs(5),
                    "{edge} edge: still {} after 5 s: {reply:?}",
                    reply.status
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    for edge in ["EUW", "EUN"] {
        let refused = status_at(edge, 403).await?;
        assert_eq!(refused.problem_type(), "/problems/denied", "{edge}");
    }
    let lifted = world
        .edge_eun
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/admin/deny-list/{entry_id}"),
            Some(&ops_token("olaf")),
            None,
            &[("idempotency-key", &uuid::Uuid::new_v4().to_string())],
        )
        .await?;
    assert_eq!(lifted.status, 200, "{lifted:?}");
    for edge in ["EUW", "EUN"] {
        status_at(edge, 200).await?;
    }

    // Latency: holds of EUN vehicles through the Sweden edge (home) and through the Frankfurt
    // edge (one inter-region hop each way), nine each, interleaved. The bar (under 3
    // inter-region round trips) is judged on the round trips the delay line charged each
    // cross-region hold — a count, which load cannot move (timed, a busy 2-core box once
    // measured 3.0 RTTs on workerd where quiet runs measured 1.0) — and each hold must have
    // taken at least what it was charged. The added time (fastest and median) is printed.
    const SAMPLES: usize = 9;
    let (mut home, mut cross) = (Vec::new(), Vec::new());
    let mut charged_max = 0;
    for i in 0..SAMPLES {
        for (j, (edge, samples)) in [(&world.edge_eun, &mut home), (&world.edge_euw, &mut cross)]
            .into_iter()
            .enumerate()
        {
            let vehicle = &world.eun.vehicles[(i % 4) + 8];
            let w = window(10 + 2 * i as i64 + j as i64, 1);
            let quote = edge
                .post(
                    "/v1/quotes",
                    Some(&t),
                    &json!({ "vehicle_id": vehicle, "start": w.0, "end": w.1 }),
                    None,
                )
                .await?;
            assert_eq!(quote.status, 201, "{quote:?}");
            let key = uuid::Uuid::new_v4().to_string();
            let crossed_before = world.proxy_to_eun.upstream_bytes();
            let charged_before = world.proxy_to_eun.round_trips();
            let started = Instant::now();
            let hold = edge
                .post(
                    "/v1/bookings",
                    Some(&t),
                    &json!({ "quote_token": quote.body["quote_token"] }),
                    Some(&key),
                )
                .await?;
            let took = started.elapsed();
            let charged = world.proxy_to_eun.round_trips() - charged_before;
            assert_eq!(hold.status, 201, "{hold:?}");
            if j == 1 {
                // What the hold paid across regions, counted at the delay line: under 3 round
                // trips, whatever the load (the timings below are printed, not judged).
                assert!(
                    (1..3).contains(&charged),
                    "a cross-region hold through {} cost {charged} inter-region round trips",
                    edge.base
                );
                assert!(
                    took >= world.rtt * u32::try_from(charged)?,
                    "{charged} round trips of {:?} in {took:?}: the delay was not applied",
                    world.rtt
                );
                charged_max = charged_max.max(charged);
            }
            // The Frankfurt edge's hold must have crossed the delay line (bytes, not
            // connections: workerd keeps its connections alive).
            let crossed = world.proxy_to_eun.upstream_bytes() > crossed_before;
            assert_eq!(
                crossed,
                j == 1,
                "hold via {} crossed regions: {crossed}",
                edge.base
            );
            samples.push(took);
        }
    }
    let rtts = |d: Duration| d.as_secs_f64() / world.rtt.as_secs_f64();
    let (home_median, cross_median) = (median(&mut home), median(&mut cross));
    // `median` sorted both: the first sample is the fastest.
    let (home_min, cross_min) = (home[0], cross[0]);
    let added = cross_min.saturating_sub(home_min);
    let added_median = cross_median.saturating_sub(home_median);
    println!(
        "{}: EUN hold through the Sweden edge {home_min:?} (median {home_median:?}), through \
         the Frankfurt edge {cross_min:?} (median {cross_median:?}), fastest of {SAMPLES}: \
         +{added:?} = {:.2} inter-region RTTs of {:?} (medians: +{added_median:?} = {:.2})",
        runtime.name(),
        rtts(added),
        world.rtt,
        rtts(added_median)
    );
    // The delay line adds at least one round trip to every call through it: less means the
    // traffic did not cross regions and the measurement proves nothing.
    assert!(
        cross_min >= world.rtt,
        "cross-region hold took {cross_min:?}"
    );
    println!(
        "{}: a cross-region hold cost at most {charged_max} inter-region round trips \
         (counted at the delay line; under 3 is the bar)",
        runtime.name()
    );
    world.stop().await
}
on_both_runtimes!(a_user_searches_books_and_lists_across_regions_through_both_edges);
