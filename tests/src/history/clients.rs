//! The checks that start from what clients saw: (a) overlaps from acks and reads, (b) acked
//! writes, (c) definite failures, (d) phantom bookings, (g) keys and idempotency, (i) reads.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::db::{Db, OCCUPYING};
use super::{uuid_of, Kind, Op, Options, Outcome, Report};

fn time(v: &Value) -> Option<DateTime<Utc>> {
    serde_json::from_value(v.clone()).ok()
}

/// What the clients know of one booking's occupancy.
#[derive(Debug)]
struct Known {
    vehicle: String,
    start: DateTime<Utc>,
    /// It certainly occupied from here (an ack or a read that saw it active completed).
    from: Instant,
    /// A read invoked here still saw it active.
    late: Option<Instant>,
    /// Ends seen, with when they were certainly in place.
    ends: Vec<(Instant, DateTime<Utc>)>,
    confirmed: bool,
    /// The hold's TTL, from its ack (expiry minus creation).
    ttl: Option<Duration>,
}

/// A booking the clients know, with until when it certainly occupied (None: for all they know,
/// still).
type Span<'a> = (&'a str, &'a Known, Option<Instant>);

/// The booking a write or read is about (a hold's from its answer).
fn booking_of(op: &Op) -> Option<String> {
    match op.kind {
        Kind::Hold => op.body["id"].as_str().map(str::to_owned),
        _ => Some(op.target.clone()),
    }
}

