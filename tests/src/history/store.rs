//! The checks the database answers by itself: (a) overlaps from `booking_history`, (e) row
//! against history, (f) outbox against history, (h) stale holds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::db::{topics_of, Db, OCCUPYING};
use super::{Options, Report};
use crate::TestResult;

/// One booking's occupancy in history order: `[from, until)` in history row ids.
struct Occupancy {
    booking: Uuid,
    from: i64,
    until: i64,
}

/// (a), from the database: replays each booking's history (hold, then the row that releases)
/// and finds two bookings of one vehicle occupying at once with overlapping windows. History
/// ids are commit order for conflicting rows: a change blocked by another waits for its
/// commit before it writes (and numbers) its own history row.
pub(crate) fn overlaps(db: &Db, r: &mut Report) {
    let mut per_vehicle: HashMap<&str, Vec<Occupancy>> = HashMap::new();
    for (id, row) in &db.bookings {
        let mut from = None;
        let mut until = i64::MAX;
        for h in db.history_of(id) {
            let occupying = OCCUPYING.contains(&h.to.as_str());
            match from {
                None if occupying => from = Some(h.id),
                Some(_) if !occupying => {
                    until = h.id;
                    break;
                }
                _ => {}
            }
        }
        if let Some(from) = from {
            per_vehicle
                .entry(row.vehicle.as_str())
                .or_default()
                .push(Occupancy {
                    booking: *id,
                    from,
                    until,
                });
        }
    }
    for (vehicle, spans) in per_vehicle {
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                let (lo, hi) = (a.from.max(b.from), a.until.min(b.until));
                if lo >= hi {
                    continue;
                }
                // Windows only grow (extensions): the widest both had at once is just before hi.
                let window = |o: &Occupancy| -> Option<(DateTime<Utc>, DateTime<Utc>)> {
                    let row = db.bookings.get(&o.booking)?;
                    Some((row.start, db.end_after(&o.booking, hi - 1)?))
                };
                if let (Some(wa), Some(wb)) = (window(a), window(b)) {
                    if wa.0 < wb.1 && wb.0 < wa.1 {
                        r.overlaps_db += 1;
                        r.problems.push(format!(
                            "history: {} {wa:?} and {} {wb:?} both occupy {vehicle}",
                            a.booking, b.booking
                        ));
                    }
                }
            }
        }
    }
}

/// (e): the row's status is its last history state, its end its last extension's end.
pub(crate) fn row_matches_history(db: &Db, r: &mut Report) {
    for (id, row) in &db.bookings {
        let last = db.history_of(id).last();
        let end = db.end_after(id, i64::MAX);
        if last.map(|h| h.to.as_str()) != Some(row.status.as_str()) || end != Some(row.end) {
            r.status_history_mismatches += 1;
            r.problems.push(format!(
                "booking {id}: row {} ending {}, history ends in {:?} ending {end:?}",
                row.status,
                row.end,
                last.map(|h| &h.to)
            ));
        }
    }
}

/// (f), outbox side: per booking, the (topic, status) pairs its history calls for against the
/// outbox's; outbox rows of bookings that do not exist count as changes nobody committed.
pub(crate) fn outbox_matches_history(db: &Db, r: &mut Report) {
    let mut balance: HashMap<(Uuid, &str, &str), i64> = HashMap::new();
    for h in &db.history {
        for topic in topics_of(&h.event, &h.to) {
            *balance
                .entry((h.booking, topic, h.to.as_str()))
                .or_default() += 1;
        }
    }
    for o in &db.outbox {
        *balance
            .entry((o.booking, o.topic.as_str(), o.status.as_str()))
            .or_default() -= 1;
    }
    for ((booking, topic, status), n) in balance {
        if n > 0 {
            r.missing_outbox_events += usize::try_from(n).unwrap_or_default();
            r.problems.push(format!(
                "booking {booking}: {n} {topic} ({status}) committed without its outbox row"
            ));
        } else if n < 0 {
            r.outbox_without_change += usize::try_from(-n).unwrap_or_default();
            r.problems.push(format!(
                "booking {booking}: {} outbox {topic} ({status}) rows no committed change wrote",
                -n
            ));
        }
    }
    r.events_committed = db.outbox.len();
}

/// (h): holds still RESERVING past expiry + sweeper period + clock slack.
pub(crate) async fn stale_holds(pool: &PgPool, options: &Options) -> TestResult<usize> {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from bookings where status = 'RESERVING'
           and hold_expires_at < now() - make_interval(secs => $1)",
    )
    .bind((options.sweeper + options.clock_slack).as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(usize::try_from(n).unwrap_or_default())
}

/// (h), as a figure: the longest an expired hold stayed RESERVING before its `fail` row (the
/// sweeper's or a lazy expiry's). Not a violation: while PostgreSQL is down nothing can end a
/// hold, and nothing can use it either (a confirm checks the expiry, a new hold ends it).
pub(crate) fn hold_overstay(db: &Db, r: &mut Report) {
    r.hold_overstay_max_ms = db
        .history
        .iter()
        .filter(|h| h.event == "fail")
        .filter_map(|h| {
            let expiry: DateTime<Utc> =
                serde_json::from_value(h.details["hold_expires_at"].clone()).ok()?;
            Some((h.at - expiry).num_milliseconds())
        })
        .max()
        .unwrap_or_default();
}
