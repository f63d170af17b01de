//! The system of record as the checker reads it once, after the run: every booking row, every
//! history row (in id order) and every outbox row.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::TestResult;

/// A booking row.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The vehicle's public id (`veh_euw_<hex>`), as clients name it.
    pub vehicle: String,
    pub user: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: String,
    pub quote_id: Uuid,
}

/// A `booking_history` row.
#[derive(Debug, Clone)]
pub(crate) struct Hist {
    pub id: i64,
    pub booking: Uuid,
    pub to: String,
    pub event: String,
    pub request_id: Option<String>,
    pub details: Value,
    /// When the origin decided the change (its clock).
    pub at: DateTime<Utc>,
}

impl Hist {
    /// An extension's new end, from its details.
    pub fn extended_to(&self) -> Option<DateTime<Utc>> {
        (self.event == "extend")
            .then(|| serde_json::from_value(self.details["to"].clone()).ok())
            .flatten()
    }

    /// An extension's old end, from its details.
    pub fn extended_from(&self) -> Option<DateTime<Utc>> {
        (self.event == "extend")
            .then(|| serde_json::from_value(self.details["from"].clone()).ok())
            .flatten()
    }
}

/// An `outbox` row.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub event_id: Uuid,
    pub topic: String,
    /// The partition key: the vehicle's public id.
    pub key: String,
    /// The event's number among its vehicle's events (commit order, no holes).
    pub sequence: i64,
    pub booking: Uuid,
    /// The booking's status in the payload.
    pub status: String,
}

/// Statuses in which a booking occupies its vehicle (the exclusion constraint's).
pub(crate) const OCCUPYING: [&str; 3] = ["RESERVING", "CONFIRMED", "IN_PROGRESS"];

/// The outbox topics a history row must have written (the booking aggregate's events).
pub(crate) fn topics_of(event: &str, to: &str) -> &'static [&'static str] {
    match (event, to) {
        ("extend", _) => &["booking.extended"],
        ("reschedule", _) => &["booking.rescheduled"],
        (_, "RESERVING") => &["booking.created", "vehicle.reserved"],
        (_, "CONFIRMED") => &["booking.confirmed"],
        (_, "IN_PROGRESS") => &["booking.started"],
        (_, "COMPLETED") => &["booking.completed", "vehicle.released"],
        (_, "CANCELLED") => &["booking.cancelled", "vehicle.released"],
        (_, "FAILED") => &["booking.failed", "vehicle.released"],
        _ => &[],
    }
}

/// The three tables.
#[derive(Debug, Default)]
pub(crate) struct Db {
    pub bookings: HashMap<Uuid, Row>,
    /// Every history row, by id.
    pub history: Vec<Hist>,
    /// Indexes into `history` per booking, in id order.
    pub by_booking: HashMap<Uuid, Vec<usize>>,
    pub outbox: Vec<Outbox>,
}

type BookingTuple = (
    Uuid,
    String,
    Uuid,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
    Uuid,
);

type HistTuple = (
    i64,
    Uuid,
    String,
    String,
    Option<String>,
    Value,
    DateTime<Utc>,
);

type OutboxTuple = (Uuid, String, String, i64, Uuid, Value);

impl Db {
    pub async fn load(pool: &PgPool) -> TestResult<Db> {
        let rows: Vec<BookingTuple> = sqlx::query_as(
            "select id, region, vehicle_id, user_id, lower(period), upper(period), status, quote_id
               from bookings",
        )
        .fetch_all(pool)
        .await
        .context("read bookings")?;
        let bookings = rows
            .into_iter()
            .map(
                |(id, region, vehicle, user, start, end, status, quote_id)| {
                    let vehicle = format!("veh_{}_{}", region.to_lowercase(), vehicle.simple());
                    (
                        id,
                        Row {
                            vehicle,
                            user,
                            start,
                            end,
                            status,
                            quote_id,
                        },
                    )
                },
            )
            .collect();
        let rows: Vec<HistTuple> = sqlx::query_as(
            "select id, booking_id, to_status, event, request_id, details, at
               from booking_history order by id",
        )
        .fetch_all(pool)
        .await
        .context("read booking_history")?;
        let history: Vec<Hist> = rows
            .into_iter()
            .map(|(id, booking, to, event, request_id, details, at)| Hist {
                id,
                booking,
                to,
                event,
                request_id,
                details,
                at,
            })
            .collect();
        let mut by_booking: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (i, h) in history.iter().enumerate() {
            by_booking.entry(h.booking).or_default().push(i);
        }
        let rows: Vec<OutboxTuple> = sqlx::query_as(
            "select event_id, topic, partition_key, sequence, aggregate_id, payload
               from outbox order by id",
        )
        .fetch_all(pool)
        .await
        .context("read outbox")?;
        let outbox = rows
            .into_iter()
            .map(
                |(event_id, topic, key, sequence, booking, payload)| Outbox {
                    event_id,
                    topic,
                    key,
                    sequence,
                    booking,
                    status: payload["booking"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                },
            )
            .collect();
        Ok(Db {
            bookings,
            history,
            by_booking,
            outbox,
        })
    }

    /// A booking's history rows, in id order.
    pub fn history_of(&self, booking: &Uuid) -> impl Iterator<Item = &Hist> {
        self.by_booking
            .get(booking)
            .into_iter()
            .flatten()
            .filter_map(|i| self.history.get(*i))
    }

    /// The end a booking had when it was held: the first extension's old end, else the row's.
    pub fn original_end(&self, booking: &Uuid) -> Option<DateTime<Utc>> {
        let row = self.bookings.get(booking)?;
        Some(
            self.history_of(booking)
                .find_map(Hist::extended_from)
                .unwrap_or(row.end),
        )
    }

    /// The end a booking had right after history row `upto` (inclusive).
    pub fn end_after(&self, booking: &Uuid, upto: i64) -> Option<DateTime<Utc>> {
        let mut end = self.original_end(booking)?;
        for h in self.history_of(booking).take_while(|h| h.id <= upto) {
            if let Some(to) = h.extended_to() {
                end = to;
            }
        }
        Some(end)
    }
}