/// (a) from the clients' view: see the module docs for when a booking certainly occupies.
pub(crate) fn overlaps(ops: &[Op], options: &Options, r: &mut Report) {
    // The earliest invocation with each key: a hold may have committed from its first attempt.
    let mut first_try: HashMap<(&str, &str), Instant> = HashMap::new();
    for op in ops.iter().filter(|o| o.kind != Kind::Read) {
        let t = first_try
            .entry((op.user.as_str(), op.key.as_str()))
            .or_insert(op.started);
        *t = (*t).min(op.started);
    }
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut held_at: HashMap<String, Instant> = HashMap::new();
    let mut may_end: HashMap<String, Instant> = HashMap::new();
    for op in ops {
        let Some(id) = booking_of(op) else { continue };
        let status = op.body["status"].as_str().unwrap_or_default();
        let active = OCCUPYING.contains(&status);
        match (op.kind, op.outcome()) {
            (Kind::Cancel, Outcome::Ok | Outcome::Indeterminate) => {
                let t = may_end.entry(id.clone()).or_insert(op.started);
                *t = (*t).min(op.started);
            }
            (_, Outcome::Ok) if active => {
                let (Some(start), Some(end)) = (time(&op.body["start"]), time(&op.body["end"]))
                else {
                    continue;
                };
                let k = known.entry(id.clone()).or_insert_with(|| Known {
                    vehicle: op.body["vehicle_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    start,
                    from: op.ended,
                    late: None,
                    ends: Vec::new(),
                    confirmed: false,
                    ttl: None,
                });
                k.from = k.from.min(op.ended);
                k.ends.push((op.ended, end));
                k.confirmed |= status != "RESERVING";
                if op.kind == Kind::Read {
                    k.late = k.late.max(Some(op.started));
                }
                if op.kind == Kind::Hold {
                    let first = first_try
                        .get(&(op.user.as_str(), op.key.as_str()))
                        .copied()
                        .unwrap_or(op.started);
                    let h = held_at.entry(id.clone()).or_insert(first);
                    *h = (*h).min(first);
                    if let (Some(exp), Some(created)) = (
                        time(&op.body["hold_expires_at"]),
                        time(&op.body["created_at"]),
                    ) {
                        k.ttl = (exp - created).to_std().ok();
                    }
                }
            }
            _ => {}
        }
    }
    // Until when each booking certainly occupied (None: for all the clients know, still).
    let until = |id: &str, k: &Known| -> Option<Instant> {
        let expiry = if k.confirmed {
            None
        } else {
            match (held_at.get(id), k.ttl) {
                (Some(t), Some(ttl)) => {
                    Some((*t + ttl).checked_sub(options.clock_slack).unwrap_or(*t))
                }
                _ => Some(k.from),
            }
        };
        let bound = match (expiry, may_end.get(id)) {
            (Some(a), Some(b)) => Some(a.min(*b)),
            (a, b) => a.or(b.copied()),
        };
        match (bound, k.late) {
            (Some(b), Some(l)) => Some(b.max(l)),
            (b, _) => b,
        }
    };
    let mut by_vehicle: HashMap<&str, Vec<Span<'_>>> = HashMap::new();
    for (id, k) in &known {
        by_vehicle
            .entry(k.vehicle.as_str())
            .or_default()
            .push((id.as_str(), k, until(id, k)));
    }
    for (vehicle, list) in by_vehicle {
        for (i, (ia, a, ua)) in list.iter().enumerate() {
            for (ib, b, ub) in &list[i + 1..] {
                let lo = a.from.max(b.from);
                let hi = match (ua, ub) {
                    (Some(x), Some(y)) => Some(*x.min(y)),
                    (x, y) => x.or(*y),
                };
                if hi.is_some_and(|h| h <= lo) {
                    continue;
                }
                // The widest window seen before the shared span ends (windows only grow).
                let end = |k: &Known| {
                    k.ends
                        .iter()
                        .filter(|(t, _)| hi.is_none_or(|h| *t < h))
                        .map(|(_, e)| *e)
                        .max()
                };
                let (Some(ea), Some(eb)) = (end(a), end(b)) else {
                    continue;
                };
                if a.start < eb && b.start < ea {
                    r.overlaps_acked += 1;
                    r.problems.push(format!(
                        "acks: {ia} [{}, {ea}) and {ib} [{}, {eb}) both occupied {vehicle}",
                        a.start, b.start
                    ));
                }
            }
        }
    }
}

/// (b): every acknowledged write is in the database as acknowledged.
pub(crate) fn acknowledged(ops: &[Op], db: &Db, r: &mut Report) {
    for op in ops
        .iter()
        .filter(|o| o.kind != Kind::Read && o.acknowledged())
    {
        let Some(id) = booking_of(op).as_deref().and_then(uuid_of) else {
            r.lost_acknowledged_writes += 1;
            r.problems.push(format!(
                "acknowledged {:?} without an id: {}",
                op.kind, op.body
            ));
            continue;
        };
        let Some(row) = db.bookings.get(&id) else {
            r.lost_acknowledged_writes += 1;
            r.problems.push(format!(
                "acknowledged {:?} of {id}: no such booking",
                op.kind
            ));
            continue;
        };
        let has =
            |event: &str, to: &str| db.history_of(&id).any(|h| h.event == event && h.to == to);
        let body_end = time(&op.body["end"]);
        let ok = match op.kind {
            Kind::Hold => {
                let asked = (time(&op.detail["start"]), time(&op.detail["end"]));
                let quote = op.detail["quote_id"]
                    .as_str()
                    .and_then(|q| Uuid::try_parse(q).ok());
                op.body["vehicle_id"] == op.target.as_str()
                    && row.vehicle == op.target
                    && row.user == op.user
                    && quote.is_none_or(|q| q == row.quote_id)
                    && time(&op.body["start"]) == Some(row.start)
                    && body_end == db.original_end(&id)
                    && (asked.0.is_none() || asked == (Some(row.start), body_end))
                    && op.body["status"] == "RESERVING"
                    && has("hold", "RESERVING")
            }
            Kind::Confirm => {
                op.body["status"] == "CONFIRMED"
                    && has("confirm", "CONFIRMED")
                    && !matches!(row.status.as_str(), "RESERVING" | "FAILED")
            }
            Kind::Cancel => {
                op.body["status"] == "CANCELLED"
                    && has("cancel", "CANCELLED")
                    && row.status == "CANCELLED"
            }
            Kind::Extend => {
                let asked = time(&op.detail);
                body_end.is_some()
                    && (asked.is_none() || asked == body_end)
                    && db
                        .history_of(&id)
                        .any(|h| h.extended_to().is_some_and(|to| Some(to) == body_end))
                    && body_end.is_some_and(|e| row.end >= e)
            }
            Kind::Read => true,
        };
        if !ok {
            r.lost_acknowledged_writes += 1;
            r.problems.push(format!(
                "acknowledged {:?} of {} ({}) not in the database as acknowledged: row {row:?}, history {:?}",
                op.kind,
                op.target,
                op.body,
                db.history_of(&id).map(|h| (&h.event, &h.to)).collect::<Vec<_>>()
            ));
        }
    }
}

fn quote_of(op: &Op) -> Option<Uuid> {
    op.detail["quote_id"]
        .as_str()
        .and_then(|q| Uuid::try_parse(q).ok())
}

/// Bookings per quote id.
fn by_quote(db: &Db) -> HashMap<Uuid, Uuid> {
    db.bookings
        .iter()
        .map(|(id, b)| (b.quote_id, *id))
        .collect()
}

/// (c): a definite failure left no history row (by its request id) and, for a hold whose every
/// attempt failed, no booking of its quote.
pub(crate) fn failed(ops: &[Op], db: &Db, r: &mut Report) {
    let mut rows_of: HashMap<&str, usize> = HashMap::new();
    for h in &db.history {
        if let Some(rid) = &h.request_id {
            *rows_of.entry(rid.as_str()).or_default() += 1;
        }
    }
    let mut quote_outcomes: HashMap<Uuid, bool> = HashMap::new();
    for op in ops.iter().filter(|o| o.kind == Kind::Hold) {
        if let Some(q) = quote_of(op) {
            *quote_outcomes.entry(q).or_insert(true) &= op.outcome() == Outcome::Failed;
        }
    }
    for op in ops
        .iter()
        .filter(|o| o.kind != Kind::Read && o.outcome() == Outcome::Failed)
    {
        if let Some(n) = rows_of.get(op.request_id.as_str()) {
            r.failed_ops_with_effects += 1;
            r.problems.push(format!(
                "{:?} {} answered {:?} yet wrote {n} history rows",
                op.kind, op.request_id, op.status
            ));
        }
    }
    let quotes = by_quote(db);
    for (q, all_failed) in quote_outcomes {
        if let (true, Some(b)) = (all_failed, quotes.get(&q)) {
            r.failed_ops_with_effects += 1;
            r.problems.push(format!(
                "every hold of quote {q} failed definitely, yet booking {b} holds it"
            ));
        }
    }
}

/// (d): every booking traces back to one attempted hold.
pub(crate) fn phantoms(ops: &[Op], db: &Db, r: &mut Report) {
    let holds: HashMap<&str, &Op> = ops
        .iter()
        .filter(|o| o.kind == Kind::Hold)
        .map(|o| (o.request_id.as_str(), o))
        .collect();
    for (id, row) in &db.bookings {
        let first = db.history_of(id).next();
        let attempt = first
            .filter(|h| h.event == "hold")
            .and_then(|h| h.request_id.as_deref())
            .and_then(|rid| holds.get(rid));
        let traced = attempt.is_some_and(|op| {
            op.user == row.user
                && op.target == row.vehicle
                && quote_of(op).is_none_or(|q| q == row.quote_id)
                && time(&op.detail["start"]).is_none_or(|s| s == row.start)
                && time(&op.detail["end"]).is_none_or(|e| Some(e) == db.original_end(id))
        });
        if !traced {
            r.phantom_bookings += 1;
            r.problems.push(format!(
                "booking {id} ({row:?}) traces back to no attempted hold (first history row {first:?})"
            ));
        }
    }
}

/// (g) and idempotency, per (user, key).
pub(crate) fn keys(ops: &[Op], db: &Db, r: &mut Report) {
    let mut by_key: HashMap<(&str, &str), Vec<&Op>> = HashMap::new();
    for op in ops.iter().filter(|o| o.kind != Kind::Read) {
        by_key
            .entry((op.user.as_str(), op.key.as_str()))
            .or_default()
            .push(op);
    }
    let written: HashSet<&str> = db
        .history
        .iter()
        .filter_map(|h| h.request_id.as_deref())
        .collect();
    let quotes = by_quote(db);
    let mut keys_per_quote: HashMap<Uuid, usize> = HashMap::new();
    for ((_, _), attempts) in &by_key {
        if let Some(q) = attempts.first().and_then(|a| quote_of(a)) {
            *keys_per_quote.entry(q).or_default() += 1;
        }
    }
    for ((user, key), mut attempts) in by_key {
        attempts.sort_by_key(|o| o.started);
        let Some(last) = attempts.last() else {
            continue;
        };
        match last.outcome() {
            Outcome::Indeterminate => {
                r.unresolved_keys += 1;
                r.problems.push(format!(
                    "{user}/{key}: {:?} of {} never answered after {} attempts",
                    last.kind,
                    last.target,
                    attempts.len()
                ));
            }
            Outcome::Failed => {
                let wrote: Vec<&str> = attempts
                    .iter()
                    .map(|a| a.request_id.as_str())
                    .filter(|rid| written.contains(rid))
                    .collect();
                // A quote another key also tried (the origin may hand out one quote twice) is
                // that key's to explain; a quote only this key tried must have no booking.
                let booked = (last.kind == Kind::Hold)
                    .then(|| quote_of(last))
                    .flatten()
                    .filter(|q| keys_per_quote.get(q).is_some_and(|n| *n == 1))
                    .and_then(|q| quotes.get(&q));
                if !wrote.is_empty() || booked.is_some() {
                    r.inconsistent_resolutions += 1;
                    r.problems.push(format!(
                        "{user}/{key}: {:?} ends in {:?} {} but took effect (attempts {:?} wrote history rows; booking of its quote {booked:?}); attempts {:?}",
                        last.kind,
                        last.status,
                        last.body["type"],
                        wrote,
                        attempts
                            .iter()
                            .map(|a| (a.origin, a.status, a.body["type"].clone()))
                            .collect::<Vec<_>>()
                    ));
                }
            }
            Outcome::Ok => {}
        }
        let mut first_ok: Option<&Op> = None;
        for a in attempts {
            match (a.outcome(), first_ok) {
                (Outcome::Ok, None) => first_ok = Some(a),
                (Outcome::Ok, Some(f)) if f.status != a.status || f.body != a.body => {
                    r.idempotency_violations += 1;
                    r.problems.push(format!(
                        "{user}/{key}: first 2xx {:?} {}, later {:?} {}",
                        f.status, f.body, a.status, a.body
                    ));
                }
                (Outcome::Failed, Some(f)) => {
                    r.idempotency_violations += 1;
                    r.problems.push(format!(
                        "{user}/{key}: {:?} {} after the 2xx {}",
                        a.status, a.body, f.body
                    ));
                }
                _ => {}
            }
        }
    }
}

/// (i): every read saw a state the booking's history holds; none answered 404 for a booking
/// acknowledged before the read began.
pub(crate) fn reads(ops: &[Op], db: &Db, r: &mut Report) {
    let mut acked: HashMap<String, Instant> = HashMap::new();
    for op in ops
        .iter()
        .filter(|o| o.kind == Kind::Hold && o.acknowledged())
    {
        if let Some(id) = booking_of(op) {
            let t = acked.entry(id).or_insert(op.ended);
            *t = (*t).min(op.ended);
        }
    }
    for op in ops.iter().filter(|o| o.kind == Kind::Read) {
        let ok = match op.status {
            Some(200) => {
                let id = uuid_of(&op.target);
                let row = id.and_then(|id| db.bookings.get(&id).map(|row| (id, row)));
                row.is_some_and(|(id, row)| {
                    op.body["vehicle_id"] == row.vehicle.as_str()
                        && time(&op.body["start"]) == Some(row.start)
                        && db.history_of(&id).any(|h| {
                            op.body["status"] == h.to.as_str()
                                && time(&op.body["end"]) == db.end_after(&id, h.id)
                        })
                })
            }
            Some(404) => acked.get(&op.target).is_none_or(|t| *t > op.started),
            _ => true,
        };
        if !ok {
            r.impossible_reads += 1;
            r.problems.push(format!(
                "read of {} answered {:?} {}: a state its history never had",
                op.target, op.status, op.body
            ));
        }
    }
}
